"""market_sync under injected faults: retried transient errors, permanent outages, unsafe records."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from services.market_sync.__main__ import market_sync
from services.market_sync.sync import sync_markets
from shared.errors import ProviderDataError, ProviderRejected, ProviderUnavailable
from shared.names import Collections
from shared.providers import NoLimit, PolymarketProvider, make_http_client
from shared.providers.sanitize import check_storable
from shared.providers.simprocess import simulator_process
from shared.providers.simulator import INVALID_MARKET_KINDS, MESSY_MARKET_KINDS, record_kind
from shared.requests import publish_request
from shared.runtime import Worker
from shared.schemas import DeadLetter
from shared.settings import RetryPolicy, Settings
from shared.store import Database
from tests.helpers import wait_for
from tests.integration.test_runtime_support import collect, policy, request_for, terminal_run

SEED = 11


async def no_checkpoint(progress: dict[str, Any]) -> None:
    assert progress["pages"] >= 1


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(settings) as client:
        yield client


async def sim_stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, Any] = (await client.get(f"{url}/_sim/stats")).json()
        return stats


async def test_injected_5xx_and_429_are_retried_and_the_run_completes(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    faults = ["markets:5xx=0.2", "markets:429=0.15"]
    with simulator_process(markets=200, seed=SEED, faults=faults, extra=["--retry-after-s", "0.05"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=25, http_attempts=8)
        counts = await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)
        stats = await sim_stats(sim.url)
    assert counts.complete
    assert (counts.inserted, counts.invalid) == (200, 0)
    assert stats["faults_served"]["markets:5xx"] > 0
    assert stats["faults_served"]["markets:429"] > 0
    assert (
        stats["requests"]["markets"]
        == 8 + stats["faults_served"]["markets:5xx"] + stats["faults_served"]["markets:429"]
    )
    assert await db[Collections.MARKETS].count_documents({}) == 200


async def test_slow_and_malformed_answers_are_retried(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    faults = ["markets:slow=0.2", "markets:malformed=0.2"]
    with simulator_process(markets=100, seed=SEED, faults=faults, extra=["--slow-s", "3"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=20, http_timeout_s=0.5, http_attempts=8)
        counts = await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)
        stats = await sim_stats(sim.url)
    assert (counts.complete, counts.inserted) == (True, 100)
    assert stats["faults_served"]["markets:slow"] > 0
    assert stats["faults_served"]["markets:malformed"] > 0


async def test_a_permanent_outage_ends_in_provider_unavailable_after_the_quick_retries(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    with simulator_process(markets=50, seed=SEED, faults=["markets:5xx=1"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, http_attempts=3)
        with pytest.raises(ProviderUnavailable, match=r"/markets/keyset failed after 3 tries: HTTP 503"):
            await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)
        stats = await sim_stats(sim.url)
        assert stats["requests"]["markets"] == 3, (stats["requests"], stats["faults_served"])
    assert await db[Collections.MARKETS].count_documents({}) == 0


async def test_a_long_retry_after_is_handed_to_the_runtime_instead_of_waited_out(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    with simulator_process(markets=50, seed=SEED, faults=["markets:429=1"], extra=["--retry-after-s", "30"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, http_attempts=4)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as caught:
            await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)
        assert time.monotonic() - started < 5
        assert caught.value.delay_s == 30
        assert (await sim_stats(sim.url))["requests"]["markets"] == 1


async def test_a_refused_request_is_permanent_and_not_retried(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    with simulator_process(markets=10, seed=SEED) as sim:
        settings = make_settings(
            polymarket_gamma_url=f"{sim.url}/wrong-prefix", http_attempts=4, polymarket_api_key="s3cret-key"
        )
        with pytest.raises(ProviderRejected, match="HTTP 404") as caught:
            await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)
    assert "s3cret-key" not in str(caught.value)


async def test_a_body_that_is_never_json_is_a_data_error(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    with simulator_process(markets=10, seed=SEED, faults=["markets:malformed=1"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, http_attempts=2)
        with pytest.raises(ProviderDataError, match="not JSON on 2 tries"):
            await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)


async def test_records_that_would_break_the_store_never_reach_it(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    """Every record is spoiled: invalid ones are counted and skipped, messy ones stored clean."""
    markets = 90
    kinds = [record_kind(SEED, "markets", index, 1.0) for index in range(markets)]
    assert {"unsafe_keys", "nan_volume", "nested_arrays", "control_chars"} <= set(kinds)
    with simulator_process(markets=markets, seed=SEED, faults=["markets:bad_records=1"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=30)
        counts = await sync_markets(db, PolymarketProvider(settings, http, NoLimit()), checkpoint=no_checkpoint)
    invalid = sum(kind in INVALID_MARKET_KINDS for kind in kinds)
    assert (counts.invalid, counts.inserted) == (invalid, markets - invalid)
    assert markets - invalid == sum(kind in MESSY_MARKET_KINDS for kind in kinds) > 0
    async for doc in db[Collections.MARKETS].find({}):
        check_storable(doc)
        assert "a.b" not in doc
        assert "nested" not in doc
        assert "\x00" not in doc["question"]
        assert "\x07" not in doc["question"]


async def test_a_permanent_outage_through_the_worker_ends_failed_with_a_dead_letter(
    make_settings: Any, js: JetStreamContext, db: Database
) -> None:
    """The job as deployed (handler, runtime, NATS, store) against a simulator that always answers 503."""
    with simulator_process(markets=10, seed=SEED, faults=["markets:5xx=1"]) as sim:
        settings: Settings = make_settings(polymarket_gamma_url=sim.url, http_attempts=2)
        spec = dataclasses.replace(
            market_sync, policy=policy(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0))
        )
        worker = Worker(settings, [spec])
        await worker.start()
        try:
            request = request_for("market_sync")
            await publish_request(js, settings.names, request)
            doc = await wait_for(lambda: terminal_run(db, request.run_id), timeout_s=30, what="market_sync to fail")
            await worker.run_until_idle(timeout_s=15)
        finally:
            await worker.stop(timeout_s=5)
        requests_seen = (await sim_stats(sim.url))["requests"]["markets"]
    assert doc["status"] == "failed"
    assert doc["attempt_count"] == 2
    assert "HTTP 503" in doc["error"]
    assert requests_seen == 4  # 2 attempts × 2 quick tries
    letters = await collect(js, settings.names.dlq_subject("market_sync"), settings.names.dlq_stream, 1)
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0])
    assert (letter.run_id, letter.reason, letter.attempts) == (request.run_id, "exhausted", 2)
