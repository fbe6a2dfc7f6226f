"""Backfill: request every slot of a job's schedule in a past window, each exactly once.

`pulse backfill` (and later the dashboard) call these. Each slot is requested under its
own slot run id (`scheduled_run_id`, the id the ticker would have used) with trigger
`backfill`, through `publish_request` (`Nats-Msg-Id` = run id), so:

- a slot whose run record exists, in any state, is not requested again (it ran, runs,
  was skipped or failed: a backfill never repeats a run; `pulse dlq replay` does);
- a slot whose request already waits in JOBS is not requested again either, and a
  repeat that races one is dropped by JetStream's duplicate window;
- so a repeated backfill requests nothing.

Slots are those of the schedule the ticker obeys now (a runtime override included), at or
after `--from` and before `--to` (half-open), all in the past, at most
`MAX_BACKFILL_SLOTS` of them. Backfill requests are `backfill`-triggered, so the runtime
never skips them for overlap (that rule judges `schedule` requests only); with the
default overlap they run one at a time like any other request of the job.

Pacing: the requests are published at the rate of the job's token bucket
(`rate_limit_bucket`), priced at `calls_per_run` tokens per run: as many runs as the
bucket's burst pays for at once, then one run every `calls_per_run * period_s / rate`
seconds. The publisher takes no tokens (the runs take their own when they call the
provider); it only keeps the queue from holding more work than the bucket can serve. A
job without a bucket (or with `calls_per_run` 0) is published without pauses: the window
bound keeps that to `MAX_BACKFILL_SLOTS` requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.js import JetStreamContext

from shared.audit import record_action
from shared.errors import InvalidRequest
from shared.names import Collections
from shared.operations import queued_run_ids
from shared.readmodel.schedules import effective_for, read_override
from shared.readmodel.timetext import iso
from shared.requests import publish_request
from shared.schedules import Schedule
from shared.schemas import JobRequest, Trigger, scheduled_run_id
from shared.settings import RateLimit, Settings
from shared.store import Database

#: Most slots one backfill may request: a day of a one-minute schedule fits; longer
#: windows are split by the operator, so one typo cannot queue months of runs.
MAX_BACKFILL_SLOTS = 1500

_EPSILON = timedelta(microseconds=1)


def window_slots(schedule: Schedule, start: datetime, end: datetime, limit: int = MAX_BACKFILL_SLOTS) -> list[datetime]:
    """The slots of `schedule` at or after `start` and before `end`, oldest first.

    Raises:
        InvalidRequest: the window is empty or backwards, holds no slot, or holds more than `limit`.
    """
    if start >= end:
        raise InvalidRequest(f"--from {iso(start)} is not before --to {iso(end)}: give a window that moves forward")
    slots: list[datetime] = []
    slot = schedule.next_slot(start - _EPSILON)
    while slot < end:
        if len(slots) == limit:
            raise InvalidRequest(
                f"the window holds more than {limit} slots of {schedule.text!r}: split it into smaller windows"
            )
        slots.append(slot)
        slot = schedule.next_slot(slot)
    if not slots:
        raise InvalidRequest(f"no slot of {schedule.text!r} falls in [{iso(start)}, {iso(end)}): widen the window")
    return slots


@dataclass(frozen=True)
class Pacing:
    """How a backfill's requests are spread: `at_once` at the start, then one every `interval_s`."""

    at_once: int
    interval_s: float

    def delay_before(self, index: int) -> float:
        """Seconds to wait before publishing request number `index` (0-based), after the previous one."""
        return 0.0 if index < self.at_once else self.interval_s

    def duration_s(self, count: int) -> float:
        """Seconds from the first publish to the last of `count` requests."""
        return max(0, count - self.at_once) * self.interval_s


