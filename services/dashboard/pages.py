"""The dashboard's pages (GET): each reads the shared read model and renders one template.

/                 Overview: per job schedule, next fire, last run, freshness, 24 h success
                  rate and p50/p95 with a chart, queue and redeliveries, alerts
/runs             Runs: filters (job, status, trigger, since, until), keyset pages, live
/runs/<run_id>    Run: facts, timeline, a workflow's steps, attempts, summary, args; cancel,
                  re-run, and the signal a waiting workflow waits for
/schedules        Schedules: change, pause/resume (bulk), trigger now or at a time,
                  upcoming and recent slots (the slot ledger: skipped and missed ones
                  with their reasons), delayed runs
/dlq, /dlq/<seq>  Dead letters: list, show, replay, purge, replay/purge all matching
/jobs/<job>       Job: status, freshness, chains, why it is not running, slot strip (facts.py)
/budgets          Upstream budgets (facts.py)
/stats            Market stats: charts of the hourly snapshots, top markets
/audit            The audit trail of operator actions
/events           Server-Sent Events for the pages above (fed by the EVENTS stream)

/healthz, /readyz and /metrics are the runtime's (`Dashboard.app()`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from services.dashboard.app import Dashboard, Page
from services.dashboard.charts import line_chart, sparkline, step_bar
from services.dashboard.security import safe_next
from services.dashboard.sources import OVERFLOWED, LiveEvent
from services.dashboard.web import EventStream, HttpError, Response, sse
from shared.audit import recent_actions
from shared.names import JOBS
from shared.readmodel import deadletters, runs, schedules, slots, stats
from shared.readmodel import status as job_status
from shared.readmodel.timetext import as_utc, human_seconds, iso, parse_since, parse_time
from shared.runtime import read_steps
from shared.schemas import RunRecord, RunStatus, StepRecord, Trigger

#: Upcoming and recent slots shown per job.
SLOTS_SHOWN = 6
#: Dead letters listed at most on one page.
LETTERS_SHOWN = 500
#: A comment line on open event streams this often, so proxies keep them open.
KEEPALIVE_S = 15.0
STAT_PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def register(dash: Dashboard) -> None:
    """Add every page's route to `dash`."""
    dash.route("GET", "/", overview)
    dash.route("GET", "/runs", runs_page)
    dash.route("GET", "/runs/{run_id}", run_page)
    dash.route("GET", "/schedules", schedules_page)
    dash.route("GET", "/dlq", dlq_page)
    dash.route("GET", "/dlq/{seq}", letter_page)
    dash.route("GET", "/stats", stats_page)
    dash.route("GET", "/audit", audit_page)
    dash.route("GET", "/login", login_page)
    dash.route("GET", "/events", events)


# -- overview ------------------------------------------------------------------------


@dataclass
class JobRow:
    job: str
    status: job_status.JobStatus | None
    window: job_status.JobWindow | None
    queue: job_status.QueueInfo | None
    nats_up: bool
    unavailable: str

    @property
    def chart(self) -> Any:
        durations = self.window.durations_s[-200:] if self.window else []
        return sparkline(durations, label=f"durations of {self.job}'s completed runs, last 24 h")


async def _job_row(page: Page, job: str) -> JobRow:
    src = page.sources

    async def queue() -> job_status.QueueInfo | None:
        return await job_status.queue_info(src.js, page.settings, job)

    info = await page.read("queues", queue)

    async def row() -> job_status.JobStatus:
        return await job_status.collect_job_status(src.js, src.store(), page.settings, job, info)

    async def window() -> job_status.JobWindow:
        return await job_status.job_window(src.store(), job)

    found = await page.read("job status", row)
    return JobRow(job, found, await page.read("24 h history", window), info, src.nats_up,
                  "needs NATS and MongoDB" if found is None else "")  # fmt: skip


async def overview_rows(page: Page) -> tuple[list[JobRow], int | None]:
    """Per job: status (NATS and MongoDB), 24 h window (MongoDB), queue (NATS); and the DLQ size."""
    src = page.sources
    rows = []
    for job in JOBS:
        rows.append(await _job_row(page, job))
    letters = await page.read("dead letters", lambda: deadletters.count_letters(src.js, page.settings.names))
    return rows, letters


async def overview(page: Page) -> Response:
    rows, letters = await overview_rows(page)
    any_override = any(r.status is not None and r.status.schedule_source == "override" for r in rows)
    if page.request.arg("fragment") == "jobs":
        return Response(page.dashboard.templates.get_template("overview_jobs.html").render(
            jobs=rows, dead_letters=letters, any_override=any_override, now=datetime.now(UTC)))  # fmt: skip
    return page.render(
        "overview.html", title="Overview", page="overview", jobs=rows, dead_letters=letters,
        any_override=any_override, live_url="/events?page=overview",
    )  # fmt: skip


