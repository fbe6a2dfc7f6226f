"""What a handler receives: the request, its attempt, check points, rate limits and clients."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import BaseModel

from shared.errors import RunCanceled
from shared.logs import BoundLogger
from shared.runtime._budgets import Budgets
from shared.runtime._heartbeat import Heartbeat, RunControl
from shared.runtime._metrics import RuntimeMetrics
from shared.runtime._ratelimit import RateLimiter
from shared.runtime._steps import Steps
from shared.schemas import JobRequest
from shared.settings import JobPolicy, Settings
from shared.store import Database


@dataclass
class JobContext:
    """The run a handler works on, and the shared clients it may use.

    Attributes:
        request: the job request as published.
        attempt: 1-based attempt number (the message's delivery count).
        args: `request.args` validated against the job's args model.
        log: a logger bound to `job` and `run_id`.
        step: the durable steps of a workflow (`ctx.step.run`, `ctx.step.all`).
        provider_calls: upstream requests this attempt spent, by upstream (the runtime
            adds them to the run record).
    """

    request: JobRequest
    attempt: int
    args: BaseModel
    settings: Settings
    policy: JobPolicy
    db: Database
    nats: NatsClient
    js: JetStreamContext
    http: httpx.AsyncClient
    log: BoundLogger
    limiter: RateLimiter
    budgets: Budgets
    metrics: RuntimeMetrics
    _heartbeat: Heartbeat = field(repr=False)
    _control: RunControl = field(repr=False)
    #: Removes secrets from error texts before they are recorded (step errors).
    _scrub: Callable[[str], str] = field(repr=False)
    step: Steps = field(init=False, repr=False)
    provider_calls: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.step = Steps(
            self.db,
            self.request.run_id,
            retry=self.settings.step_retry,
            max_result_bytes=self.settings.step_results_max_bytes,
            checkpoint=self.checkpoint,
            scrub=self._scrub,
            log=self.log,
        )

    @property
    def run_id(self) -> str:
        return self.request.run_id

    @property
    def job(self) -> str:
        return self.request.job

    @property
    def canceled(self) -> bool:
        """True once a cancel of this run was seen."""
        return self._control.canceled

    async def checkpoint(self, progress: dict[str, Any] | None = None) -> None:
        """Report progress (heartbeat) and stop here if the run was canceled.

        Args:
            progress: small dict stored in the run record (e.g. pages done).

        Raises:
            RunCanceled: an operator canceled the run; let it propagate.
            AttemptTakenOver: another delivery took the run over (this attempt looked
                dead for longer than the lease); let it propagate: nothing of this
                attempt is recorded.
        """
        if not self._control.canceled:
            await self._heartbeat.beat(progress)
        if self._control.canceled:
            raise RunCanceled(f"run {self.run_id} was canceled")

    async def acquire(self, bucket: str, tokens: int = 1) -> None:
        """Take `tokens` from the shared bucket `bucket`, waiting up to the job's `rate_limit_wait_s`.

        When the upstream `bucket` has a quota (PULSE_QUOTAS), `tokens` requests of it are
        then reserved and counted in `provider_calls` (after the wait: a run that gives up
        waiting has spent none of the quota).

        Raises:
            QuotaExhausted: the upstream's quota is spent; the runtime defers the run
                until the reset (nothing of the quota was spent).
            RateLimited: the bucket stayed empty too long; the runtime then delays or
                skips the run as the job's `on_rate_limited` says.
            ConfigError: `bucket` is not configured in PULSE_RATE_LIMITS.
        """
        waited = await self.limiter.acquire(bucket, tokens, max_wait_s=self.policy.rate_limit_wait_s)
        await self.budgets.reserve(bucket, tokens)
        self.provider_calls[bucket] = self.provider_calls.get(bucket, 0) + tokens
        if waited > 0:
            self.metrics.ratelimit_waits.labels(bucket=bucket).inc()
            self.metrics.ratelimit_wait_seconds.labels(bucket=bucket).observe(waited)
            self.log.debug(
                "waited %.2fs for rate limit bucket %s", waited, bucket, extra={"event": "run.rate_limited_wait"}
            )

    async def hold_off(self, bucket: str, seconds: float) -> None:
        """Empty the shared bucket `bucket` for every process for `seconds` (a provider's 429 Retry-After)."""
        await self.limiter.hold(bucket, seconds)
        self.log.warning(
            "upstream %s asked us to wait %.1fs (429); its bucket is held for everyone",
            bucket,
            seconds,
            extra={"event": "run.upstream_hold", "bucket": bucket, "seconds": round(seconds, 3)},
        )


def context_logger(job: str, run_id: str, attempt: int) -> BoundLogger:
    """The logger handlers get: every line carries job, run_id and attempt."""
    return BoundLogger(logging.getLogger(f"job.{job}"), {"job": job, "run_id": run_id, "attempt": attempt})
