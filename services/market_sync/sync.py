"""market_sync's domain work: stream the catalogue into `markets`, writing only what changed.

Per page: parse (done by the provider), fetch the stored content hashes of the page's
markets with one query, upsert the new and changed ones with one unordered bulk write,
refresh `seen_at` of the unchanged ones with one update, then heartbeat. Memory holds at
most two pages (the one being written and the one being fetched), whatever the size of
the catalogue. Only after the listing completed are markets not seen in this run marked
inactive: a listing cut short says nothing about the markets it did not reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

from pymongo import UpdateOne

from shared.names import Collections
from shared.providers.base import MarketParse, Provider, RecordError
from shared.providers.sanitize import check_storable
from shared.schemas import MarketDoc, utcnow
from shared.store import Database, Document

log = logging.getLogger(__name__)

T = TypeVar("T")
Checkpoint = Callable[[dict[str, Any]], Awaitable[object]]
#: Invalid records logged one by one per run; the rest are only counted (a bad upstream
#: deploy can make every record invalid, and 200,000 log lines help nobody).
MAX_LOGGED_INVALID = 20
#: Fields that are bookkeeping, not content: a change in them is not a change of the market.
_BOOKKEEPING = frozenset({"synced_at", "seen_at", "content_hash"})


@dataclass
class MarketSyncCounts:
    """What one market_sync run did (the run summary)."""

    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    deactivated: int = 0
    pages: int = 0
    complete: bool = False

    def as_summary(self) -> dict[str, Any]:
        return asdict(self)


def content_hash(document: Document) -> str:
    """A stable hash of a market's content (bookkeeping fields excluded)."""
    content = {key: value for key, value in document.items() if key not in _BOOKKEEPING}
    encoded = json.dumps(content, sort_keys=True, default=_encode_other, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:32]


