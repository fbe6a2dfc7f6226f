"""The one decision that turns an attempt's outcome into ack, nak(delay) or term.

Handlers raise; they never ack. The runner classifies what happened into an `Outcome`
and `decide` maps it, with the job's `RetryPolicy` and the attempt number, to a
`Decision`: which status to record, whether to dead-letter or alert, and how to
settle the message. The delay math itself is `RetryPolicy.delay_s` (settings).

The rule "out of attempts" lives here only: `is_last_attempt` (a failure then ends the
run), `past_last_attempt` (the worker of the last attempt died), and which failed runs
carry a dead letter (`DEAD_LETTER_REASONS`, `was_dead_lettered`).

A run held back by an upstream's quota (`OutcomeKind.DEFERRED`) is not an attempt either:
it is recorded `deferred` and nak'ed until the quota resets (see `decide`).

An unexpected error while a delivery is handled (a bug, not the store or NATS) is not
an attempt either, but it is bounded: after `unhandled_error_deliveries` such deliveries
`unhandled_outcome` ends the run as a permanent failure.

Infrastructure failures are not attempts: when the store or NATS cannot be reached
while a delivery is handled (`is_infrastructure_failure`), the message is nak'ed with a
bounded backoff (`infrastructure_delay_s`) and no attempt is counted, since attempts
are counted in the run record when an attempt starts. That holds inside the handler
too: an attempt the store or NATS failed under (`interrupted_by_infrastructure`, a
leader election, a failover) is taken back and runs again, up to
`Settings.max_interruptions` times per run (`interruption_is_free`); past that the
failure counts as a failed attempt, so a failure that only looks like an outage (a
query that always outlives its deadline) cannot loop forever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

import nats.errors
import nats.js.errors
from pymongo.errors import AutoReconnect, ExecutionTimeout, PyMongoError, ServerSelectionTimeoutError

from shared.errors import BusUnavailable, StepFailed, StoreUnavailable, Unreachable
from shared.runtime._steps import Suspension
from shared.schemas import RunRecord, RunStatus
from shared.settings import RetryPolicy

#: Why a failed run's request went to the DLQ; also the failed record's `reason`.
DeadLetterReason = Literal["exhausted", "invalid", "permanent"]
DEAD_LETTER_REASONS: frozenset[str] = frozenset(get_args(DeadLetterReason))


class Settle(StrEnum):
    """How the JetStream message is settled."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"


class OutcomeKind(StrEnum):
    """What an attempt (or the checks before it) ended with."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retryable: any exception but the ones below, and timeouts
    PERMANENT = "permanent"  # PermanentError: no retry can fix it
    INVALID = "invalid"  # the request can never run
    CANCELED = "canceled"
    SKIPPED = "skipped"
    SUSPENDED = "suspended"  # a workflow sleeps or waits: no outcome yet, no worker holds it
    DEFERRED = "deferred"  # an upstream quota is spent: wait for its reset, spend no attempt


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt (or of a guard that decided without running)."""

    kind: OutcomeKind
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    #: A delay the error asked for (RetryableError.delay_s), overriding the policy.
    delay_s: float | None = None
    #: A suspended workflow: sleeping until, or waiting for what.
    suspension: Suspension | None = None
    #: A deferred run: when it may go (the quota's reset).
    defer_until: datetime | None = None
    #: A failure of the store or NATS under the handler, not of the job's own work.
    interrupted: bool = False


@dataclass(frozen=True)
class Decision:
    """What to record and how to settle the message."""

    settle: Settle
    status: RunStatus
    delay_s: float | None = None
    dead_letter: DeadLetterReason | None = None
    alert: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


