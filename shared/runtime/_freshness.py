"""Freshness targets: alert once when a job's last success is older than its target, and once when fresh again.

The janitor's `watchdog` job calls `check_freshness` every minute. It looks only at the
facts (the last completed run in `runs`, or when the job was first served), never at
why they are so: skipped runs, a stopped ticker, a dead service and failures all age the
data alike. De-duplication is the runtime's `job_state` document of the job
(`runtime:<job>`, shared with `_monitor`): `freshness_missed_for` names the success (or
first-served time) whose age was alerted, and `freshness_open` is cleared by exactly one
conditional update when the job is fresh again, so each miss alerts once and recovers
once, however many janitor replicas check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from nats.js import JetStreamContext

from shared.names import Collections, Names
from shared.runtime._events import publish_alert
from shared.runtime._monitor import last_success, register_job, state_id
from shared.schemas import Alert, AlertKind, utcnow
from shared.settings import JobPolicy
from shared.store import Database


@dataclass(frozen=True)
class Freshness:
    """How old a job's data is against its target."""

    job: str
    target_s: float
    #: The last success, or when the job was first served if it never succeeded; None: neither.
    since: datetime | None
    never_succeeded: bool
    now: datetime

    @property
    def age_s(self) -> float | None:
        return None if self.since is None else (self.now - self.since).total_seconds()

    @property
    def budget_left_s(self) -> float | None:
        """Seconds until the target is missed (negative: missed that long ago); None: no clock yet."""
        age = self.age_s
        return None if age is None else self.target_s - age

    @property
    def missed(self) -> bool:
        left = self.budget_left_s
        return left is not None and left < 0


async def read_freshness(db: Database, job: str, target_s: float, now: datetime | None = None) -> Freshness:
    """The age of `job`'s last success (or, never having one, of its first serving) against `target_s`."""
    now = now or utcnow()
    since = await last_success(db, job)
    never = since is None
    if since is None:
        state = await db[Collections.JOB_STATE].find_one({"_id": state_id(job)}, {"first_seen_at": 1})
        first_seen = state.get("first_seen_at") if state else None
        since = first_seen if isinstance(first_seen, datetime) else None
    return Freshness(job, target_s, since, never, now)


async def check_freshness(
    db: Database,
    js: JetStreamContext,
    names: Names,
    policies: Iterable[tuple[str, JobPolicy]],
    now: datetime | None = None,
) -> dict[str, list[str]]:
    """Raise `freshness_missed` / `freshness_restored` alerts for the jobs with a target.

    Returns:
        The jobs this call alerted, under "missed" and "restored" (for the run summary).
    """
    now = now or utcnow()
    raised: dict[str, list[str]] = {"missed": [], "restored": []}
    for job, policy in policies:
        if policy.freshness_target_s is None:
            continue
        freshness = await read_freshness(db, job, policy.freshness_target_s, now)
        if freshness.missed and await _alert_missed(db, js, names, freshness):
            raised["missed"].append(job)
        elif not freshness.missed and freshness.since is not None and await _alert_restored(db, js, names, freshness):
            raised["restored"].append(job)
    return raised


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _alert_missed(db: Database, js: JetStreamContext, names: Names, freshness: Freshness) -> bool:
    assert freshness.since is not None
    job, since = freshness.job, freshness.since
    await register_job(db, job)  # a no-op when its document exists (it always does once a worker served it)
    taken = await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job), "freshness_missed_for": {"$ne": since}},
        {"$set": {"freshness_missed_for": since, "freshness_open": True, "job": job}},
    )
    if taken.modified_count != 1:
        return False
    never = freshness.never_succeeded
    what = "has never completed a run since it was first served at" if never else "last succeeded at"
    late = timedelta(seconds=round(-(freshness.budget_left_s or 0.0)))
    detail = (
        f"{job} {what} {_stamp(since)}: older than its freshness target of {freshness.target_s:g}s by {late}. "
        f"Run `pulse why {job}` to see what holds it back."
    )
    alert = Alert(job=job, kind=AlertKind.FRESHNESS_MISSED, since=since, detail=detail)
    await publish_alert(js, names, alert, msg_id=f"alert:{job}:freshness:{_stamp(since)}")
    return True


async def _alert_restored(db: Database, js: JetStreamContext, names: Names, freshness: Freshness) -> bool:
    assert freshness.since is not None
    job = freshness.job
    closed = await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job), "freshness_open": True}, {"$set": {"freshness_open": False}}
    )
    if closed.modified_count != 1:
        return False
    detail = (
        f"{job} is within its freshness target of {freshness.target_s:g}s again: "
        f"last success at {_stamp(freshness.since)}"
    )
    alert = Alert(job=job, kind=AlertKind.FRESHNESS_RESTORED, since=freshness.since, detail=detail)
    await publish_alert(js, names, alert, msg_id=f"alert:{job}:freshness:{_stamp(freshness.since)}:restored")
    return True
