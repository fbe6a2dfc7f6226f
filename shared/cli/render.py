"""The status view shared by `pulse status`, `pulse watch` and `pulse up`, and run tables.

The figures come from the shared read model (`shared.readmodel.status.collect_status`,
which the dashboard reads too); the `*_table` functions turn them into rich
renderables; `status_json` and `run_json` give the same facts as plain data for `--json`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.readmodel.status import JobStatus, collect_status, freshness_left
from shared.readmodel.timetext import ago, as_utc, human_seconds, key_values, plain_times
from shared.readmodel.timetext import iso as _iso
from shared.schemas import RunRecord
from shared.settings import Settings
from shared.store import Database

STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "retrying": "yellow",
    "queued": "blue",
    "failed": "bold red",
    "timed_out": "red",
    "canceled": "magenta",
    "skipped": "dim",
    "deferred": "yellow",
}


# -- plain data (--json) ---------------------------------------------------------------


def run_json(record: RunRecord) -> dict[str, Any]:
    """`--json` form of a run record (`run_id` instead of `_id`; times as `iso`, to the second)."""
    data: dict[str, Any] = json.loads(record.model_dump_json())
    for name in type(record).model_fields:
        value = getattr(record, name)
        if isinstance(value, datetime):
            data[name] = _iso(value)
    data["attempts"] = [plain_times(attempt.model_dump()) for attempt in record.attempts]
    return data


# -- rich renderables ---------------------------------------------------------------


def styled_status(status: str | None) -> Text:
    if status is None:
        return Text("-", style="dim")
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _freshness(row: JobStatus, now: datetime) -> Text:
    if row.last_success_at is None:
        # pending: its first freshness window has not passed yet; no alarm colour
        return Text("never", style="bold red") if row.freshness == "never_succeeded" else Text("pending", style="dim")
    text = ago(row.last_success_at, now)
    return Text(text, style="green" if row.fresh else "bold red")


_FRESHNESS_STYLE = {"none": "dim", "missed": "bold red", "low": "yellow", "ok": "green"}


def _freshness_left(row: JobStatus) -> Text:
    """What is left of the freshness target (`-` without one), red once it is missed."""
    words, level = freshness_left(row)
    return Text(words, style=_FRESHNESS_STYLE[level])


def _count(value: int | None) -> Text:
    if value is None:
        return Text("no consumer", style="dim")
    return Text(str(value), style="bold yellow" if value else "")


def _schedule_cell(row: JobStatus, now: datetime) -> Text:
    if not row.enabled and row.chained_after:  # not scheduled: another job's runs request it
        return Text("after " + "; ".join(row.chained_after), style="cyan")
    text = Text(row.schedule + ("*" if row.schedule_source == "override" else ""))
    if not row.enabled:
        text.append("  disabled", style="dim")
    elif row.paused:
        text.append("  paused", style="bold yellow")
    elif row.next_fire is not None:
        text.append(f"  next {ago(row.next_fire, now)}", style="dim")
    return text


def status_table(rows: list[JobStatus], *, title: str | None = None) -> Table:
    """The per-job status table (one row per job)."""
    now = datetime.now(UTC)
    table = Table(title=title, title_justify="left", expand=False, header_style="bold")
    table.add_column("job", style="bold")
    table.add_column("schedule (UTC)")
    table.add_column("last run")
    table.add_column("last success (stale after)")
    table.add_column("freshness left", justify="right")
    table.add_column("fails", justify="right")
    table.add_column("waiting", justify="right")
    table.add_column("in flight", justify="right")
    table.add_column("alerts")
    for row in rows:
        last = Text()
        last.append_text(styled_status(row.last_status))
        if row.last_run_id is not None:
            last.append(f" {ago(row.last_ended_at or row.last_started_at, now)}", style="dim")
        fresh = _freshness(row, now)
        fresh.append(f" ({human_seconds(row.stale_after_s)})", style="dim")
        fails = Text(str(row.consecutive_failures), style="bold red" if row.consecutive_failures else "")
        alerts = Text(", ".join(row.alerts), style="bold red") if row.alerts else Text("-", style="dim")
        table.add_row(
            row.job,
            _schedule_cell(row, now),
            last,
            fresh,
            _freshness_left(row),
            fails,
            _count(row.waiting),
            _count(row.in_flight),
            alerts,
        )
    table.caption = (
        "* schedule overridden at runtime (schedules KV bucket)"
        if any(r.schedule_source == "override" for r in rows)
        else None
    )
    return table


def chains_table(rows: list[JobStatus]) -> Table | None:
    """Which job follows which, and the last run each chain requested (None: no chains among `rows`)."""
    chained = [row for row in rows if row.chained_after]
    if not chained:
        return None
    now = datetime.now(UTC)
    table = Table(title="chains", title_justify="left", header_style="bold")
    for column in ("job", "after", "last chained run"):
        table.add_column(column, overflow="fold")
    for row in chained:
        last = Text()
        if row.last_chained_run_id is None:
            last.append("none yet", style="dim")
        else:
            last.append_text(styled_status(row.last_chained_status))
            last.append(f" {ago(row.last_chained_at, now)}  {row.last_chained_run_id}", style="dim")
            if row.last_chained_by:
                last.append(f"  after {row.last_chained_by}", style="dim")
        table.add_row(row.job, "\n".join(row.chained_after), last)
    return table


def runs_table(records: list[RunRecord], *, cut: int | None = 80) -> Table:
    """A table of run records (newest first, as given).

    `cut`: the error / summary cell keeps its first line, shortened to this many characters
    (None: the whole first line, for output that is piped and never wrapped).
    """
    table = Table(header_style="bold")
    for column in ("run_id", "status", "trigger", "attempts", "started", "duration", "error / summary"):
        table.add_column(column, overflow="fold")
    now = datetime.now(UTC)
    for record in records:
        table.add_row(
            record.run_id,
            styled_status(record.status.value),
            record.trigger.value,
            str(record.attempt_count or len(record.attempts)),
            ago(record.started_at, now),
            _duration(record),
            _short(record.error or record.reason or key_values(record.summary), cut),
        )
    return table


def _duration(record: RunRecord) -> str:
    start, end = as_utc(record.started_at), as_utc(record.ended_at)
    if start is None:
        return "-"
    return human_seconds(((end or datetime.now(UTC)) - start).total_seconds()) + ("" if end else "…")


def _short(text: str, limit: int | None) -> str:
    line = text.splitlines()[0] if text else ""
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def run_detail(record: RunRecord) -> Group:
    """One run: its facts, its attempt history (with errors and timings) and its summary."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("run_id", record.run_id)
    facts.add_row("job", record.job)
    facts.add_row("status", styled_status(record.status.value))
    facts.add_row("trigger", record.trigger.value)
    for label, value in (
        ("requested by", record.requested_by),
        ("scheduled for", _iso(as_utc(record.scheduled_for))),
        ("requested at", _iso(as_utc(record.requested_at))),
        ("started at", _iso(as_utc(record.started_at))),
        ("heartbeat at", _iso(as_utc(record.heartbeat_at))),
        ("ended at", _iso(as_utc(record.ended_at))),
        ("next attempt at", _iso(as_utc(record.next_attempt_at))),
        ("reason", record.reason),
    ):
        if value:
            facts.add_row(label, value)
    facts.add_row("duration", _duration(record))
    if record.args:
        facts.add_row("args", json.dumps(record.args))
    if record.cancel_requested:
        who = f" by {record.canceled_by}" if record.canceled_by else ""
        when = f" at {_iso(as_utc(record.cancel_requested_at))}" if record.cancel_requested_at else ""
        facts.add_row("cancel", Text(f"requested{who}{when}", style="magenta"))
    if record.progress and not record.status.is_terminal:
        facts.add_row("progress", key_values(record.progress))
    parts: list[Any] = [facts]
    if record.error:
        parts.append(Panel(record.error, title="error", border_style="red", expand=False))
    attempts = Table(title="attempts", title_justify="left", header_style="bold")
    for column in ("#", "started", "duration", "outcome", "worker", "error"):
        attempts.add_column(column, overflow="fold")
    for attempt in record.attempts:
        end = as_utc(attempt.ended_at)
        took = human_seconds((end - as_utc(attempt.started_at)).total_seconds()) if end else "…"  # type: ignore[operator]
        attempts.add_row(
            str(attempt.number),
            _iso(as_utc(attempt.started_at)) or "-",
            took,
            styled_status(attempt.outcome),
            attempt.worker or "-",
            attempt.error or "",
        )
    parts.append(attempts)
    if record.summary:
        parts.append(Panel(key_values(record.summary), title="summary", expand=False))
    return Group(*parts)


