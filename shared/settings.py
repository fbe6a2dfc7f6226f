"""The one settings model of marketpulse.

Every knob comes from the environment with the `PULSE_` prefix; nested values use `__`:

    PULSE_NATS_URL=nats://nats:4222
    PULSE_JOBS__MARKET_SYNC__RETRY__MAX_ATTEMPTS=6
    PULSE_JOBS__WHALE_SYNC__SCHEDULE="every 30s"

Each default is declared once, here, with DESIGN.md's numbers. Secrets are `SecretStr`
and never appear in logs, errors or events. `load_settings()` turns a validation failure
into a `ConfigError` that names the environment variable and what it expects.
"""

from __future__ import annotations

import random
from datetime import time as time_of_day
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError, redact_url
from shared.names import Names
from shared.schemas import CatchUp

ENV_PREFIX = "PULSE_"
_NESTED = "__"
#: Default of `store_write_batch` (services' functions take it as their default too).
DEFAULT_STORE_WRITE_BATCH = 1000


class RetryPolicy(BaseModel):
    """How failed attempts are retried (as delayed redelivery of the request).

    The delay before attempt n+1 is `initial_backoff_s * base**(n-1)`, capped at
    `max_backoff_s`, then spread by +/- `jitter` (a fraction) so replicas do not retry
    in lock-step.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(4, ge=1, le=100, description="attempts in all, the first included")
    initial_backoff_s: float = Field(0.5, gt=0, description="delay after the first failed attempt")
    base: float = Field(2.0, ge=1.0, description="growth factor of the delay per attempt")
    max_backoff_s: float = Field(300.0, gt=0, description="cap on any single delay")
    jitter: float = Field(0.1, ge=0, le=1, description="relative random spread of each delay")

    def delay_s(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed."""
        if failed_attempt < 1:
            raise ValueError("attempts are numbered from 1")
        raw = min(self.max_backoff_s, self.initial_backoff_s * self.base ** (failed_attempt - 1))
        if self.jitter == 0:
            return raw
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.max_backoff_s, raw * (1 + spread)))


