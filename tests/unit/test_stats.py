"""Pure parts of the stats job and of `pulse stats`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.stats.stats import ratio, snapshot_id
from shared.cli.stats import SPARK_CHARS, parse_period, sparkline


def test_snapshot_id_is_the_slot_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert snapshot_id(datetime(2026, 11, 29, 16, 0, tzinfo=paris)) == "2026-11-29T15:00:00Z"
    assert snapshot_id(datetime(2026, 11, 29, 15, 0, 0, 999, tzinfo=UTC)) == "2026-11-29T15:00:00Z"


def test_snapshot_id_refuses_a_naive_slot() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        snapshot_id(datetime(2026, 11, 29, 15, 0))


@pytest.mark.parametrize(("numerator", "denominator", "expected"), [(1.0, 4.0, 0.25), (0.0, 0.0, None), (3.0, 0, None)])
def test_ratio_has_no_value_for_an_empty_set(numerator: float, denominator: float, expected: float | None) -> None:
    assert ratio(numerator, denominator) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 1.5H ", timedelta(minutes=90)),
    ],
)
def test_parse_period(text: str, expected: timedelta) -> None:
    assert parse_period(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "0h", "-1d", "3y", "1d2h"])
def test_parse_period_rejects_bad_input_saying_what_works(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 24h"):
        parse_period(text)


def test_sparkline_scales_between_min_and_max() -> None:
    line = sparkline([0, 5, 10])
    assert line[0] == SPARK_CHARS[0]
    assert line[-1] == SPARK_CHARS[-1]
    assert len(line) == 3
    assert sparkline([]) == ""
    assert len(set(sparkline([3, 3, 3]))) == 1
