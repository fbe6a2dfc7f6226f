"""whale_sync's domain work: store large trades once each, and note them on their markets.

The window starts at the stored watermark minus an overlap (trades can surface late at
the boundary); every trade is stored under its natural key with `$setOnInsert`, so
reading a trade twice stores it once. The watermark moves only after the trades are
stored: a crash in between re-reads the window, which is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from shared.names import Collections
from shared.providers.base import Provider, RecordError, TradeParse
from shared.providers.sanitize import check_storable
from shared.runtime import Checkpoint
from shared.schemas import WhaleTradeDoc, utcnow
from shared.settings import DEFAULT_STORE_WRITE_BATCH as WRITE_BATCH
from shared.store import Database, Document, batches

log = logging.getLogger(__name__)

#: `_id` of whale_sync's document in `job_state`.
STATE_ID = "whale_sync"
#: How far back the very first run looks (there is no watermark yet).
FIRST_RUN_LOOKBACK = timedelta(hours=1)
MAX_LOGGED_INVALID = 20
#: A trade stamped further ahead than this is corrupt: it would push the watermark past
#: every real trade to come and silently stop ingestion.
MAX_FUTURE = timedelta(hours=1)


@dataclass
class WhaleSyncCounts:
    """What one whale_sync run did (the run summary)."""

    fetched: int = 0
    new: int = 0
    duplicate: int = 0
    invalid: int = 0
    below_threshold: int = 0
    markets_updated: int = 0
    refreshes_requested: int = 0

    def as_summary(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TradeBatch:
    """The fetched trades sorted out (pure): what to store, what was dropped and why."""

    keep: list[WhaleTradeDoc]
    invalid: list[RecordError]
    below_threshold: int
    repeated: int
    newest: datetime | None


def window_start(watermark: datetime | None, overlap_s: float, now: datetime) -> datetime:
    """Where this run's window begins: the watermark minus the overlap, or a first-run lookback."""
    if watermark is None:
        return now - FIRST_RUN_LOOKBACK
    return watermark - timedelta(seconds=overlap_s)


def sort_trades(parsed: list[TradeParse], threshold_usd: float, not_after: datetime) -> TradeBatch:
    """Split fetched trades: valid ones at or above `threshold_usd` (each key once), and the rest.

    Trades stamped after `not_after` count as invalid.
    """
    keep: dict[str, WhaleTradeDoc] = {}
    invalid: list[RecordError] = []
    below = repeated = 0
    newest: datetime | None = None
    for item in parsed:
        if isinstance(item, RecordError):
            invalid.append(item)
            continue
        if item.traded_at > not_after:
            invalid.append(RecordError("trade", item.transaction_hash, "timestamp is in the future"))
            continue
        newest = item.traded_at if newest is None or item.traded_at > newest else newest
        # The provider's CASH filter may count fees in; our threshold is size × price.
        if item.notional < threshold_usd:
            below += 1
        elif item.id in keep:
            repeated += 1  # deep offsets repeat rows upstream
        else:
            keep[item.id] = item
    return TradeBatch(list(keep.values()), invalid, below, repeated, newest)


def latest_per_market(trades: list[WhaleTradeDoc]) -> dict[str, WhaleTradeDoc]:
    """The most recent trade of each market (condition id)."""
    latest: dict[str, WhaleTradeDoc] = {}
    for trade in trades:
        current = latest.get(trade.market)
        if current is None or trade.traded_at > current.traded_at:
            latest[trade.market] = trade
    return latest


#: Requests a market_refresh for each (market, hour of its whale trade); returns how many it asked for.
RequestRefreshes = Callable[[list[tuple[str, datetime]]], Awaitable[int]]


def refresh_keys(trades: list[WhaleTradeDoc]) -> list[tuple[str, datetime]]:
    """Each (market, UTC hour of a whale trade in it) once, sorted: one market_refresh each.

    Keyed by the trade's hour, not the run's, so re-reading a trade in the overlap window
    asks for the same refresh again (and is dropped as a duplicate).
    """
    hours = {(trade.market, trade.traded_at.replace(minute=0, second=0, microsecond=0)) for trade in trades}
    return sorted(hours)


async def read_watermark(db: Database) -> datetime | None:
    """The newest trade time seen by a previous run, or None before the first."""
    state = await db[Collections.JOB_STATE].find_one({"_id": STATE_ID})
    value = state.get("watermark") if state else None
    return value if isinstance(value, datetime) else None