class JobPolicy(BaseModel):
    """Everything that governs how one job is scheduled and run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule: str = Field(
        description=(
            "when the ticker requests the job (UTC): 'every 30s', 'cron */5 * * * *', "
            "'hourly at :15', 'daily at 02:00', 'weekly on mon at 09:30', 'monthly on 1 at 00:00'"
        )
    )
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = Field(60.0, gt=0, description="per-attempt time limit; None = no limit")
    overlap: Literal["skip", "queue", "parallel"] = Field(
        "skip",
        description=(
            "skip: one run at a time, scheduled requests that arrive after the next slot "
            "are recorded skipped; queue: one at a time, never skip; parallel: up to "
            "`concurrency` runs at once"
        ),
    )
    concurrency: int = Field(1, ge=1, le=1000, description="runs at once per job, with overlap=parallel")
    rate_limit_bucket: str | None = Field(None, description="name of a shared token bucket (see rate_limits)")
    on_rate_limited: Literal["delay", "skip"] = Field(
        "delay", description="when the bucket stays empty past rate_limit_wait_s: retry later or skip"
    )
    rate_limit_wait_s: float = Field(10.0, ge=0, description="longest wait for a token before giving up")
    calls_per_run: int = Field(
        1,
        ge=0,
        description=(
            "estimated tokens (provider calls) one run takes from rate_limit_bucket: "
            "paces `pulse backfill` and prices its --dry-run"
        ),
    )
    stale_after_s: float = Field(gt=0, description="alert when no run succeeded for this long")
    # The operators' objective for the data the job keeps (how old it may get), checked
    # by the janitor every minute whatever the job's workers and the ticker are doing;
    # `stale_after_s` stays the health alarm each worker raises about its own job.
    freshness_target_s: float | None = Field(
        None, gt=0, description="the last success may be at most this old (alert + recovery); None = no target"
    )
    upstreams: tuple[str, ...] = Field(
        (), description="upstream APIs (rate bucket names) the job calls; their quotas (PULSE_QUOTAS) defer its runs"
    )
    alert_after_failures: int = Field(3, ge=1, description="alert after this many failed runs in a row")
    enabled: bool = Field(True, description="False: the ticker never requests it (manual runs still work)")
    catch_up: CatchUp = Field(
        "latest",
        description=(
            "slots missed while no ticker ran: skip = record them missed, fire none; "
            "latest = fire the newest one only; all = fire each, oldest first (at most catch_up_max_slots)"
        ),
    )
    on_complete: tuple[str, ...] = Field(
        (),
        description=(
            "jobs requested (trigger chain, exactly once) when a run of this job completes: "
            "'stats' after every completed run, 'stats@hour' once per hour of the runs' slots"
        ),
    )

    @field_validator("on_complete")
    @classmethod
    def _follow_ups_are_jobs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from shared.chains import parse_follow_up  # the one grammar of follow-ups

        for text in value:
            parse_follow_up(text)
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_is_valid(cls, value: str) -> str:
        from shared.schedules import parse_schedule  # the ticker's parser: one grammar only

        parse_schedule(value)
        return value

    @model_validator(mode="after")
    def _concurrency_needs_parallel(self) -> JobPolicy:
        if self.concurrency > 1 and self.overlap != "parallel":
            raise ValueError("concurrency > 1 needs overlap='parallel'")
        return self

    @model_validator(mode="after")
    def _catch_up_all_needs_the_runs_kept(self) -> JobPolicy:
        # Under overlap=skip the runtime records a scheduled request whose next slot has
        # passed `skipped`: every slot `all` fires but the newest would be skipped.
        if self.catch_up == "all" and self.overlap == "skip":
            raise ValueError("catch_up='all' needs overlap='queue' or 'parallel' (with 'skip' late slots are skipped)")
        return self

    @property
    def max_running(self) -> int:
        """How many runs of this job may be in flight at once, across all replicas."""
        return self.concurrency if self.overlap == "parallel" else 1


_DEFAULT_POLICIES: dict[str, JobPolicy] = {
    "market_sync": JobPolicy(
        schedule="every 5m",
        retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.5, base=2),
        timeout_s=240,
        stale_after_s=15 * 60,
        freshness_target_s=10 * 60,
        upstreams=("polymarket_gamma",),
        # The hour's stats snapshot follows the first market sync of the hour that
        # completes, so it never reads a half-synced catalogue (docs/workflows.md).
        on_complete=("stats@hour",),
    ),
    "whale_sync": JobPolicy(
        schedule="every 1m",
        retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.25, base=2),
        timeout_s=45,
        stale_after_s=5 * 60,
        freshness_target_s=3 * 60,
        upstreams=("polymarket_data",),
    ),
    "stats": JobPolicy(
        # Not requested by the ticker: market_sync's `on_complete` chains it once per hour.
        # The schedule stays what `pulse schedule` shows and what re-enabling it would fire.
        schedule="hourly at :00",
        enabled=False,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=1, base=2),
        timeout_s=120,
        stale_after_s=2 * 3600 + 600,
        freshness_target_s=2 * 3600,
    ),
    "market_refresh": JobPolicy(
        # Requested by whale_sync (one per market that received a whale trade, per hour),
        # never by the ticker; the schedule is only a placeholder the field requires.
        schedule="hourly at :00",
        enabled=False,
        retry=RetryPolicy(max_attempts=4, initial_backoff_s=1, base=2),
        timeout_s=60,
        overlap="parallel",
        concurrency=8,
        # Quiet markets request none for hours: alert only after a day without one.
        stale_after_s=24 * 3600,
        upstreams=("polymarket_gamma", "polymarket_data"),
    ),
    "cleanup": JobPolicy(
        schedule="daily at 02:00",
        retry=RetryPolicy(max_attempts=5, initial_backoff_s=5, base=3),
        timeout_s=1800,
        stale_after_s=26 * 3600,
    ),
    "watchdog": JobPolicy(
        schedule="every 1m",
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=1, base=2),
        timeout_s=30,
        stale_after_s=5 * 60,
    ),
}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class JobPolicies(BaseModel):
    """Per-job policies, with DESIGN.md's defaults.

    An override names only what changes (`PULSE_JOBS__STATS__TIMEOUT_S=60`); the rest of
    that job's policy keeps its default, which is why overrides are merged before
    validation instead of replacing the whole policy.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    market_sync: JobPolicy = _DEFAULT_POLICIES["market_sync"]
    whale_sync: JobPolicy = _DEFAULT_POLICIES["whale_sync"]
    stats: JobPolicy = _DEFAULT_POLICIES["stats"]
    cleanup: JobPolicy = _DEFAULT_POLICIES["cleanup"]
    watchdog: JobPolicy = _DEFAULT_POLICIES["watchdog"]
    market_refresh: JobPolicy = _DEFAULT_POLICIES["market_refresh"]

    @model_validator(mode="before")
    @classmethod
    def _merge_with_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            name: _deep_merge(_DEFAULT_POLICIES[name].model_dump(), value)
            if isinstance(value, dict) and name in _DEFAULT_POLICIES
            else value
            for name, value in data.items()
        }

    def for_job(self, job: str) -> JobPolicy:
        """The policy of `job`; raises KeyError for an unknown job."""
        if job not in type(self).model_fields:
            raise KeyError(job)
        policy: JobPolicy = getattr(self, job)
        return policy

    def items(self) -> list[tuple[str, JobPolicy]]:
        return [(name, getattr(self, name)) for name in type(self).model_fields]


