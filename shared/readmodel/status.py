"""How each job is doing: the rows of `pulse status` / `pulse watch` and the dashboard's overview.

`collect_status` reads (never writes) the three places that together say how a job is
doing: its schedule (settings, overridden by the `schedules` KV bucket), its queue (the
job's JetStream consumer) and its history (`runs`). `job_window` adds what only the
dashboard shows: the success rate and p50/p95 durations of the last 24 h.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from shared.chains import configured_chains
from shared.names import JOB_REQUESTS, JOBS, Collections
from shared.overrides import resolve
from shared.readmodel.schedules import read_override
from shared.readmodel.timetext import as_utc, human_seconds, iso
from shared.runtime import failure_streak, read_freshness, state_id
from shared.schemas import RunStatus
from shared.settings import Settings
from shared.store import Database

#: How many recent finished runs are read to count consecutive failures.
_FAILURE_WINDOW = 50
_ACTIVE = (RunStatus.RUNNING.value, RunStatus.RETRYING.value)
#: Most finished runs read for the 24 h window (a job every 30 s ends 2,880 runs a day).
WINDOW_RUN_LIMIT = 5000


@dataclass
class JobStatus:
    """Everything `pulse status` shows about one job."""

    job: str
    schedule: str
    schedule_source: str  # "default" (settings) or "override" (the schedules KV bucket), as `pulse schedule list`
    enabled: bool
    paused: bool
    next_fire: datetime | None
    last_run_id: str | None = None
    last_status: str | None = None
    last_ended_at: datetime | None = None
    last_started_at: datetime | None = None
    last_success_at: datetime | None = None
    stale_after_s: float = 0.0
    fresh: bool | None = None  # None: never succeeded
    #: `fresh`, `stale` (succeeded, not lately), `pending` (no success yet, but its first
    #: freshness window since it was first served has not passed), `never_succeeded`.
    freshness: str = "pending"
    #: The job's freshness target and what is left of it (negative: missed by that much);
    #: None without a target, or before the job was first served.
    freshness_target_s: float | None = None
    freshness_budget_s: float | None = None
    consecutive_failures: int = 0
    alert_after_failures: int = 0
    waiting: int | None = None  # None: the job's consumer does not exist yet
    in_flight: int | None = None
    running_records: int = 0
    alerts: list[str] = field(default_factory=list)
    #: Chains: the jobs whose runs request this one ("market_sync, once per hour"), the
    #: jobs this one requests, and the newest run of this job that a chain requested.
    chained_after: list[str] = field(default_factory=list)
    chains_to: list[str] = field(default_factory=list)
    last_chained_run_id: str | None = None
    last_chained_status: str | None = None
    last_chained_by: str | None = None  # the run that requested it (`requested_by` without `chain:`)
    last_chained_at: datetime | None = None  # when it started (or was requested, if not started yet)


@dataclass(frozen=True)
class QueueInfo:
    """The job's durable consumer: requests waiting, delivered but unacked, redelivered.

    `pull_requests`: workers' pull requests waiting on it (0 while no worker is bound).
    """

    waiting: int
    in_flight: int
    redelivered: int
    pull_requests: int = 0


async def queue_info(js: JetStreamContext, settings: Settings, job: str) -> QueueInfo | None:
    """The job's consumer figures, or None when the consumer does not exist yet."""
    names = settings.names
    try:
        info = await js.consumer_info(names.jobs_stream, names.consumer_name(job))
    except nats.js.errors.NotFoundError:
        return None
    return QueueInfo(info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0, info.num_waiting or 0)


async def collect_job_status(
    js: JetStreamContext, db: Database, settings: Settings, job: str, queue: QueueInfo | None = None
) -> JobStatus:
    """Read the schedule, queue and history of `job` (`queue` when already read)."""
    now = datetime.now(UTC)
    policy = settings.jobs.for_job(job)
    override = (await read_override(js, settings, job)).override
    try:
        effective = resolve(job, policy, override)
        schedule_text = effective.schedule.text
        source = effective.source
        paused = effective.paused
        next_fire: datetime | None = effective.schedule.next_slot(now) if effective.active else None
    except ValueError:  # an override the ticker would refuse: it keeps the default
        schedule_text, source, paused, next_fire = policy.schedule, "default", False, None

    runs = db[Collections.RUNS]
    last = await runs.find_one({"job": job}, sort=[("requested_at", -1), ("started_at", -1)])
    success = await runs.find_one({"job": job, "status": RunStatus.COMPLETED.value}, sort=[("ended_at", -1)])
    if queue is None:
        queue = await queue_info(js, settings, job)
    status = JobStatus(
        job=job,
        schedule=schedule_text,
        schedule_source=source,
        enabled=policy.enabled,
        paused=paused,
        next_fire=next_fire,
        stale_after_s=policy.stale_after_s,
        alert_after_failures=policy.alert_after_failures,
        waiting=queue.waiting if queue else None,
        in_flight=queue.in_flight if queue else None,
        running_records=await runs.count_documents({"job": job, "status": {"$in": list(_ACTIVE)}}),
        consecutive_failures=len(await failure_streak(db, job, _FAILURE_WINDOW)),
    )
    if last is not None:
        status.last_run_id = str(last["_id"])
        status.last_status = last.get("status")
        status.last_started_at = as_utc(last.get("started_at"))
        status.last_ended_at = as_utc(last.get("ended_at"))
    if success is not None:
        status.last_success_at = as_utc(success.get("ended_at"))
        if status.last_success_at is not None:
            status.fresh = (now - status.last_success_at).total_seconds() <= policy.stale_after_s
    if status.fresh is not None:
        status.freshness = "fresh" if status.fresh else "stale"
    else:
        state = await db[Collections.JOB_STATE].find_one({"_id": state_id(job)}, {"first_seen_at": 1})
        first_seen = as_utc(state.get("first_seen_at")) if state else None
        waited = (now - first_seen).total_seconds() if first_seen is not None else 0.0
        status.freshness = "never_succeeded" if waited > policy.stale_after_s else "pending"
    if policy.freshness_target_s is not None:
        status.freshness_target_s = policy.freshness_target_s
        status.freshness_budget_s = (await read_freshness(db, job, policy.freshness_target_s, now)).budget_left_s
    if status.freshness in ("stale", "never_succeeded"):
        status.alerts.append(status.freshness.replace("_", " "))
    if status.consecutive_failures >= policy.alert_after_failures:
        status.alerts.append(f"{status.consecutive_failures} failures in a row")
    await _add_chains(db, settings, status)
    return status


