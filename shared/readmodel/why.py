"""Why isn't a job running? Facts the system already has, turned into named blockers.

Two steps, so the decision is unit-tested with plain values:

1. `read_facts` reads (never writes) what says whether a job can run: its effective
   schedule (settings + the `schedules` bucket), the ticker's last claimed slot (the
   `ticker` bucket), its JetStream consumer (requests waiting, in flight, redelivered,
   and pull requests waiting: a worker bound to it), its runs (running, retrying, the
   latest finished), its dead letters, and its rate limit bucket.
2. `decide(facts)` runs every check of `BLOCKER_CHECKS` (pure functions of the facts);
   each blocker it finds says what to do. With none, the job is either running or about
   to (`nothing blocks it`) or simply waiting for its next slot (`not_due`).

Checks that need facts of their own (an upstream quota) go in `EXTRA_CHECKS`: one async
function `(sources, job, now) -> Blocker | None` each, run after the pure checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from shared.names import JOB_SERVICE, Collections
from shared.readmodel.budgets import quota_exhausted
from shared.readmodel.deadletters import count_by_job
from shared.readmodel.schedules import effective_for, read_override
from shared.readmodel.status import QueueInfo, queue_info
from shared.readmodel.timetext import as_utc, human_seconds, iso
from shared.runtime import RateLimiter
from shared.schemas import RunStatus
from shared.settings import RateLimit, Settings
from shared.store import Database

#: How late the ticker may be with a slot before `pulse why` calls it stalled: its loop
#: wakes at least every second and claims at the slot, so ten seconds is no jitter.
TICKER_GRACE_S = 10.0
#: Pause before a second look at a consumer that showed no pull request.
PULL_GAP_S = 0.25
#: Finished runs read to tell a dead-letter streak.
RECENT_RUNS = 5


@dataclass(frozen=True)
class Blocker:
    """One reason the job does not run now, and what to do about it."""

    kind: str
    detail: str
    action: str
    until: datetime | None = None


@dataclass(frozen=True)
class RunFact:
    """The parts of a run record the checks read."""

    run_id: str
    status: str
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    next_attempt_at: datetime | None = None
    attempt_count: int = 0
    error: str | None = None


#: The job's durable consumer, as `pulse status` reads it.
ConsumerFacts = QueueInfo


@dataclass
class Facts:
    """Everything the checks need about one job, read at `now`."""

    job: str
    now: datetime
    schedule: str
    enabled: bool = True
    paused: bool = False
    paused_by: str | None = None
    paused_at: datetime | None = None
    #: The latest slot that may fire now (None: paused, disabled, or before a resume fence).
    due_slot: datetime | None = None
    #: The first slot after the ticker's last claimed slot (None: the ticker never claimed one).
    slot_after_claimed: datetime | None = None
    next_fire: datetime | None = None
    claimed_slot: datetime | None = None
    claim_published: bool = True
    claimed_at: datetime | None = None
    consumer: ConsumerFacts | None = None
    max_running: int = 1
    running: list[RunFact] = field(default_factory=list)
    retrying: list[RunFact] = field(default_factory=list)
    #: Finished runs, newest first.
    recent: list[RunFact] = field(default_factory=list)
    dead_letters: int = 0
    bucket: str | None = None
    bucket_limit: RateLimit | None = None
    bucket_tokens: float | None = None
    ticker_grace_s: float = TICKER_GRACE_S


Check = Callable[[Facts], Blocker | None]


# -- the checks ---------------------------------------------------------------------


def disabled(facts: Facts) -> Blocker | None:
    if facts.enabled:
        return None
    return Blocker(
        "disabled",
        "disabled in settings: the ticker never requests it",
        f"set PULSE_JOBS__{facts.job.upper()}__ENABLED=true and restart the ticker; "
        f"pulse trigger {facts.job} runs it once",
    )


def paused(facts: Facts) -> Blocker | None:
    if not facts.paused:
        return None
    by = f" by {facts.paused_by}" if facts.paused_by else ""
    at = f" (changed {iso(facts.paused_at)})" if facts.paused_at else ""
    return Blocker(
        "paused", f"paused{by}{at}: the ticker requests none of its slots", f"pulse schedule resume {facts.job}"
    )


def ticker_stalled(facts: Facts) -> Blocker | None:
    """The ticker has not claimed (or not published) a slot well past its time."""
    if facts.due_slot is None:
        return None
    grace = timedelta(seconds=facts.ticker_grace_s)
    expected = facts.due_slot if facts.slot_after_claimed is None else facts.slot_after_claimed
    todo = f"check the ticker (python -m services.ticker: its /readyz and logs); pulse trigger {facts.job} runs it now"
    if expected <= facts.due_slot and facts.now - expected > grace:
        last = f"its last claimed slot is {iso(facts.claimed_slot)}" if facts.claimed_slot else "it never claimed one"
        late = human_seconds((facts.now - expected).total_seconds())
        return Blocker(
            "ticker_stalled",
            f"the ticker has not claimed the slot of {iso(expected)} ({late} late); {last}",
            todo,
        )
    if (
        not facts.claim_published
        and facts.claimed_at is not None
        and facts.claimed_slot is not None
        and facts.now - max(facts.claimed_at, facts.claimed_slot) > grace
    ):
        return Blocker(
            "ticker_stalled",
            f"the ticker claimed the slot of {iso(facts.claimed_slot)} but never confirmed its publish",
            todo,
        )
    return None


def overlap(facts: Facts) -> Blocker | None:
    """Runs at the job's limit, and requests waiting behind them."""
    if len(facts.running) < facts.max_running or facts.consumer is None or facts.consumer.waiting == 0:
        return None
    oldest = min(facts.running, key=lambda run: run.started_at or facts.now)
    since = f" since {iso(oldest.started_at)}" if oldest.started_at else ""
    return Blocker(
        "overlap",
        f"{oldest.run_id} is still running{since} and at most {facts.max_running} run at once; "
        f"{facts.consumer.waiting} request(s) wait behind it",
        f"wait for it (pulse run {oldest.run_id}), or pulse cancel {oldest.run_id}",
    )


