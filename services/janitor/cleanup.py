"""Retention cleanup: delete run records, workflow steps, cancel requests, slot ledger entries,
past quota periods and whale trades past their retention, in batches.

One sorted pass over the expired `_id`s (read `batch_size` at a time, kept only as
range bounds) cuts them into ranges of `batch_size` documents; each range is then
deleted with `delete_many({<filter>, _id: {$gte: first, $lte: last}})`, and the run
heartbeats between deletes. So memory holds one cursor batch whatever the backlog, no
single delete runs long, and millions of documents neither exhaust memory nor make the
run look dead. A run killed midway loses nothing; the next attempt finds what is left.
The id pass is one scan for all batches: on FerretDB 1.24 (no index use here) each
query is a full scan, so a find per batch would double the cost.

Why a range and not `_id: {$in: ids}`: FerretDB 1.24 (SQLite) evaluates `$in` against
every document with a linear scan of the list, so deleting 5,000 ids from 200,000 runs
took 41 s, against 13 s for the range (one scan); on MongoDB both walk the `_id` index.
And why batches at all, beyond memory: FerretDB 1.24 fails a delete of more than about
32,000 documents at once ("too many SQL variables"), and on the embedded store (the
default local one) a delete holds the collection's write lock until it ends, so one
statement over a large backlog would stall every other writer of `runs`. The range stays
because it costs no more than `$in` on the embedded store and MongoDB (docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.names import Collections
from shared.runtime import Checkpoint, no_checkpoint
from shared.schemas import RunStatus
from shared.settings import Settings
from shared.store import Database, Document, store_deadline

#: Terminal statuses kept for `runs_retention_days`; failures are kept longer, for diagnosis.
ORDINARY_END_STATUSES = (RunStatus.COMPLETED, RunStatus.SKIPPED, RunStatus.CANCELED)
FAILED_END_STATUSES = (RunStatus.FAILED, RunStatus.TIMED_OUT)
#: Deadline of the scan for expired ids of one collection (one read of the ids, in `_id`
#: order, with heartbeats between cursor batches): 600 s leaves most of cleanup's 1800 s
#: attempt for the deletes.
SCAN_DEADLINE_S = 600.0
#: Deadline of one delete of at most `PULSE_CLEANUP_BATCH_SIZE` (30,000) documents.
BATCH_DEADLINE_S = 120.0


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
        # A cancel recorded for a run whose request never arrived (a mistyped run id, or a
        # request that was purged) stays `queued`; it goes with the failed runs' retention.
        Sweep(
            "orphan_cancels",
            Collections.RUNS,
            {"status": RunStatus.QUEUED.value, "updated_at": {"$lt": now - retention.failed_runs}},
        ),
        # A workflow's step journal goes with the longest run retention, counted from its
        # run's end (steps of a run still sleeping or waiting are never stamped, so kept).
        Sweep(
            "steps",
            Collections.STEPS,
            {"run_ended_at": {"$lt": now - retention.failed_runs}},
        ),
        # Cancel requests (`cancels`) outlive their run's end by design (they are never
        # updated); they go with the longest run retention.
        Sweep(
            "cancels",
            Collections.CANCELS,
            {"requested_at": {"$lt": now - retention.failed_runs}},
        ),
        # The slot ledger goes with the runs' retention, counted from the slot: beyond it
        # the runs it would be joined with are gone too (pulse slots looks back a day).
        Sweep(
            "slots",
            Collections.SLOTS,
            {"slot": {"$lt": now - retention.runs}},
        ),
        # An upstream's budget of a period that ended (its reset passed) is only history;
        # it goes with the longest run retention, counted from the reset.
        Sweep(
            "budgets",
            Collections.BUDGETS,
            {"resets_at": {"$lt": now - retention.failed_runs}},
        ),
        Sweep(
            "whale_trades",
            Collections.WHALE_TRADES,
            {"traded_at": {"$lt": now - retention.whale_trades}},
        ),
        # market_refresh's merged results (one per run) go with the longest run retention,
        # like the run's step journal.
        Sweep(
            "market_refreshes",
            Collections.MARKET_REFRESHES,
            {"written_at": {"$lt": now - retention.failed_runs}},
        ),
    ]


async def expired_ranges(
    db: Database, sweep: Sweep, *, batch_size: int, checkpoint: Checkpoint = no_checkpoint
) -> list[tuple[Any, Any]]:
    """The `_id` ranges (first, last) that each hold `batch_size` expired documents (the last fewer).

    One pass over the expired ids in `_id` order, read `batch_size` at a time and kept
    only as range bounds: memory is one cursor batch plus two ids per range.
    """
    ranges: list[tuple[Any, Any]] = []
    first: Any = None
    last: Any = None
    in_range = 0
    with store_deadline(SCAN_DEADLINE_S, f"cleanup scan of {sweep.collection}"):
        cursor = db[sweep.collection].find(sweep.expired, {"_id": 1}).sort("_id", 1).batch_size(batch_size)
        async for doc in cursor:
            last = doc["_id"]
            if in_range == 0:
                first = last
            in_range += 1
            if in_range == batch_size:
                ranges.append((first, last))
                in_range = 0
                await checkpoint({"sweep": sweep.label, "scanned": len(ranges) * batch_size})
    if in_range:
        ranges.append((first, last))
    return ranges


async def delete_in_batches(
    db: Database, sweep: Sweep, *, batch_size: int, checkpoint: Checkpoint = no_checkpoint
) -> int:
    """Delete every document matching `sweep.expired`, `batch_size` at a time.

    Args:
        db: the marketpulse database.
        sweep: what to delete.
        batch_size: documents per delete (and ids per cursor batch).
        checkpoint: called after each batch with the progress so far (a heartbeat;
            it raises `RunCanceled` when the run was canceled).

    Returns:
        How many documents were deleted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size}); set PULSE_CLEANUP_BATCH_SIZE")
    deleted = 0
    for first, last in await expired_ranges(db, sweep, batch_size=batch_size, checkpoint=checkpoint):
        # The filter is repeated: only documents still expired go, and a document that
        # expired since the scan and falls in the range goes too (it is past retention).
        with store_deadline(BATCH_DEADLINE_S, f"cleanup batch of {sweep.collection}"):
            result = await db[sweep.collection].delete_many({**sweep.expired, "_id": {"$gte": first, "$lte": last}})
        deleted += result.deleted_count
        await checkpoint({"sweep": sweep.label, "deleted": deleted})
    return deleted


async def clean_up(
    db: Database,
    *,
    retention: Retention,
    now: datetime,
    batch_size: int,
    checkpoint: Checkpoint = no_checkpoint,
) -> dict[str, int]:
    """Delete everything past its retention.

    Args:
        db: the marketpulse database.
        retention: how long each kind of history is kept.
        now: the reference time; a document exactly at its limit is kept.
        batch_size: documents deleted per batch.
        checkpoint: heartbeat between batches.

    Returns:
        Documents deleted per kind: `runs`, `failed_runs`, `orphan_cancels` (queued
        records of cancels whose request never came), `steps`, `cancels`, `slots`, `budgets` (upstream quota
        periods that ended), `whale_trades`.
    """
    return {
        sweep.label: await delete_in_batches(db, sweep, batch_size=batch_size, checkpoint=checkpoint)
        for sweep in sweeps(retention, now)
    }
