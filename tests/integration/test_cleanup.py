"""Retention cleanup against a real database: the edges of each limit, batches, memory."""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from services.janitor.cleanup import Retention, clean_up
from shared.names import Collections
from shared.store import Database

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
RETENTION = Retention(runs=timedelta(days=2), failed_runs=timedelta(days=7), whale_trades=timedelta(days=30))
MARGIN = timedelta(minutes=1)


def run(run_id: str, status: str, ended_at: datetime | None) -> dict[str, Any]:
    return {"_id": run_id, "job": "market_sync", "trigger": "schedule", "status": status, "ended_at": ended_at}


async def ids(db: Database, collection: str) -> set[str]:
    return {doc["_id"] async for doc in db[collection].find({}, {"_id": 1})}


async def test_documents_just_inside_each_retention_are_kept_and_just_outside_deleted(db: Database) -> None:
    runs_limit, failed_limit = NOW - RETENTION.runs, NOW - RETENTION.failed_runs
    await db[Collections.RUNS].insert_many(
        [
            run("completed-in", "completed", runs_limit + MARGIN),
            run("completed-out", "completed", runs_limit - MARGIN),
            run("skipped-out", "skipped", runs_limit - MARGIN),
            run("canceled-out", "canceled", runs_limit - MARGIN),
            # Failures live longer: past the runs limit but inside their own, kept.
            run("failed-in", "failed", runs_limit - timedelta(days=1)),
            run("failed-out", "failed", failed_limit - MARGIN),
            run("timed-out-in", "timed_out", failed_limit + MARGIN),
            run("timed-out-out", "timed_out", failed_limit - MARGIN),
            # Not finished: never deleted, however old.
            run("running-old", "running", None),
            run("retrying-old", "retrying", None),
            # A cancel whose request never came: swept with the failed runs' retention.
            {**run("queued-in", "queued", None), "updated_at": failed_limit + MARGIN},
            {**run("queued-out", "queued", None), "updated_at": failed_limit - MARGIN},
        ]
    )
    # Cancel requests go with the failed runs' retention, whatever became of their run.
    await db[Collections.CANCELS].insert_many(
        [
            {"_id": "cancel-in", "job": "market_sync", "requested_at": failed_limit + MARGIN},
            {"_id": "cancel-out", "job": "market_sync", "requested_at": failed_limit - MARGIN},
        ]
    )
    trades_limit = NOW - RETENTION.whale_trades
    await db[Collections.WHALE_TRADES].insert_many(
        [
            {"_id": "trade-in", "traded_at": trades_limit + MARGIN, "notional": 1.0},
            {"_id": "trade-out", "traded_at": trades_limit - MARGIN, "notional": 1.0},
        ]
    )
    await db[Collections.STEPS].insert_many(
        [
            {"_id": "ended-in:a", "run_id": "ended-in", "run_ended_at": failed_limit + MARGIN},
            {"_id": "ended-out:a", "run_id": "ended-out", "run_ended_at": failed_limit - MARGIN},
            # A workflow asleep for months: its first steps are old, its run has not ended.
            {"_id": "sleeping:a", "run_id": "sleeping", "ended_at": failed_limit - timedelta(days=90)},
        ]
    )
    # The slot ledger goes with the runs' retention, counted from the slot.
    await db[Collections.SLOTS].insert_many(
        [
            {"_id": "slot-in", "job": "market_sync", "state": "missed", "slot": runs_limit + MARGIN},
            {"_id": "slot-out", "job": "market_sync", "state": "requested", "slot": runs_limit - MARGIN},
        ]
    )
    await db[Collections.MARKET_REFRESHES].insert_many(
        [
            {"_id": "market_refresh:chain:in", "written_at": failed_limit + MARGIN},
            {"_id": "market_refresh:chain:out", "written_at": failed_limit - MARGIN},
        ]
    )
    beats: list[dict[str, Any] | None] = []

    async def checkpoint(progress: dict[str, Any] | None = None) -> None:
        beats.append(progress)

    counts = await clean_up(db, retention=RETENTION, now=NOW, batch_size=2, checkpoint=checkpoint)

    assert counts == {
        "runs": 3, "failed_runs": 2, "orphan_cancels": 1, "steps": 1, "cancels": 1, "slots": 1, "budgets": 0,
        "whale_trades": 1, "market_refreshes": 1,
    }  # fmt: skip
    assert await ids(db, Collections.SLOTS) == {"slot-in"}
    assert await ids(db, Collections.STEPS) == {"ended-in:a", "sleeping:a"}
    kept = {"completed-in", "failed-in", "timed-out-in", "running-old", "retrying-old", "queued-in"}
    assert await ids(db, Collections.RUNS) == kept
    assert await ids(db, Collections.CANCELS) == {"cancel-in"}
    assert await ids(db, Collections.WHALE_TRADES) == {"trade-in"}
    assert await ids(db, Collections.MARKET_REFRESHES) == {"market_refresh:chain:in"}
    # Three expired ordinary runs in batches of two: a heartbeat after each batch.
    assert [b for b in beats if b and b["sweep"] == "runs" and "deleted" in b] == [
        {"sweep": "runs", "deleted": 2},
        {"sweep": "runs", "deleted": 3},
    ]


async def test_a_second_cleanup_finds_nothing(db: Database) -> None:
    await db[Collections.RUNS].insert_one(run("old", "completed", NOW - timedelta(days=5)))

    first = await clean_up(db, retention=RETENTION, now=NOW, batch_size=10)
    second = await clean_up(db, retention=RETENTION, now=NOW, batch_size=10)

    assert first["runs"] == 1
    assert second == {
        "runs": 0, "failed_runs": 0, "orphan_cancels": 0, "steps": 0, "cancels": 0, "slots": 0, "budgets": 0,
        "whale_trades": 0, "market_refreshes": 0,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_cleanup_of_200k_old_runs_keeps_memory_bounded(db: Database) -> None:
    """200,000 expired runs are deleted in batches while Python holds one batch of ids at most."""
    total, batch = 200_000, 25_000
    oldest = NOW - timedelta(days=30)
    started = time.perf_counter()
    # Seeding 200,000 runs is test set-up, not a production write: it gets its own deadline
    # (an insert of 25,000 can exceed the client's per-call 10 s on a loaded machine).
    with pymongo.timeout(300):
        for first in range(0, total, batch):
            await db[Collections.RUNS].insert_many(
                [
                    run(f"market_sync:{i:07d}", "completed", oldest + timedelta(seconds=i))
                    for i in range(first, first + batch)
                ],
                ordered=False,
            )
        await db[Collections.RUNS].insert_one(run("recent", "completed", NOW))
    seeded = time.perf_counter()

    tracemalloc.start()
    try:
        counts = await clean_up(db, retention=RETENTION, now=NOW, batch_size=batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    done = time.perf_counter()

    print(f"seed {seeded - started:.1f}s, cleanup {done - seeded:.1f}s, peak Python memory {peak / 2**20:.1f} MiB")
    assert counts["runs"] == total
    assert await ids(db, Collections.RUNS) == {"recent"}
    # One cursor batch of 25,000 ids is a few MiB of Python objects; all 200,000 ids
    # would be about eight times as much.
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
