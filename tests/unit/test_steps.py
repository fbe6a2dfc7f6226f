"""Step results as JSON: what is recorded, what comes back, what is refused."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from shared.errors import PermanentError
from shared.runtime._steps import _decode, _encode


class Market(BaseModel):
    market_id: str
    closes: datetime


def test_plain_json_values_round_trip_compactly() -> None:
    value = {"ids": [1, 2], "name": "m", "ok": True, "none": None}
    text = _encode("s", value, None)
    assert text == '{"ids":[1,2],"name":"m","ok":true,"none":null}'
    assert _decode(text, None) == value


def test_a_model_comes_back_as_the_model_when_returns_names_it() -> None:
    market = Market(market_id="m1", closes=datetime(2026, 12, 1, tzinfo=UTC))
    text = _encode("s", market, Market)
    assert _decode(text, Market) == market
    assert _decode(_encode("s", [market], list[Market]), list[Market]) == [market]


def test_a_model_without_returns_is_refused_naming_the_fix() -> None:
    market = Market(market_id="m1", closes=datetime(2026, 12, 1, tzinfo=UTC))
    with pytest.raises(PermanentError, match=r"step 'fetch' returned a Market; pass returns=Market"):
        _encode("fetch", market, None)


@pytest.mark.parametrize("value", [object(), math.nan, {1, 2}])
def test_values_that_are_not_json_are_refused(value: object) -> None:
    with pytest.raises(PermanentError, match=r"step 'odd' returned a value that is not JSON"):
        _encode("odd", value, None)