# -- the live view (watch, up) ----------------------------------------------------------


@dataclass
class EventLog:
    """The latest run events and alerts seen on EVENTS, newest first, bounded."""

    limit: int = 8
    lines: list[Text] = field(default_factory=list)

    def add(self, subject: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        line = Text(f"{stamp} ", style="dim")
        if ".alerts." in subject:
            line.append(f"ALERT {data.get('job')} {data.get('kind')}: ", style="bold red")
            line.append(str(data.get("detail", ""))[:120])
        else:
            line.append(f"{data.get('job')} ")
            line.append_text(styled_status(data.get("status")))
            line.append(f" {data.get('run_id')}", style="dim")
            if data.get("duration_ms") is not None:
                line.append(f" {human_seconds(data['duration_ms'] / 1000)}", style="dim")
            if data.get("error"):
                line.append(f"  {str(data['error']).splitlines()[0][:100]}", style="red")
        self.lines.insert(0, line)
        del self.lines[self.limit :]

    def panel(self) -> Panel:
        body: Any = Group(*self.lines) if self.lines else Text("waiting for run events…", style="dim")
        return Panel(body, title="recent events", title_align="left", border_style="dim")


async def live_status(
    nats_client: NatsClient,
    js: JetStreamContext,
    db: Database,
    settings: Settings,
    jobs: tuple[str, ...],
    *,
    stop: asyncio.Event,
    interval_s: float,
    console: Console,
    header: Callable[[], RenderableType] | None = None,
) -> None:
    """Show the status view live until `stop` is set.

    The view is re-read after each run event or alert (core-NATS subscription on the
    EVENTS subjects, so no consumer is left behind) and at least every `interval_s`.
    """
    names = settings.names
    log = EventLog()
    changed = asyncio.Event()

    async def _on_event(msg: Msg) -> None:
        log.add(msg.subject, msg.data)
        changed.set()

    subs = [
        await nats_client.subscribe(subject, cb=_on_event)
        for subject in (names.run_events_wildcard(), names.alerts_wildcard())
    ]

    async def _view() -> Group:
        rows = await collect_status(js, db, settings, jobs)
        title = f"marketpulse · {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC · Ctrl-C to stop"
        parts: list[RenderableType] = [header()] if header is not None else []
        return Group(*parts, status_table(rows, title=title), log.panel())

    try:
        with Live(await _view(), console=console, refresh_per_second=4, transient=False) as live:
            while not stop.is_set():
                waiters = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stop.wait())]
                _, pending = await asyncio.wait(waiters, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                changed.clear()
                if not stop.is_set():
                    live.update(await _view())
    finally:
        for sub in subs:
            await sub.unsubscribe()
