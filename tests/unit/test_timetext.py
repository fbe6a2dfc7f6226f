"""Durations and times as operators type them: anything out of range is a ValueError, never an OverflowError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.dashboard.facts import window_of
from shared.readmodel.runs import Cursor
from shared.readmodel.timetext import MAX_DURATION, parse_duration, parse_since


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e400", "99999999d", "36501d", "1" * 400 + "s"])
def test_non_finite_or_huge_durations_are_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"--last .* is out of range: give a finite duration of at most 36500d"):
        parse_duration(text, option="--last")


def test_the_longest_duration_is_accepted_and_fits_either_side_of_now() -> None:
    assert parse_duration("36500d", option="--in") == MAX_DURATION
    assert parse_since("36500d") < datetime.now(UTC) - timedelta(days=36_499)


@pytest.mark.parametrize("text", ["99999999d", "9999999999h"])
def test_a_since_too_far_back_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"since .* is out of range"):
        parse_since(text, option="since")


@pytest.mark.parametrize("text", ["inf", "nan", "99999999d"])
def test_the_dashboard_slot_window_refuses_non_finite_or_huge_values(text: str) -> None:
    with pytest.raises(ValueError, match="last"):
        window_of(text)


def test_a_runs_cursor_keeps_the_start_time_to_the_microsecond() -> None:
    started = datetime(2026, 12, 1, 9, 0, 0, 123_000, tzinfo=UTC)
    cursor = Cursor(started, "stats:manual:a")
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.decode(Cursor(None, "stats:manual:q").encode()) == Cursor(None, "stats:manual:q")


@pytest.mark.parametrize("text", ["2026-12-01T09:00:00Z|stats:manual:a", "garbage", "2026-12-01T09:00:00.123456Z|"])
def test_old_or_edited_cursors_are_refused_in_one_clear_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid page cursor .* start again from the first page"):
        Cursor.decode(text)
