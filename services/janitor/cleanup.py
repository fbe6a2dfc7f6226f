"""Retention cleanup: delete run records and whale trades past their retention, in batches.

Each batch takes the `batch_size` smallest expired `_id`s (`find` sorted on `_id`, ids
only, `limit`) and deletes the expired documents in that `_id` range,
`delete_many({<filter>, _id: {$gte: first, $lte: last}})`: exactly that batch, and the
repeated filter spares a document that changed in between. So memory holds one batch of
ids whatever the backlog, no single delete runs long, and the run heartbeats between
batches: millions of documents neither exhaust memory nor make the run look dead. A run
killed midway loses nothing; the next attempt finds what is left.

Why a range and not `_id: {$in: ids}`: FerretDB 1.24 (SQLite) evaluates `$in` against
every document with a linear scan of the list, so deleting 5,000 ids from 200,000 runs
took 41 s, against 13 s for the range (one scan); on MongoDB both walk the `_id` index.
And why batches at all, beyond memory: FerretDB 1.24 fails a delete of more than about
32,000 documents at once ("too many SQL variables").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.names import Collections
from shared.schemas import RunStatus
from shared.settings import Settings
from shared.store import Database, Document

Checkpoint = Callable[[dict[str, Any] | None], Awaitable[None]]

#: Terminal statuses kept for `runs_retention_days`; failures are kept longer, for diagnosis.
ORDINARY_END_STATUSES = (RunStatus.COMPLETED, RunStatus.SKIPPED, RunStatus.CANCELED)
FAILED_END_STATUSES = (RunStatus.FAILED, RunStatus.TIMED_OUT)


@dataclass(frozen=True)
class Retention:
    """How long each kind of history is kept."""

    runs: timedelta
    failed_runs: timedelta
    whale_trades: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        """The retention configured by `PULSE_*_RETENTION_DAYS`."""
        return cls(
            runs=timedelta(days=settings.runs_retention_days),
            failed_runs=timedelta(days=settings.failed_runs_retention_days),
            whale_trades=timedelta(days=settings.whale_trades_retention_days),
        )


@dataclass(frozen=True)
class Sweep:
    """One deletion target: a collection, a filter of what has expired, and a label for counts."""

    label: str
    collection: str
    expired: Document


def sweeps(retention: Retention, now: datetime) -> list[Sweep]:
    """What a cleanup at `now` deletes: documents strictly older than their retention."""
    return [
        Sweep(
            "runs",
            Collections.RUNS,
            {"status": {"$in": [s.value for s in ORDINARY_END_STATUSES]}, "ended_at": {"$lt": now - retention.runs}},
        ),
        Sweep(
            "failed_runs",
            Collections.RUNS,
            {
                "status": {"$in": [s.value for s in FAILED_END_STATUSES]},
                "ended_at": {"$lt": now - retention.failed_runs},
            },
        ),
        Sweep(
            "whale_trades",
            Collections.WHALE_TRADES,
            {"traded_at": {"$lt": now - retention.whale_trades}},
        ),
    ]


async def _no_checkpoint(progress: dict[str, Any] | None = None) -> None:
    return None


async def delete_in_batches(
    db: Database, sweep: Sweep, *, batch_size: int, checkpoint: Checkpoint = _no_checkpoint
) -> int:
    """Delete every document matching `sweep.expired`, `batch_size` at a time.

    Args:
        db: the marketpulse database.
        sweep: what to delete.
        batch_size: ids fetched and deleted per round trip (memory holds one batch).
        checkpoint: called after each batch with the progress so far (a heartbeat;
            it raises `RunCanceled` when the run was canceled).

    Returns:
        How many documents were deleted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size}); set PULSE_CLEANUP_BATCH_SIZE")
    collection = db[sweep.collection]
    deleted = 0
    while True:
        cursor = collection.find(sweep.expired, {"_id": 1}).sort("_id", 1).limit(batch_size)
        ids = [doc["_id"] async for doc in cursor]
        if not ids:
            return deleted
        result = await collection.delete_many({**sweep.expired, "_id": {"$gte": ids[0], "$lte": ids[-1]}})
        deleted += result.deleted_count
        await checkpoint({"sweep": sweep.label, "deleted": deleted})
        if len(ids) < batch_size:
            # A short batch was the last one; skip the extra empty query.
            return deleted


async def clean_up(
    db: Database,
    *,
    retention: Retention,
    now: datetime,
    batch_size: int,
    checkpoint: Checkpoint = _no_checkpoint,
) -> dict[str, int]:
    """Delete everything past its retention.

    Args:
        db: the marketpulse database.
        retention: how long each kind of history is kept.
        now: the reference time; a document exactly at its limit is kept.
        batch_size: documents deleted per batch.
        checkpoint: heartbeat between batches.

    Returns:
        Documents deleted per kind: `runs`, `failed_runs`, `whale_trades`.
    """
    return {
        sweep.label: await delete_in_batches(db, sweep, batch_size=batch_size, checkpoint=checkpoint)
        for sweep in sweeps(retention, now)
    }
