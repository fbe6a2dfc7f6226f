"""The simulator as a real process: API shapes, keyset paging, faults changed at runtime."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from shared.providers.base import NoLimit
from shared.providers.polymarket import PolymarketProvider
from shared.providers.simprocess import simulator_process
from shared.providers.simulator import FIRST_MARKET_ID, SimConfig, Simulator, hex_id, parse_fault
from shared.schemas import MarketDoc, WhaleTradeDoc


def test_keyset_listing_serves_the_catalogue_once_and_ignores_the_wrong_cursor_parameter() -> None:
    with simulator_process(markets=250, seed=3) as sim, httpx.Client(base_url=sim.url) as client:
        ids: list[str] = []
        params: dict[str, object] = {"limit": 100}
        while True:
            page = client.get("/markets/keyset", params=params).json()
            ids += [record["id"] for record in page["markets"]]
            if "next_cursor" not in page:
                break
            params["after_cursor"] = page["next_cursor"]
        assert len(ids) == len(set(ids)) == 250
        first = client.get("/markets/keyset", params={"limit": 100}).json()
        again = client.get("/markets/keyset", params={"limit": 100, "cursor": first["next_cursor"]}).json()
        assert again["markets"] == first["markets"], "cursor= is ignored upstream: page 1 again"
        assert client.get("/markets/keyset", params={"offset": 100}).status_code == 422
        record = first["markets"][0]
        assert isinstance(json.loads(record["outcomePrices"]), list)
        assert all(isinstance(price, str) for price in json.loads(record["outcomePrices"]))


def test_faults_can_be_changed_at_runtime_and_429_carries_retry_after() -> None:
    with simulator_process(markets=10, extra=["--retry-after-s", "2"]) as sim, httpx.Client(base_url=sim.url) as client:
        assert client.get("/markets/keyset").status_code == 200
        assert client.post("/_sim/faults", json={"markets": {"429": 1}}).status_code == 200
        limited = client.get("/markets/keyset")
        assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
        assert client.get("/trades").status_code == 200
        assert client.post("/_sim/faults", json={"markets": {"5xx": 1}}).status_code == 200
        assert client.get("/markets/keyset").status_code == 503
        refused = client.post("/_sim/faults", json={"markets": {"teapot": 1}})
        assert refused.status_code == 400
        assert "kind must be one of" in refused.json()["error"]


def test_prices_move_and_new_trades_appear_as_sim_time_advances() -> None:
    with (
        simulator_process(markets=200, extra=["--move-every-s", "10", "--trades-every-s", "5"]) as sim,
        httpx.Client(base_url=sim.url) as client,
    ):
        before = client.get("/markets/keyset", params={"limit": 200}).json()["markets"]
        trades_before = client.get("/trades", params={"limit": 1}).json()
        client.post("/_sim/advance", json={"seconds": 30})
        after = client.get("/markets/keyset", params={"limit": 200}).json()["markets"]
        trades_after = client.get("/trades", params={"limit": 1}).json()
    moved = sum(a["outcomePrices"] != b["outcomePrices"] for a, b in zip(before, after, strict=True))
    assert 0 < moved < 200
    assert trades_after[0]["timestamp"] == trades_before[0]["timestamp"] + 30


def test_a_large_catalogue_is_served_without_building_it_first() -> None:
    """200,000 markets: start-up and the last page are as quick as a small catalogue's."""
    started = time.monotonic()
    with simulator_process(markets=200_000) as sim, httpx.Client(base_url=sim.url) as client:
        cursor = "azoxOTk5MDA="  # the simulator's cursor for offset 199,900
        page = client.get("/markets/keyset", params={"limit": 100, "after_cursor": cursor}).json()
    assert [r["id"] for r in page["markets"]][-1] == "699999"
    assert "next_cursor" not in page
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("text", "message"),
    [("markets:5xx", "ENDPOINT:KIND=RATE"), ("orders:5xx=0.1", "endpoint must be"), ("markets:5xx=2", "from 0 to 1")],
)
def test_bad_fault_options_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault(text)


def test_records_are_deterministic_per_seed_and_index() -> None:
    one, two = (
        Simulator(SimConfig(markets=5, seed=9, frozen=True)),
        Simulator(SimConfig(markets=5, seed=9, frozen=True)),
    )
    assert [one.market(i) for i in range(5)] == [two.market(i) for i in range(5)]
    assert one.market(0) != Simulator(SimConfig(markets=5, seed=10, frozen=True)).market(0)


async def test_the_provider_reads_one_market_by_either_id_and_its_recent_trades(make_settings: Any) -> None:
    """market_refresh's lookups: Gamma filtered by id or condition id, the Data API by market."""
    with simulator_process(markets=300, seed=5) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, polymarket_data_url=sim.url)
        async with httpx.AsyncClient() as http:
            provider = PolymarketProvider(settings, http, NoLimit())
            by_condition = await provider.fetch_market(condition_id=hex_id(5, "condition", 42))
            assert isinstance(by_condition, MarketDoc)
            by_id = await provider.fetch_market(market_id=by_condition.market_id)
            assert isinstance(by_id, MarketDoc)
            assert by_id.id == by_condition.id == f"polymarket:{FIRST_MARKET_ID + 42}"
            assert await provider.fetch_market(condition_id="0x" + "0" * 64) is None
            assert await provider.fetch_market(market_id=str(FIRST_MARKET_ID + 300)) is None
            with pytest.raises(ValueError, match="exactly one"):
                await provider.fetch_market()
            busiest = Counter(t["conditionId"] for t in httpx.get(f"{sim.url}/trades", params={"limit": 10_000}).json())
            market, expected = busiest.most_common(1)[0]
            trades = await provider.fetch_market_trades(market, limit=100)
    assert len(trades) == expected
    assert all(isinstance(t, WhaleTradeDoc) and t.market == market for t in trades)
    assert [t.traded_at for t in trades] == sorted((t.traded_at for t in trades), reverse=True)  # type: ignore[union-attr]
