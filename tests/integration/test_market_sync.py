"""market_sync against the simulator (a real process) and a real database (FerretDB/MongoDB)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from services.market_sync.sync import sync_markets
from shared.errors import ProviderUnavailable
from shared.names import Collections
from shared.providers import NoLimit, PolymarketProvider, make_http_client
from shared.providers.base import MarketParse
from shared.providers.simprocess import simulator_process
from shared.providers.simulator import INVALID_MARKET_KINDS, record_kind
from shared.settings import Settings
from shared.store import Database

SEED = 7


async def no_checkpoint(progress: dict[str, Any]) -> None:
    assert progress["pages"] >= 1


def provider_for(settings: Settings, http: httpx.AsyncClient) -> PolymarketProvider:
    return PolymarketProvider(settings, http, NoLimit())


async def served_catalogue(url: str, page_size: int) -> list[dict[str, Any]]:
    """Every record the simulator serves right now, read with a plain client."""
    records: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": page_size}
    async with httpx.AsyncClient() as client:
        while True:
            page = (await client.get(f"{url}/markets/keyset", params=params)).json()
            records += page["markets"]
            if "next_cursor" not in page:
                return records
            params["after_cursor"] = page["next_cursor"]


def expected_text(raw: str) -> str:
    return " ".join(re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", raw).split())


def number(value: Any) -> float | None:
    return None if value is None else float(value)


def expected_document(raw: dict[str, Any]) -> dict[str, Any]:
    """What the stored document must hold for a valid served record (independent of the parser)."""
    prices = [float(p) for p in json.loads(raw["outcomePrices"])]
    volume_24h = number(raw.get("volume24hr"))
    return {
        "_id": f"polymarket:{raw['id']}",
        "market_id": raw["id"],
        "question": expected_text(raw["question"]),
        "slug": raw["slug"],
        "condition_id": raw["conditionId"],
        "outcomes": json.loads(raw["outcomes"]),
        "outcome_prices": prices,
        "yes_price": prices[0],
        "no_price": prices[1],
        "volume_total": number(raw.get("volumeNum")),
        "volume_24h": volume_24h,
        "liquidity": number(raw.get("liquidityNum")),
        "closed": raw["closed"],
        "active": not raw["closed"],
        "category": raw.get("category") or raw["events"][0]["title"],
        "updated_at": datetime.fromisoformat(raw["updatedAt"]),
    }


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(settings) as client:
        yield client


async def test_full_run_stores_every_valid_market_as_served_and_a_second_run_writes_nothing(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    rate = 0.15
    with simulator_process(markets=240, seed=SEED, faults=[f"markets:bad_records={rate}"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=50)
        counts = await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        served = await served_catalogue(sim.url, 50)

        invalid = {
            r.get("id") for i, r in enumerate(served) if record_kind(SEED, "markets", i, rate) in INVALID_MARKET_KINDS
        }
        valid = [r for i, r in enumerate(served) if record_kind(SEED, "markets", i, rate) not in INVALID_MARKET_KINDS]
        assert 10 < len(invalid) < 60, "the seed should give a handful of invalid records"
        assert (counts.fetched, counts.invalid, counts.inserted) == (240, len(served) - len(valid), len(valid))
        assert (counts.updated, counts.unchanged, counts.deactivated, counts.pages) == (0, 0, 0, 5)
        assert counts.complete

        markets = db[Collections.MARKETS]
        assert await markets.count_documents({}) == len(valid)
        stored = {doc["_id"]: doc async for doc in markets.find({})}
        for raw in valid:
            doc = stored[f"polymarket:{raw['id']}"]
            for key, value in expected_document(raw).items():
                assert doc[key] == value, (raw["id"], key)
        synced = {doc_id: doc["synced_at"] for doc_id, doc in stored.items()}

        again = await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        assert (again.inserted, again.updated, again.deactivated) == (0, 0, 0)
        assert again.unchanged == len(valid)
        assert {doc["_id"]: doc["synced_at"] async for doc in markets.find({})} == synced


async def test_moved_prices_are_updated_and_vanished_markets_deactivated(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    with simulator_process(markets=120, seed=SEED, extra=["--move-every-s", "10"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=40)
        first = await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        assert first.inserted == 120
        async with httpx.AsyncClient() as control:
            await control.post(f"{sim.url}/_sim/advance", json={"seconds": 10})
            await control.post(f"{sim.url}/_sim/catalogue", json={"markets": 100})
        served = {f"polymarket:{r['id']}": r for r in await served_catalogue(sim.url, 40)}
        markets = db[Collections.MARKETS]
        before = {doc["_id"]: doc["yes_price"] async for doc in markets.find({"_id": {"$in": list(served)}})}
        moved = sum(1 for key, raw in served.items() if float(json.loads(raw["outcomePrices"])[0]) != before[key])
        assert moved > 0

        second = await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        gone_active = await markets.count_documents({"market_id": {"$gte": "500100"}, "closed": False})
        assert second.updated == moved
        assert second.unchanged == 100 - moved
        assert second.deactivated == gone_active > 0
        assert await markets.count_documents({"active": True, "market_id": {"$gte": "500100"}}) == 0
        for key, raw in served.items():
            doc = await markets.find_one({"_id": key})
            assert doc is not None
            assert doc["yes_price"] == float(json.loads(raw["outcomePrices"])[0])

        async with httpx.AsyncClient() as control:  # a vanished market that comes back is active again
            await control.post(f"{sim.url}/_sim/catalogue", json={"markets": 120})
        third = await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        assert third.updated == gone_active
        assert await markets.count_documents({"active": True}) == await markets.count_documents({"closed": False})


class CutShort:
    """A provider whose listing breaks after its first page (the real client underneath)."""

    def __init__(self, inner: PolymarketProvider) -> None:
        self.inner = inner
        self.name = inner.name

    async def iter_market_pages(self) -> AsyncIterator[list[MarketParse]]:
        async for page in self.inner.iter_market_pages():
            yield page
            raise ProviderUnavailable("listing interrupted")

    async def fetch_trades(self, *, since: datetime, min_notional: float) -> list[Any]:
        raise NotImplementedError


async def test_an_interrupted_listing_deactivates_nothing(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    with simulator_process(markets=60, seed=SEED) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=20)
        await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        active = await db[Collections.MARKETS].count_documents({"active": True})
        with pytest.raises(ProviderUnavailable):
            await sync_markets(db, CutShort(provider_for(settings, http)), checkpoint=no_checkpoint)
        assert await db[Collections.MARKETS].count_documents({"active": True}) == active > 0


async def test_a_partly_stored_catalogue_inserts_the_missing_and_updates_the_moved_across_chunks(
    make_settings: Any, db: Database, http: httpx.AsyncClient
) -> None:
    """Chunks that are mostly new are inserted first; the markets already stored among them
    (duplicate keys) still go through the hash comparison, so moved ones are updated."""
    with simulator_process(markets=90, seed=SEED, extra=["--move-every-s", "10"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, page_size=15)
        await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint)
        markets = db[Collections.MARKETS]
        ids = sorted([doc["_id"] async for doc in markets.find({}, {"_id": 1})])
        kept = ids[::3]  # two in three markets vanish from the store: most of every chunk is new
        await markets.delete_many({"_id": {"$nin": kept}})
        async with httpx.AsyncClient() as control:
            await control.post(f"{sim.url}/_sim/advance", json={"seconds": 10})
        served = {f"polymarket:{r['id']}": r for r in await served_catalogue(sim.url, 15)}
        before = {doc["_id"]: doc["yes_price"] async for doc in markets.find({})}
        moved = sum(1 for key in kept if float(json.loads(served[key]["outcomePrices"])[0]) != before[key])
        assert 0 < moved < len(kept)

        counts = await sync_markets(db, provider_for(settings, http), checkpoint=no_checkpoint, chunk_size=20)
        assert (counts.inserted, counts.updated, counts.unchanged) == (90 - len(kept), moved, len(kept) - moved)
        assert counts.deactivated == 0
        stored = {doc["_id"]: doc async for doc in markets.find({})}
        assert set(stored) == set(served)
        for key, raw in served.items():
            for field, value in expected_document(raw).items():
                assert stored[key][field] == value, (key, field)
