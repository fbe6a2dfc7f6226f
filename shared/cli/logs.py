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
from datetime import datetime, timedelta
from typing import Annotated, Any

import nats.errors
import typer
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.names import Collections
from shared.readmodel.timetext import iso
from shared.runlogs import RUN_ID_HEADER, line_time, parse_line
from shared.schemas import RunRecord

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Connections,
    check_job,
    cli_settings,
    connect,
    fail,
    run_async,
)

#: Fields every line has, shown in fixed places; anything else is printed as key=value.
_PLACED = ("ts", "level", "logger", "msg", "job", "run_id", "attempt", "exc")
#: Lines published just before a run ended arrive within the shipper's flush interval.
_SETTLE_S = 1.0
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
    settings = conns.settings
    record = await _record(conns, run_id)
    started: datetime | None = record.started_at if record is not None else None
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if started else DeliverPolicy.ALL,
        opt_start_time=started - _START_SLACK if started else None,
    )
    sub = await conns.js.subscribe(
        settings.names.log_subject(job), stream=settings.names.logs_stream, ordered_consumer=True, config=config
    )
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    found = 0
    ended_at: float | None = None
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = _SETTLE_S if deadline is None else max(0.01, min(_SETTLE_S, deadline - time.monotonic()))
            try:
                msg = await sub.next_msg(timeout=wait)
            except (nats.errors.TimeoutError, TimeoutError):
                if not follow:
                    break  # caught up
                if ended_at is None and (record := await _record(conns, run_id)) and record.status.is_terminal:
                    ended_at = time.monotonic()  # read on for a moment: its last lines may still be in flight
                if ended_at is not None and time.monotonic() - ended_at >= _SETTLE_S:
                    break
                continue
            if (msg.headers or {}).get(RUN_ID_HEADER) == run_id and (line := parse_line(msg.data)) is not None:
                found += 1
                sys.stdout.write((json.dumps(line, ensure_ascii=False) if as_json else format_line(line)) + "\n")
                sys.stdout.flush()
            if not follow and msg.metadata.num_pending == 0:
                break
        else:
            fail(f"stopped following {run_id} after {timeout_s:g}s; the run goes on", EXIT_FAILED)
    finally:
        await sub.unsubscribe()
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
    if timeout is not None and timeout <= 0:
        fail("--timeout must be a positive number of seconds")

    async def _run() -> int:
        async with connect(settings) as conns:
            return await stream_logs(
                conns, run_id, run_id.split(":", 1)[0], follow=follow, timeout_s=timeout, as_json=as_json
            )

    raise typer.Exit(run_async(_run))


def register(app: typer.Typer) -> None:
    """Add `logs` to `app`."""
    app.command()(logs)
