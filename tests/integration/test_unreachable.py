"""An unreachable server gives a clear error naming the URL (never its password), quickly."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared.bus import connect_nats
from shared.errors import BusUnavailable, StoreUnavailable
from shared.localstack import free_port
from shared.store import connect_store


async def test_unreachable_nats_fails_fast_with_redacted_url(make_settings: Any) -> None:
    port = free_port()
    settings = make_settings(nats_url=f"nats://ops:hunter2@127.0.0.1:{port}", nats_connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as info:
        await connect_nats(settings, name="test")
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"nats://ops:***@127.0.0.1:{port}" in message
    assert "hunter2" not in message
    assert "PULSE_NATS_URL" in message


async def test_unreachable_mongo_fails_fast_with_redacted_url(make_settings: Any) -> None:
    port = free_port()
    settings = make_settings(mongo_url=f"mongodb://ops:hunter2@127.0.0.1:{port}/", mongo_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await connect_store(settings)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"mongodb://ops:***@127.0.0.1:{port}/" in message
    assert "hunter2" not in message
    assert "PULSE_MONGO_URL" in message
