"""Alert bookkeeping: failure streaks and staleness, read from `runs`, deduplicated in `job_state`.

Nothing here runs on a successful run's path: the streak and the last success are read
from the run records when needed (after a failed run; periodically for staleness). The
small `job_state` document per job (`_id` = `runtime:<job>`, so it never collides with a
service's own state such as whale_sync's watermark) only remembers which streak and
which stale period were already alerted. A conditional update there lets exactly one
replica raise each alert.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from nats.js import JetStreamContext

from shared.names import Collections, Names
from shared.runtime._events import publish_alert
from shared.schemas import Alert, AlertKind, RunStatus, utcnow
from shared.store import Database

_FAILED = (RunStatus.FAILED.value, RunStatus.TIMED_OUT.value)
#: Outcomes that make or break a failure streak (skipped and canceled runs do neither).
_COUNTED = (RunStatus.COMPLETED.value, *_FAILED)


def state_id(job: str) -> str:
    """The `_id` of the runtime's job_state document of `job`."""
    return f"runtime:{job}"


async def register_job(db: Database, job: str) -> None:
    """Remember when the runtime first served `job` (the stale clock starts there)."""
    await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job)}, {"$setOnInsert": {"job": job, "first_seen_at": utcnow()}}, upsert=True
    )


async def failure_streak(db: Database, job: str, limit: int) -> list[dict[str, Any]]:
    """The most recent failed runs of `job` in a row (newest first), at most `limit`."""
    recent = (
        await db[Collections.RUNS]
        .find({"job": job, "status": {"$in": list(_COUNTED)}})
        .sort("ended_at", -1)
        .limit(limit)
        .to_list(None)
    )
    streak: list[dict[str, Any]] = []
    for doc in recent:
        if doc["status"] not in _FAILED:
            break
        streak.append(doc)
    return streak


async def _take_alert(db: Database, job: str, field: str, key: Any, *, by: str | None = None) -> bool:
    """Claim the alert `key` in `field`: True for one caller, and again for the same `by`.

    `by` (a run id) lets a redelivery of the run that claimed the alert publish it
    again when the first publish failed; the publish's `Nats-Msg-Id` drops the repeat.
    """
    # `alert_open` lets the next success send one recovery message (alert_on_recovery).
    unclaimed: dict[str, Any] = {field: {"$ne": key}}
    claim: dict[str, Any] = {field: key, "job": job, "alert_open": True}
    if by is not None:
        unclaimed = {"$or": [unclaimed, {field: key, f"{field}_by": by}]}
        claim[f"{field}_by"] = by
    result = await db[Collections.JOB_STATE].update_one({"_id": state_id(job), **unclaimed}, {"$set": claim})
    if result.matched_count == 0 and await db[Collections.JOB_STATE].count_documents({"_id": state_id(job)}) == 0:
        await register_job(db, job)
        return await _take_alert(db, job, field, key, by=by)
    return result.matched_count == 1


async def alert_on_failure(
    db: Database,
    js: JetStreamContext,
    names: Names,
    job: str,
    threshold: int,
    error: str | None,
    *,
    run_id: str | None = None,
) -> bool:
    """After a failed run: publish one alert when `threshold` runs in a row have failed.

    The streak is identified by its first failed run, so each streak alerts once, however
    long it grows and however many replicas see it. `run_id` (the failed run) may call
    again after a failed publish: the run that claimed the alert publishes it again,
    under the same `Nats-Msg-Id`, so it still arrives once.
    """
    streak = await failure_streak(db, job, 1000)
    if len(streak) < threshold:
        return False
    first = streak[-1]
    if not await _take_alert(db, job, "alerted_streak", first["_id"], by=run_id):
        return False
    since = first.get("ended_at") or utcnow()
    alert = Alert(
        job=job,
        kind=AlertKind.CONSECUTIVE_FAILURES,
        since=since,
        detail=f"{len(streak)} runs of {job} failed in a row; last error: {(error or 'unknown')[:1500]}",
    )
    await publish_alert(js, names, alert)
    return True


async def last_success(db: Database, job: str) -> datetime | None:
    """When `job` last completed, from its run records."""
    doc = await db[Collections.RUNS].find_one(
        {"job": job, "status": RunStatus.COMPLETED.value}, sort=[("ended_at", -1)]
    )
    value = doc.get("ended_at") if doc else None
    return value if isinstance(value, datetime) else None


async def check_stale(
    db: Database, js: JetStreamContext, names: Names, job: str, stale_after_s: float, now: datetime | None = None
) -> bool:
    """Publish one `stale` (or `never_succeeded`) alert when `job` had no success within `stale_after_s`.

    Returns:
        True when this call raised the alert (one per stale period, across replicas).
    """
    now = now or utcnow()
    since = await last_success(db, job)
    never = since is None
    if since is None:
        state = await db[Collections.JOB_STATE].find_one({"_id": state_id(job)})
        since = state.get("first_seen_at") if state else None
    if not isinstance(since, datetime) or now - since <= timedelta(seconds=stale_after_s):
        return False
    if not await _take_alert(db, job, "stale_alerted_for", since):
        return False
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    if never:
        kind = AlertKind.NEVER_SUCCEEDED
        detail = (
            f"{job} has never completed a run since it was first served at {stamp} (stale after {stale_after_s:g}s)"
        )
    else:
        kind, detail = AlertKind.STALE, f"no run of {job} completed since {stamp} (stale after {stale_after_s:g}s)"
    await publish_alert(js, names, Alert(job=job, kind=kind, since=since, detail=detail))
    return True


async def alert_on_recovery(db: Database, js: JetStreamContext, names: Names, job: str, run_id: str) -> bool:
    """After a completed run: one `recovered` alert if a failure or staleness alert is open.

    One conditional update (by `_id`) closes the open alert, so exactly one replica sends
    it; the run that closed it (`recovered_by`) may send it again after a failed publish,
    under the same `Nats-Msg-Id`.
    """
    result = await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job), "$or": [{"alert_open": True}, {"alert_open": False, "recovered_by": run_id}]},
        {"$set": {"alert_open": False, "recovered_by": run_id}},
    )
    if result.matched_count != 1:
        return False
    alert = Alert(
        job=job, kind=AlertKind.RECOVERED, since=utcnow(), detail=f"{job} is healthy again: {run_id} completed"
    )
    await publish_alert(js, names, alert, msg_id=f"alert:{run_id}:recovered")
    return True
