"""The stats job through the real runtime: one snapshot per slot, a retried slot replaces it."""

from __future__ import annotations

from nats.js import JetStreamContext

from services.stats.__main__ import stats_job
from services.stats.stats import snapshot_id
from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import Worker
from shared.schemas import JobRequest, Trigger, new_run_id, scheduled_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.helpers import wait_for


async def test_runs_of_one_slot_leave_one_snapshot(settings: Settings, js: JetStreamContext, db: Database) -> None:
    # The current hourly slot: an older one would be skipped as overlapping its next slot.
    slot = utcnow().replace(minute=0, second=0, microsecond=0)
    await db[Collections.MARKETS].insert_one(
        {
            "_id": "polymarket:1",
            "question": "Q?",
            "yes_price": 0.5,
            "volume_24h": 10.0,
            "volume_total": 20.0,
            "active": True,
        }
    )
    scheduled = JobRequest(
        run_id=scheduled_run_id("stats", slot),
        job="stats",
        trigger=Trigger.SCHEDULE,
        scheduled_for=slot,
        requested_by="tests",
    )
    # A replay of the same slot (another run id, same slot) must replace, not add.
    replay = JobRequest(
        run_id=new_run_id("stats", Trigger.REPLAY),
        job="stats",
        trigger=Trigger.REPLAY,
        scheduled_for=slot,
        requested_by="tests",
    )
    await db[Collections.RUNS].insert_one(_completed_market_sync())
    worker = Worker(settings, [stats_job])
    await worker.start()
    try:
        for request in (scheduled, replay):
            await publish_request(js, settings.names, request)

        async def both_completed() -> bool:
            done = await db[Collections.RUNS].count_documents({"status": "completed", "job": "stats"})
            return done == 2

        await wait_for(both_completed, timeout_s=60, what="two completed stats runs")
    finally:
        await worker.stop()

    snapshots = await db[Collections.MARKET_STATS].find({}).to_list()
    assert [doc["_id"] for doc in snapshots] == [snapshot_id(slot)]
    assert snapshots[0]["total_markets"] == 1
    assert snapshots[0]["avg_yes_price"] == 0.5
    record = await db[Collections.RUNS].find_one({"_id": scheduled.run_id})
    assert record is not None
    assert record["summary"]["snapshot"] == snapshot_id(slot)


def _completed_market_sync() -> dict[str, object]:
    now = utcnow()
    return {"_id": "market_sync:manual:first", "job": "market_sync", "trigger": "manual", "status": "completed",
            "started_at": now, "ended_at": now}  # fmt: skip


async def test_stats_waits_for_the_first_market_sync(settings: Settings, js: JetStreamContext, db: Database) -> None:
    """Before any market sync completed, stats waits (and says so) instead of counting no markets."""
    request = JobRequest(
        run_id=new_run_id("stats", Trigger.MANUAL), job="stats", trigger=Trigger.MANUAL, scheduled_for=utcnow()
    )
    worker = Worker(settings, [stats_job])
    await worker.start()
    try:
        await publish_request(js, settings.names, request)

        async def waiting() -> bool:
            doc = await db[Collections.RUNS].find_one({"_id": request.run_id})
            return bool(doc and doc["status"] == "running" and doc.get("progress", {}).get("waiting_for"))

        await wait_for(waiting, timeout_s=20, what="stats to wait for the first market sync")
        await db[Collections.MARKETS].insert_one({"_id": "polymarket:1", "question": "Q?", "yes_price": 0.5,
                                                   "volume_24h": 1.0, "volume_total": 2.0, "active": True,
                                                   "yes_volume_24h": 0.5})  # fmt: skip
        await db[Collections.RUNS].insert_one(_completed_market_sync())

        async def moved_on() -> bool:
            doc = await db[Collections.RUNS].find_one({"_id": request.run_id})
            return bool(doc and (doc["status"] != "running" or not doc.get("progress", {}).get("waiting_for")))

        await wait_for(moved_on, timeout_s=20, what="stats to go on after the first market sync")
    finally:
        await worker.stop()
    doc = await db[Collections.RUNS].find_one({"_id": request.run_id})
    assert doc is not None
    assert "waits for the first market sync" not in (doc.get("error") or "")
