"""Chains: the `on_complete` grammar, the follow-up and refresh request ids, and the defaults that use them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from services.market_sync.refresh import Quote, summarize_trades, yes_change
from services.whale_sync.whales import refresh_keys
from shared.chains import FollowUp, configured_chains, follow_up_request, hour_of, keyed_request, parse_follow_up
from shared.jobargs import check_args
from shared.names import Names
from shared.permissions import requested_jobs, service_permissions
from shared.providers.base import RecordError
from shared.schemas import RunRecord, RunStatus, Trigger, WhaleTradeDoc
from shared.settings import JobPolicies, JobPolicy, load_settings

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
MARKET_A = "0x" + "a" * 64
MARKET_B = "0x" + "b" * 64


def completed(run_id: str, scheduled_for: datetime | None, job: str = "market_sync") -> RunRecord:
    return RunRecord(
        run_id=run_id, job=job, trigger=Trigger.SCHEDULE, status=RunStatus.COMPLETED, scheduled_for=scheduled_for
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stats", FollowUp("stats")),
        ("stats@hour", FollowUp("stats", "hour")),
        ("market_refresh", FollowUp("market_refresh")),
    ],
)
def test_follow_ups_parse(text: str, expected: FollowUp) -> None:
    assert parse_follow_up(text) == expected
    assert str(parse_follow_up(text)) == text


@pytest.mark.parametrize(
    ("text", "problem"), [("stats@day", "only hour"), ("Stats", "invalid job name"), ("@hour", "invalid")]
)
def test_a_wrong_follow_up_is_refused_with_what_to_write(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_follow_up(text)
    with pytest.raises(ValidationError, match=problem):
        JobPolicy(schedule="every 1m", stale_after_s=60, on_complete=(text,))


def test_a_plain_follow_up_is_derived_from_the_completed_run() -> None:
    record = completed("market_sync:2026-12-01T10:05:00Z", T0 + timedelta(minutes=5))
    request = follow_up_request(record, FollowUp("stats"))
    assert request.run_id == "stats:chain:" + hashlib.sha256(record.run_id.encode()).hexdigest()[:32]
    assert request.scheduled_for == record.scheduled_for
    assert request.requested_by == f"chain:{record.run_id}"
    assert request.trigger is Trigger.CHAIN
    assert request.args == {}


def test_an_hourly_follow_up_is_one_run_per_hour_for_the_hours_slot() -> None:
    hourly = FollowUp("stats", "hour")
    at_00 = follow_up_request(completed("market_sync:a", T0), hourly)
    at_35 = follow_up_request(completed("market_sync:b", T0 + timedelta(minutes=35)), hourly)
    next_hour = follow_up_request(completed("market_sync:c", T0 + timedelta(hours=1)), hourly)
    assert at_00.run_id == at_35.run_id != next_hour.run_id
    assert at_35.scheduled_for == T0
    assert next_hour.scheduled_for == T0 + timedelta(hours=1)
    assert at_35.requested_by == "chain:market_sync:b"  # the run that asked (a duplicate is dropped)
    other_job = follow_up_request(completed("whale_sync:a", T0, job="whale_sync"), hourly)
    assert other_job.run_id != at_00.run_id


def test_hour_of_is_the_utc_hour() -> None:
    in_berlin = datetime(2026, 12, 1, 12, 59, 59, tzinfo=timezone(timedelta(hours=1)))  # 11:59:59 UTC
    assert hour_of(in_berlin) == datetime(2026, 12, 1, 11, tzinfo=UTC)


def test_a_keyed_request_carries_its_args_and_the_same_key_gives_the_same_run() -> None:
    one = keyed_request("market_refresh", "k", scheduled_for=T0, after_run_id="whale_sync:x", args={"market": MARKET_A})
    two = keyed_request("market_refresh", "k", scheduled_for=T0, after_run_id="whale_sync:y", args={"market": MARKET_A})
    assert one.run_id == two.run_id
    assert one.args == {"market": MARKET_A}


def trade(market: str, at: datetime, notional: float = 20_000.0) -> WhaleTradeDoc:
    return WhaleTradeDoc(
        _id=f"polymarket:{market}:{at.isoformat()}",
        provider="polymarket",
        wallet="0x" + "1" * 40,
        market=market,
        side="BUY",
        size=notional / 0.5,
        price=0.5,
        notional=notional,
        transaction_hash="0x" + "2" * 64,
        traded_at=at,
        ingested_at=at,
    )


def test_refresh_keys_are_one_per_market_and_hour_of_its_trades() -> None:
    trades = [
        trade(MARKET_A, T0 + timedelta(minutes=1)),
        trade(MARKET_A, T0 + timedelta(minutes=59)),
        trade(MARKET_A, T0 + timedelta(minutes=61)),
        trade(MARKET_B, T0 + timedelta(minutes=30)),
    ]
    assert refresh_keys(trades) == [(MARKET_A, T0), (MARKET_A, T0 + timedelta(hours=1)), (MARKET_B, T0)]
    assert refresh_keys([]) == []


def test_trades_summary_counts_valid_trades_and_sums_their_notional() -> None:
    parsed = [
        trade(MARKET_A, T0, 10_000),
        trade(MARKET_A, T0 + timedelta(minutes=5), 2_500.5),
        RecordError("trade", None, "x"),
    ]
    summary = summarize_trades(parsed)
    assert (summary.trades, summary.invalid, summary.notional) == (2, 1, 12_500.5)
    assert summary.newest_at == T0 + timedelta(minutes=5)
    assert summarize_trades([]).newest_at is None


def quote(yes: float | None) -> Quote:
    return Quote(outcome_prices=[], yes_price=yes, no_price=None, upstream_updated_at=None)


def test_yes_change_is_the_move_of_the_yes_price() -> None:
    assert yes_change(quote(0.4), quote(0.55)) == pytest.approx(0.15)
    assert yes_change(quote(None), quote(0.5)) is None


def test_market_refresh_takes_one_condition_id() -> None:
    assert check_args("market_refresh", {"market": MARKET_A}) is None
    assert "argument 'market' is required" in (check_args("market_refresh", {}) or "")
    assert "market" in (check_args("market_refresh", {"market": "500123"}) or "")


def test_by_default_stats_is_chained_hourly_after_market_sync_and_not_scheduled() -> None:
    policies = JobPolicies()
    assert policies.market_sync.on_complete == ("stats@hour",)
    assert policies.stats.enabled is False
    assert policies.market_refresh.enabled is False
    chains = configured_chains(load_settings())
    assert [(c.after, str(c.follow_up)) for c in chains] == [("market_sync", "stats@hour")]


def test_services_may_publish_the_requests_their_jobs_make() -> None:
    names = Names()
    assert requested_jobs("market_sync") == ("stats",)
    assert requested_jobs("whale_sync") == ("market_refresh",)
    assert "jobs.stats" in service_permissions(names, "market_sync")["publish"]
    assert "jobs.market_refresh" in service_permissions(names, "whale_sync")["publish"]
    assert "jobs.market_sync" not in service_permissions(names, "whale_sync")["publish"]