def pacing_for(limit: RateLimit | None, calls_per_run: int) -> Pacing:
    """The pace the bucket `limit` sustains at `calls_per_run` tokens per run (no bucket: no pauses)."""
    if limit is None or calls_per_run == 0:
        return Pacing(at_once=MAX_BACKFILL_SLOTS, interval_s=0.0)
    return Pacing(at_once=max(1, limit.burst // calls_per_run), interval_s=calls_per_run * limit.period_s / limit.rate)


@dataclass
class SlotEntry:
    """One slot of the window and what the backfill does (or would do) with it.

    `state`: `ran` (a run record exists; `status` says which), `queued` (its request
    waits in JOBS), `to_request` (dry run), `requested`, or `duplicate` (JetStream dropped
    the publish: the same request was queued meanwhile).
    """

    slot: datetime
    run_id: str
    state: str
    status: str | None = None


@dataclass
class BackfillPlan:
    """A backfill of `job` over [start, end): its slots, and the bucket that paces it."""

    job: str
    schedule: str
    start: datetime
    end: datetime
    slots: list[SlotEntry]
    bucket: str | None
    limit: RateLimit | None
    calls_per_run: int
    dry_run: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def already(self) -> int:
        """Slots not requested because they ran or are queued."""
        return sum(1 for entry in self.slots if entry.state in ("ran", "queued"))

    @property
    def to_request(self) -> int:
        """Slots this backfill requests (or, after it ran, requested or found queued meanwhile)."""
        return len(self.slots) - self.already

    @property
    def calls(self) -> int:
        """Tokens the requested runs are expected to take from the bucket."""
        return self.to_request * self.calls_per_run

    @property
    def pacing(self) -> Pacing:
        return pacing_for(self.limit, self.calls_per_run)

    def as_json(self) -> dict[str, object]:
        return {
            "job": self.job,
            "schedule": self.schedule,
            "from": iso(self.start),
            "to": iso(self.end),
            "dry_run": self.dry_run,
            "slots": [
                {"slot": iso(e.slot), "run_id": e.run_id, "state": e.state, "status": e.status} for e in self.slots
            ],
            "total": len(self.slots),
            "already": self.already,
            "to_request": self.to_request,
            "requested": sum(1 for e in self.slots if e.state == "requested"),
            "duplicates": sum(1 for e in self.slots if e.state == "duplicate"),
            "bucket": self.bucket,
            "calls_per_run": self.calls_per_run,
            "calls": self.calls,
            "pacing": {
                "at_once": self.pacing.at_once,
                "interval_s": self.pacing.interval_s,
                "duration_s": self.pacing.duration_s(self.to_request),
            },
            "notes": self.notes,
        }


async def plan_backfill(
    js: JetStreamContext, db: Database, settings: Settings, job: str, start: datetime, end: datetime, now: datetime
) -> BackfillPlan:
    """Read which slots of [start, end) ran or wait in JOBS; change nothing.

    Raises:
        InvalidRequest: `end` is in the future, `start` is past the run retention (records of
            older runs are deleted, so a backfill there could run a slot twice), the job is
            disabled, or the window is bad (`window_slots`).
    """
    if end > now:
        raise InvalidRequest(
            f"--to {iso(end)} is in the future: backfill requests past slots only (the ticker requests the rest); "
            "give --to now or earlier"
        )
    known_since = now - timedelta(days=settings.runs_retention_days)
    if start < known_since:
        raise InvalidRequest(
            f"--from {iso(start)} is past the run retention "
            f"(PULSE_RUNS_RETENTION_DAYS={settings.runs_retention_days:g}): "
            f"whether those slots ran is no longer known; give --from {iso(known_since)} or later"
        )
    policy = settings.jobs.for_job(job)
    if not policy.enabled:
        raise InvalidRequest(
            f"{job} is disabled (PULSE_JOBS__{job.upper()}__ENABLED=false): it has no schedule to backfill; "
            f"use pulse trigger {job}"
        )
    entry = await read_override(js, settings, job)
    eff = effective_for(settings, job, entry.override)
    slots = window_slots(eff.schedule, start, end)
    ids = [scheduled_run_id(job, slot) for slot in slots]
    statuses = {
        doc["_id"]: str(doc.get("status"))
        async for doc in db[Collections.RUNS].find({"_id": {"$in": ids}}, {"status": 1})
    }
    queued = {run_id async for run_id in queued_run_ids(js, settings.names, job)}
    entries = []
    for slot, run_id in zip(slots, ids, strict=True):
        if run_id in statuses:
            entries.append(SlotEntry(slot, run_id, "ran", statuses[run_id]))
        elif run_id in queued:
            entries.append(SlotEntry(slot, run_id, "queued"))
        else:
            entries.append(SlotEntry(slot, run_id, "to_request"))
    bucket = policy.rate_limit_bucket
    plan = BackfillPlan(
        job=job,
        schedule=eff.schedule.text,
        start=start,
        end=end,
        slots=entries,
        bucket=bucket,
        limit=settings.rate_limits.get(bucket) if bucket else None,
        calls_per_run=policy.calls_per_run,
    )
    if eff.paused:
        plan.notes.append(f"{job} is paused: the backfilled runs still run (pause stops the ticker only)")
    if bucket is None:
        plan.notes.append(
            f"{job} has no rate limit bucket (PULSE_JOBS__{job.upper()}__RATE_LIMIT_BUCKET): published without pauses"
        )
    return plan


async def run_backfill(
    js: JetStreamContext,
    db: Database,
    settings: Settings,
    plan: BackfillPlan,
    *,
    requested_by: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_slot: Callable[[SlotEntry], None] | None = None,
) -> BackfillPlan:
    """Publish the plan's `to_request` slots, paced; record the action in the audit trail.

    `on_slot` sees each slot as it is decided (the CLI prints progress with it).
    """
    plan.dry_run = False
    pacing = plan.pacing
    published = 0
    try:
        for entry in plan.slots:
            if entry.state != "to_request":
                if on_slot is not None:
                    on_slot(entry)
                continue
            delay = pacing.delay_before(published)
            if delay > 0:
                await sleep(delay)
            request = JobRequest(
                run_id=entry.run_id,
                job=plan.job,
                trigger=Trigger.BACKFILL,
                scheduled_for=entry.slot,
                requested_by=requested_by,
            )
            ack = await publish_request(js, settings.names, request)
            entry.state = "duplicate" if ack.duplicate else "requested"
            published += 1
            if on_slot is not None:
                on_slot(entry)
    finally:
        requested = sum(1 for e in plan.slots if e.state == "requested")
        done = all(e.state != "to_request" for e in plan.slots)
        await record_action(
            db,
            who=requested_by,
            source="cli",
            action="backfill",
            target=plan.job,
            outcome="done" if done else "failed",
            detail=f"{requested} of {len(plan.slots)} slots requested ({plan.already} already ran or queued)",
            params={"from": iso(plan.start), "to": iso(plan.end)},
        )
    return plan
