"""Bounded waiting for tests: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"
) -> T:
    """Await `probe()` until it returns a truthy value; return it, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last value: {last!r})")
