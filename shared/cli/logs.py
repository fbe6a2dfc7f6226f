"""`pulse logs RUN_ID [--follow]`: the log lines of one run, kept after its worker exited.

Lines come from the LOGS stream (`shared/runlogs.py`): every line a worker logged while
running the run (the job's own lines, the runtime's, the libraries'), from all its
attempts and whichever worker ran them. Reading starts at the run's start time, so only
that job's lines since then are scanned.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from typing import Annotated, Any

import typer

from shared.names import Collections
from shared.readmodel.timetext import iso
from shared.runlogs import RUN_ID_HEADER, line_time, parse_line
from shared.schemas import RunRecord

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Connections,
    check_job,
    check_seconds,
    cli_settings,
    connect,
    fail,
    run_async,
)
from .tail import FollowTimeout, tail

#: Fields every line has, shown in fixed places; anything else is printed as key=value.
_PLACED = ("ts", "level", "logger", "msg", "job", "run_id", "attempt", "exc")
#: Start reading this long before the run's recorded start (clock skew between hosts).
_START_SLACK = timedelta(seconds=30)


def format_line(line: dict[str, Any]) -> str:
    """One log line for a terminal: time, level, attempt, the message, then key=value fields."""
    moment = line_time(line)
    parts = [
        iso(moment) or "-",
        f"{line.get('level', '-')!s:<7}",
        f"attempt {line['attempt']}" if line.get("attempt") is not None else "-",
        str(line.get("msg", "")),
    ]
    extra = [f"{key}={_field_text(value)}" for key, value in line.items() if key not in _PLACED]
    text = "  ".join(parts) + ("  " + " ".join(extra) if extra else "")
    if line.get("exc"):
        text += "\n" + "\n".join("    " + row for row in str(line["exc"]).splitlines())
    return text


def _field_text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{key}={_field_text(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ",".join(_field_text(item) for item in value)
    return str(value)


async def _record(conns: Connections, run_id: str) -> RunRecord | None:
    doc = await conns.db[Collections.RUNS].find_one({"_id": run_id})
    return RunRecord.model_validate(doc) if doc is not None else None


async def stream_logs(
    conns: Connections, run_id: str, job: str, *, follow: bool, timeout_s: float | None, as_json: bool
) -> int:
    """Print the run's lines; with `follow`, keep printing until the run ends (or `timeout_s`)."""
    names = conns.settings.names
    record = await _record(conns, run_id)
    started = record.started_at - _START_SLACK if record is not None and record.started_at else None

    async def ended() -> bool:
        current = await _record(conns, run_id)
        return current is not None and current.status.is_terminal

    found = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        async for msg in tail(
            conns.js,
            names.log_subject(job),
            names.logs_stream,
            since=started,
            follow=follow,
            deadline=deadline,
            done=ended,
        ):
            if (msg.headers or {}).get(RUN_ID_HEADER) != run_id or (line := parse_line(msg.data)) is None:
                continue
            found += 1
            sys.stdout.write((json.dumps(line, ensure_ascii=False) if as_json else format_line(line)) + "\n")
            sys.stdout.flush()
    except FollowTimeout:
        fail(f"stopped following {run_id} after {timeout_s:g}s; the run goes on", EXIT_FAILED)
    if found == 0 and record is None:
        fail(f"no run {run_id!r} is recorded and no log lines of it are kept; list runs with: pulse runs", EXIT_FAILED)
    if found == 0 and not as_json:
        print("(no log lines kept for this run)", file=sys.stderr)
    return EXIT_OK


def logs(
    run_id: Annotated[str, typer.Argument(help="The run's id, as printed by trigger or runs.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="With --follow: stop after SECONDS.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, as stored.")] = False,
) -> None:
    """The log lines of one run, from every attempt and worker, kept after the worker exited.

    Lines are kept for PULSE_LOGS_MAX_AGE_DAYS (at most PULSE_LOG_LINES_PER_RUN per attempt).

    Example: pulse logs market_sync:manual:3f2a9c... --follow
    """
    settings = cli_settings()
    check_job(settings, run_id.split(":", 1)[0])
    check_seconds(timeout, option="--timeout")

    async def _run() -> int:
        async with connect(settings) as conns:
            return await stream_logs(
                conns, run_id, run_id.split(":", 1)[0], follow=follow, timeout_s=timeout, as_json=as_json
            )

    raise typer.Exit(run_async(_run))


def register(app: typer.Typer) -> None:
    """Add `logs` to `app`."""
    app.command()(logs)
