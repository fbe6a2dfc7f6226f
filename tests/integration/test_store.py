"""MongoDB wiring against a real MongoDB-compatible server."""

from __future__ import annotations

import pytest
from pymongo.errors import DuplicateKeyError

from shared.names import Collections
from shared.schemas import RunRecord, RunStatus, Trigger, utcnow
from shared.store import INDEXES, Database, ensure_indexes


async def test_indexes_are_created_idempotently(db: Database) -> None:
    await ensure_indexes(db)
    await ensure_indexes(db)
    for collection in {c for c, _, _ in INDEXES}:
        names = [index["name"] async for index in await db[collection].list_indexes()]
        expected = sorted(["_id_", *[o["name"] for c, _, o in INDEXES if c == collection]])
        assert sorted(names) == expected


async def test_run_record_round_trip_and_unique_run_id(db: Database) -> None:
    now = utcnow().replace(microsecond=0)
    record = RunRecord(
        _id="stats:manual:abc",
        job="stats",
        trigger=Trigger.MANUAL,
        status=RunStatus.RUNNING,
        started_at=now,
        summary={"markets": 3},
    )
    runs = db[Collections.RUNS]
    await runs.insert_one(record.model_dump(by_alias=True, mode="python"))
    stored = await runs.find_one({"_id": "stats:manual:abc"})
    assert stored is not None
    assert RunRecord.model_validate(stored) == record
    with pytest.raises(DuplicateKeyError):
        await runs.insert_one({"_id": "stats:manual:abc", "job": "stats"})
    assert await runs.count_documents({}) == 1