def no_worker(facts: Facts) -> Blocker | None:
    """Nothing pulls the job's requests: no consumer, or no pull request waiting and nothing running."""
    service = JOB_SERVICE.get(facts.job, facts.job)
    start = f"start its service: python -m services.{service} (in Kubernetes: its Deployment's pods)"
    if facts.consumer is None:
        return Blocker("no_worker", "its consumer does not exist: no worker of it has ever started", start)
    if facts.consumer.pull_requests > 0 or facts.running:
        return None
    waiting = f"; {facts.consumer.waiting} request(s) wait" if facts.consumer.waiting else ""
    return Blocker("no_worker", f"no worker is bound to its consumer (no pull request waiting){waiting}", start)


def pending_redelivery(facts: Facts) -> Blocker | None:
    """Runs that failed an attempt and wait for their redelivery (or redelivered requests no record explains)."""
    if not facts.retrying:
        return _unrecorded_redelivery(facts)
    soonest = min(facts.retrying, key=lambda run: run.next_attempt_at or facts.now)
    when = f" at {iso(soonest.next_attempt_at)}" if soonest.next_attempt_at else ""
    error = f" ({soonest.error})" if soonest.error else ""
    more = f"; {len(facts.retrying)} run(s) retrying" if len(facts.retrying) > 1 else ""
    return Blocker(
        "pending_redelivery",
        f"{soonest.run_id} failed attempt {soonest.attempt_count}{error}; its next attempt is{when}{more}",
        f"wait for the retry; pulse run {soonest.run_id} shows every attempt, pulse cancel {soonest.run_id} stops it",
        until=soonest.next_attempt_at,
    )


def _unrecorded_redelivery(facts: Facts) -> Blocker | None:
    """Requests redelivered with no run retrying: deliveries put back before an attempt started.

    The runtime naks a delivery it cannot start (the store or NATS unreachable) with a
    backoff, without spending an attempt, so no record says `retrying`.
    """
    consumer = facts.consumer
    if consumer is None or consumer.redelivered == 0 or facts.running:
        return None
    return Blocker(
        "pending_redelivery",
        f"{consumer.redelivered} request(s) were delivered more than once and wait for redelivery "
        "without a run retrying: workers could not start them",
        "check the workers' logs (events run.deferred, run.publish_deferred) and that the store and NATS answer",
    )


def dead_lettered(facts: Facts) -> Blocker | None:
    """The latest runs failed for good and left dead letters."""
    streak = 0
    for run in facts.recent:
        if run.status not in (RunStatus.FAILED.value, RunStatus.TIMED_OUT.value):
            break
        streak += 1
    if streak == 0 or facts.dead_letters == 0:
        return None
    newest = facts.recent[0]
    error = f": {newest.error}" if newest.error else ""
    return Blocker(
        "dead_lettered",
        f"the last {streak} run(s) failed and were dead-lettered ({facts.dead_letters} letter(s) held); "
        f"newest {newest.run_id}{error}",
        f"fix the cause (pulse run {newest.run_id}), then pulse dlq replay --all --job {facts.job}",
    )


