"""The hourly market stats snapshot, computed by aggregation inside the database.

Nothing here loads every market into Python: each figure is a `count_documents`, a
`$group` with a single accumulator, or a sorted, limited `find`. Every query also runs
on FerretDB 1.24, which shapes the pipelines:

- `$avg`, `$min`, `$max`, `$cond`, `$gt` and `$multiply` are missing inside `$group`,
  so averages are sums divided by counts, and yes_price × volume_24h is precomputed by
  market_sync as `yes_volume_24h`.
- FerretDB 1.24 evaluates only the FIRST accumulator of a `$group`: it hands the same,
  already exhausted iterator to the next ones, which then return 0 (see its
  `stages/group.go`). So every `$group` here has exactly one accumulator, and several
  figures come out of one pass by grouping on a small key instead, e.g.
  `{active, type of yes_price}`; `$type` is one of the few operators it implements.

A snapshot's `_id` is derived from the run's slot, so a retried run replaces its own
snapshot instead of adding a second one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.names import Collections
from shared.runtime import Checkpoint, no_checkpoint
from shared.store import Database, Document

#: Markets listed in `top_markets`.
TOP_MARKETS = 10
#: Width of the whale-trade window that ends at the run's slot.
WHALE_WINDOW = timedelta(hours=1)
#: BSON type names (as `$type` reports them) that count as a number.
NUMERIC_TYPES = frozenset({"double", "int", "long", "decimal"})


class TopMarket(BaseModel):
    """One of the markets with the largest 24-hour volume."""

    model_config = ConfigDict(frozen=True)

    market: str
    question: str | None = None
    volume_24h: float
    yes_price: float | None = None


class MarketStats(BaseModel):
    """The figures of one snapshot (stored flat, so `pulse stats` and queries stay simple)."""

    model_config = ConfigDict(frozen=True)

    total_markets: int = Field(ge=0)
    active_markets: int = Field(ge=0)
    #: Markets that have a yes price: the denominator of `avg_yes_price`.
    priced_markets: int = Field(ge=0)
    volume_total: float
    volume_24h: float
    #: Plain mean of yes_price over priced markets; None when no market has a price.
    avg_yes_price: float | None
    #: sum(yes_price × volume_24h) / sum(volume_24h) over priced markets; None when that volume is 0.
    vw_yes_price: float | None
    whale_trades_1h: int = Field(ge=0)
    whale_notional_1h: float
    top_markets: list[TopMarket]


def snapshot_id(slot: datetime) -> str:
    """The `_id` of the snapshot of the run at `slot` (one per slot): ISO-8601 UTC, seconds."""
    if slot.tzinfo is None:
        raise ValueError("the slot must be timezone-aware (UTC)")
    return slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ratio(numerator: float, denominator: float) -> float | None:
    """`numerator / denominator`, or None when the denominator is 0 (an empty set has no mean)."""
    return None if denominator == 0 else numerator / denominator


def is_numeric_type(type_name: object) -> bool:
    """True for the `$type` names of numbers (a missing or null field is not a number)."""
    return type_name in NUMERIC_TYPES


def fold_counts(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(total, active, priced) from `$group` rows keyed by `{active, yes_type}` with a count `n`."""
    total = active = priced = 0
    for row in rows:
        key = row["_id"]
        count = int(row["n"])
        total += count
        if key.get("active") is True:
            active += count
        if is_numeric_type(key.get("yes_type")):
            priced += count
    return total, active, priced


