"""Messages on NATS and documents in MongoDB, as pydantic models.

Every message carries `v`, its schema version; a consumer refuses a version it does not
know (as an invalid request, never a retry). Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from shared.names import check_job_name

SCHEMA_VERSION = 1
#: Largest serialized `args` a request may carry: requests are commands, not payloads.
MAX_ARGS_BYTES = 4096
#: Attempts kept in a run record (the oldest are dropped beyond this).
MAX_ATTEMPT_HISTORY = 20


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a timezone is required (use UTC, e.g. 2026-12-01T09:00:00Z)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


#: What the ticker does with slots missed while no ticker ran (docs/scheduling.md):
#: skip: record them missed and fire none; latest: fire the newest one only (the default,
#: DESIGN.md's rule); all: fire every one, oldest first, up to `catch_up_max_slots`.
CatchUp = Literal["skip", "latest", "all"]
CATCH_UP_POLICIES: tuple[CatchUp, ...] = ("skip", "latest", "all")


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    DELAYED = "delayed"
    REPLAY = "replay"
    CHAIN = "chain"
    #: `pulse backfill`: a past slot requested by an operator, under the slot's own run id.
    BACKFILL = "backfill"


class RunStatus(StrEnum):
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    #: Recorded by `pulse cancel` for a run that has not started; the runtime ends it `canceled`.
    QUEUED = "queued"
    #: A workflow between steps, in a durable sleep until `wake_at`; no worker holds it.
    SLEEPING = "sleeping"
    #: A workflow waiting for the signal `waiting_for` (until `wake_at`, its timeout, if any).
    WAITING = "waiting"
    #: Held back by an upstream's quota (`reason` quota_exhausted) until `next_attempt_at`,
    #: its reset; the request waits in JetStream (nak with delay), no attempt is spent.
    DEFERRED = "deferred"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.TIMED_OUT, RunStatus.CANCELED}
)


def scheduled_run_id(job: str, slot: datetime) -> str:
    """Deterministic id of the scheduled run of `job` at `slot`: `<job>:<ISO-8601 UTC>`."""
    return f"{job}:{_as_utc(slot).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def new_run_id(job: str, trigger: Trigger, unique: str | None = None) -> str:
    """Id of a non-scheduled run: `<job>:<trigger>:<unique id>`."""
    return f"{job}:{trigger.value}:{unique or uuid.uuid4().hex}"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1  # SCHEMA_VERSION; a Literal so an unknown version fails validation


class JobRequest(_Message):
    """A request to run a job once. Published on `jobs.<job>` with `Nats-Msg-Id: <run_id>`."""

    run_id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_:.\-+TZ]+$")
    job: str
    trigger: Trigger
    scheduled_for: UtcDatetime
    requested_at: UtcDatetime = Field(default_factory=utcnow)
    requested_by: str = Field("unknown", max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("job")
    @classmethod
    def _job_name(cls, value: str) -> str:
        return check_job_name(value)

    @field_validator("args")
    @classmethod
    def _small_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        import json

        if len(json.dumps(value, default=str)) > MAX_ARGS_BYTES:
            raise ValueError(f"args must serialize to at most {MAX_ARGS_BYTES} bytes")
        return value

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class RunEvent(_Message):
    """The outcome of a run, one per run and terminal status, on `events.runs.<job>.<status>`."""

    run_id: str
    job: str
    status: RunStatus
    trigger: Trigger | None = None
    attempts: int = Field(ge=0)
    started_at: UtcDatetime | None = None
    ended_at: UtcDatetime
    duration_ms: int | None = Field(None, ge=0)
    error: str | None = Field(None, max_length=2000)
    summary: dict[str, Any] = Field(default_factory=dict)


class AlertKind(StrEnum):
    """What an alert is about (docs/cli-json.md lists them for operators)."""

    #: N runs in a row failed (the job's `alert_after_failures`).
    CONSECUTIVE_FAILURES = "consecutive_failures"
    #: The job succeeded before, but not within its freshness window (`stale_after_s`).
    STALE = "stale"
    #: The job has never succeeded since it was first served, and its freshness window passed.
    NEVER_SUCCEEDED = "never_succeeded"
    #: A request went to the DLQ (attempts exhausted, permanent error, or invalid); one per letter.
    DEAD_LETTER = "dead_letter"
    #: The job completed a run again after one of the alerts above.
    RECOVERED = "recovered"
    #: The job's last success is older than its freshness target (`freshness_target_s`),
    #: whatever the reason (runs skipped, ticker down, failures); checked by the janitor.
    FRESHNESS_MISSED = "freshness_missed"
    #: The job's last success is within its freshness target again, after `freshness_missed`.
    FRESHNESS_RESTORED = "freshness_restored"
    #: Raised by earlier versions for a permanent error; now a `dead_letter` alert says it.
    PERMANENT_ERROR = "permanent_error"


class Alert(_Message):
    """Something an operator must look at, on `events.alerts.<job>`."""

    job: str
    kind: AlertKind
    detail: str = Field(max_length=2000)
    since: UtcDatetime
    raised_at: UtcDatetime = Field(default_factory=utcnow)


class DeadLetter(_Message):
    """A request that exhausted its attempts or could not be run, on `dlq.<job>`.

    `request` is the parsed request when it could be parsed, else None and `raw` holds
    the original payload (decoded as text, bounded).
    """

    job: str
    run_id: str | None
    request: JobRequest | None
    raw: str | None = Field(None, max_length=65536)
    error: str = Field(max_length=2000)
    attempts: int = Field(ge=0)
    reason: Literal["exhausted", "invalid", "permanent"]
    dead_at: UtcDatetime = Field(default_factory=utcnow)


# -- stored documents -------------------------------------------------------------


class AttemptRecord(BaseModel):
    """One attempt of a run, kept in the run record's bounded `attempts` list."""

    model_config = ConfigDict(extra="ignore")

    number: int = Field(ge=1)
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None
    error: str | None = None
    worker: str | None = None