def rate_limited(facts: Facts) -> Blocker | None:
    """The job's token bucket holds less than one token."""
    if facts.bucket is None or facts.bucket_limit is None or facts.bucket_tokens is None:
        return None
    if facts.bucket_tokens >= 1:
        return None
    limit = facts.bucket_limit
    refill_s = (1 - facts.bucket_tokens) * limit.period_s / limit.rate
    return Blocker(
        "rate_limited",
        f"rate limit bucket {facts.bucket} is empty ({facts.bucket_tokens:.2f} tokens; "
        f"{limit.rate:g} per {limit.period_s:g}s); a token is back in {human_seconds(refill_s)}",
        "wait: runs take tokens as the bucket refills; if it stays empty, other jobs share it "
        "or PULSE_RATE_LIMITS is too tight",
        until=facts.now + timedelta(seconds=refill_s),
    )


#: Every pure check, in the order their blockers are listed. Add one function to add a blocker.
BLOCKER_CHECKS: list[Check] = [
    disabled,
    paused,
    ticker_stalled,
    overlap,
    no_worker,
    pending_redelivery,
    dead_lettered,
    rate_limited,
]


def not_due(facts: Facts) -> Blocker | None:
    """Idle and waiting for its next slot: the answer when nothing else is wrong."""
    busy = facts.running or (facts.consumer is not None and (facts.consumer.waiting or facts.consumer.in_flight))
    if busy or facts.next_fire is None:
        return None
    wait = human_seconds(max(0.0, (facts.next_fire - facts.now).total_seconds()))
    return Blocker(
        "not_due",
        f"its next slot is not due yet: {iso(facts.next_fire)} (in {wait})",
        f"wait, or pulse trigger {facts.job} to run it now",
        until=facts.next_fire,
    )


def decide(facts: Facts, checks: list[Check] | None = None) -> list[Blocker]:
    """The blockers the facts show; `not_due` only when nothing else blocks the job."""
    found = [blocker for check in (checks or BLOCKER_CHECKS) if (blocker := check(facts)) is not None]
    if found:
        return found
    waiting = not_due(facts)
    return [waiting] if waiting is not None else []


# -- reading the facts ---------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Where the facts come from (what `EXTRA_CHECKS` read too)."""

    js: JetStreamContext
    db: Database
    settings: Settings


ExtraCheck = Callable[[Sources, str, datetime], Awaitable[Blocker | None]]


async def quota_spent(sources: Sources, job: str, now: datetime) -> Blocker | None:
    """An upstream quota the job calls is spent for this period (the runtime defers its runs)."""
    block = await quota_exhausted(sources.db, sources.settings, job, now)
    if block is None:
        return None
    return Blocker(
        "quota_exhausted",
        block.detail,
        f"wait for the reset at {iso(block.until)}, or raise the {block.upstream} quota in PULSE_QUOTAS "
        "if the provider allows more; see `pulse budgets`",
        until=block.until,
    )


#: Checks that read their own facts, run after `BLOCKER_CHECKS`: one `async def (sources, job, now)`.
EXTRA_CHECKS: list[ExtraCheck] = [quota_spent]


async def read_facts(sources: Sources, job: str, now: datetime, *, ticker_grace_s: float = TICKER_GRACE_S) -> Facts:
    """Read every fact the checks use about `job` (reads only)."""
    js, db, settings = sources.js, sources.db, sources.settings
    names = settings.names
    policy = settings.jobs.for_job(job)
    override = (await read_override(js, settings, job)).override
    eff = effective_for(settings, job, override)
    facts = Facts(
        job=job,
        now=now,
        schedule=eff.schedule.text,
        enabled=eff.enabled,
        paused=eff.paused,
        paused_by=override.updated_by if override is not None and eff.paused else None,
        paused_at=override.updated_at if override is not None and eff.paused else None,
        due_slot=eff.due_slot(now),
        next_fire=eff.next_fire(now),
        max_running=policy.max_running,
        ticker_grace_s=ticker_grace_s,
    )
    await _read_ticker(js, settings, facts, eff.schedule.next_slot)
    facts.consumer = await queue_info(js, settings, job)
    await _read_runs(db, facts)
    if facts.consumer is not None and facts.consumer.pull_requests == 0 and not facts.running:
        # An idle worker renews its pull request when the previous one expires (every
        # few seconds): one sample can fall in that gap. A second look tells a gap from
        # no worker at all.
        await asyncio.sleep(PULL_GAP_S)
        facts.consumer = await queue_info(js, settings, job)
    facts.dead_letters = (await count_by_job(js, names)).get(job, 0)
    if policy.rate_limit_bucket is not None:
        facts.bucket = policy.rate_limit_bucket
        facts.bucket_limit = settings.rate_limits[facts.bucket]
        kv = await js.key_value(names.ratelimit_bucket)
        facts.bucket_tokens = await RateLimiter(kv, dict(settings.rate_limits), clock=now.timestamp).peek(facts.bucket)
    return facts