async def store_trades(db: Database, trades: list[WhaleTradeDoc], *, write_batch: int = WRITE_BATCH) -> int:
    """Insert the trades not stored yet, at most `write_batch` per bulk write; return how many were new."""
    operations = []
    for trade in trades:
        document: Document = trade.model_dump(by_alias=True)
        check_storable(document)
        operations.append(UpdateOne({"_id": document["_id"]}, {"$setOnInsert": document}, upsert=True))
    new = 0
    for part in batches(operations, write_batch):
        result = await db[Collections.WHALE_TRADES].bulk_write(part, ordered=False)
        new += result.upserted_count
    return new


async def note_on_markets(
    db: Database, provider: str, trades: list[WhaleTradeDoc], *, write_batch: int = WRITE_BATCH
) -> int:
    """Set `last_whale_at`/`last_whale_notional` on each market whose latest whale is newer.

    At most `write_batch` updates per bulk write.
    """
    latest = latest_per_market(trades)
    operations = [
        UpdateOne(
            {
                "provider": provider,
                "condition_id": condition_id,
                "$or": [{"last_whale_at": {"$lt": trade.traded_at}}, {"last_whale_at": {"$exists": False}}],
            },
            {"$set": {"last_whale_at": trade.traded_at, "last_whale_notional": trade.notional}},
        )
        for condition_id, trade in latest.items()
    ]
    modified = 0
    for part in batches(operations, write_batch):
        result = await db[Collections.MARKETS].bulk_write(part, ordered=False)
        modified += result.modified_count
    return modified


async def advance_watermark(db: Database, newest: datetime, previous: datetime | None, now: datetime) -> None:
    """Move the watermark forward (never back)."""
    if previous is not None and newest <= previous:
        return
    await db[Collections.JOB_STATE].update_one(
        {"_id": STATE_ID}, {"$set": {"watermark": newest, "updated_at": now}}, upsert=True
    )


async def sync_whales(
    db: Database,
    provider: Provider,
    *,
    threshold_usd: float,
    overlap_s: float,
    checkpoint: Checkpoint,
    now: Callable[[], datetime] = utcnow,
    write_batch: int = WRITE_BATCH,
    request_refreshes: RequestRefreshes | None = None,
) -> WhaleSyncCounts:
    """Fetch recent large trades, store each once, and update the markets' whale activity.

    Args:
        db: the database.
        provider: where trades come from.
        threshold_usd: smallest notional (size × price, USD) kept.
        overlap_s: seconds re-read before the watermark.
        checkpoint: the runtime's heartbeat (raises RunCanceled to stop the run).
        now: clock (tests pass a fixed one).
        write_batch: most documents per bulk write (`PULSE_STORE_WRITE_BATCH`).
        request_refreshes: asks for a market_refresh per market and hour of the kept
            trades, after they are stored and before the watermark moves (a crash in
            between asks again, and the repeat is dropped as a duplicate).

    Raises:
        ProviderUnavailable, ProviderRejected, ProviderDataError: from the provider.
    """
    started = now()
    watermark = await read_watermark(db)
    since = window_start(watermark, overlap_s, started)
    parsed = await provider.fetch_trades(since=since, min_notional=threshold_usd)
    await checkpoint({"fetched": len(parsed)})
    batch = sort_trades(parsed, threshold_usd, started + MAX_FUTURE)
    for error in batch.invalid[:MAX_LOGGED_INVALID]:
        log.warning(
            "skipped an invalid trade record",
            extra={"event": "whale_sync.invalid_record", "record_id": error.record_id, "reason": error.reason},
        )
    counts = WhaleSyncCounts(fetched=len(parsed), invalid=len(batch.invalid), below_threshold=batch.below_threshold)
    counts.new = await store_trades(db, batch.keep, write_batch=write_batch)
    counts.duplicate = len(batch.keep) - counts.new + batch.repeated
    counts.markets_updated = await note_on_markets(db, provider.name, batch.keep, write_batch=write_batch)
    if request_refreshes is not None and batch.keep:
        counts.refreshes_requested = await request_refreshes(refresh_keys(batch.keep))
    if batch.newest is not None:
        await advance_watermark(db, batch.newest, watermark, started)
    log.info(
        "whale sync done",
        extra={"event": "whale_sync.done", "since": since.isoformat(), "summary": counts.as_summary()},
    )
    return counts