class RateLimit(BaseModel):
    """A shared token bucket: `rate` tokens per `period_s`, holding at most `burst`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(gt=0)
    period_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class Quota(BaseModel):
    """An upstream's request budget: at most `requests` per `period`, reset at `resets_at` (UTC).

    A daily quota resets every day at `resets_at`; a monthly one on day 1 of each month
    at `resets_at`. Every request (each try, as the rate buckets count them) spends one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int = Field(ge=1, description="requests allowed per period")
    period: Literal["day", "month"] = Field("day", description="how often the quota resets")
    resets_at: time_of_day = Field(time_of_day(0, 0), description="UTC time of day the period starts (HH:MM)")

    @field_validator("resets_at")
    @classmethod
    def _naive_utc(cls, value: time_of_day) -> time_of_day:
        if value.tzinfo is not None:
            raise ValueError("resets_at is a UTC time of day (HH:MM), without an offset")
        return value


def _default_rate_limits() -> dict[str, RateLimit]:
    # Half of Polymarket's published Cloudflare windows: we share the IP with nobody we
    # know of, but a sync that is polite never meets the 429 path in normal operation.
    return {
        "polymarket_gamma": RateLimit(rate=150, period_s=10, burst=20),
        "polymarket_data": RateLimit(rate=100, period_s=10, burst=10),
    }


