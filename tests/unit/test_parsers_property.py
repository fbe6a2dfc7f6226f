"""Arbitrary JSON into both parsers: the only outcomes are a valid document or a per-record error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.providers.base import RecordError
from shared.providers.polymarket import parse_market, parse_trade
from shared.providers.sanitize import check_storable
from shared.schemas import MarketDoc, WhaleTradeDoc
from tests.helpers import examples

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

MARKET_KEYS = [
    "id",
    "question",
    "slug",
    "category",
    "conditionId",
    "outcomes",
    "outcomePrices",
    "volumeNum",
    "volume",
    "volume24hr",
    "liquidityNum",
    "liquidity",
    "active",
    "closed",
    "endDate",
    "updatedAt",
    "tags",
    "events",
    "a.b",
    "$x",
]
TRADE_KEYS = [
    "proxyWallet",
    "side",
    "asset",
    "conditionId",
    "size",
    "price",
    "timestamp",
    "outcome",
    "transactionHash",
    "a.b",
]

encoded_lists = st.lists(st.text(max_size=6) | st.floats() | st.decimals(allow_nan=True).map(str), max_size=4).map(
    json.dumps
)
market_values = (
    json_values | encoded_lists | st.sampled_from(["0.5", "NaN", "1e400", "2026-06-01T00:00:00Z", "Yes", ""])
)
trade_values = (
    json_values
    | st.sampled_from(["BUY", "SELL", "0.5", "1780306462", "NaN"])
    | st.integers(1_000_000_000, 3_000_000_000)
)

market_records = st.fixed_dictionaries({}, optional=dict.fromkeys(MARKET_KEYS, market_values))
trade_records = st.fixed_dictionaries({}, optional=dict.fromkeys(TRADE_KEYS, trade_values))


def assert_valid_or_record_error(result: Any, doc_type: type) -> None:
    assert isinstance(result, doc_type | RecordError)
    if isinstance(result, RecordError):
        assert len(result.reason) <= 300
    else:
        check_storable(result.model_dump(by_alias=True))


@settings(max_examples=examples(400), suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values | market_records)
def test_market_parser_returns_a_market_or_a_record_error(raw: Any) -> None:
    assert_valid_or_record_error(parse_market(raw), MarketDoc)


@settings(max_examples=examples(400), suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values | trade_records)
def test_trade_parser_returns_a_trade_or_a_record_error(raw: Any) -> None:
    assert_valid_or_record_error(parse_trade(raw), WhaleTradeDoc)


@settings(max_examples=examples(200), deadline=None)
@given(
    st.builds(
        lambda q, p: {"id": "1", "question": q, "outcomes": '["Yes","No"]', "outcomePrices": json.dumps([p, 1 - p])},
        st.text(min_size=1, max_size=50),
        st.floats(0, 1),
    )
)
def test_nearly_valid_markets_parse_to_storable_documents(raw: dict[str, Any]) -> None:
    result = parse_market(raw)
    assert_valid_or_record_error(result, MarketDoc)