# -- runs --------------------------------------------------------------------------------


def run_filter(page: Page) -> tuple[runs.RunFilter, dict[str, str | None]]:
    """The Runs page's filter from the query; ValueError with a clear line on bad input."""
    arg = page.request.arg
    raw = {name: arg(name) for name in ("job", "status", "trigger", "since", "until")}
    since = parse_since(raw["since"], option="since") if raw["since"] else None
    until = parse_time(raw["until"], option="until") if raw["until"] else None
    flt = runs.RunFilter(job=raw["job"], status=raw["status"], trigger=raw["trigger"], since=since, until=until)
    return flt, raw


async def runs_page(page: Page) -> Response:
    choices: dict[str, Any] = {
        "jobs": JOBS,
        "statuses": [s.value for s in RunStatus],
        "triggers": [t.value for t in Trigger],
    }
    try:
        flt, raw = run_filter(page)
        after_text = page.request.arg("after")
        after = runs.Cursor.decode(after_text) if after_text else None
    except ValueError as exc:
        empty = {name: page.request.arg(name) for name in ("since", "until")}
        return page.render(
            "runs.html", status=400, title="Runs", page="runs", f=runs.RunFilter(), raw=empty, error=str(exc),
            records=[], after=None, next_url=None, first_url="/runs", **choices,
        )  # fmt: skip
    size = page.settings.dashboard_page_size
    result = await page.read("runs", lambda: runs.list_runs(page.sources.store(), flt, size, after))
    base = {k: v for k, v in raw.items() if v}
    next_url = None
    if result is not None and result.next_cursor is not None:
        next_url = "/runs?" + urlencode({**base, "after": result.next_cursor.encode()})
    live = None if after is not None else "/events?" + urlencode({"page": "runs", **base})
    return page.render(
        "runs.html", title="Runs", page="runs", f=flt, raw=raw, error=None,
        records=result.records if result else [], after=after, next_url=next_url,
        first_url="/runs?" + urlencode(base), live_url=live, **choices,
    )  # fmt: skip


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime | None
    what: str
    took: str
    detail: str


def timeline(record: RunRecord) -> list[TimelineEntry]:
    """The run's life in time order: requested, each attempt, cancel request, end."""
    from services.dashboard.render import attempt_took

    entries = []
    if record.requested_at:
        entries.append(TimelineEntry(record.requested_at, "requested", "", record.requested_by or ""))
    if record.scheduled_for and record.trigger is Trigger.SCHEDULE:
        entries.append(TimelineEntry(record.scheduled_for, "slot", "", ""))
    for attempt in record.attempts:
        detail = attempt.error or ""
        entries.append(
            TimelineEntry(attempt.started_at, f"attempt {attempt.number}: {attempt.outcome or 'running'}",
                          attempt_took(attempt), detail)
        )  # fmt: skip
    if record.next_attempt_at and not record.status.is_terminal:
        entries.append(TimelineEntry(record.next_attempt_at, "next attempt due", "", ""))
    if record.ended_at:
        entries.append(TimelineEntry(record.ended_at, f"ended {record.status.value}", "", record.reason or ""))
    return sorted(entries, key=lambda e: as_utc(e.at) or datetime.min.replace(tzinfo=UTC))


@dataclass(frozen=True)
class StepView:
    """One row of a workflow run's step timeline."""

    step: StepRecord
    took: str
    note: str
    bar: Any


def step_views(steps: list[StepRecord], now: datetime) -> list[StepView]:
    """The steps with their durations and bars, scaled to the span from the first start to the last end.

    A step still open (running, sleeping, waiting) reaches `now`, so the span covers it too.
    """
    starts = [as_utc(s.started_at) for s in steps if s.started_at is not None]
    ends = [as_utc(s.ended_at) or now for s in steps if s.started_at is not None]
    first = min((t for t in starts if t is not None), default=now)
    last = max((t for t in ends if t is not None), default=now)
    span = max((last - first).total_seconds(), 0.001)
    views = []
    for step in steps:
        start, end = as_utc(step.started_at), as_utc(step.ended_at)
        took = human_seconds(step.duration_ms / 1000) if step.duration_ms is not None else "…"
        note = step.error or ""
        if step.status.value in ("sleeping", "waiting") and step.wake_at is not None:
            note = f"until {iso_of(step.wake_at)}"
        elif step.timed_out:
            note = "timed out (no signal)"
        if start is None:
            bar = step_bar(0, 0, status=step.status.value, label=f"{step.name}: not started")
        else:
            offset = (start - first).total_seconds() / span
            finish = ((end or now) - first).total_seconds() / span
            bar = step_bar(offset, finish, status=step.status.value, label=f"{step.name}: {step.status.value}, {took}")
        views.append(StepView(step, took, note, bar))
    return views


