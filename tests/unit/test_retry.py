"""The outcome → ack/nak/term decision and its delay math."""

from __future__ import annotations

import random

import nats.errors
import nats.js.errors
import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError, NetworkTimeout, OperationFailure

from shared.errors import (
    BusUnavailable,
    PermanentError,
    ProviderUnavailable,
    StepFailed,
    StoreUnavailable,
)
from shared.runtime._retry import (
    Outcome,
    OutcomeKind,
    Settle,
    decide,
    interrupted_by_infrastructure,
    interruption_is_free,
    unhandled_outcome,
)
from shared.schemas import RunStatus
from shared.settings import RetryPolicy

POLICY = RetryPolicy(max_attempts=4, initial_backoff_s=0.5, base=2, max_backoff_s=3, jitter=0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0)])
def test_failed_attempt_is_nakked_with_exponential_delay(attempt: int, delay: float) -> None:
    decision = decide(Outcome(OutcomeKind.FAILED, error="x"), attempt, POLICY)
    assert (decision.settle, decision.status, decision.delay_s) == (Settle.NAK, RunStatus.RETRYING, delay)
    assert decision.dead_letter is None


def test_delay_is_capped_by_max_backoff() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=1, base=3, max_backoff_s=3, jitter=0)
    assert decide(Outcome(OutcomeKind.FAILED), 5, policy).delay_s == 3


def test_last_attempt_fails_the_run_with_a_dead_letter() -> None:
    decision = decide(Outcome(OutcomeKind.FAILED, error="x"), 4, POLICY)
    assert (decision.settle, decision.status, decision.dead_letter) == (Settle.TERM, RunStatus.FAILED, "exhausted")


def test_an_attempt_past_the_last_is_failed_too() -> None:
    assert decide(Outcome(OutcomeKind.FAILED), 5, POLICY).status is RunStatus.FAILED


def test_error_asked_delay_overrides_the_policy_but_not_the_cap() -> None:
    assert decide(Outcome(OutcomeKind.FAILED, delay_s=2.5), 1, POLICY).delay_s == 2.5
    assert decide(Outcome(OutcomeKind.FAILED, delay_s=60), 1, POLICY).delay_s == 3


@pytest.mark.parametrize(
    ("kind", "settle", "status", "dead_letter", "alert"),
    [
        (OutcomeKind.SUCCEEDED, Settle.ACK, RunStatus.COMPLETED, None, False),
        (OutcomeKind.CANCELED, Settle.ACK, RunStatus.CANCELED, None, False),
        (OutcomeKind.SKIPPED, Settle.ACK, RunStatus.SKIPPED, None, False),
        (OutcomeKind.INVALID, Settle.TERM, RunStatus.FAILED, "invalid", False),
        (OutcomeKind.PERMANENT, Settle.TERM, RunStatus.FAILED, "permanent", True),
    ],
)
def test_non_retryable_outcomes_are_decided_at_once(
    kind: OutcomeKind, settle: Settle, status: RunStatus, dead_letter: str | None, alert: bool
) -> None:
    decision = decide(Outcome(kind), 1, POLICY)
    assert (decision.settle, decision.status, decision.dead_letter, decision.alert) == (
        settle,
        status,
        dead_letter,
        alert,
    )


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=1, base=2, jitter=0.1)
    rng = random.Random(7)
    delays = [decide(Outcome(OutcomeKind.FAILED), 2, policy, rng).delay_s for _ in range(200)]
    assert all(d is not None and 1.8 <= d <= 2.2 for d in delays)
    assert len(set(delays)) > 100


def test_out_of_attempts_is_one_rule() -> None:
    from shared.runtime._retry import is_last_attempt, past_last_attempt

    assert [is_last_attempt(n, POLICY) for n in (3, 4, 5)] == [False, True, True]
    assert past_last_attempt(4, POLICY) is None
    lost = past_last_attempt(5, POLICY)
    assert lost is not None
    assert lost.kind is OutcomeKind.FAILED
    assert "attempt 4 (the last)" in (lost.error or "")
    assert decide(lost, 5, POLICY).dead_letter == "exhausted"


def test_an_unexpected_error_ends_the_run_at_the_set_delivery_with_a_dead_letter() -> None:
    assert unhandled_outcome("RuntimeError: bug", 2, 3) is None  # it may come back
    outcome = unhandled_outcome("RuntimeError: bug", 3, 3)
    assert outcome is not None
    assert outcome.error is not None
    assert "in 3 deliveries" in outcome.error
    assert outcome.error.endswith("RuntimeError: bug")
    decision = decide(outcome, 0, POLICY)
    assert (decision.settle, decision.status, decision.dead_letter) == (Settle.TERM, RunStatus.FAILED, "permanent")


def _step_failed_by(cause: BaseException) -> StepFailed:
    try:
        raise StepFailed("step 'fetch' failed after 4 tries") from cause
    except StepFailed as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.errors.ConnectionClosedError(),
        nats.js.errors.NoStreamResponseError(),  # a publish during a leader election
        BusUnavailable("NATS could not be reached"),
        StoreUnavailable("the store did not answer within its deadline"),
        AutoReconnect("connection reset"),
        NetworkTimeout("timed out"),
        _step_failed_by(nats.errors.TimeoutError()),
    ],
    ids=repr,
)
def test_the_store_or_nats_failing_under_a_handler_interrupts_the_attempt(exc: BaseException) -> None:
    assert interrupted_by_infrastructure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),  # the job's own deadline (asyncio.timeout around a provider call)
        ProviderUnavailable("gamma answered 503"),
        PermanentError("no such market"),
        DuplicateKeyError("E11000"),  # an answer of the store, not its silence
        OperationFailure("bad query"),
        RuntimeError("a bug"),
        _step_failed_by(ProviderUnavailable("gamma answered 503")),
    ],
    ids=repr,
)
def test_the_jobs_own_failures_are_failed_attempts(exc: BaseException) -> None:
    assert not interrupted_by_infrastructure(exc)


def test_an_interruption_is_free_up_to_the_limit_then_counts() -> None:
    interrupted = Outcome(OutcomeKind.FAILED, error="TimeoutError: nats: timeout", interrupted=True)
    assert interruption_is_free(interrupted, 0, 3)
    assert interruption_is_free(interrupted, 2, 3)
    assert not interruption_is_free(interrupted, 3, 3)  # then an ordinary failed attempt
    assert not interruption_is_free(interrupted, 0, 0)  # PULSE_MAX_INTERRUPTIONS=0 turns it off
    assert not interruption_is_free(Outcome(OutcomeKind.FAILED, error="ValueError: x"), 0, 3)
    # Past the limit the policy decides as for any failure: here, the last attempt dead-letters.
    assert decide(interrupted, POLICY.max_attempts, POLICY).dead_letter == "exhausted"