def decide(outcome: Outcome, attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> Decision:
    """Map an attempt's outcome to a decision.

    Args:
        outcome: what happened.
        attempt: the 1-based attempt number (the message's delivery count).
        policy: the job's retry policy; `max_attempts` counts the first attempt.
        rng: source of jitter (tests pass a seeded one).

    Returns:
        The status to record and how to settle the message.
    """
    kind = outcome.kind
    if kind is OutcomeKind.SUCCEEDED:
        return Decision(Settle.ACK, RunStatus.COMPLETED)
    if kind is OutcomeKind.CANCELED:
        return Decision(Settle.ACK, RunStatus.CANCELED)
    if kind is OutcomeKind.SKIPPED:
        return Decision(Settle.ACK, RunStatus.SKIPPED)
    if kind is OutcomeKind.SUSPENDED and outcome.suspension is not None:
        return Decision(Settle.ACK, outcome.suspension.status)
    if kind is OutcomeKind.DEFERRED:
        # Not a failure: no attempt is spent and nothing is dead-lettered, whatever the
        # attempt number. The request waits in JetStream (nak with the delay the runner
        # chose: until the reset, at most the quota re-check interval), so at most one
        # look per interval, never a retry loop against the upstream.
        return Decision(Settle.NAK, RunStatus.DEFERRED, delay_s=max(outcome.delay_s or 0.0, 0.0))
    if kind is OutcomeKind.INVALID:
        return Decision(Settle.TERM, RunStatus.FAILED, dead_letter="invalid")
    if kind is OutcomeKind.PERMANENT:
        return Decision(Settle.TERM, RunStatus.FAILED, dead_letter="permanent", alert=True)
    if is_last_attempt(attempt, policy):
        return Decision(Settle.TERM, RunStatus.FAILED, dead_letter="exhausted")
    delay = outcome.delay_s if outcome.delay_s is not None else policy.delay_s(attempt, rng)
    return Decision(Settle.NAK, RunStatus.RETRYING, delay_s=min(max(delay, 0.0), policy.max_backoff_s))


def is_last_attempt(attempt: int, policy: RetryPolicy) -> bool:
    """True when a failure of attempt number `attempt` ends the run (no attempt follows)."""
    return attempt >= policy.max_attempts


def past_last_attempt(attempt: int, policy: RetryPolicy) -> Outcome | None:
    """The outcome of an attempt number beyond the last: the last attempt's worker died.

    None when `attempt` may still run.
    """
    if attempt <= policy.max_attempts:
        return None
    return Outcome(
        OutcomeKind.FAILED,
        error=f"the worker running attempt {policy.max_attempts} (the last) stopped answering; the run is failed",
    )


def unhandled_outcome(error: str, deliveries: int, limit: int) -> Outcome | None:
    """The outcome of a request whose handling raised an unexpected error (a bug) `deliveries` times.

    None while it may come back (fewer than `limit`, `Settings.unhandled_error_deliveries`);
    then a permanent failure: the run ends `failed` with a dead letter and an alert,
    instead of coming back after every ack wait forever.
    """
    if deliveries < limit:
        return None
    return Outcome(
        OutcomeKind.PERMANENT,
        error=f"the runtime failed to handle this request in {deliveries} deliveries "
        f"(an unexpected error, not an unreachable server): {error}",
    )


def was_dead_lettered(record: RunRecord) -> bool:
    """True when `record` is a failed run whose request was sent to the DLQ."""
    return record.status is RunStatus.FAILED and record.reason in DEAD_LETTER_REASONS


#: NATS errors that mean "the server is away or slow", not "the request is wrong".
_BUS_FAILURES: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    # A JetStream publish no stream answered: the stream has no leader (an election).
    nats.js.errors.NoStreamResponseError,
)
#: PyMongo errors that mean the store is unreachable or too slow.
_STORE_FAILURES: tuple[type[BaseException], ...] = (AutoReconnect, ServerSelectionTimeoutError, ExecutionTimeout)


def _bus_or_store_failure(exc: BaseException) -> bool:
    """True when `exc` is NATS or the store failing (as our errors, or as their clients raise them).

    `AutoReconnect` covers `NetworkTimeout` and `ConnectionFailure`'s network cases; any
    `PyMongoError` whose `timeout` is true (a client-side operation deadline) counts too.
    """
    if isinstance(exc, (StoreUnavailable, BusUnavailable, *_BUS_FAILURES, *_STORE_FAILURES)):
        return True
    return isinstance(exc, PyMongoError) and bool(getattr(exc, "timeout", False))


def is_infrastructure_failure(exc: BaseException) -> bool:
    """True when `exc` says the store or NATS is unreachable or timed out (not the request's fault).

    Raised by the runtime itself while it handles a delivery, so any `Unreachable` and any
    `TimeoutError` count too.
    """
    return isinstance(exc, (Unreachable, TimeoutError)) or _bus_or_store_failure(exc)


def interrupted_by_infrastructure(exc: BaseException) -> bool:
    """True when a handler's exception is the store or NATS failing under it, not the job's own work.

    Narrower than `is_infrastructure_failure`: a bare `TimeoutError` inside a handler is
    the job's own deadline (a provider call under `asyncio.timeout`), so it is a failed
    attempt. A workflow step that ran out of tries on such a failure (`StepFailed`) was
    interrupted too.
    """
    if isinstance(exc, StepFailed) and exc.__cause__ is not None:
        return interrupted_by_infrastructure(exc.__cause__)
    return _bus_or_store_failure(exc)


def interruption_is_free(outcome: Outcome, interruptions: int, limit: int) -> bool:
    """True when an interrupted attempt is taken back and runs again without counting.

    `interruptions` is how many the run already had (its record); `limit` is
    `Settings.max_interruptions`.
    """
    return outcome.interrupted and interruptions < limit


def infrastructure_delay_s(delivery: int, cap_s: float) -> float:
    """How long to wait before a delivery that met an infrastructure failure comes back.

    Doubles from 0.5 s with each delivery, capped at `cap_s` (the ack wait), so an outage
    of any length is retried at a bounded pace and recovery is noticed within `cap_s`.
    """
    return min(cap_s, 0.5 * 2.0 ** min(max(delivery - 1, 0), 16))
