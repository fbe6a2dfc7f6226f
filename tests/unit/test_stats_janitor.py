"""Pure parts of the janitor: what cleanup deletes and when the watchdog calls a run dead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.janitor.cleanup import Retention, sweeps
from shared.runtime._watchdog import STALE_HEARTBEATS, WatchdogResult, stale_cutoff
from shared.schemas import TERMINAL_STATUSES
from shared.settings import Settings

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def test_retention_comes_from_settings_with_design_defaults() -> None:
    retention = Retention.from_settings(Settings())
    assert retention == Retention(
        runs=timedelta(days=2), failed_runs=timedelta(days=7), whale_trades=timedelta(days=30)
    )


def test_sweeps_cover_every_terminal_status_once_and_no_live_one() -> None:
    retention = Retention(runs=timedelta(days=2), failed_runs=timedelta(days=7), whale_trades=timedelta(days=30))
    by_label = {sweep.label: sweep for sweep in sweeps(retention, NOW)}
    swept = by_label["runs"].expired["status"]["$in"] + by_label["failed_runs"].expired["status"]["$in"]
    assert sorted(swept) == sorted(status.value for status in TERMINAL_STATUSES)
    assert by_label["runs"].expired["ended_at"] == {"$lt": NOW - timedelta(days=2)}
    assert by_label["failed_runs"].expired["ended_at"] == {"$lt": NOW - timedelta(days=7)}
    assert by_label["whale_trades"].expired == {"traded_at": {"$lt": NOW - timedelta(days=30)}}


def test_stale_cutoff_is_three_heartbeat_intervals() -> None:
    assert STALE_HEARTBEATS == 3
    assert stale_cutoff(NOW, 5.0) == NOW - timedelta(seconds=15)


def test_stale_cutoff_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="PULSE_HEARTBEAT_INTERVAL_S"):
        stale_cutoff(NOW, 0)


def test_watchdog_summary_is_small() -> None:
    result = WatchdogResult(timed_out=[f"run{i}" for i in range(50)], already_ended=2)
    summary = result.summary()
    assert summary["timed_out"] == 50
    assert summary["already_ended"] == 2
    assert isinstance(summary["runs"], list)
    assert len(summary["runs"]) == 20


def test_watchdog_waits_for_redelivery_before_ending_a_run() -> None:
    """A dead worker's run is first redelivered (ack wait); the watchdog never pre-empts that."""
    from shared.runtime._watchdog import silence_limit_s

    assert silence_limit_s(5.0, redelivery_after_s=12.0) == 17.0
    assert silence_limit_s(5.0, redelivery_after_s=30.0) == 35.0
    assert silence_limit_s(5.0, redelivery_after_s=None) == 15.0
    assert stale_cutoff(NOW, 5.0, 12.0) == NOW - timedelta(seconds=17)
