"""Backfill windows and pacing (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.backfill import MAX_BACKFILL_SLOTS, pacing_for, window_slots
from shared.errors import InvalidRequest
from shared.schedules import parse_schedule
from shared.settings import RateLimit

T1 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_the_window_is_half_open_and_oldest_first() -> None:
    slots = window_slots(parse_schedule("every 5m"), T1, T1 + timedelta(minutes=15))
    assert slots == [T1, T1 + timedelta(minutes=5), T1 + timedelta(minutes=10)]
    shifted = window_slots(parse_schedule("every 5m"), T1 + timedelta(seconds=1), T1 + timedelta(minutes=10, seconds=1))
    assert shifted == [T1 + timedelta(minutes=5), T1 + timedelta(minutes=10)]


def test_a_zoned_schedule_counts_a_dst_day_once_per_wall_time() -> None:
    # Berlin springs forward on 2026-03-29: 02:30 does not exist and runs at 03:00 CEST = 01:00Z.
    day = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    berlin = parse_schedule("daily at 02:30 Europe/Berlin")
    slots = window_slots(berlin, day - timedelta(days=1), day + timedelta(days=1))
    assert slots == [datetime(2026, 3, 28, 1, 30, tzinfo=UTC), datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("start", "end", "phrase"),
    [
        (T1, T1, "is not before --to"),
        (T1 + timedelta(hours=1), T1, "is not before --to"),
        (T1 + timedelta(minutes=1), T1 + timedelta(minutes=2), "no slot of 'every 5m'"),
        (T1, T1 + timedelta(minutes=5 * (MAX_BACKFILL_SLOTS + 1)), f"more than {MAX_BACKFILL_SLOTS} slots"),
    ],
)
def test_bad_windows_are_refused_with_what_to_do(start: datetime, end: datetime, phrase: str) -> None:
    with pytest.raises(InvalidRequest, match=phrase):
        window_slots(parse_schedule("every 5m"), start, end)


def test_exactly_the_bound_is_accepted() -> None:
    end = T1 + timedelta(minutes=5 * MAX_BACKFILL_SLOTS)
    assert len(window_slots(parse_schedule("every 5m"), T1, end)) == MAX_BACKFILL_SLOTS


def test_pacing_follows_the_bucket_at_the_calls_a_run_costs() -> None:
    pacing = pacing_for(RateLimit(rate=100, period_s=10, burst=10), calls_per_run=4)
    assert (pacing.at_once, pacing.interval_s) == (2, 0.4)
    assert [pacing.delay_before(i) for i in range(4)] == [0.0, 0.0, 0.4, 0.4]
    assert pacing.duration_s(5) == pytest.approx(1.2)
    # A run that costs more than the burst still goes, one at a time.
    assert pacing_for(RateLimit(rate=1, period_s=1, burst=2), calls_per_run=5).at_once == 1


def test_without_a_bucket_or_calls_nothing_waits() -> None:
    for pacing in (pacing_for(None, 3), pacing_for(RateLimit(rate=1, period_s=1, burst=1), 0)):
        assert pacing.duration_s(MAX_BACKFILL_SLOTS) == 0
        assert pacing.delay_before(MAX_BACKFILL_SLOTS - 1) == 0
