"""The ticker's writes of the slot ledger (`slots`): one entry per job and slot, off the firing path.

An entry's `_id` is the slot's run id (`<job>:<slot UTC>`, `scheduled_run_id`), so every
write is an upsert of one document and two ticker replicas recording the same slot
write one entry. The ticker records two facts only, the ones nobody else knows:

- `requested`: it published the slot's request (a `$set`, so it wins over a `missed`
  written by a replica that looked earlier);
- `missed`: the slot never got a request, with the reason (`MissReason`) and the
  catch-up policy then in force (`$setOnInsert` only: it never overwrites anything).

What became of a requested slot (completed, failed, skipped, canceled) is not written
here: the read model (`shared/readmodel/slots.py`) joins the entry with the run record of
the same id, so the run record stays the one truth about a run.

Writes never hold up a slot: they are queued and written in bulk by a background task.
While the store is unreachable they wait (bounded, oldest dropped first) and are retried
with backoff; the ticker keeps firing, since requests go to NATS, not to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from datetime import datetime

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from services.ticker.slots import Missed
from shared.errors import StoreUnavailable
from shared.names import Collections
from shared.schemas import CatchUp, scheduled_run_id
from shared.store import Database, batches, store_errors

log = logging.getLogger(__name__)

#: Entries kept in memory while the store is away; beyond it the oldest are dropped (logged).
MAX_PENDING = 10_000
_DUPLICATE_KEY = 11000
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0


class SlotLedger:
    """Queues ledger entries and writes them in the background.

    Example:
        ledger = SlotLedger(db, replica="host-1", batch_size=1000)
        ledger.start()
        ledger.requested("whale_sync", slot, at=now, catch_up=False)
        await ledger.flush(timeout_s=5)   # tests: wait until written
        await ledger.stop()
    """

    def __init__(self, db: Database, *, replica: str, batch_size: int) -> None:
        self._collection = db[Collections.SLOTS]
        self._replica = replica
        self._batch_size = batch_size
        self._pending: deque[UpdateOne] = deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

    @property
    def pending(self) -> int:
        """Entries queued or being written, not yet written."""
        return len(self._pending) + self._in_flight

    # -- what the ticker records ---------------------------------------------------
    def requested(self, job: str, slot: datetime, *, at: datetime, catch_up: bool) -> None:
        """The slot's request was published (by this replica)."""
        run_id = scheduled_run_id(job, slot)
        self._queue(
            UpdateOne(
                {"_id": run_id},
                {
                    "$set": {
                        "state": "requested",
                        "run_id": run_id,
                        "requested_at": at,
                        "requested_by": self._replica,
                        "catch_up": catch_up,
                    },
                    "$unset": {"reason": ""},
                    "$setOnInsert": {"job": job, "slot": slot},
                },
                upsert=True,
            )
        )

    def missed(self, job: str, missed: Iterable[Missed], *, at: datetime, policy: CatchUp) -> None:
        """These slots of `job` get no request, each with its reason."""
        for item in missed:
            run_id = scheduled_run_id(job, item.slot)
            entry = {
                "job": job,
                "slot": item.slot,
                "state": "missed",
                "run_id": run_id,
                "reason": item.reason.value,
                "catch_up_policy": policy,
                "recorded_at": at,
                "recorded_by": self._replica,
            }
            self._queue(UpdateOne({"_id": run_id}, {"$setOnInsert": entry}, upsert=True))

    def _queue(self, operation: UpdateOne) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "ticker.ledger_dropped %d entries (the store has been unreachable for long)",
                    self.dropped,
                    extra={"event": "ticker.ledger_dropped"},
                )
        self._pending.append(operation)
        self._idle.clear()
        self._wake.set()

    # -- the writer ----------------------------------------------------------------
    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ticker-ledger")

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued entry is written; False when `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (within `timeout_s`), then stop the writer."""
        if self._task is None:
            return
        if not await self.flush(timeout_s) and self._pending:
            log.warning(
                "ticker.ledger_unwritten %d entries at stop (store unreachable)",
                len(self._pending),
                extra={"event": "ticker.ledger_unwritten"},
            )
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                taken = list(self._pending)
                self._pending.clear()
                self._in_flight = len(taken)
                try:
                    await self._write(taken)
                except (StoreUnavailable, PyMongoError) as exc:
                    self._in_flight = 0
                    self._requeue(taken)
                    self.write_errors += 1
                    log.warning(
                        "ticker.ledger_write_failed %s; retrying in %.1fs",
                        type(exc).__name__,
                        backoff,
                        extra={"event": "ticker.ledger_write_failed"},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(_MAX_BACKOFF_S, backoff * 2)
                    continue
                backoff = _FIRST_BACKOFF_S
                self._in_flight = 0
                self.written += len(taken)
            self._idle.set()

    def _requeue(self, taken: list[UpdateOne]) -> None:
        """Put unwritten entries back in front of newer ones (upserts are idempotent), within the bound."""
        self._pending.extendleft(reversed(taken))
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1

    async def _write(self, operations: list[UpdateOne]) -> None:
        for batch in batches(operations, self._batch_size):
            await self._write_batch(list(batch))

    async def _write_batch(self, operations: list[UpdateOne]) -> None:
        with store_errors("the slot ledger"):
            try:
                await self._collection.bulk_write(operations, ordered=False)
            except BulkWriteError as exc:
                # Two replicas upserting the same new entry at once: one insert loses with a
                # duplicate key. Applied again, it now matches the entry and updates it.
                errors = exc.details.get("writeErrors", [])
                again = [operations[e["index"]] for e in errors if e.get("code") == _DUPLICATE_KEY]
                if len(again) != len(errors):
                    log.error(
                        "ticker.ledger_rejected %d entries: %s",
                        len(errors) - len(again),
                        next(e.get("errmsg", "") for e in errors if e.get("code") != _DUPLICATE_KEY)[:200],
                        extra={"event": "ticker.ledger_rejected"},
                    )
                if again:
                    await self._collection.bulk_write(again, ordered=False)
