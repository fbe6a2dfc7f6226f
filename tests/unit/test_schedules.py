"""Slot arithmetic of every schedule kind, the grammar's error messages, and the ticker's plan rules."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ticker.slots import Action, SlotState, plan_slot
from shared.errors import ConfigError
from shared.schedules import (
    CronSchedule,
    IntervalSchedule,
    ScheduleOverride,
    effective_schedule,
    parse_schedule,
)
from shared.schemas import scheduled_run_id
from shared.settings import load_settings


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "expression_or_seconds"),
    [
        ("every 30s", "interval", 30),
        ("every 5m", "interval", 300),
        ("every 2h", "interval", 7200),
        ("every 1d", "interval", 86400),
        ("Every 90 seconds", "interval", 90),
        ("every 10 minutes", "interval", 600),
        ("cron */5 * * * *", "cron", "*/5 * * * *"),
        ("cron   0  9-17/2  *  *  1,3,5", "cron", "0 9-17/2 * * 1,3,5"),
        ("hourly at :15", "hourly", "15 * * * *"),
        ("hourly at 7", "hourly", "7 * * * *"),
        ("daily at 02:00", "daily", "0 2 * * *"),
        ("weekly on mon at 09:30", "weekly", "30 9 * * 1"),
        ("weekly on Sunday at 23:59", "weekly", "59 23 * * 0"),
        ("monthly on 1 at 00:00", "monthly", "0 0 1 * *"),
        ("monthly on 31 at 06:05", "monthly", "5 6 31 * *"),
    ],
)
def test_every_form_of_the_grammar_parses(text: str, kind: str, expression_or_seconds: object) -> None:
    schedule = parse_schedule(text)
    assert schedule.kind == kind
    if isinstance(schedule, IntervalSchedule):
        assert schedule.seconds == expression_or_seconds
    else:
        assert schedule.expression == expression_or_seconds
    assert schedule.text == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("every 0s", "at least 1s"),
        ("every 5y", "unknown unit 'y'"),
        ("every 400d", "at most 366d"),
        ("cron 61 * * * *", "bad cron expression"),
        ("cron */0 * * * *", "minute field has step 0"),
        ("cron */61 * * * *", "minute field has step 61"),
        ("cron 0 */25 * * *", "hour field has step 25"),
        ("cron 0 0 * * 1-5/8", "day-of-week field has step 8"),
        ("cron * * * *", "5 fields"),
        ("cron 0 0 30 2 *", "never matches a real date"),
        ("hourly at :60", "the minute must be 0..59, got 60"),
        ("daily at 24:00", "the hour must be 0..23, got 24"),
        ("daily at 2:61", "the minute must be 0..59, got 61"),
        ("weekly on 31 at 09:00", "day of the week"),
        ("weekly on funday at 09:00", "the day must be one of mon"),
        ("weekly on m at 09:00", "the day must be one of mon"),
        ("monthly on 32 at 00:00", "the day of the month must be 1..31, got 32"),
        ("monthly on 0 at 00:00", "the day of the month must be 1..31, got 0"),
        ("sometimes", "expected 'every <n>"),
        ("", "expected 'every <n>"),
    ],
)
def test_invalid_schedules_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid schedule") as caught:
        parse_schedule(text)
    assert message in str(caught.value)


def test_job_policy_in_settings_validates_its_schedule() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(jobs={"whale_sync": {"schedule": "every 0s", "stale_after_s": 60}})
    assert "PULSE_JOBS__WHALE_SYNC__SCHEDULE" in str(caught.value)
    assert "at least 1s" in str(caught.value)


# -- intervals -----------------------------------------------------------------------


def test_interval_slots_are_aligned_to_the_epoch() -> None:
    every_5m = parse_schedule("every 5m")
    assert every_5m.previous_slot(utc(2026, 3, 1, 12, 7, 59)) == utc(2026, 3, 1, 12, 5)
    assert every_5m.previous_slot(utc(2026, 3, 1, 12, 5)) == utc(2026, 3, 1, 12, 5)  # a slot is its own previous
    assert every_5m.next_slot(utc(2026, 3, 1, 12, 5)) == utc(2026, 3, 1, 12, 10)  # next is strictly after


def test_interval_ignores_sub_second_parts_consistently() -> None:
    every_1s = parse_schedule("every 1s")
    now = datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=UTC)
    assert every_1s.previous_slot(now) == utc(2026, 3, 1, 12, 0, 0)
    assert every_1s.next_slot(now) == utc(2026, 3, 1, 12, 0, 1)


def test_interval_accepts_any_timezone_and_answers_in_utc() -> None:
    plus_two = timezone_offset(hours=2)
    slot = parse_schedule("every 1h").previous_slot(datetime(2026, 3, 1, 14, 30, tzinfo=plus_two))
    assert slot == utc(2026, 3, 1, 12)
    assert slot.tzinfo == UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule("every 1m").previous_slot(datetime(2026, 3, 1, 12))


@given(
    seconds=st.integers(min_value=1, max_value=86400 * 3),
    moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
)
def test_interval_slot_bounds_hold_for_any_time(seconds: int, moment: datetime) -> None:
    schedule = IntervalSchedule(seconds=seconds, text=f"every {seconds}s")
    previous = schedule.previous_slot(moment)
    following = schedule.next_slot(moment)
    assert previous <= moment < following
    assert following - previous == timedelta(seconds=seconds)
    assert schedule.previous_slot(previous) == previous


# -- calendar kinds ------------------------------------------------------------------


def test_hourly_at_a_minute() -> None:
    schedule = parse_schedule("hourly at :15")
    assert schedule.previous_slot(utc(2026, 3, 1, 12, 14, 59)) == utc(2026, 3, 1, 11, 15)
    assert schedule.previous_slot(utc(2026, 3, 1, 12, 15, 30)) == utc(2026, 3, 1, 12, 15)
    assert schedule.next_slot(utc(2026, 3, 1, 23, 15)) == utc(2026, 3, 2, 0, 15)


def test_daily_crosses_month_and_year_ends() -> None:
    schedule = parse_schedule("daily at 02:00")
    assert schedule.previous_slot(utc(2026, 3, 1, 1, 59)) == utc(2026, 2, 28, 2, 0)
    assert schedule.next_slot(utc(2026, 12, 31, 2, 0)) == utc(2027, 1, 1, 2, 0)
    assert schedule.previous_slot(utc(2026, 3, 1, 2, 0)) == utc(2026, 3, 1, 2, 0)


def test_weekly_on_a_day_at_a_time() -> None:
    schedule = parse_schedule("weekly on mon at 09:30")  # 2026-03-02 is a Monday
    assert schedule.next_slot(utc(2026, 3, 1, 12)) == utc(2026, 3, 2, 9, 30)
    assert schedule.previous_slot(utc(2026, 3, 2, 9, 29)) == utc(2026, 2, 23, 9, 30)
    assert schedule.next_slot(utc(2026, 3, 2, 9, 30)) == utc(2026, 3, 9, 9, 30)


def test_monthly_on_the_31st_skips_short_months() -> None:
    schedule = parse_schedule("monthly on 31 at 00:00")
    assert schedule.next_slot(utc(2026, 1, 31, 0, 0)) == utc(2026, 3, 31)
    assert schedule.next_slot(utc(2026, 3, 31, 0, 0)) == utc(2026, 5, 31)
    assert schedule.previous_slot(utc(2026, 5, 1)) == utc(2026, 3, 31)


def test_monthly_on_the_29th_of_february_needs_a_leap_year() -> None:
    schedule = parse_schedule("cron 0 12 29 2 *")
    assert schedule.next_slot(utc(2026, 1, 1)) == utc(2028, 2, 29, 12)
    assert schedule.previous_slot(utc(2028, 2, 28)) == utc(2024, 2, 29, 12)
    monthly = parse_schedule("monthly on 29 at 00:00")
    assert monthly.next_slot(utc(2027, 1, 29)) == utc(2027, 3, 29)  # no 29 Feb in 2027
    assert monthly.next_slot(utc(2028, 1, 29)) == utc(2028, 2, 29)  # but in 2028


def test_interval_crosses_a_leap_day() -> None:
    schedule = parse_schedule("every 1d")
    assert schedule.next_slot(utc(2028, 2, 28, 12)) == utc(2028, 2, 29)
    assert schedule.next_slot(utc(2028, 2, 29, 12)) == utc(2028, 3, 1)


def test_cron_with_lists_ranges_and_steps() -> None:
    schedule = parse_schedule("cron 0,30 9-17/4 * * mon-fri")  # 09, 13, 17 h at :00 and :30, weekdays
    slots = []
    moment = utc(2026, 3, 6, 0, 0)  # a Friday
    for _ in range(8):
        moment = schedule.next_slot(moment)
        slots.append(moment)
    assert slots == [
        utc(2026, 3, 6, 9, 0), utc(2026, 3, 6, 9, 30), utc(2026, 3, 6, 13, 0), utc(2026, 3, 6, 13, 30),
        utc(2026, 3, 6, 17, 0), utc(2026, 3, 6, 17, 30),
        utc(2026, 3, 9, 9, 0), utc(2026, 3, 9, 9, 30),  # the weekend is skipped
    ]  # fmt: skip
    assert schedule.previous_slot(utc(2026, 3, 9, 8, 59)) == utc(2026, 3, 6, 17, 30)


def test_cron_previous_slot_includes_the_current_minute() -> None:
    schedule = parse_schedule("cron */5 * * * *")
    assert isinstance(schedule, CronSchedule)
    assert schedule.previous_slot(utc(2026, 3, 1, 12, 5, 0)) == utc(2026, 3, 1, 12, 5)
    assert schedule.previous_slot(datetime(2026, 3, 1, 12, 5, 59, 999, tzinfo=UTC)) == utc(2026, 3, 1, 12, 5)
    assert schedule.previous_slot(utc(2026, 3, 1, 12, 4, 59)) == utc(2026, 3, 1, 12, 0)


@pytest.mark.parametrize(
    "text", ["every 7s", "cron */7 * * * *", "hourly at :07", "weekly on fri at 17:00", "monthly on 30 at 23:59"]
)
@given(moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)))
def test_previous_and_next_agree_for_every_kind(text: str, moment: datetime) -> None:
    schedule = parse_schedule(text)
    previous = schedule.previous_slot(moment)
    following = schedule.next_slot(moment)
    assert previous <= moment < following
    assert schedule.next_slot(previous) == following


def test_run_ids_are_the_same_on_every_replica() -> None:
    """Two replicas reading the clock at different instants inside one slot agree on the run_id."""
    schedule = parse_schedule("every 1m")
    a = schedule.previous_slot(datetime(2026, 3, 1, 12, 0, 0, 1000, tzinfo=UTC))
    b = schedule.previous_slot(datetime(2026, 3, 1, 12, 0, 59, 999000, tzinfo=UTC))
    assert scheduled_run_id("whale_sync", a) == scheduled_run_id("whale_sync", b) == "whale_sync:2026-03-01T12:00:00Z"


# -- overrides and the effective schedule --------------------------------------------


def test_override_replaces_the_default_and_pause_keeps_it() -> None:
    assert effective_schedule("stats", "hourly at :00", enabled=True, override=None).source == "default"
    changed = effective_schedule(
        "stats", "hourly at :00", enabled=True, override=ScheduleOverride(schedule="every 30s")
    )
    assert (changed.source, changed.schedule.text) == ("override", "every 30s")
    paused = effective_schedule("stats", "hourly at :00", enabled=True, override=ScheduleOverride(paused=True))
    assert (paused.source, paused.schedule.text, paused.active) == ("default", "hourly at :00", False)
    assert paused.due_slot(utc(2026, 3, 1, 12, 30)) is None
    assert paused.next_fire(utc(2026, 3, 1, 12, 30)) is None


def test_disabled_job_has_no_due_slot() -> None:
    disabled = effective_schedule("stats", "every 1s", enabled=False, override=None)
    assert disabled.due_slot(utc(2026, 3, 1)) is None


def test_resume_fence_hides_the_slots_before_it() -> None:
    resumed = effective_schedule(
        "stats", "every 10s", enabled=True, override=ScheduleOverride(resumed_at=utc(2026, 3, 1, 12, 0, 5))
    )
    assert resumed.due_slot(utc(2026, 3, 1, 12, 0, 9)) is None
    assert resumed.next_fire(utc(2026, 3, 1, 12, 0, 1)) == utc(2026, 3, 1, 12, 0, 10)
    assert resumed.due_slot(utc(2026, 3, 1, 12, 0, 10)) == utc(2026, 3, 1, 12, 0, 10)


def test_override_document_round_trips_and_bad_ones_say_why() -> None:
    override = ScheduleOverride(schedule="daily at 03:00", paused=True, updated_by="ops")
    assert ScheduleOverride.from_bytes(override.to_bytes()) == override
    with pytest.raises(ValueError, match=r"invalid schedule override.*schedule.*at least 1s"):
        ScheduleOverride.from_bytes(b'{"schedule": "every 0s"}')
    with pytest.raises(ValueError, match="invalid schedule override"):
        ScheduleOverride.from_bytes(b"not json")


# -- the ticker's plan -----------------------------------------------------------


def state(slot: datetime, *, published: bool = True, claimed_at: datetime | None = None) -> SlotState:
    return SlotState(
        slot=slot,
        run_id=scheduled_run_id("stats", slot),
        published=published,
        claimed_at=claimed_at or slot,
        claimed_by="r1",
    )


EVERY_MIN = parse_schedule("every 1m")


def test_decide_fires_the_first_slot_ever_as_a_catch_up() -> None:
    plan = plan_slot(EVERY_MIN, utc(2026, 3, 1, 12), None, utc(2026, 3, 1, 12, 0, 30), claim_grace_s=2)
    assert (plan.action, plan.slot, plan.catch_up) == (Action.FIRE, utc(2026, 3, 1, 12), True)


def test_decide_fires_the_next_slot_on_time() -> None:
    plan = plan_slot(
        EVERY_MIN, utc(2026, 3, 1, 12, 1), state(utc(2026, 3, 1, 12)), utc(2026, 3, 1, 12, 1), claim_grace_s=2
    )
    assert (plan.action, plan.catch_up) == (Action.FIRE, False)


def test_decide_after_downtime_fires_only_the_latest_slot() -> None:
    plan = plan_slot(
        EVERY_MIN, utc(2026, 3, 1, 13), state(utc(2026, 3, 1, 12)), utc(2026, 3, 1, 13, 0, 5), claim_grace_s=2
    )
    assert (plan.action, plan.slot, plan.catch_up) == (Action.FIRE, utc(2026, 3, 1, 13), True)


def test_decide_idles_on_a_fired_or_newer_slot() -> None:
    now = utc(2026, 3, 1, 12, 0, 30)
    plan = plan_slot(EVERY_MIN, utc(2026, 3, 1, 12), state(utc(2026, 3, 1, 12)), now, claim_grace_s=2)
    assert plan.action is Action.IDLE
    # A slower schedule whose latest slot is older than the last fired one waits for its next.
    plan = plan_slot(EVERY_MIN, utc(2026, 3, 1, 11), state(utc(2026, 3, 1, 12)), now, claim_grace_s=2)
    assert plan.action is Action.IDLE
    assert plan_slot(EVERY_MIN, None, None, now, claim_grace_s=2).action is Action.IDLE


def test_decide_republishes_an_unconfirmed_claim_only_after_the_grace() -> None:
    slot = utc(2026, 3, 1, 12)
    claimed = state(slot, published=False, claimed_at=slot)
    assert plan_slot(EVERY_MIN, slot, claimed, slot + timedelta(seconds=1), claim_grace_s=2).action is Action.IDLE
    plan = plan_slot(EVERY_MIN, slot, claimed, slot + timedelta(seconds=2), claim_grace_s=2)
    assert (plan.action, plan.slot) == (Action.REPUBLISH, slot)
    # A newer slot is due: the unconfirmed one is published first (its claimer died), not
    # overwritten by the newer claim; once it is confirmed, the newer slot fires.
    newer = slot + timedelta(minutes=1)
    plan = plan_slot(EVERY_MIN, newer, claimed, newer, claim_grace_s=2)
    assert (plan.action, plan.slot) == (Action.REPUBLISH, slot)
    plan = plan_slot(EVERY_MIN, newer, claimed, newer, claim_grace_s=2, replica="r1")
    assert (plan.action, plan.slot) == (Action.PUBLISH, slot)
    confirmed = state(slot, published=True, claimed_at=slot)
    assert plan_slot(EVERY_MIN, newer, confirmed, newer, claim_grace_s=2).action is Action.FIRE


def timezone_offset(hours: int) -> object:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_decide_publishes_its_own_claim_made_ahead_of_the_slot_at_once() -> None:
    slot = utc(2026, 3, 1, 12)
    ahead = state(slot, published=False, claimed_at=slot - timedelta(milliseconds=250))
    plan = plan_slot(EVERY_MIN, slot, ahead, slot, claim_grace_s=2, replica="r1")
    assert (plan.action, plan.catch_up) == (Action.PUBLISH, False)
    # Another replica leaves it to the claimer until the grace has passed.
    assert plan_slot(EVERY_MIN, slot, ahead, slot, claim_grace_s=2, replica="r2").action is Action.IDLE
    # Before the slot is due nothing happens, even for the claimer.
    before = plan_slot(EVERY_MIN, slot - timedelta(minutes=1), ahead, slot - timedelta(milliseconds=100),
                    claim_grace_s=2, replica="r1")  # fmt: skip
    assert before.action is Action.IDLE


# -- time zones and daylight saving ----------------------------------------------------
# 2026 transitions: Europe/Berlin springs forward at 01:00Z on 29 March (02:00 CET ->
# 03:00 CEST) and falls back at 01:00Z on 25 October (03:00 CEST -> 02:00 CET);
# America/New_York at 07:00Z on 8 March (02:00 EST -> 03:00 EDT) and at 06:00Z on
# 1 November (02:00 EDT -> 01:00 EST). The expected slots are written out by hand.


def slots_from(text: str, start: datetime, count: int) -> list[datetime]:
    schedule = parse_schedule(text)
    found, moment = [], start
    for _ in range(count):
        moment = schedule.next_slot(moment)
        found.append(moment)
    return found


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return utc(2026, month, day, hour, minute)


DST_CASES = [
    # Berlin, spring: 02:30 does not exist on the 29th, so it runs at 03:00 CEST (01:00Z).
    ("daily at 02:30 Europe/Berlin", at(3, 27, 12), [at(3, 28, 1, 30), at(3, 29, 1), at(3, 30, 0, 30)]),
    ("hourly at :30 Europe/Berlin", at(3, 28, 23), [
        at(3, 28, 23, 30), at(3, 29, 0, 30), at(3, 29, 1), at(3, 29, 1, 30), at(3, 29, 2, 30),
    ]),
    # 02:00 (skipped, runs at 03:00 CEST) and 03:00 CEST are the same instant: one slot.
    ("hourly at :00 Europe/Berlin", at(3, 28, 23), [at(3, 29, 0), at(3, 29, 1), at(3, 29, 2)]),
    # Berlin, autumn: 02:30 happens twice on the 25th and runs at the first (CEST, 00:30Z).
    ("daily at 02:30 Europe/Berlin", at(10, 23, 12), [at(10, 24, 0, 30), at(10, 25, 0, 30), at(10, 26, 1, 30)]),
    ("hourly at :30 Europe/Berlin", at(10, 24, 22), [
        at(10, 24, 22, 30), at(10, 24, 23, 30), at(10, 25, 0, 30), at(10, 25, 2, 30), at(10, 25, 3, 30),
    ]),
    # New York, spring: 02:30 does not exist on the 8th, so it runs at 03:00 EDT (07:00Z).
    ("daily at 02:30 America/New_York", at(3, 6, 12), [at(3, 7, 7, 30), at(3, 8, 7), at(3, 9, 6, 30)]),
    ("cron 30 * * * * America/New_York", at(3, 8, 5), [
        at(3, 8, 5, 30), at(3, 8, 6, 30), at(3, 8, 7), at(3, 8, 7, 30), at(3, 8, 8, 30),
    ]),
    # New York, autumn: the repeated hour is 01:00-02:00, so 02:30 is unambiguous (EDT, then EST)...
    ("daily at 02:30 America/New_York", at(10, 30, 12), [at(10, 31, 6, 30), at(11, 1, 7, 30), at(11, 2, 7, 30)]),
    # ... and 01:30 happens twice on 1 November and runs at the first (EDT, 05:30Z).
    ("daily at 01:30 America/New_York", at(10, 30, 12), [at(10, 31, 5, 30), at(11, 1, 5, 30), at(11, 2, 6, 30)]),
    ("hourly at :30 America/New_York", at(11, 1, 3), [
        at(11, 1, 3, 30), at(11, 1, 4, 30), at(11, 1, 5, 30), at(11, 1, 7, 30), at(11, 1, 8, 30),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "start", "expected"), DST_CASES)
def test_zoned_slots_across_daylight_saving_changes(text: str, start: datetime, expected: list[datetime]) -> None:
    schedule = parse_schedule(text)
    assert slots_from(text, start, len(expected)) == expected
    for slot in expected:
        assert schedule.previous_slot(slot) == slot
    for earlier, later in itertools.pairwise(expected):
        assert schedule.previous_slot(later - timedelta(microseconds=1)) == earlier


def test_previous_slot_inside_the_repeated_hour_is_its_first_occurrence() -> None:
    """At 02:45 CET (the second 02:45 in Berlin) the 02:30 slot is the one that ran at 00:30Z."""
    schedule = parse_schedule("daily at 02:30 Europe/Berlin")
    assert schedule.previous_slot(utc(2026, 10, 25, 1, 45)) == utc(2026, 10, 25, 0, 30)
    assert schedule.next_slot(utc(2026, 10, 25, 1, 45)) == utc(2026, 10, 26, 1, 30)


@pytest.mark.parametrize(
    ("text", "zone", "expression"),
    [
        ("daily at 02:00 Europe/Berlin", "Europe/Berlin", "0 2 * * *"),
        ("cron 0 2 * * * America/New_York", "America/New_York", "0 2 * * *"),
        ("Weekly on Mon at 09:30 Asia/Kolkata", "Asia/Kolkata", "30 9 * * 1"),
        ("hourly at :15 UTC", "UTC", "15 * * * *"),
        ("monthly on 1 at 00:00 utc", "UTC", "0 0 1 * *"),
        ("daily at 02:00", "UTC", "0 2 * * *"),
    ],
)
def test_zone_is_read_off_the_end_as_written(text: str, zone: str, expression: str) -> None:
    schedule = parse_schedule(text)
    assert isinstance(schedule, CronSchedule)
    assert (schedule.zone, schedule.expression, schedule.text) == (zone, expression, text)


def test_utc_stays_the_default_and_slots_are_utc() -> None:
    berlin = parse_schedule("daily at 02:00 Europe/Berlin").next_slot(utc(2026, 6, 30, 12))
    assert berlin == utc(2026, 7, 1, 0)
    assert berlin.tzinfo is UTC
    assert scheduled_run_id("stats", berlin) == "stats:2026-07-01T00:00:00Z"
    assert parse_schedule("daily at 02:00").next_slot(utc(2026, 7, 1)) == utc(2026, 7, 1, 2)


@pytest.mark.parametrize(
    "text", ["daily at 02:00 Europe/Berln", "cron 0 2 * * * europe/berlin", "hourly at :00 Mars/Olympus_Mons"]
)
def test_unknown_zone_is_named_with_an_example(text: str) -> None:
    zone = text.split()[-1]
    with pytest.raises(ValueError, match="unknown time zone") as caught:
        parse_schedule(text)
    assert str(caught.value) == (
        f"invalid schedule {text!r}: unknown time zone {zone!r}; "
        "use an IANA name such as Europe/Berlin or America/New_York (UTC when left out)"
    )


def test_intervals_take_no_zone() -> None:
    with pytest.raises(ValueError, match=r"expected 'every <n><s\|m\|h\|d>'"):
        parse_schedule("every 5m Europe/Berlin")


@pytest.mark.parametrize(
    "text",
    ["daily at 02:30", "hourly at :00", "cron */7 * * * *", "cron 0,30 1-3 * * *", "weekly on sun at 02:30",
     "monthly on 31 at 01:30"],
)  # fmt: skip
@given(
    zone=st.timezone_keys(),
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)),
)
def test_zoned_slots_are_increasing_and_consistent_in_any_zone(text: str, zone: str, moment: datetime) -> None:
    schedule = parse_schedule(f"{text} {zone}")
    previous = schedule.previous_slot(moment)
    following = schedule.next_slot(moment)
    assert previous <= moment < following
    assert schedule.next_slot(previous) == following
    assert schedule.previous_slot(following) == following
    assert schedule.previous_slot(following - timedelta(microseconds=1)) == previous
    assert schedule.next_slot(following) > following
    assert all(slot.tzinfo is UTC for slot in (previous, following))
