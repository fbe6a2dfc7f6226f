"""Heartbeats while a handler runs: `in_progress` on the message, `heartbeat_at` in the record.

`in_progress` resets JetStream's ack wait, so the ack wait can stay short (a dead worker
is noticed quickly) without cutting long runs. Each beat also reads the run's cancel
request (the `cancels` collection, which no beat writes): a cancel ends the attempt at
once (its task is canceled) and the handler's next `ctx.checkpoint()` raises
`RunCanceled`. The loop beats every interval whatever the handler does, so a cancel is
seen within one interval even when the core-NATS hint is missed.

The record's refresh is fenced by the attempt's start token: a beat that finds another
delivery holding the run (this attempt looked dead for longer than the lease) stops the
attempt at once, and the runner records nothing of it (`AttemptTakenOver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol

from shared.runtime import _records as records
from shared.store import Database

log = logging.getLogger(__name__)


class Progressable(Protocol):
    """The part of a JetStream message a heartbeat needs."""

    async def in_progress(self) -> None: ...


class RunControl:
    """Cancel state of one running attempt, shared by the heartbeat, the context and the runner."""

    def __init__(self) -> None:
        self.canceled = False
        #: Another delivery took the run over: the attempt was stopped, its outcome is not recorded.
        self.taken_over = False
        self._task: asyncio.Task[Any] | None = None

    def attach(self, task: asyncio.Task[Any]) -> None:
        """The attempt task to cancel when a cancel request arrives."""
        self._task = task

    def cancel(self) -> None:
        """Mark the run canceled and interrupt its attempt."""
        if not self.canceled:
            self.canceled = True
            self._interrupt()

    def take_over(self) -> None:
        """Another delivery holds the run now: interrupt this attempt, which must record nothing."""
        if not self.taken_over:
            self.taken_over = True
            self._interrupt()

    def _interrupt(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class Heartbeat:
    """Beats every `interval_s` until closed; `beat()` also runs on each check point."""

    def __init__(
        self, msg: Progressable, db: Database, run_id: str, token: str, interval_s: float, control: RunControl
    ) -> None:
        self._msg = msg
        self._db = db
        self._run_id = run_id
        self._token = token
        self._interval_s = interval_s
        self._control = control
        self._task: asyncio.Task[None] | None = None
        self._last_write = time.monotonic()

    async def beat(self, progress: dict[str, Any] | None = None, *, force: bool = False) -> None:
        """Tell JetStream the message is in progress; refresh the record (throttled).

        Raises:
            AttemptTakenOver: another delivery holds the run (the attempt is interrupted too).
        """
        await self._msg.in_progress()
        # Check points may be frequent; the record needs a refresh only a few times an interval.
        if not force and progress is None and time.monotonic() - self._last_write < self._interval_s / 4:
            return
        self._last_write = time.monotonic()
        try:
            canceled = await records.heartbeat(self._db, self._run_id, progress, token=self._token)
        except records.AttemptTakenOver:
            self._control.take_over()
            raise
        if canceled:
            self._control.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.beat(force=True)
            except records.AttemptTakenOver:
                return  # the attempt is interrupted; the worker logs the takeover once
            except Exception as exc:  # a missed beat is survivable; the next one may work
                log.warning(
                    "heartbeat of %s failed: %s",
                    self._run_id,
                    type(exc).__name__,
                    extra={"event": "run.heartbeat_failed", "run_id": self._run_id},
                )

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._loop(), name=f"heartbeat:{self._run_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await stop_task(self._task, self._interval_s)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def stop_task(task: asyncio.Task[Any], retry_every_s: float) -> None:
    """Cancel `task` until it is done, asking again every `retry_every_s`.

    Once is not enough: a cancel that lands inside a store call can be lost (PyMongo
    with timeoutMS on Python 3.11's `asyncio.wait_for`), and waiting on a task that goes
    on would hang the attempt's end forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_every_s)
    if not task.cancelled():
        task.exception()  # retrieved here: the caller decides the outcome, nothing is logged at collection


@contextlib.asynccontextmanager
async def hold_message(msg: Progressable, interval_s: float) -> AsyncIterator[None]:
    """Keep a delivery in progress from its arrival until it is settled, not only while the handler runs.

    The work around an attempt (the start's write, the final record, the events) waits
    on the store and NATS, each bounded by its own deadline, which may be longer than
    the ack wait. Without this, a delivery slowed there is redelivered to a concurrent
    handler, and the run gets a second, overlapping attempt.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):  # NATS away: the ack wait decides, the start's fence protects
                await msg.in_progress()

    task = asyncio.create_task(beat(), name="hold-message")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