def _encode_other(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot hash a {type(value).__name__}")


def market_document(market: MarketDoc) -> Document:
    """The stored form of `market`: its fields, `yes_volume_24h` and `content_hash`.

    `yes_volume_24h` (yes price × 24 h volume, None when either is missing) is stored so
    that stats can compute a volume-weighted price with `$sum` alone (FerretDB has no
    `$multiply` in `$group`).

    Raises:
        UnsafeValue: a value the store would reject slipped through the parser.
    """
    document = market.model_dump(by_alias=True, exclude={"synced_at"})
    yes, volume = market.yes_price, market.volume_24h
    document["yes_volume_24h"] = yes * volume if yes is not None and volume is not None else None
    document["content_hash"] = content_hash(document)
    check_storable(document)
    return document


@dataclass
class PagePlan:
    """What to do with one page: documents to upsert, ids merely seen again."""

    upserts: list[Document]
    unchanged_ids: list[str]
    new_ids: set[str]


def plan_page(documents: list[Document], stored_hashes: dict[str, str | None]) -> PagePlan:
    """Split a page into new or changed documents and unchanged ids (pure)."""
    upserts: list[Document] = []
    unchanged: list[str] = []
    new_ids: set[str] = set()
    for document in documents:
        market_id = document["_id"]
        if market_id not in stored_hashes:
            new_ids.add(market_id)
            upserts.append(document)
        elif stored_hashes[market_id] != document["content_hash"]:
            upserts.append(document)
        else:
            unchanged.append(market_id)
    return PagePlan(upserts, unchanged, new_ids)


def split_parses(page: list[MarketParse]) -> tuple[list[MarketDoc], list[RecordError]]:
    """Valid markets (the last one wins if an id repeats on a page) and per-record errors."""
    valid: dict[str, MarketDoc] = {}
    errors: list[RecordError] = []
    for item in page:
        if isinstance(item, RecordError):
            errors.append(item)
        else:
            valid[item.id] = item
    return list(valid.values()), errors


async def _next(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)


async def prefetched(pages: AsyncIterator[T]) -> AsyncIterator[T]:
    """Yield from `pages` while the next item is already being fetched (at most one ahead)."""
    iterator = aiter(pages)
    pending: asyncio.Future[T] = asyncio.ensure_future(_next(iterator))
    try:
        while True:
            try:
                item = await pending
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(_next(iterator))
            yield item
    finally:
        if not pending.done():
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await pending


class MarketWriter:
    """Writes pages of markets to `markets`; keeps the counts."""

    def __init__(self, db: Database, run_started: datetime) -> None:
        self._markets = db[Collections.MARKETS]
        self._run_started = run_started
        self.counts = MarketSyncCounts()

    async def write_page(self, page: list[MarketParse]) -> None:
        markets, errors = split_parses(page)
        self.counts.pages += 1
        self.counts.fetched += len(page)
        self._note_invalid(errors)
        documents: list[Document] = []
        for market in markets:
            try:
                documents.append(market_document(market))
            except ValueError as exc:  # UnsafeValue: the parser let something through
                self._note_invalid([RecordError("market", market.market_id, str(exc))])
        if not documents:
            return
        ids = [document["_id"] for document in documents]
        stored = {
            found["_id"]: found.get("content_hash")
            async for found in self._markets.find({"_id": {"$in": ids}}, {"content_hash": 1})
        }
        plan = plan_page(documents, stored)
        if plan.upserts:
            stamp = {"synced_at": self._run_started, "seen_at": self._run_started}
            operations = [
                UpdateOne(
                    {"_id": document["_id"]},
                    {"$set": {**{k: v for k, v in document.items() if k != "_id"}, **stamp}},
                    upsert=True,
                )
                for document in plan.upserts
            ]
            result = await self._markets.bulk_write(operations, ordered=False)
            self.counts.inserted += result.upserted_count
            self.counts.updated += len(operations) - result.upserted_count
        if plan.unchanged_ids:
            # Only the liveness stamp: content, `synced_at` and the hash stay as they were.
            await self._markets.update_many(
                {"_id": {"$in": plan.unchanged_ids}}, {"$set": {"seen_at": self._run_started}}
            )
            self.counts.unchanged += len(plan.unchanged_ids)

    def _note_invalid(self, errors: list[RecordError]) -> None:
        for error in errors:
            self.counts.invalid += 1
            if self.counts.invalid <= MAX_LOGGED_INVALID:
                log.warning("market_sync.invalid_record id=%s reason=%s", error.record_id, error.reason)

    async def deactivate_unseen(self, provider: str) -> int:
        """Mark active markets of `provider` not seen in this run inactive; return how many.

        The content hash is cleared so that a market that comes back is written again
        (its stored `active` no longer matches what the hash describes).
        """
        result = await self._markets.update_many(
            {
                "provider": provider,
                "active": True,
                "$or": [{"seen_at": {"$lt": self._run_started}}, {"seen_at": {"$exists": False}}],
            },
            {"$set": {"active": False, "content_hash": None, "vanished_at": self._run_started}},
        )
        return result.modified_count


async def sync_markets(
    db: Database,
    provider: Provider,
    *,
    checkpoint: Checkpoint,
    now: Callable[[], datetime] = utcnow,
) -> MarketSyncCounts:
    """Bring `markets` in line with the provider's catalogue.

    Args:
        db: the database.
        provider: where the catalogue comes from.
        checkpoint: called after every page with the progress so far (the runtime's
            heartbeat; it raises RunCanceled to stop the run between pages).
        now: clock (tests pass a fixed one).

    Returns:
        The counts of the run; `complete` is True when the whole listing was read.

    Raises:
        ProviderUnavailable, ProviderRejected, ProviderDataError: from the provider; the
            pages written before stay written (every write is idempotent).
    """
    started = now()
    # BSON dates keep milliseconds: truncate, or this run's own `seen_at` would compare
    # as older than the run start and every market would be deactivated.
    writer = MarketWriter(db, started.replace(microsecond=started.microsecond // 1000 * 1000))
    async for page in prefetched(provider.iter_market_pages()):
        await writer.write_page(page)
        await checkpoint({"pages": writer.counts.pages, "fetched": writer.counts.fetched})
    writer.counts.complete = True
    writer.counts.deactivated = await writer.deactivate_unseen(provider.name)
    log.info("market_sync.done %s", writer.counts.as_summary())
    return writer.counts
