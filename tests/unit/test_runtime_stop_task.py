"""Stopping an attempt's task: a cancel that is lost (swallowed inside a store call) is asked again."""

from __future__ import annotations

import asyncio

from shared.runtime._heartbeat import stop_task


async def test_a_task_that_swallows_its_first_cancels_is_still_stopped() -> None:
    """Before: the runner canceled a timed-out attempt once and waited on it, forever when
    that cancel was lost (PyMongo with timeoutMS on Python 3.11's `asyncio.wait_for`)."""
    cancels_seen = 0
    started, finished = asyncio.Event(), asyncio.Event()

    async def loses_two_cancels() -> None:
        nonlocal cancels_seen
        started.set()
        try:
            while True:
                try:
                    await finished.wait()
                except asyncio.CancelledError:
                    cancels_seen += 1
                    if cancels_seen > 2:
                        raise
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]  # lost, as in the driver
        finally:
            finished.set()

    task = asyncio.create_task(loses_two_cancels())
    await asyncio.wait_for(started.wait(), timeout=5)
    await asyncio.wait_for(stop_task(task, retry_every_s=0.01), timeout=5)

    assert task.cancelled()
    assert cancels_seen == 3


async def test_a_task_that_fails_as_it_stops_is_retrieved_without_a_warning() -> None:
    """Its exception is retrieved by `stop_task`: the caller already decided the outcome."""

    started = asyncio.Event()

    async def fails_on_cancel() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.wait_for(started.wait(), timeout=5)
    await asyncio.wait_for(stop_task(task, retry_every_s=0.01), timeout=5)

    assert isinstance(task.exception(), RuntimeError)
    assert task._log_traceback is False  # type: ignore[attr-defined]  # asyncio logs "never retrieved" otherwise
