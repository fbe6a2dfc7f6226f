"""Per-job bookkeeping that outlives a run, and the alerts it raises.

One `job_state` document per job (`_id` = `runtime:<job>`, so it never collides with a
service's own state such as whale_sync's watermark) holds the consecutive failure count,
the last success and which stale period was already alerted. Counting with `$inc` makes
exactly one caller see the threshold reached, so replicas raise one alert, not several.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nats.js import JetStreamContext
from pymongo import ReturnDocument

from shared.names import Collections, Names
from shared.runtime.events import publish_alert
from shared.schemas import Alert, AlertKind, utcnow
from shared.store import Database


def state_id(job: str) -> str:
    """The `_id` of the runtime's job_state document of `job`."""
    return f"runtime:{job}"


async def register_job(db: Database, job: str) -> None:
    """Remember when the runtime first served `job` (the stale clock starts there)."""
    now = utcnow()
    await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job)}, {"$setOnInsert": {"job": job, "first_seen_at": now, "consecutive_failures": 0}},
        upsert=True)


async def note_success(db: Database, job: str, at: datetime) -> None:
    """A run completed: the failure streak ends and the stale clock restarts."""
    await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job)}, {"$set": {"job": job, "consecutive_failures": 0, "last_success_at": at}},
        upsert=True)


async def note_failure(db: Database, job: str, at: datetime) -> tuple[int, datetime]:
    """A run failed: return the streak length (including it) and when the streak began."""
    doc = await db[Collections.JOB_STATE].find_one_and_update(
        {"_id": state_id(job)}, {"$inc": {"consecutive_failures": 1}, "$set": {"job": job, "last_failure_at": at}},
        upsert=True, return_document=ReturnDocument.AFTER)
    count = int(doc["consecutive_failures"]) if doc else 1
    if count == 1:
        await db[Collections.JOB_STATE].update_one({"_id": state_id(job)}, {"$set": {"failing_since": at}})
        return count, at
    since = doc.get("failing_since", at) if doc else at
    return count, since


async def alert_on_failure(db: Database, js: JetStreamContext, names: Names, job: str, threshold: int,
                           error: str | None) -> bool:
    """Count a failed run; publish one alert when the streak reaches `threshold`."""
    count, since = await note_failure(db, job, utcnow())
    if count != threshold:
        return False
    alert = Alert(job=job, kind=AlertKind.CONSECUTIVE_FAILURES, since=since,
                  detail=f"{count} runs of {job} failed in a row; last error: {(error or 'unknown')[:1500]}")
    await publish_alert(js, names, alert)
    return True


async def last_success(db: Database, job: str) -> datetime | None:
    """When `job` last completed, as recorded by the runtime."""
    doc = await db[Collections.JOB_STATE].find_one({"_id": state_id(job)})
    value = doc.get("last_success_at") if doc else None
    return value if isinstance(value, datetime) else None


async def check_stale(db: Database, js: JetStreamContext, names: Names, job: str, stale_after_s: float,
                      now: datetime | None = None) -> bool:
    """Publish one `stale` alert when `job` had no success within `stale_after_s`.

    Returns:
        True when this call raised the alert (one per stale period, across replicas).
    """
    now = now or utcnow()
    doc = await db[Collections.JOB_STATE].find_one({"_id": state_id(job)})
    if not doc:
        return False
    since = doc.get("last_success_at") or doc.get("first_seen_at")
    if not isinstance(since, datetime) or now - since <= timedelta(seconds=stale_after_s):
        return False
    claimed = await db[Collections.JOB_STATE].update_one(
        {"_id": state_id(job), "stale_alerted_for": {"$ne": since}}, {"$set": {"stale_alerted_for": since}})
    if claimed.modified_count != 1:
        return False
    detail = (f"no run of {job} completed since {since.isoformat()} "
              f"(stale after {stale_after_s:g}s)")
    await publish_alert(js, names, Alert(job=job, kind=AlertKind.STALE, since=since, detail=detail))
    return True