def iso_of(moment: datetime | None) -> str:
    return iso(as_utc(moment)) or "-"


async def run_page(page: Page) -> Response:
    run_id = page.request.params["run_id"]
    record = await page.read("the run", lambda: runs.find_run(page.sources.store(), run_id))
    if record is None:
        if page.problems:
            return page.render(
                "error.html", status=503, title="Run", heading="Run", message=page.problems[0], back="/runs"
            )
        return page.error(
            404, f"no run {run_id!r} is recorded (a queued run has no record until it starts)", back="/runs"
        )
    facts: list[tuple[str, Any]] = [
        (label, value)
        for label, value in (
            ("requested by", record.requested_by),
            ("scheduled for", record.scheduled_for),
            ("requested at", record.requested_at),
            ("started at", record.started_at),
            ("heartbeat at", record.heartbeat_at),
            ("ended at", record.ended_at),
            ("next attempt at", record.next_attempt_at),
            ("waiting for signal", record.waiting_for if record.status is RunStatus.WAITING else None),
            ("wakes at", record.wake_at if record.status in (RunStatus.SLEEPING, RunStatus.WAITING) else None),
            ("reason", record.reason),
            ("interrupted", _interrupted_text(record.interruptions)),
        )
        if value
    ]
    facts = [(label, iso(as_utc(v)) if isinstance(v, datetime) else v) for label, v in facts]
    live = None if record.status.is_terminal else "/events?" + urlencode({"page": "run", "run_id": run_id})
    steps = await page.read("the workflow's steps", lambda: read_steps(page.sources.store(), run_id)) or []
    return page.render(
        "run.html", title=f"Run {run_id}", page="runs", r=record, facts=facts,
        steps=step_views(steps, datetime.now(UTC)),
        args_json=json.dumps(record.args, sort_keys=True), timeline=timeline(record),
        summary_json=json.dumps(record.summary, indent=2, default=str) if record.summary else "",
        live_url=live,
    )  # fmt: skip


def _interrupted_text(interruptions: int) -> str | None:
    """What a run's `interruptions` mean, or None when it had none."""
    if not interruptions:
        return None
    times = "once" if interruptions == 1 else f"{interruptions} times"
    return f"{times} by the store or NATS (run again without counting an attempt)"


# -- schedules -----------------------------------------------------------------------------


@dataclass
class JobSlots:
    job: str
    upcoming: list[datetime]
    recent: list[slots.SlotView]


async def _job_slots(page: Page, job: str, now: datetime) -> JobSlots:
    src, settings = page.sources, page.settings

    async def override() -> schedules.OverrideEntry:
        return await schedules.read_override(src.js, settings, job)

    entry = await page.read("overrides", override)
    eff = schedules.effective_for(settings, job, entry.override if entry else None)

    async def recent() -> list[slots.SlotView]:
        return await slots.recent_job_slots(src.store(), eff, now, SLOTS_SHOWN)

    upcoming = schedules.upcoming_slots(eff, now, SLOTS_SHOWN) if entry else []
    return JobSlots(job, upcoming, await page.read("recent slots", recent) or [])


async def schedules_page(page: Page) -> Response:
    src, settings = page.sources, page.settings
    rows = await page.read("schedules", lambda: schedules.list_schedules(src.js, settings))
    now = datetime.now(UTC)
    per_job = [await _job_slots(page, job, now) for job in JOBS]
    pending = await page.read("delayed runs", lambda: schedules.pending_runs(src.js, settings, None))
    return page.render(
        "schedules.html", title="Schedules", page="schedules", rows=rows, slots=per_job, pending=pending,
        live_url="/events?page=schedules",
    )  # fmt: skip


# -- dead letters ---------------------------------------------------------------------------


async def dlq_page(page: Page) -> Response:
    job = page.request.arg("job")
    try:
        deadletters.check_job(job)
    except ValueError as exc:
        return page.error(400, str(exc), back="/dlq")
    letters = await page.read(
        "dead letters", lambda: deadletters.read_letters(page.sources.js, page.settings.names, job, LETTERS_SHOWN)
    )
    return page.render(
        "dlq.html", title="Dead letters", page="dlq", letters=letters, job=job, jobs=JOBS,
        truncated=letters is not None and len(letters) >= LETTERS_SHOWN,
    )  # fmt: skip