async def _read_ticker(
    js: JetStreamContext, settings: Settings, facts: Facts, next_slot: Callable[[datetime], datetime]
) -> None:
    """The job's entry in the `ticker` bucket: its last claimed slot, and whether it was published."""
    try:
        kv = await js.key_value(settings.names.ticker_bucket)
        entry = await kv.get(facts.job)
        state = json.loads(entry.value or b"{}")
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError, ValueError):
        return
    claimed = as_utc(datetime.fromisoformat(state["slot"])) if state.get("slot") else None
    facts.claimed_slot = claimed
    facts.claim_published = bool(state.get("published", True))
    facts.claimed_at = as_utc(datetime.fromisoformat(state["claimed_at"])) if state.get("claimed_at") else None
    facts.slot_after_claimed = next_slot(claimed) if claimed is not None else None


def _run_fact(doc: dict[str, Any]) -> RunFact:
    return RunFact(
        run_id=str(doc["_id"]),
        status=str(doc.get("status")),
        started_at=as_utc(doc.get("started_at")),
        heartbeat_at=as_utc(doc.get("heartbeat_at")),
        next_attempt_at=as_utc(doc.get("next_attempt_at")),
        attempt_count=int(doc.get("attempt_count") or 0),
        error=doc.get("error"),
    )


async def _read_runs(db: Database, facts: Facts) -> None:
    runs = db[Collections.RUNS]
    active = [RunStatus.RUNNING.value, RunStatus.RETRYING.value]
    async for doc in runs.find({"job": facts.job, "status": {"$in": active}}):
        run = _run_fact(doc)
        (facts.running if run.status == RunStatus.RUNNING.value else facts.retrying).append(run)
    finished = [s.value for s in RunStatus if s.is_terminal]
    cursor = runs.find({"job": facts.job, "status": {"$in": finished}}).sort("ended_at", -1).limit(RECENT_RUNS)
    facts.recent = [_run_fact(doc) async for doc in cursor]


# -- the answer ------------------------------------------------------------------------


@dataclass
class Why:
    """The answer for one job: its blockers (empty: nothing blocks it), and what it is doing."""

    job: str
    checked_at: datetime
    blockers: list[Blocker]
    doing: str

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "checked_at": iso(self.checked_at),
            "blocked": any(b.kind != "not_due" for b in self.blockers),
            "doing": self.doing,
            "blockers": [{**asdict(b), "until": iso(b.until)} for b in self.blockers],
        }


def doing(facts: Facts) -> str:
    """One line on what the job does right now."""
    if facts.running:
        run = facts.running[0]
        return f"running: {run.run_id}" + (f" since {iso(run.started_at)}" if run.started_at else "")
    if facts.consumer is not None and facts.consumer.waiting:
        return f"{facts.consumer.waiting} request(s) queued"
    if facts.retrying:
        return f"{len(facts.retrying)} run(s) waiting to retry"
    return "idle"


async def explain(sources: Sources, job: str, now: datetime, *, ticker_grace_s: float = TICKER_GRACE_S) -> Why:
    """Read the facts of `job` and name what blocks it (`pulse why`, the dashboard)."""
    facts = await read_facts(sources, job, now, ticker_grace_s=ticker_grace_s)
    blockers = [b for b in decide(facts) if b.kind != "not_due"]
    for check in EXTRA_CHECKS:
        extra = await check(sources, job, now)
        if extra is not None:
            blockers.append(extra)
    if not blockers:
        blockers = decide(facts)  # not_due, or nothing
    return Why(job, now, blockers, doing(facts))
