"""Polymarket parsers: the documented shapes, their quirks, and the natural key of a trade."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.errors import ProviderDataError
from shared.providers.base import RecordError
from shared.providers.polymarket import parse_market, parse_trade, split_market_page
from shared.schemas import MarketDoc, WhaleTradeDoc

# The handbook's synthetic examples (provider-apis.md §5).
MARKET: dict[str, Any] = {
    "id": "604417",
    "question": "Will the Fed cut rates in June 2026?",
    "conditionId": "0x3f9c0d2b7e51a4c8f0e6d1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5a1",
    "slug": "fed-cut-june-2026",
    "outcomes": '["Yes", "No"]',
    "outcomePrices": '["0.42", "0.58"]',
    "clobTokenIds": '["71330051", "90215588"]',
    "volume": "182340.51",
    "volumeNum": 182340.51,
    "volume24hr": 12873.2,
    "liquidityNum": 40211.9,
    "active": True,
    "closed": False,
    "endDate": "2026-06-17T18:00:00Z",
    "updatedAt": "2026-06-01T09:14:22.418302Z",
    "events": [{"id": "31877", "slug": "fed-june-2026", "title": "Fed June 2026"}],
}
TRADE: dict[str, Any] = {
    "proxyWallet": "0x9a1c5e0f2b3d4c6a7e8f9012a3b4c5d6e7f877e2",
    "side": "BUY",
    "asset": "71330051",
    "conditionId": MARKET["conditionId"],
    "size": 25000,
    "price": 0.42,
    "timestamp": 1780306462,
    "outcome": "Yes",
    "outcomeIndex": 0,
    "transactionHash": "0xab12cd34ef56ab78cd90ef12ab34cd56ef78ab90cd12ef34ab56cd78ef90abef",
}


def market(**changes: Any) -> MarketDoc:
    parsed = parse_market({**MARKET, **changes})
    assert isinstance(parsed, MarketDoc), parsed
    return parsed


def test_market_prices_are_parsed_from_the_encoded_strings() -> None:
    doc = market()
    assert doc.id == "polymarket:604417"
    assert (doc.outcomes, doc.outcome_prices) == (["Yes", "No"], [0.42, 0.58])
    assert (doc.yes_price, doc.no_price) == (0.42, 0.58)
    assert (doc.volume_total, doc.volume_24h, doc.liquidity) == (182340.51, 12873.2, 40211.9)
    assert doc.updated_at == datetime(2026, 6, 1, 9, 14, 22, 418302, tzinfo=UTC)
    assert doc.category == "Fed June 2026", "absent category is derived from the event"


def test_new_markets_without_metrics_and_numbers_as_strings_are_valid() -> None:
    fresh = {k: v for k, v in MARKET.items() if k not in ("volume", "volumeNum", "volume24hr", "liquidityNum")}
    doc = parse_market(fresh)
    assert isinstance(doc, MarketDoc)
    assert (doc.volume_total, doc.volume_24h, doc.liquidity) == (None, None, None)
    assert market(volumeNum="12.5", volume24hr=" 3 ").volume_24h == 3.0


def test_a_closed_market_is_never_active_and_yes_no_follow_labels() -> None:
    assert (market(closed=True).active, market(closed=True).closed) == (False, True)
    swapped = market(outcomes='["No", "Yes"]', outcomePrices='["0.7", "0.3"]')
    assert (swapped.yes_price, swapped.no_price) == (0.3, 0.7)
    teams = market(outcomes='["Red", "Blue"]', outcomePrices='["0.6", "0.4"]')
    assert (teams.yes_price, teams.no_price) == (0.6, 0.4)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"question": None}, "question"),
        ({"id": True}, "id"),
        ({"outcomePrices": '["NaN", "0.5"]'}, "outcomePrices"),
        ({"outcomePrices": '["1.5", "0.5"]'}, "from 0 to 1"),
        ({"outcomePrices": '["0.5"]'}, "different lengths"),
        ({"outcomes": "[Yes, No"}, "JSON-encoded list"),
        ({"outcomes": '[["Yes"], ["No"]]'}, "each outcome must be a string"),
        ({"volumeNum": float("nan")}, "finite"),
        ({"volume24hr": -1}, "greater than or equal to 0"),
        ({"closed": "yes"}, "closed"),
        ({"question": "x" * 5000}, "longer than"),
        ({"endDate": "someday"}, "endDate"),
    ],
)
def test_invalid_market_records_become_record_errors(changes: dict[str, Any], reason: str) -> None:
    parsed = parse_market({**MARKET, **changes})
    assert isinstance(parsed, RecordError)
    assert reason in parsed.reason
    assert parsed.kind == "market"


def test_record_errors_do_not_echo_record_content() -> None:
    parsed = parse_market({**MARKET, "question": {"secret-looking": "value"}})
    assert isinstance(parsed, RecordError)
    assert "secret-looking" not in parsed.reason


def test_a_trade_is_parsed_with_its_notional_and_natural_key() -> None:
    trade = parse_trade(TRADE)
    assert isinstance(trade, WhaleTradeDoc)
    assert trade.notional == pytest.approx(10_500.0)
    assert trade.traded_at == datetime.fromtimestamp(1780306462, UTC)
    assert trade.market == TRADE["conditionId"]
    same = parse_trade({**TRADE, "size": "25000", "timestamp": "1780306462", "title": "other"})
    assert isinstance(same, WhaleTradeDoc)
    assert same.id == trade.id, "the key ignores representation and display fields"


@pytest.mark.parametrize("field", ["asset", "proxyWallet", "side", "size", "price", "timestamp"])
def test_fills_of_one_transaction_have_distinct_keys(field: str) -> None:
    other = {
        "asset": "90215588",
        "proxyWallet": "0x01",
        "side": "SELL",
        "size": 1,
        "price": 0.5,
        "timestamp": 1780306463,
    }
    a, b = parse_trade(TRADE), parse_trade({**TRADE, field: other[field]})
    assert isinstance(a, WhaleTradeDoc)
    assert isinstance(b, WhaleTradeDoc)
    assert a.id != b.id


@pytest.mark.parametrize(
    "changes",
    [
        {"side": "HOLD"},
        {"size": float("nan")},
        {"price": 5},
        {"timestamp": "yesterday"},
        {"timestamp": 1.5e9 + 0.5},
        {"proxyWallet": None},
        {"transactionHash": ""},
        {"size": 0},
    ],
)
def test_invalid_trades_become_record_errors(changes: dict[str, Any]) -> None:
    assert isinstance(parse_trade({**TRADE, **changes}), RecordError)


def test_a_page_without_a_markets_list_is_a_data_error() -> None:
    assert split_market_page({"markets": [], "next_cursor": "abc"}) == ([], "abc")
    assert split_market_page({"markets": [1]}) == ([1], None)
    for body in ([], {"data": []}, {"markets": [], "next_cursor": 5}):
        with pytest.raises(ProviderDataError):
            split_market_page(body)


def test_the_examples_round_trip_through_json() -> None:
    assert isinstance(parse_market(json.loads(json.dumps(MARKET))), MarketDoc)