class RunRecord(BaseModel):
    """A document of `runs` (`_id` = run_id). Only `shared/runtime/_records.py` writes these."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    run_id: str = Field(alias="_id")
    job: str
    trigger: Trigger
    status: RunStatus
    scheduled_for: datetime | None = None
    requested_at: datetime | None = None
    requested_by: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    attempts: list[AttemptRecord] = Field(default_factory=list)
    attempt_count: int = 0
    #: Attempts that the store or NATS failed under and that ran again without counting
    #: (`PULSE_MAX_INTERRUPTIONS` of them per run; see docs/guarantees.md).
    interruptions: int = 0
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    ended_at: datetime | None = None
    next_attempt_at: datetime | None = None
    error: str | None = None
    reason: str | None = None
    summary: dict[str, Any] = Field(default_factory=dict)
    #: What the job last reported at a check point (`ctx.checkpoint(progress)`), while it runs.
    progress: dict[str, Any] = Field(default_factory=dict)
    cancel_requested: bool = False
    #: Who asked for the cancel (CLI: `pulse:<user>@<host>`), and when.
    canceled_by: str | None = None
    cancel_requested_at: datetime | None = None
    updated_at: datetime | None = None
    #: A sleeping or waiting workflow: when it wakes (a sleep's end, a wait's timeout).
    wake_at: datetime | None = None
    #: A waiting workflow: the name of the signal it waits for.
    waiting_for: str | None = None
    #: Upstream requests the run's attempts spent, by upstream (rate bucket name).
    provider_calls: dict[str, int] = Field(default_factory=dict)
    #: The run's metrics and failure-streak/recovery alerts are still to be done (set
    #: when the runner ends the run, cleared by the one delivery that does them).
    #: Runtime bookkeeping: left out of dumps (`--json`, the dashboard).
    effects_pending: bool = Field(False, exclude=True)

    @property
    def is_suspended(self) -> bool:
        """True for a workflow sleeping or waiting between steps (no worker holds it)."""
        return self.status in (RunStatus.SLEEPING, RunStatus.WAITING)

    def as_request(self) -> JobRequest:
        """The run's request, rebuilt from the record (to resume a suspended workflow)."""
        return JobRequest(
            run_id=self.run_id,
            job=self.job,
            trigger=self.trigger,
            scheduled_for=self.scheduled_for or self.started_at or utcnow(),
            requested_at=self.requested_at or utcnow(),
            requested_by=self.requested_by or "unknown",
            args=self.args,
        )

    @property
    def duration_ms(self) -> int | None:
        """Milliseconds from the run's start to its end; None until it has both."""
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))


class StepStatus(StrEnum):
    """Where one recorded step of a workflow run stands."""

    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"


class StepRecord(BaseModel):
    """A document of `steps` (`_id` = `<run_id>:<step name>`). Only `shared/runtime/_journal.py` writes these.

    `index` is the step's place in the run's order of asking (0-based), which the
    determinism guard compares on resume; `result_json` is the step's result as JSON
    text, `result_bytes` its size (counted against the run's limit).
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    run_id: str
    name: str
    index: int
    status: StepStatus
    tries: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    result_json: str | None = None
    result_bytes: int = 0
    #: A sleep's wake-up time, or a wait's timeout.
    wake_at: datetime | None = None
    #: A wait that ended by its timeout rather than a signal.
    timed_out: bool = False
    #: When the run ended (set on every step then): the janitor's retention counts from it.
    run_ended_at: datetime | None = None

    @property
    def duration_ms(self) -> int | None:
        """Milliseconds from the step's last start to its end; None while it has no end."""
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))


class MarketDoc(BaseModel):
    """A document of `markets` (`_id` = `<provider>:<market id>`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    provider: str
    market_id: str
    question: str
    slug: str | None = None
    category: str | None = None
    condition_id: str | None = None
    outcomes: list[str] = Field(default_factory=list)
    outcome_prices: list[float] = Field(default_factory=list)
    yes_price: float | None = None
    no_price: float | None = None
    volume_total: float | None = None
    volume_24h: float | None = None
    liquidity: float | None = None
    active: bool = True
    closed: bool = False
    end_date: datetime | None = None
    updated_at: datetime | None = None
    synced_at: datetime | None = None


class WhaleTradeDoc(BaseModel):
    """A document of `whale_trades` (`_id` = natural key of the trade)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    provider: str
    wallet: str
    market: str
    asset: str | None = None
    side: Literal["BUY", "SELL"]
    outcome: str | None = None
    size: float
    price: float
    notional: float
    transaction_hash: str | None = None
    traded_at: datetime
    ingested_at: datetime
