"""market_sync's domain work: stream the catalogue into `markets`, writing only what changed.

Pages are parsed by the provider and buffered into chunks of `CHUNK_MARKETS`. Per chunk:
fetch the stored content hashes with one query, insert the new markets with one
unordered `insert_many`, update the changed ones with one unordered bulk write, and
refresh `seen_at` of the unchanged ones with one update. A heartbeat follows every page.

While chunks turn out to be mostly new (a first sync, a catalogue that grew), a chunk is
inserted first and only the markets the store already holds (duplicate-key errors) go
through the hash lookup: on FerretDB 1.24 (SQLite) that lookup is a scan of the whole
collection (only `{"_id": x}` is pushed down to SQL), while `insert_many` costs the same
at any size, so a first sync is linear instead of quadratic. Measured there at 40,000
markets: `insert_many` of 1,000 in 30 ms, a `$in` lookup of 1,000 in 3.3 s; an update
or delete of one market by `_id` in ~130 ms (growing with the collection), so deleting
and re-inserting changed markets would gain nothing. On MongoDB both paths use indexes.
Memory holds one chunk and one page in flight, whatever the size of the catalogue.
Only after the listing completed are markets not seen in this run marked inactive: a
listing cut short says nothing about the markets it did not reach.

Every write is bounded: a chunk holds at most `PULSE_STORE_WRITE_BATCH` markets, so no
insert, bulk write or update names more than that many documents, and the writes of one
chunk share one deadline (`CHUNK_DEADLINE_S`) instead of the client's per-call one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from shared.names import Collections
from shared.providers.base import MarketParse, Provider, RecordError
from shared.providers.sanitize import check_storable
from shared.runtime import Checkpoint
from shared.schemas import MarketDoc, utcnow
from shared.settings import DEFAULT_STORE_WRITE_BATCH
from shared.store import Database, Document, store_deadline

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Invalid records logged one by one per run; the rest are only counted (a bad upstream
#: deploy can make every record invalid, and 200,000 log lines help nobody).
MAX_LOGGED_INVALID = 20
#: Markets written per chunk (see MarketWriter): bounds memory, amortizes collection scans.
#: The default of `PULSE_STORE_WRITE_BATCH`; tests pass smaller ones.
CHUNK_MARKETS = DEFAULT_STORE_WRITE_BATCH
#: Deadline of one chunk's writes (a lookup, an insert, a bulk write, an update, each of at
#: most one chunk). Measured worst case 3.3 s (the `$in` lookup of 1,000 on FerretDB at
#: 40,000 markets); 60 s leaves room for a slow disk and stays well inside market_sync's
#: 240 s attempt, so a hung store fails the attempt long before the attempt times out.
CHUNK_DEADLINE_S = 60.0
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
    """The stored form of `market`: its fields and `content_hash`.

    Raises:
        UnsafeValue: a value the store would reject slipped through the parser.
    """
    document = market.model_dump(by_alias=True, exclude={"synced_at"})
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
    """Writes pages of markets to `markets` in chunks; keeps the counts.

    Pages are buffered up to `chunk_size` markets and written together: on FerretDB 1.24
    (SQLite) an `$in` query or update scans the whole collection, so one scan per chunk
    instead of one per page is what keeps a large catalogue fast, and `expect_new`
    (insert first, look up only the duplicates) skips that scan altogether while the
    chunks are mostly new. The buffer is bounded by `chunk_size`, not by the catalogue,
    so memory stays flat.
    """

    def __init__(
        self, db: Database, run_started: datetime, chunk_size: int = CHUNK_MARKETS, *, expect_new: bool = False
    ) -> None:
        self._markets = db[Collections.MARKETS]
        self._run_started = run_started
        self._chunk_size = chunk_size
        self._buffer: dict[str, Document] = {}
        #: Insert the next chunk before looking anything up (see the module docstring).
        #: Follows the last chunk: True while most of its markets were new.
        self.expect_new = expect_new
        self.counts = MarketSyncCounts()

    async def write_page(self, page: list[MarketParse]) -> None:
        """Buffer one page; write the buffer once it holds `chunk_size` markets."""
        markets, errors = split_parses(page)
        self.counts.pages += 1
        self.counts.fetched += len(page)
        self._note_invalid(errors)
        for market in markets:
            try:
                document = market_document(market)
            except ValueError as exc:  # UnsafeValue: the parser let something through
                self._note_invalid([RecordError("market", market.market_id, str(exc))])
                continue
            self._buffer[document["_id"]] = document
            if len(self._buffer) >= self._chunk_size:  # inside the loop: a chunk never exceeds the bound
                await self.flush()

    async def flush(self) -> None:
        """Write the buffered markets: insert new, update changed, stamp unchanged as seen.

        Raises:
            StoreUnavailable: the store did not answer within `CHUNK_DEADLINE_S`.
        """
        documents, self._buffer = list(self._buffer.values()), {}
        if not documents:
            return
        with store_deadline(CHUNK_DEADLINE_S, "market_sync chunk"):
            await self._write_chunk(documents)

    async def _write_chunk(self, documents: list[Document]) -> None:
        stamp = {"synced_at": self._run_started, "seen_at": self._run_started}
        if self.expect_new:
            inserted_before, chunk = self.counts.inserted, len(documents)
            documents = await self._insert([{**document, **stamp} for document in documents])
            self.expect_new = (self.counts.inserted - inserted_before) * 2 > chunk
            if not documents:
                return
        ids = [document["_id"] for document in documents]
        stored = {
            found["_id"]: found.get("content_hash")
            async for found in self._markets.find({"_id": {"$in": ids}}, {"content_hash": 1})
        }
        plan = plan_page(documents, stored)
        new = [{**document, **stamp} for document in plan.upserts if document["_id"] in plan.new_ids]
        changed = [document for document in plan.upserts if document["_id"] not in plan.new_ids]
        changed += await self._insert(new)
        if len(plan.new_ids) * 2 > len(documents):
            self.expect_new = True
        if changed:
            operations = [
                UpdateOne(
                    {"_id": document["_id"]},
                    {"$set": {**{k: v for k, v in document.items() if k != "_id"}, **stamp}},
                    upsert=True,
                )
                for document in changed
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

    async def _insert(self, documents: list[Document]) -> list[Document]:
        """Insert new markets in one batch (far cheaper than upserts); return those that already existed."""
        if not documents:
            return []
        try:
            result = await self._markets.insert_many(documents, ordered=False)
            self.counts.inserted += len(result.inserted_ids)
            return []
        except BulkWriteError as exc:
            # Someone stored some of them since we looked: write those as updates instead.
            duplicates = {error["index"] for error in exc.details.get("writeErrors", []) if error.get("code") == 11000}
            if len(duplicates) != len(exc.details.get("writeErrors", [])):
                raise
            # Counted from the errors, not `nInserted`: mongo-java-server 1.47 reports every
            # document of an unordered insert as inserted, duplicates included. With only
            # duplicate-key errors, the rest were inserted, on MongoDB as there.
            self.counts.inserted += len(documents) - len(duplicates)
            return [documents[index] for index in sorted(duplicates)]

    def _note_invalid(self, errors: list[RecordError]) -> None:
        for error in errors:
            self.counts.invalid += 1
            if self.counts.invalid <= MAX_LOGGED_INVALID:
                log.warning(
                    "skipped an invalid market record",
                    extra={"event": "market_sync.invalid_record", "record_id": error.record_id, "reason": error.reason},
                )

    async def deactivate_unseen(self, provider: str) -> int:
        """Mark active markets of `provider` not seen in this run inactive; return how many.

        The content hash is cleared so that a market that comes back is written again
        (its stored `active` no longer matches what the hash describes). At most one
        chunk of markets per update: a catalogue that vanished at once is not one unbounded
        write. Each update repeats the filter, so a market seen since the lookup stays.
        """
        unseen = {
            "provider": provider,
            "active": True,
            "$or": [{"seen_at": {"$lt": self._run_started}}, {"seen_at": {"$exists": False}}],
        }
        deactivated = 0
        while True:
            with store_deadline(CHUNK_DEADLINE_S, "market_sync deactivation"):
                ids = [doc["_id"] async for doc in self._markets.find(unseen, {"_id": 1}).limit(self._chunk_size)]
                if not ids:
                    return deactivated
                result = await self._markets.update_many(
                    {**unseen, "_id": {"$in": ids}},
                    {"$set": {"active": False, "content_hash": None, "vanished_at": self._run_started}},
                )
            deactivated += result.modified_count
            if result.modified_count == 0:  # every one was seen meanwhile: nothing is left to do
                return deactivated


async def sync_markets(
    db: Database,
    provider: Provider,
    *,
    checkpoint: Checkpoint,
    now: Callable[[], datetime] = utcnow,
    chunk_size: int = CHUNK_MARKETS,
) -> MarketSyncCounts:
    """Bring `markets` in line with the provider's catalogue.

    Args:
        db: the database.
        provider: where the catalogue comes from.
        checkpoint: called after every page with the progress so far (the runtime's
            heartbeat; it raises RunCanceled to stop the run between pages).
        now: clock (tests pass a fixed one).
        chunk_size: markets written together (tests pass small ones to cross chunks).

    Returns:
        The counts of the run; `complete` is True when the whole listing was read.

    Raises:
        ProviderUnavailable, ProviderRejected, ProviderDataError: from the provider; the
            pages written before stay written (every write is idempotent).
    """
    started = now()
    # BSON dates keep milliseconds: truncate, or this run's own `seen_at` would compare
    # as older than the run start and every market would be deactivated.
    # An empty store (for this provider) means a first sync: start with insert-first.
    # `find_one` stops at the first match, so this is cheap on FerretDB too.
    empty = await db[Collections.MARKETS].find_one({"provider": provider.name}, {"_id": 1}) is None
    writer = MarketWriter(
        db, started.replace(microsecond=started.microsecond // 1000 * 1000), chunk_size, expect_new=empty
    )
    async for page in prefetched(provider.iter_market_pages()):
        await writer.write_page(page)
        await checkpoint({"pages": writer.counts.pages, "fetched": writer.counts.fetched})
    await writer.flush()
    writer.counts.complete = True
    writer.counts.deactivated = await writer.deactivate_unseen(provider.name)
    log.info("market sync done", extra={"event": "market_sync.done", "summary": writer.counts.as_summary()})
    return writer.counts
