"""The hourly market stats snapshot, computed by aggregation inside the database.

Nothing here loads every market into Python: the market figures come from one `$group`
over `markets` (counts, sums, `$avg`, and yes_price × volume_24h by `$multiply`), the
top markets from a sorted, limited `find`, and the whale figures from one `$group` over
the window's trades.

The top markets' `find` is narrowed by a volume floor taken from the previous snapshot
(`volume_floor`): if at least `TOP_MARKETS` markets have a 24-hour volume at or above the
floor, the top markets are all among them, so the narrowed query gives exactly the same
answer; otherwise the query runs again without the floor. On MongoDB both are walks of
the `volume_24h` index. The embedded store (mongo-java-server) uses no index for a sort
and compares whole documents field by field: sorting 200,000 markets took 2.6 s there,
the narrowed query about 0.15 s (docs/benchmarks.md).

FerretDB 1.24 (the optional local store) cannot run these pipelines: it lacks `$avg`,
`$cond` and `$multiply` in `$group` and evaluates only the first accumulator of a group.
The stats job fails there with its NotImplemented error; docs/decisions.md lists this
among FerretDB's limits. (Until issue 11 every `$group` here had one accumulator to fit
it, which took seven passes and a product precomputed by market_sync.)

A snapshot's `_id` is derived from the run's slot, so a retried run replaces its own
snapshot instead of adding a second one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.names import Collections
from shared.runtime import Checkpoint, no_checkpoint
from shared.store import Database, Document, store_deadline

#: Markets listed in `top_markets`.
TOP_MARKETS = 10
#: The volume floor is this fraction of the previous snapshot's last top market's volume:
#: the top markets' 24-hour volumes may fall by up to 10 % in an hour and the narrowed
#: query still finds them all; a larger fall costs one unnarrowed query, never a wrong answer.
FLOOR_HEADROOM = 0.9
#: Width of the whale-trade window that ends at the run's slot.
WHALE_WINDOW = timedelta(hours=1)
#: True when a market has a yes price. market_sync stores a number or null, and numbers sort
#: above null in BSON order; a missing field is not above null either. (`$isNumber` and the
#: `$type` expression would say it more directly, but mongo-java-server 1.47 has neither.)
_HAS_YES_PRICE: Document = {"$gt": ["$yes_price", None]}
#: Deadline of one snapshot's aggregations (passes over `markets` and the hour's whale
#: trades), which on a large catalogue exceed the client's per-call deadline: 100 s stays
#: inside the stats attempt's 120 s, so a hung store fails as unavailable.
STATS_DEADLINE_S = 100.0


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


async def _aggregate(db: Database, collection: str, pipeline: list[Document]) -> list[Document]:
    cursor = await db[collection].aggregate(pipeline)
    rows: list[Document] = await cursor.to_list()
    return rows


async def _market_figures(db: Database) -> Document:
    """Counts and sums over every market, in one pass; an empty collection gives zeros."""
    rows = await _aggregate(
        db,
        Collections.MARKETS,
        [
            {
                "$group": {
                    "_id": None,
                    "total": {"$sum": 1},
                    "active": {"$sum": {"$cond": [{"$eq": ["$active", True]}, 1, 0]}},
                    "priced": {"$sum": {"$cond": [_HAS_YES_PRICE, 1, 0]}},
                    "volume_total": {"$sum": "$volume_total"},
                    "volume_24h": {"$sum": "$volume_24h"},
                    # `$avg` and `$sum` skip nulls and missing fields, and a product with a null is null.
                    "avg_yes_price": {"$avg": "$yes_price"},
                    "priced_volume_24h": {"$sum": {"$cond": [_HAS_YES_PRICE, "$volume_24h", 0]}},
                    "yes_volume_24h": {"$sum": {"$multiply": ["$yes_price", "$volume_24h"]}},
                }
            }
        ],
    )
    return rows[0] if rows else {}


async def _whale_figures(db: Database, window: Document) -> tuple[int, float]:
    """(trades, total notional) in the window."""
    rows = await _aggregate(
        db,
        Collections.WHALE_TRADES,
        [{"$match": window}, {"$group": {"_id": None, "n": {"$sum": 1}, "notional": {"$sum": "$notional"}}}],
    )
    return (int(rows[0]["n"]), float(rows[0]["notional"])) if rows else (0, 0.0)


async def _top_markets(db: Database, volume_floor: float | None) -> list[TopMarket]:
    if volume_floor is not None:
        narrowed = await _markets_by_volume(db, {"$gte": volume_floor})
        if len(narrowed) == TOP_MARKETS:
            return narrowed
    return await _markets_by_volume(db, {"$type": "number"})


async def _markets_by_volume(db: Database, volume: Document) -> list[TopMarket]:
    """The `TOP_MARKETS` markets of largest 24-hour volume among those whose volume matches `volume`."""
    cursor = (
        db[Collections.MARKETS]
        .find({"volume_24h": volume}, {"question": 1, "volume_24h": 1, "yes_price": 1})
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


def volume_floor(previous: MarketStats | None) -> float | None:
    """The floor that narrows the top markets' query, from the previous snapshot (None: no floor)."""
    if previous is None or len(previous.top_markets) < TOP_MARKETS:
        return None
    return previous.top_markets[-1].volume_24h * FLOOR_HEADROOM


async def previous_snapshot(db: Database, *, before: datetime) -> MarketStats | None:
    """The figures of the latest snapshot of a slot before `before`, or None."""
    document = await db[Collections.MARKET_STATS].find_one({"slot": {"$lt": before}}, sort=[("slot", -1)])
    if document is None:
        return None
    try:
        return MarketStats.model_validate(document)
    except ValueError:  # a snapshot of an older shape: no floor, the unnarrowed query is exact
        return None


async def compute_stats(db: Database, *, window_end: datetime, previous: MarketStats | None = None) -> MarketStats:
    """Compute the figures of a snapshot, in the database.

    Args:
        db: the marketpulse database.
        window_end: end (exclusive) of the one-hour window of whale trades; normally the
            run's slot, so consecutive hourly snapshots cover adjacent hours.
        previous: the previous snapshot's figures, whose top markets give the volume floor
            that narrows this snapshot's top-markets query (the result is the same without).

    Returns:
        The figures; an empty database gives zero counts and sums and None averages.

    Raises:
        StoreUnavailable: the store did not answer within `STATS_DEADLINE_S`.
    """
    with store_deadline(STATS_DEADLINE_S, "stats aggregation"):
        return await _compute_stats(db, window_end=window_end, previous=previous)


async def _compute_stats(db: Database, *, window_end: datetime, previous: MarketStats | None) -> MarketStats:
    markets = await _market_figures(db)
    top = await _top_markets(db, volume_floor(previous))
    window: Document = {"traded_at": {"$gte": window_end - WHALE_WINDOW, "$lt": window_end}}
    trades, notional = await _whale_figures(db, window)
    avg_yes_price = markets.get("avg_yes_price")
    return MarketStats(
        total_markets=int(markets.get("total", 0)),
        active_markets=int(markets.get("active", 0)),
        priced_markets=int(markets.get("priced", 0)),
        volume_total=float(markets.get("volume_total", 0.0)),
        volume_24h=float(markets.get("volume_24h", 0.0)),
        avg_yes_price=None if avg_yes_price is None else float(avg_yes_price),
        vw_yes_price=ratio(float(markets.get("yes_volume_24h", 0.0)), float(markets.get("priced_volume_24h", 0.0))),
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
    previous = await previous_snapshot(db, before=slot)
    stats = await compute_stats(db, window_end=slot, previous=previous)
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
