"""`--wait --timeout` is a deadline around every wait: a store that never answers cannot hold it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.cli.jobs import wait_for_run


class _SilentCollection:
    async def find_one(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()  # the store took the query and never answers


class _SilentStore:
    def __getitem__(self, name: str) -> _SilentCollection:
        return _SilentCollection()


class _Conns:
    db = _SilentStore()


async def test_wait_returns_at_its_deadline_while_the_store_hangs() -> None:
    started = time.monotonic()
    record = await wait_for_run(_Conns(), "stats:manual:x", "stats", 0.5)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert record is None
    assert 0.5 <= elapsed < 2.0