def freshness_left(row: JobStatus) -> tuple[str, str]:
    """What is left of the job's freshness target, in words, and its level.

    Levels: `none` (no target, or not served yet), `ok`, `low` (under a quarter of the
    target left), `missed` (the target is missed by the amount in words). `pulse status`
    and the dashboard's overview colour the same words by the same level.
    """
    left, target = row.freshness_budget_s, row.freshness_target_s
    if target is None or left is None:
        return "-", "none"
    if left < 0:
        return f"missed by {human_seconds(-left)}", "missed"
    return f"{human_seconds(left)} of {human_seconds(target)}", "low" if left < target / 4 else "ok"


def _chain_links(settings: Settings) -> list[tuple[str, str, str]]:
    """(job, follow-up, how often) of every chain: `on_complete` in settings, then `JOB_REQUESTS`."""
    links = [
        (chain.after, chain.follow_up.job, "once per hour" if chain.follow_up.per == "hour" else "after each run")
        for chain in configured_chains(settings)
    ]
    links += [(after, then, "on request") for after, requested in JOB_REQUESTS.items() for then in requested]
    return links


async def _add_chains(db: Database, settings: Settings, status: JobStatus) -> None:
    """Which job follows which, around `status.job`, and its last chained run (one indexed read)."""
    links = _chain_links(settings)
    status.chained_after = [f"{after}, {how}" for after, then, how in links if then == status.job]
    status.chains_to = [f"{then}, {how}" for after, then, how in links if after == status.job]
    if not status.chained_after:
        return
    last = await db[Collections.RUNS].find_one(
        {"job": status.job, "trigger": "chain"},
        {"status": 1, "requested_by": 1, "started_at": 1, "requested_at": 1},
        sort=[("started_at", -1)],
    )
    if last is not None:
        status.last_chained_run_id = str(last["_id"])
        status.last_chained_status = last.get("status")
        status.last_chained_by = str(last.get("requested_by") or "").removeprefix("chain:") or None
        status.last_chained_at = as_utc(last.get("started_at") or last.get("requested_at"))


async def collect_status(
    js: JetStreamContext, db: Database, settings: Settings, jobs: tuple[str, ...] = JOBS
) -> list[JobStatus]:
    """The status of every job in `jobs`, in that order."""
    return [await collect_job_status(js, db, settings, job) for job in jobs]


def status_json(rows: list[JobStatus]) -> list[dict[str, Any]]:
    """`--json` form of the status rows; times as ISO-8601 UTC strings."""
    out = []
    for row in rows:
        data = asdict(row)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = iso(value)
        out.append(data)
    return out


# -- the last 24 hours ---------------------------------------------------------------


@dataclass(frozen=True)
class JobWindow:
    """Finished runs of one job in a time window: outcomes and durations (oldest first)."""

    job: str
    since: datetime
    finished: int
    completed: int
    failed: int
    durations_s: list[float]  # of completed runs, oldest first
    truncated: bool  # more runs ended in the window than were read

    @property
    def success_rate(self) -> float | None:
        """Completed over completed + failed (skipped and canceled runs count for neither)."""
        counted = self.completed + self.failed
        return self.completed / counted if counted else None

    def percentile_s(self, fraction: float) -> float | None:
        """Nearest-rank percentile of the completed runs' durations (None without any)."""
        if not self.durations_s:
            return None
        ordered = sorted(self.durations_s)
        rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
        return ordered[rank]


async def job_window(db: Database, job: str, period: timedelta = timedelta(hours=24)) -> JobWindow:
    """Outcomes and durations of `job`'s runs that ended in the last `period`.

    One indexed range read (`job_ended`), newest first and bounded by `WINDOW_RUN_LIMIT`.
    """
    since = datetime.now(UTC) - period
    cursor = (
        db[Collections.RUNS]
        .find({"job": job, "ended_at": {"$gte": since}}, {"status": 1, "started_at": 1, "ended_at": 1})
        .sort("ended_at", -1)
        .limit(WINDOW_RUN_LIMIT)
    )
    docs = await cursor.to_list(None)
    completed = failed = 0
    durations: list[float] = []
    for doc in reversed(docs):
        status = doc.get("status")
        if status == RunStatus.COMPLETED.value:
            completed += 1
            start, end = as_utc(doc.get("started_at")), as_utc(doc.get("ended_at"))
            if start is not None and end is not None:
                durations.append(max(0.0, (end - start).total_seconds()))
        elif status in (RunStatus.FAILED.value, RunStatus.TIMED_OUT.value):
            failed += 1
    return JobWindow(job, since, len(docs), completed, failed, durations, len(docs) >= WINDOW_RUN_LIMIT)