def parse_seq(text: str) -> int:
    """A dead letter's sequence number from the URL, or 400."""
    if not (text.isascii() and text.isdecimal()) or int(text) < 1:  # "²" passes isdigit(), not int()
        raise HttpError(400, f"{text!r} is not a dead letter number: use the seq shown in the list")
    return int(text)


async def letter_page(page: Page) -> Response:
    seq = parse_seq(page.request.params["seq"])
    try:
        stored = await page.read(
            "the dead letter", lambda: deadletters.read_letter(page.sources.js, page.settings.names, seq)
        )
    except LookupError as exc:
        return page.error(404, str(exc), back="/dlq")
    if stored is None:
        return page.render(
            "error.html", status=503, title="Dead letter", heading="Dead letter", message=page.problems[0], back="/dlq"
        )
    data = stored.as_json()
    fields = [
        (key, str(data[key]))
        for key in ("seq", "job", "run_id", "reason", "attempts", "dead_at", "error", "unreadable")
        if data.get(key) is not None
    ]
    request_json = json.dumps(data["request"], indent=2) if data.get("request") else ""
    return page.render(
        "letter.html", title=f"Dead letter {seq}", page="dlq", s=stored, fields=fields, request_json=request_json
    )


# -- stats and audit --------------------------------------------------------------------------


async def stats_page(page: Page) -> Response:
    last = page.request.arg("last") or "24h"
    if last not in STAT_PERIODS:
        return page.error(400, f"unknown period {last!r}: use one of {', '.join(STAT_PERIODS)}", back="/stats")
    db = page.sources
    latest = await page.read("stats", lambda: stats.latest_snapshot(db.store()))
    points = await page.read("stats trend", lambda: stats.trend(db.store(), STAT_PERIODS[last])) or []

    def series(name: str) -> list[tuple[datetime, float]]:
        out = []
        for point in points:
            moment, value = as_utc(point.get("computed_at")), point.get(name)
            if moment is not None and isinstance(value, int | float):
                out.append((moment, float(value)))
        return out

    charts = {
        "active": line_chart(series("active_markets"), title=f"active markets, last {last}"),
        "volume": line_chart(series("volume_24h"), title=f"24 h volume, last {last}"),
        "whales": line_chart(series("whale_notional_1h"), title=f"whale notional per hour, last {last}"),
    }
    from services.dashboard.render import format_number

    figures = []
    if latest is not None:
        figures = [
            ("markets", format_number(latest.get("total_markets"))),
            ("active markets", format_number(latest.get("active_markets"))),
            ("volume, 24 h", format_number(latest.get("volume_24h"), 2)),
            ("whale trades, last hour", format_number(latest.get("whale_trades_1h"))),
            ("whale notional, last hour", format_number(latest.get("whale_notional_1h"), 2)),
        ]
    top = (latest or {}).get("top_markets") or []
    return page.render(
        "stats.html", title="Market stats", page="stats", latest=latest, figures=figures, charts=charts,
        top=top if isinstance(top, list) else [], last=last, periods=list(STAT_PERIODS),
    )  # fmt: skip


async def audit_page(page: Page) -> Response:
    entries = await page.read("the audit trail", lambda: recent_actions(page.sources.store(), 100))
    return page.render("audit.html", title="Audit trail", page="audit", entries=entries)


async def login_page(page: Page) -> Response:
    return page.render("login.html", title="Sign in", next=safe_next(page.request.arg("next")))


# -- gauges ----------------------------------------------------------------------------------


async def observe_system(dash: Dashboard) -> None:
    """Refresh the system gauges of /metrics (queues, dead letters, freshness targets) from the read model."""
    gauges, src, settings = dash.metrics, dash.sources, dash.settings
    for job in JOBS:
        gauges.stale_after.labels(job=job).set(settings.jobs.for_job(job).stale_after_s)
    counts = await deadletters.count_by_job(src.js, settings.names)
    for job in JOBS:
        gauges.dead_letters.labels(job=job).set(counts.get(job, 0))
        queue = await job_status.queue_info(src.js, settings, job)
        if queue is not None:
            gauges.pending.labels(job=job).set(queue.waiting)
            gauges.ack_pending.labels(job=job).set(queue.in_flight)
            gauges.redelivered.labels(job=job).set(queue.redelivered)


# -- live updates ------------------------------------------------------------------------------


def _matches(event: LiveEvent, query: dict[str, str | None]) -> bool:
    data = event.data
    return all(not query.get(key) or data.get(key) == query[key] for key in ("job", "status", "trigger", "run_id"))


