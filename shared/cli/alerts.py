"""`pulse alerts [--follow]`: the alerts raised lately (and, following, as they come).

Alerts live on `events.alerts.<job>` in EVENTS (kept `PULSE_EVENTS_MAX_AGE_DAYS`). The
janitor also delivers them to the webhook / Slack sinks set in settings
(`shared/alerting.py`); this command reads the stream itself, so it shows every alert
whether or not a sink is configured, and then, on stderr, the alerts a sink has not
accepted yet (`shared/readmodel/alerts.py`).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from pydantic import ValidationError

from shared.names import JOBS
from shared.readmodel.alerts import alert_backlog, backlog_line
from shared.readmodel.timetext import iso
from shared.schemas import Alert

from .common import EXIT_OK, check_seconds, cli_settings, connect, err_console, fail, parse_since, run_async
from .tail import FollowTimeout, tail


def alert_json(alert: Alert) -> dict[str, str]:
    """An alert as `--json` prints it (times as `iso`: UTC to the second)."""
    return {
        "job": alert.job,
        "kind": alert.kind.value,
        "since": iso(alert.since) or "",
        "raised_at": iso(alert.raised_at) or "",
        "detail": alert.detail,
    }


def alert_line(alert: Alert) -> str:
    """One alert for a terminal: when, job, kind, what."""
    return f"{iso(alert.raised_at)}  {alert.job:<12} {alert.kind.value:<20} {alert.detail}"


def alerts(
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only alerts of this job.")] = None,
    since: Annotated[str, typer.Option("--since", help="From this long ago (2h, 1d) or an ISO time.")] = "24h",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new alerts (Ctrl-C stops).")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="With --follow: stop after SECONDS.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per alert.")] = False,
) -> None:
    """Alerts raised lately: failure streaks, stale and never-succeeded jobs, dead letters, recoveries;
    then how many alerts a webhook / Slack sink has not accepted yet (they are sent again, in order).

    Example: pulse alerts --since 2h ;  pulse alerts --follow --job market_sync
    """
    settings = cli_settings()
    if job is not None and job not in JOBS:
        fail(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    check_seconds(timeout, option="--timeout")
    start = parse_since(since)
    if start > datetime.now(UTC) + timedelta(minutes=1):
        fail(f"--since {since!r} is in the future")

    async def _run() -> int:
        names = settings.names
        subject = names.alert_subject(job) if job else names.alerts_wildcard()
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = 0
        async with connect(settings, need_store=False) as conns:
            backlog = None if as_json else backlog_line(await alert_backlog(conns.js, names))
            if backlog and follow:
                err_console.print(backlog, highlight=False, markup=False, soft_wrap=True)
            try:
                async for msg in tail(
                    conns.js, subject, names.events_stream, since=start, follow=follow, deadline=deadline
                ):
                    try:
                        alert = Alert.model_validate_json(msg.data)
                    except ValidationError:
                        continue
                    shown += 1
                    sys.stdout.write((json.dumps(alert_json(alert)) if as_json else alert_line(alert)) + "\n")
                    sys.stdout.flush()
            except FollowTimeout:
                return EXIT_OK  # following for --timeout seconds is what was asked
        if shown == 0 and not as_json:
            err_console.print(f"no alerts since {iso(start)}")
        if backlog:
            err_console.print(backlog, highlight=False, markup=False, soft_wrap=True)
        return EXIT_OK

    try:
        code = run_async(_run)
    except typer.Exit as exc:
        if follow and exc.exit_code == 130:  # Ctrl-C is how a follow normally ends
            raise typer.Exit(EXIT_OK) from None
        raise
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `alerts` to `app`."""
    app.command()(alerts)