class Settings(BaseSettings):
    """All configuration of every marketpulse process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_NESTED,
        extra="ignore",
        frozen=True,
    )

    # -- NATS ------------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated")
    nats_user: str | None = Field(None, description="NATS user (with nats_password)")
    nats_password: SecretStr | None = Field(None, description="NATS password")
    nats_password_file: Path | None = Field(
        None, description="file holding the NATS password (re-read at every reconnect)"
    )
    nats_token: SecretStr | None = Field(None, description="NATS token")
    nats_token_file: Path | None = Field(None, description="file holding the NATS token")
    nats_creds_file: Path | None = Field(None, description="NATS .creds file (JWT + nkey)")
    nats_tls_ca_file: Path | None = Field(None, description="CA bundle that signs the NATS server certificate")
    nats_tls_cert_file: Path | None = Field(None, description="client certificate for NATS mutual TLS")
    nats_tls_key_file: Path | None = Field(None, description="client key for NATS mutual TLS")
    nats_connect_timeout_s: float = Field(5.0, gt=0, description="give up connecting to NATS after this long")
    namespace: str = Field("", description="prefix of every stream, subject and bucket (empty in production)")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of streams and buckets")
    duplicate_window_s: float = Field(
        600.0, gt=0, description="JetStream de-duplication window for Nats-Msg-Id (seconds)"
    )
    events_max_age_days: float = Field(7, gt=0, description="how long EVENTS keeps run events and alerts")
    dlq_max_age_days: float = Field(30, gt=0, description="how long DLQ keeps dead letters")
    logs_max_age_days: float = Field(3, gt=0, description="how long LOGS keeps the log lines of runs")
    logs_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024, description="size cap of LOGS; the oldest lines go first"
    )
    log_lines_per_run: int = Field(2000, ge=10, description="log lines kept per run attempt and process")
    log_line_max_chars: int = Field(2000, ge=200, description="longer log messages are cut to this length")

    # -- MongoDB ---------------------------------------------------------------
    mongo_url: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017"), description="MongoDB URI (may hold credentials and TLS options)"
    )
    mongo_url_file: Path | None = Field(None, description="file holding the MongoDB URI")
    mongo_db: str = Field("marketpulse", min_length=1, max_length=60, description="database name")
    mongo_timeout_s: float = Field(5.0, gt=0, description="server selection / connect timeout")
    # Every call has a deadline, so a hung store fails an attempt (retryable) instead of
    # hanging it. A healthy store answers our calls in milliseconds and the largest single
    # call (a bulk write of `store_write_batch` documents) in under a second on the embedded
    # store; 10 s is ten times that, and matches the default ack wait, about when JetStream
    # would hand a silent request to another worker anyway. Longer operations (market_sync
    # chunks, stats aggregations, cleanup batches) set their own bound with pymongo.timeout.
    mongo_op_timeout_s: float = Field(10.0, gt=0, description="deadline of each MongoDB operation (PyMongo timeoutMS)")
    mongo_tls_ca_file: Path | None = Field(None, description="CA bundle that signs the MongoDB server certificate")
    mongo_tls_cert_file: Path | None = Field(None, description="client certificate for MongoDB mutual TLS")
    mongo_tls_key_file: Path | None = Field(None, description="client key for MongoDB mutual TLS")
    # One bulk call is one server round-trip that must finish within its deadline; 1,000
    # documents take ~0.4 s on the embedded store (H2) and far less on MongoDB.
    store_write_batch: int = Field(
        DEFAULT_STORE_WRITE_BATCH, ge=1, le=100_000, description="most documents in one bulk write, insert or update"
    )

    # -- runtime ---------------------------------------------------------------
    http_host: str = Field("0.0.0.0", description="address of /healthz, /readyz and /metrics")
    http_port: int = Field(8080, ge=0, le=65535, description="port of /healthz, /readyz and /metrics (0 = any)")
    alert_webhook_url: SecretStr | None = Field(
        None, description="generic alert webhook: each alert POSTed as JSON, signed (docs/alerts.md)"
    )
    alert_webhook_secret: SecretStr | None = Field(
        None, description="shared secret of the webhook's HMAC-SHA256 signature (required with the URL)"
    )
    alert_slack_webhook_url: SecretStr | None = Field(None, description="Slack-compatible incoming webhook URL")
    alert_webhook_url_file: Path | None = Field(None, description="file holding the alert webhook URL")
    alert_webhook_secret_file: Path | None = Field(None, description="file holding the alert webhook secret")
    alert_slack_webhook_url_file: Path | None = Field(None, description="file holding the Slack webhook URL")
    alert_delivery_attempts: int = Field(
        6, ge=1, le=20, description="quick tries per alert and sink before it is kept for a later try"
    )
    alert_delivery_timeout_s: float = Field(10.0, gt=0, description="per-request timeout to an alert sink")
    stack_file: Path = Field(
        Path(".data/stack.json"),
        description="where pulse up records its servers; other pulse commands read it when no URL is set",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_json: bool = Field(True, description="one JSON object per log line (False: plain text)")
    heartbeat_interval_s: float = Field(5.0, gt=0, description="how often a running handler reports progress")
    # Two heartbeats: a dead worker's request is redelivered (and its run resumed by
    # another worker) before the watchdog, at three heartbeats, would call it timed out.
    ack_wait_s: float = Field(
        10.0, gt=0, description="JetStream ack wait; a silent worker's request is redelivered after it"
    )
    # A bug (not an unreachable store or NATS) tends to repeat on every delivery; a few
    # tries ride out a rare race, and then the run ends instead of looping forever.
    unhandled_error_deliveries: int = Field(
        3,
        ge=1,
        description="deliveries of one request whose handling raised an unexpected error before its run is failed",
    )
    # A leader election or a store failover fails whatever the handler was doing at the
    # time; such an attempt runs again without counting. The bound stops a failure that
    # only looks like an outage (a query that always outlives its deadline) from looping:
    # past it, the failure counts as a failed attempt and the job's retry policy decides.
    max_interruptions: int = Field(
        10,
        ge=0,
        description="attempts of one run that the store or NATS may fail under and that run again "
        "without counting; past it such a failure counts as a failed attempt",
    )
    # The replaced system's step defaults: first backoff 250 ms, factor 2, given up after
    # the 4th failure, with jitter; all inside one attempt.
    step_retry: RetryPolicy = Field(
        RetryPolicy(max_attempts=4, initial_backoff_s=0.25, base=2.0, max_backoff_s=30.0, jitter=0.1),
        description="retries of a workflow step inside one attempt (overridable per step)",
    )
    step_results_max_bytes: int = Field(
        1024 * 1024, ge=1, description="total size of the JSON results a workflow run's steps may record"
    )
    # A day of an hourly job, or 100 minutes of a per-minute one: enough to repair an
    # outage, bounded so that a long one does not flood the workers with old slots.
    catch_up_max_slots: int = Field(
        100, ge=1, le=1000, description="most missed slots one job fires after downtime with catch_up=all (newest kept)"
    )
    jobs: JobPolicies = JobPolicies()
    rate_limits: dict[str, RateLimit] = Field(default_factory=_default_rate_limits)
    # Polymarket publishes rate windows, not quotas, so none is set by default; an
    # upstream with a daily or monthly allowance gets one here (docs/budgets.md).
    quotas: dict[str, Quota] = Field(
        default_factory=dict, description="request quota per upstream (a rate_limits bucket name), e.g. per day"
    )
    quota_recheck_s: float = Field(
        600.0, gt=0, description="a run deferred by a quota looks again this often before the reset"
    )

    # -- dashboard (services/dashboard) ----------------------------------------
    dashboard_host: str = Field("0.0.0.0", description="address the operators' dashboard listens on")
    dashboard_port: int = Field(8090, ge=0, le=65535, description="port of the operators' dashboard (0 = any)")
    # None keeps the dashboard read-only: without a token no action can be taken.
    dashboard_token: SecretStr | None = Field(
        None, description="operator token that unlocks the dashboard's actions (unset: read-only)"
    )
    dashboard_token_file: Path | None = Field(None, description="file holding the dashboard operator token")
    dashboard_page_size: int = Field(50, ge=5, le=500, description="runs per page on the dashboard")

    # -- provider --------------------------------------------------------------
    provider: Literal["polymarket"] = Field("polymarket", description="market data provider")
    polymarket_gamma_url: str = Field("https://gamma-api.polymarket.com", description="Gamma API base URL")
    polymarket_data_url: str = Field("https://data-api.polymarket.com", description="Data API base URL")
    polymarket_api_key: SecretStr | None = Field(None, description="API key sent as a header, if any")
    polymarket_api_key_file: Path | None = Field(None, description="file holding the provider API key")
    page_size: int = Field(100, ge=1, le=1000, description="markets per listing page")
    whale_threshold_usd: float = Field(10_000.0, gt=0, description="smallest trade notional (USD) kept")
    whale_overlap_s: float = Field(120.0, ge=0, description="re-read this much before the watermark")
    http_timeout_s: float = Field(10.0, gt=0, description="per-request timeout to the provider")
    http_attempts: int = Field(4, ge=1, le=20, description="quick in-attempt tries of a transient HTTP error")
    whale_market_refresh: bool = Field(
        True, description="whale_sync requests a market_refresh per market and hour of its whale trades"
    )
    market_refresh_recheck_s: float = Field(
        60.0, gt=0, description="market_refresh sleeps this long (durably) before checking the market again"
    )

    # -- retention -------------------------------------------------------------
    runs_retention_days: float = Field(2, gt=0, description="keep finished run records this long")
    failed_runs_retention_days: float = Field(7, gt=0, description="keep failed/timed-out run records this long")
    whale_trades_retention_days: float = Field(30, gt=0, description="keep whale trades this long")
    stats_retention_days: float = Field(30, gt=0, description="keep stats snapshots this long")
    # FerretDB 1.24 (SQLite) fails a delete of more than ~32k documents ("too many SQL
    # variables"), so the cap stays below that.
    cleanup_batch_size: int = Field(5000, ge=1, le=30_000, description="documents deleted per batch")

    @field_validator("dashboard_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        # docker-compose passes `${PULSE_DASHBOARD_TOKEN:-}`: an empty value means "no token".
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """Fill each secret from its `*_FILE` setting (as Kubernetes mounts secrets)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for secret in secret_fields():
            path = data.get(f"{secret}_file")
            if path is None or path == "":
                continue
            if data.get(secret) is not None:
                raise ValueError(
                    f"{_env_name((secret,))} and {_env_name((secret + '_file',))} are both set: set only one"
                )
            data[secret] = read_secret_file(Path(path), _env_name((secret + "_file",)))
        return data

    @field_validator("nats_url")
    @classmethod
    def _nats_urls_are_valid(cls, value: str) -> str:
        for url in value.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
                raise ValueError("expected nats://host:port (or tls://, ws://, wss://), comma-separated")
            try:
                _ = parts.port
            except ValueError as exc:
                raise ValueError("the port must be a number from 1 to 65535") from exc
        return value

    @field_validator("mongo_url")
    @classmethod
    def _mongo_url_is_valid(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc.rsplit("@", 1)[-1]:
            raise ValueError("expected mongodb://[user:password@]host[:port][/?options] or mongodb+srv://")
        return value

    @field_validator("polymarket_gamma_url", "polymarket_data_url")
    @classmethod
    def _http_url_is_valid(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// base URL")
        return value.rstrip("/")

    @field_validator("namespace")
    @classmethod
    def _namespace_is_valid(cls, value: str) -> str:
        Names(value)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.nats_password is not None and not self.nats_user:
            raise ValueError("PULSE_NATS_PASSWORD is set but PULSE_NATS_USER is not: set both")
        if self.ack_wait_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                "PULSE_ACK_WAIT_S must be at least twice PULSE_HEARTBEAT_INTERVAL_S, "
                "or live workers would lose their messages between heartbeats"
            )
        token = self.dashboard_token.get_secret_value() if self.dashboard_token is not None else None
        if token is not None and len(token) < 16:
            raise ValueError(
                "PULSE_DASHBOARD_TOKEN must be at least 16 characters (or unset for a read-only dashboard)"
            )
        if self.alert_webhook_url is not None and self.alert_webhook_secret is None:
            raise ValueError(
                "PULSE_ALERT_WEBHOOK_URL is set but PULSE_ALERT_WEBHOOK_SECRET is not: "
                "alerts are signed, so set a shared secret the receiver checks"
            )
        for url in (self.alert_webhook_url, self.alert_slack_webhook_url):
            if url is not None and urlsplit(url.get_secret_value()).scheme not in ("http", "https"):
                raise ValueError("PULSE_ALERT_WEBHOOK_URL and PULSE_ALERT_SLACK_WEBHOOK_URL must be http(s) URLs")
        if bool(self.nats_tls_cert_file) != bool(self.nats_tls_key_file):
            raise ValueError("set PULSE_NATS_TLS_CERT_FILE and PULSE_NATS_TLS_KEY_FILE together")
        if bool(self.mongo_tls_cert_file) != bool(self.mongo_tls_key_file):
            raise ValueError("set PULSE_MONGO_TLS_CERT_FILE and PULSE_MONGO_TLS_KEY_FILE together")
        for job, policy in self.jobs.items():
            bucket = policy.rate_limit_bucket
            if bucket is not None and bucket not in self.rate_limits:
                raise ValueError(
                    f"PULSE_JOBS__{job.upper()}__RATE_LIMIT_BUCKET names {bucket!r}, "
                    f"which is not one of the rate_limits buckets {sorted(self.rate_limits)}"
                )
        self._check_quotas()
        return self

    def _check_quotas(self) -> None:
        """Quotas name rate_limits buckets: an upstream is its bucket, and each request takes a token of it."""
        for upstream in self.quotas:
            if upstream not in self.rate_limits:
                raise ValueError(
                    f"PULSE_QUOTAS names {upstream!r}, which is not one of the rate_limits buckets "
                    f"{sorted(self.rate_limits)}: a quota belongs to an upstream's bucket"
                )

    # -- derived -----------------------------------------------------------------
    @property
    def names(self) -> Names:
        return Names(self.namespace)

    @property
    def nats_url_redacted(self) -> str:
        return redact_url(self.nats_url)

    @property
    def mongo_url_redacted(self) -> str:
        return redact_url(self.mongo_url.get_secret_value())


_SECRET_WORDS = ("password", "token", "key", "creds", "mongo_url")


def secret_fields() -> list[str]:
    """Names of every `SecretStr` setting (each may also come from its `<name>_file`)."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if field.annotation is not None and SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    ]


def read_secret_file(path: Path, variable: str) -> SecretStr:
    """The secret held in `path`, without the final newline an editor or `kubectl` may add.

    Raises:
        ValueError: the file cannot be read or is empty (the message names `variable`).
    """
    try:
        value = path.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{variable}: cannot read {path} ({type(exc).__name__}); mount the secret there") from None
    if not value:
        raise ValueError(f"{variable}: {path} is empty")
    return SecretStr(value)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + _NESTED.join(str(part).upper() for part in loc if not isinstance(part, int))


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (plus `overrides`), or raise ConfigError.

    The error lists every bad variable with what was wrong, for example:
    `PULSE_NATS_URL: expected nats://host:port ... (got 'http://x')`.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            loc = tuple(error["loc"])
            where = _env_name(loc) if loc else "settings"
            shown = error.get("input")
            # Never echo what may be a secret; echo short plain values to help the operator.
            secret_field = any(word in str(part) for part in loc for word in _SECRET_WORDS)
            hide = secret_field or isinstance(shown, dict) or shown is None
            got = "" if hide else f" (got {redact_url(str(shown))[:80]!r})"
            problems.append(f"{where}: {message}{got}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
