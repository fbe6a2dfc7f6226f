"""Quota periods, forecasts to the reset, and the retry decision for a deferred run."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from shared.budgets import Period, budget_id, current_period, forecast
from shared.errors import ConfigError
from shared.runtime._retry import Outcome, OutcomeKind, Settle, decide
from shared.schemas import RunStatus
from shared.settings import Quota, RetryPolicy, load_settings


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("quota", "now", "start", "reset"),
    [
        (Quota(requests=10), "2026-12-02T13:00:00", "2026-12-02T00:00:00", "2026-12-03T00:00:00"),
        (Quota(requests=9, resets_at=time(6, 30)), "2026-12-02T06:29:59", "2026-12-01T06:30:00", "2026-12-02T06:30:00"),
        (Quota(requests=9, resets_at=time(6, 30)), "2026-12-02T06:30:00", "2026-12-02T06:30:00", "2026-12-03T06:30:00"),
        (Quota(requests=10, period="month"), "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        (
            Quota(requests=10, period="month", resets_at=time(8, 0)),
            "2027-01-01T07:00:00",
            "2026-12-01T08:00:00",
            "2027-01-01T08:00:00",
        ),
    ],
)
def test_the_current_period_holds_now_and_ends_at_the_reset(quota: Quota, now: str, start: str, reset: str) -> None:
    assert current_period(quota, at(now)) == Period(at(start), at(reset))


def test_a_budget_id_names_the_upstream_and_the_period_start() -> None:
    period = current_period(Quota(requests=1), at("2026-12-02T13:00:00"))
    assert budget_id("polymarket_gamma", period) == "polymarket_gamma:2026-12-02T00:00:00Z"


DAY = Period(at("2026-12-02T00:00:00"), at("2026-12-03T00:00:00"))


def test_a_steady_pace_that_fits_forecasts_the_linear_total_and_no_run_out() -> None:
    # 250 in 6 h → 1,000 by midnight, under a quota of 1,200
    ahead = forecast(250, 1200, DAY, at("2026-12-02T06:00:00"))
    assert (ahead.at_reset, ahead.runs_out_at) == (1000, None)


def test_a_pace_that_overshoots_forecasts_when_the_quota_runs_out() -> None:
    # 500 in 6 h: the remaining 300 of 800 last 3.6 h more
    ahead = forecast(500, 800, DAY, at("2026-12-02T06:00:00"))
    assert ahead.at_reset == 2000
    assert ahead.runs_out_at == at("2026-12-02T09:36:00")


def test_a_spent_quota_forecasts_what_was_spent_and_runs_out_now() -> None:
    now = at("2026-12-02T06:00:00")
    assert forecast(800, 800, DAY, now) == type(forecast(0, 1, DAY, now))(800, now)


@pytest.mark.parametrize(("spent", "now"), [(0, "2026-12-02T06:00:00"), (5, "2026-12-02T00:00:00")])
def test_nothing_is_projected_without_spend_or_without_elapsed_time(spent: int, now: str) -> None:
    assert forecast(spent, 100, DAY, at(now)) == type(forecast(0, 1, DAY, at(now)))(spent, None)


def test_a_deferred_outcome_is_put_back_without_failing_even_on_the_last_attempt() -> None:
    outcome = Outcome(OutcomeKind.DEFERRED, error="quota spent", reason="quota_exhausted", delay_s=42.0)
    decision = decide(outcome, attempt=3, policy=RetryPolicy(max_attempts=3))
    assert (decision.settle, decision.status, decision.delay_s, decision.dead_letter) == (
        Settle.NAK,
        RunStatus.DEFERRED,
        42.0,
        None,
    )
    assert not decision.is_terminal


def test_a_quota_must_belong_to_a_rate_limits_bucket() -> None:
    with pytest.raises(ConfigError, match="PULSE_QUOTAS names 'gamma'"):
        load_settings(quotas={"gamma": {"requests": 5}})


def test_a_quota_reset_time_is_utc_without_an_offset() -> None:
    with pytest.raises(ConfigError, match="UTC time of day"):
        load_settings(quotas={"polymarket_gamma": {"requests": 5, "resets_at": "06:00+02:00"}})


def test_default_freshness_targets_are_the_documented_ones() -> None:
    jobs = load_settings().jobs
    targets = {job: policy.freshness_target_s for job, policy in jobs.items()}
    assert targets == {
        "market_sync": 600,
        "whale_sync": 180,
        "stats": 7200,
        "market_refresh": None,
        "cleanup": None,
        "watchdog": None,
    }
    assert timedelta(seconds=jobs.market_sync.freshness_target_s or 0) == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("left_s", "target_s", "words", "level"),
    [
        (None, None, "-", "none"),
        (None, 600.0, "-", "none"),  # a target, but the job was never served yet
        (300.0, 600.0, "5m00s of 10m00s", "ok"),
        (120.0, 600.0, "2m00s of 10m00s", "low"),  # under a quarter left
        (-65.0, 600.0, "missed by 1m05s", "missed"),
    ],
)
def test_freshness_left_is_told_in_words_with_a_level(
    left_s: float | None, target_s: float | None, words: str, level: str
) -> None:
    from shared.readmodel.status import JobStatus, freshness_left

    row = JobStatus(
        job="market_sync", schedule="every 5m", schedule_source="default", enabled=True, paused=False,
        next_fire=None, freshness_target_s=target_s, freshness_budget_s=left_s,
    )  # fmt: skip
    assert freshness_left(row) == (words, level)