def fold_priced_sums(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(sum over all rows, sum over rows of priced markets) from rows keyed by `yes_type`."""
    everything = priced = 0.0
    for row in rows:
        value = float(row["s"])
        everything += value
        if is_numeric_type(row["_id"]):
            priced += value
    return everything, priced


async def _aggregate(db: Database, collection: str, pipeline: list[Document]) -> list[Document]:
    cursor = await db[collection].aggregate(pipeline)
    rows: list[Document] = await cursor.to_list()
    return rows


async def _sum(db: Database, collection: str, field: str, match: Document | None = None) -> float:
    """`$sum` of one field in the database (non-numbers are ignored, as MongoDB does)."""
    pipeline: list[Document] = [{"$match": match}] if match else []
    pipeline.append({"$group": {"_id": None, "s": {"$sum": f"${field}"}}})
    rows = await _aggregate(db, collection, pipeline)
    return float(rows[0]["s"]) if rows else 0.0


async def _market_counts(db: Database) -> tuple[int, int, int]:
    # One pass gives three counts: group on (active, type of yes_price). `$sum: 1` is the
    # only accumulator, so FerretDB evaluates it.
    rows = await _aggregate(
        db,
        Collections.MARKETS,
        [{"$group": {"_id": {"active": "$active", "yes_type": {"$type": "$yes_price"}}, "n": {"$sum": 1}}}],
    )
    return fold_counts(rows)


async def _volume_24h(db: Database) -> tuple[float, float]:
    # Total 24 h volume, and the part of it on priced markets (the weight of the
    # volume-weighted mean), in one pass.
    rows = await _aggregate(
        db,
        Collections.MARKETS,
        [{"$group": {"_id": {"$type": "$yes_price"}, "s": {"$sum": "$volume_24h"}}}],
    )
    return fold_priced_sums(rows)


async def _top_markets(db: Database) -> list[TopMarket]:
    cursor = (
        db[Collections.MARKETS]
        .find({"volume_24h": {"$type": "number"}}, {"question": 1, "volume_24h": 1, "yes_price": 1})
        .sort([("volume_24h", -1), ("_id", 1)])
        .limit(TOP_MARKETS)
    )
    return [
        TopMarket(
            market=str(doc["_id"]),
            question=doc.get("question"),
            volume_24h=float(doc["volume_24h"]),
            yes_price=doc.get("yes_price"),
        )
        async for doc in cursor
    ]


async def compute_stats(db: Database, *, window_end: datetime) -> MarketStats:
    """Compute the figures of a snapshot, in the database.

    Args:
        db: the marketpulse database.
        window_end: end (exclusive) of the one-hour window of whale trades; normally the
            run's slot, so consecutive hourly snapshots cover adjacent hours.

    Returns:
        The figures; an empty database gives zero counts and sums and None averages.
    """
    total, active, priced = await _market_counts(db)
    volume_24h, priced_volume_24h = await _volume_24h(db)
    volume_total = await _sum(db, Collections.MARKETS, "volume_total")
    yes_price_sum = await _sum(db, Collections.MARKETS, "yes_price")
    yes_volume_sum = await _sum(db, Collections.MARKETS, "yes_volume_24h")
    top = await _top_markets(db)

    window: Document = {"traded_at": {"$gte": window_end - WHALE_WINDOW, "$lt": window_end}}
    trades = await db[Collections.WHALE_TRADES].count_documents(window)
    notional = await _sum(db, Collections.WHALE_TRADES, "notional", window) if trades else 0.0

    return MarketStats(
        total_markets=total,
        active_markets=active,
        priced_markets=priced,
        volume_total=volume_total,
        volume_24h=volume_24h,
        avg_yes_price=ratio(yes_price_sum, priced),
        vw_yes_price=ratio(yes_volume_sum, priced_volume_24h),
        whale_trades_1h=trades,
        whale_notional_1h=notional,
        top_markets=top,
    )


async def take_snapshot(
    db: Database,
    *,
    slot: datetime,
    now: datetime,
    retention_days: float,
    run_id: str | None = None,
    checkpoint: Checkpoint = no_checkpoint,
) -> dict[str, Any]:
    """Compute and store the snapshot of `slot`, then delete snapshots past retention.

    Args:
        db: the marketpulse database.
        slot: the run's slot (`request.scheduled_for`); the snapshot's `_id` derives from
            it, so a retried run replaces its snapshot.
        now: the time the snapshot is computed (stored as `computed_at`).
        retention_days: snapshots computed more than this many days before `now` are deleted.
        run_id: stored with the snapshot, to trace it back to its run.
        checkpoint: heartbeat between the steps (the runtime's `ctx.checkpoint`).

    Returns:
        A small summary for the run record and the RunEvent.
    """
    stats = await compute_stats(db, window_end=slot)
    await checkpoint({"step": "computed"})
    snapshot_key = snapshot_id(slot)
    document: Document = {
        "_id": snapshot_key,
        "slot": slot,
        "computed_at": now,
        "run_id": run_id,
        **stats.model_dump(),
    }
    await db[Collections.MARKET_STATS].replace_one({"_id": snapshot_key}, document, upsert=True)
    expired = await db[Collections.MARKET_STATS].delete_many(
        {"computed_at": {"$lt": now - timedelta(days=retention_days)}}
    )
    return {
        "snapshot": snapshot_key,
        "total_markets": stats.total_markets,
        "active_markets": stats.active_markets,
        "whale_trades_1h": stats.whale_trades_1h,
        "expired_snapshots": expired.deleted_count,
    }
