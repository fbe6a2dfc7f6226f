"""whale_sync against the simulator (a real process) and a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.market_sync.sync import sync_markets
from services.whale_sync.whales import STATE_ID, sync_whales
from shared.names import Collections
from shared.providers import NoLimit, PolymarketProvider, make_http_client
from shared.providers.simprocess import simulator_process
from shared.providers.simulator import INVALID_TRADE_KINDS, record_kind
from shared.settings import Settings
from shared.store import Database

SEED = 5
THRESHOLD = 10_000.0
RATE = 0.1


async def heartbeat(progress: dict[str, Any]) -> None:
    assert progress


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(settings) as client:
        yield client


async def whales_served(url: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every valid served trade at or above the threshold, by its identifying fields (parser-independent)."""
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{url}/_sim/stats")).json()
        raw = (await client.get(f"{url}/trades", params={"limit": 10_000})).json()
    latest = stats["latest_trade_index"]
    whales = {}
    for position, trade in enumerate(raw):
        if record_kind(SEED, "trades", latest - position, RATE) in INVALID_TRADE_KINDS:
            continue
        if float(trade["size"]) * float(trade["price"]) >= THRESHOLD:
            key = (
                trade["transactionHash"],
                trade["asset"],
                trade["proxyWallet"],
                trade["side"],
                int(trade["timestamp"]),
            )
            whales[key] = trade
    return whales


async def stored_keys(db: Database) -> set[tuple[Any, ...]]:
    return {
        (d["transaction_hash"], d["asset"], d["wallet"], d["side"], int(d["traded_at"].timestamp()))
        async for d in db[Collections.WHALE_TRADES].find({})
    }


async def test_two_runs_over_overlapping_windows_store_each_whale_trade_once(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    extra = ["--trade-backlog", "300", "--trades-every-s", "5"]
    with simulator_process(markets=40, seed=SEED, faults=[f"trades:bad_records={RATE}"], extra=extra) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, polymarket_data_url=sim.url)
        provider = PolymarketProvider(settings, http, NoLimit())
        await sync_markets(db, provider, checkpoint=heartbeat)

        first = await sync_whales(db, provider, threshold_usd=THRESHOLD, overlap_s=120, checkpoint=heartbeat)
        expected = await whales_served(sim.url)
        assert first.new == len(expected) > 50
        assert first.duplicate == 0
        assert first.invalid > 0
        assert first.below_threshold > 0, "the simulator's fee-inclusive filter lets a few small trades through"
        assert await stored_keys(db) == set(expected)
        assert await db[Collections.WHALE_TRADES].count_documents({"notional": {"$lt": THRESHOLD}}) == 0

        async with httpx.AsyncClient() as control:
            await control.post(f"{sim.url}/_sim/advance", json={"seconds": 60})
        second = await sync_whales(db, provider, threshold_usd=THRESHOLD, overlap_s=120, checkpoint=heartbeat)
        after = await whales_served(sim.url)
        assert second.new == len(after) - len(expected) > 0
        assert second.duplicate > 0, "the overlap re-reads trades that are already stored"
        assert await stored_keys(db) == set(after)
        assert await db[Collections.WHALE_TRADES].count_documents({}) == len(after)

        third = await sync_whales(db, provider, threshold_usd=THRESHOLD, overlap_s=120, checkpoint=heartbeat)
        assert third.new == 0

    state = await db[Collections.JOB_STATE].find_one({"_id": STATE_ID})
    assert state is not None
    newest = max(int(t["timestamp"]) for t in after.values())
    assert state["watermark"] >= datetime.fromtimestamp(newest, UTC)


async def test_markets_carry_their_latest_whale(make_settings: Any, db: Database, http: httpx.AsyncClient) -> None:
    with simulator_process(markets=20, seed=SEED, extra=["--trade-backlog", "120"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, polymarket_data_url=sim.url)
        provider = PolymarketProvider(settings, http, NoLimit())
        await sync_markets(db, provider, checkpoint=heartbeat)
        counts = await sync_whales(db, provider, threshold_usd=THRESHOLD, overlap_s=120, checkpoint=heartbeat)
    latest: dict[str, Any] = {}
    async for trade in db[Collections.WHALE_TRADES].find({}):
        if trade["market"] not in latest or trade["traded_at"] > latest[trade["market"]]["traded_at"]:
            latest[trade["market"]] = trade
    assert counts.markets_updated == len(latest) > 3
    async for market in db[Collections.MARKETS].find({}):
        whale = latest.get(market["condition_id"])
        if whale is None:
            assert "last_whale_at" not in market
        else:
            assert market["last_whale_at"] == whale["traded_at"]
            assert market["last_whale_notional"] == whale["notional"]
