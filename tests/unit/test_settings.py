"""Settings: defaults from DESIGN.md, and clear start-up errors naming the variable."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import RetryPolicy, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PULSE_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_design() -> None:
    settings = load_settings()
    jobs = settings.jobs
    assert (jobs.whale_sync.retry.max_attempts, jobs.whale_sync.retry.initial_backoff_s) == (4, 0.25)
    assert jobs.whale_sync.timeout_s == 45
    assert (jobs.market_sync.retry.max_attempts, jobs.market_sync.retry.initial_backoff_s) == (4, 0.5)
    assert jobs.market_sync.timeout_s == 240
    assert (jobs.stats.retry.max_attempts, jobs.stats.retry.initial_backoff_s) == (3, 1)
    assert (jobs.cleanup.retry.max_attempts, jobs.cleanup.retry.initial_backoff_s, jobs.cleanup.retry.base) == (5, 5, 3)
    assert jobs.market_sync.schedule == "every 5m"
    assert jobs.stats.schedule == "hourly at :00"
    assert jobs.cleanup.schedule == "daily at 02:00"
    assert settings.runs_retention_days == 2
    assert settings.stats_retention_days == 30


def test_nested_job_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_JOBS__MARKET_SYNC__RETRY__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("PULSE_JOBS__WHALE_SYNC__SCHEDULE", "every 30s")
    settings = load_settings()
    assert settings.jobs.market_sync.retry.max_attempts == 7
    # The other fields of the overridden job keep their defaults.
    assert settings.jobs.market_sync.retry.initial_backoff_s == 0.5
    assert settings.jobs.market_sync.timeout_s == 240
    assert settings.jobs.whale_sync.schedule == "every 30s"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PULSE_NATS_URL", "http://localhost:4222", "expected nats://host:port"),
        ("PULSE_NATS_URL", "nats://localhost:notaport", "port"),
        ("PULSE_MONGO_URL", "postgres://localhost", "expected mongodb://"),
        ("PULSE_HEARTBEAT_INTERVAL_S", "-1", "greater than 0"),
        ("PULSE_JOBS__STATS__RETRY__INITIAL_BACKOFF_S", "-5", "greater than 0"),
        ("PULSE_JOBS__STATS__SCHEDULE", "every 0s", "at least 1s"),
        ("PULSE_JOBS__STATS__SCHEDULE", "cron 61 * * * *", "bad cron expression"),
        ("PULSE_PAGE_SIZE", "abc", "valid integer"),
        ("PULSE_POLYMARKET_GAMMA_URL", "gamma-api", "http:// or https://"),
    ],
)
def test_bad_value_names_the_variable_and_expectation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message
    assert expected in message


def test_combinations_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_HEARTBEAT_INTERVAL_S", "20")
    monkeypatch.setenv("PULSE_ACK_WAIT_S", "30")
    with pytest.raises(ConfigError, match="PULSE_ACK_WAIT_S must be at least twice"):
        load_settings()


def test_secrets_never_appear_in_errors_or_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_MONGO_URL", "postgres://admin:hunter2@db:5432")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    settings = Settings(mongo_url="mongodb://admin:hunter2@db:27017/", nats_user="u", nats_password="s3cr3t")
    assert "hunter2" not in repr(settings)
    assert "s3cr3t" not in repr(settings)
    assert settings.mongo_url_redacted == "mongodb://admin:***@db:27017/"


@pytest.mark.parametrize(("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (20, 30.0)])
def test_retry_delay_is_exponential_and_capped(attempt: int, expected: float) -> None:
    policy = RetryPolicy(initial_backoff_s=0.5, base=2, max_backoff_s=30, jitter=0)
    assert policy.delay_s(attempt) == pytest.approx(expected)


def test_retry_jitter_stays_within_its_spread() -> None:
    policy = RetryPolicy(initial_backoff_s=1, base=2, jitter=0.2)
    delays = [policy.delay_s(3) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert len(set(delays)) > 1