def last_event_id(page: Page) -> int | None:
    """Where the browser's stream left off: its `Last-Event-ID` header (sent by EventSource when it
    reconnects), else `last_event_id=` in the query (the sequence the page was rendered at)."""
    text = page.request.headers.get("last-event-id") or page.request.arg("last_event_id") or ""
    # ASCII digits only: `isdigit()` also passes "²", which `int()` refuses (after the headers went out).
    return int(text) if text.isascii() and text.isdecimal() else None


async def _updates(page: Page) -> AsyncGenerator[str]:
    """The blocks of one page's event stream, until the client leaves or the dashboard stops.

    Every block carries its event's EVENTS sequence as the SSE id (an id-only block for an
    event this page shows nothing of, so the browser's last id stays current). A stream
    that resumes after an id first gets what it missed, read from the stream, then the
    live events after it: each event once, in order. A page too slow for its queue
    catches up the same way, from the stream.
    """
    arg = page.request.arg
    kind = arg("page") or "overview"
    query = {key: arg(key) for key in ("job", "status", "trigger", "run_id")}
    hub = page.sources.hub
    queue = hub.subscribe()  # first: what arrives while the missed events are read waits here
    resume_after = last_event_id(page)  # read the stream after this first (None: nothing to read)
    sent = resume_after or 0
    try:
        yield "retry: 2000\n: connected\n\n"
        while True:
            if resume_after is not None:
                caught_up = await _catch_up(page, kind, query, resume_after)
                if caught_up is None:
                    yield sse("reset", "too many events were missed: reload the page")
                    return
                blocks, sent = caught_up
                for block in blocks:
                    yield block
                resume_after = None
            try:
                live = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if live is None:
                return
            if live is OVERFLOWED:  # the queue dropped events: read them from the stream
                resume_after = sent
                continue
            if live.seq <= sent:  # already sent from the stream
                continue
            yield await _block(page, kind, query, live)
            sent = live.seq
    finally:
        hub.unsubscribe(queue)


async def _catch_up(page: Page, kind: str, query: dict[str, str | None], after: int) -> tuple[list[str], int] | None:
    """The blocks of the events after `after` (read from the stream) and the last id sent; None: too many."""
    missed = await page.read("missed events", lambda: page.sources.missed(after))
    if missed is None:  # NATS is away: the live feed resumes when it is back
        return [], after
    if not missed.complete:
        return None
    sent = 0 if after > missed.last_seq else after  # an id from before EVENTS was recreated: nothing sent yet
    last_run = max((e.seq for e in missed.events if e.kind == "run"), default=0)
    blocks = []
    for event in missed.events:
        # The overview is re-rendered whole: once, for the last missed run event.
        coalesced = kind == "overview" and event.kind == "run" and event.seq != last_run
        blocks.append(f"id: {event.seq}\n\n" if coalesced else await _block(page, kind, query, event))
        sent = event.seq
    return blocks, sent


async def _block(page: Page, kind: str, query: dict[str, str | None], event: LiveEvent) -> str:
    """The SSE block of `event` for this page (`kind`, filtered by `query`), with its id."""
    event_id = str(event.seq)
    if event.kind == "alert":
        data = event.data
        text = f"ALERT {data.get('job')} {data.get('kind')}: {str(data.get('detail', ''))[:300]}"
        html = page.dashboard.templates.from_string('<div class="banner alert" role="alert">{{ text }}</div>')
        return sse("alert", html.render(text=text), event_id)
    if kind == "runs" and _matches(event, query):
        row = await _run_row(page, event)
        if row is not None:
            return sse("row", row, event_id)
    elif kind == "run" and event.data.get("run_id") == query.get("run_id"):
        return sse("ended", str(event.data.get("status", "")), event_id)
    elif kind == "overview":
        return sse("jobs", await _jobs_fragment(page), event_id)
    return f"id: {event_id}\n\n"  # nothing to show here; the browser's last id moves on


async def _run_row(page: Page, event: LiveEvent) -> str | None:
    run_id = str(event.data.get("run_id", ""))
    record = await page.read("the run", lambda: runs.find_run(page.sources.store(), run_id))
    if record is None:
        return None
    macro = page.dashboard.templates.get_template("macros.html").module.run_row  # type: ignore[attr-defined]
    return str(macro(record, datetime.now(UTC)))


async def _jobs_fragment(page: Page) -> str:
    page.problems.clear()
    rows, letters = await overview_rows(page)
    return page.dashboard.templates.get_template("overview_jobs.html").render(
        jobs=rows, dead_letters=letters, any_override=False, now=datetime.now(UTC)
    )


async def events(page: Page) -> EventStream:
    return EventStream(_updates(page), page.request.receive)
