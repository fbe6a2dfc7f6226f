"""The life of one job request, top to bottom: parse, guard, start, attempt, decide, record, settle.

`run_message` is the whole lifecycle; each step is a helper below it, in order. The
message is settled (ack, nak with delay, or term) only after the outcome is recorded,
so a worker that dies anywhere in between leaves the request to be redelivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError
from pymongo.errors import ServerSelectionTimeoutError

from shared.delayed import SCHEDULER_HEADER
from shared.errors import (
    InvalidRequest,
    PermanentError,
    QuotaExhausted,
    RetryableError,
    RunCanceled,
    Unreachable,
    bounded,
)
from shared.jobargs import args_problem
from shared.logs import bind, run_context
from shared.names import Names
from shared.overrides import current_schedule
from shared.requests import MSG_ID_HEADER
from shared.runtime import _journal as journal
from shared.runtime import _monitor as monitor
from shared.runtime import _records as records
from shared.runtime._budgets import Budgets
from shared.runtime._chain import publish_follow_ups
from shared.runtime._context import JobContext, context_logger
from shared.runtime._events import publish_alert, publish_dead_letter, publish_run_event
from shared.runtime._heartbeat import Heartbeat, RunControl, stop_task
from shared.runtime._job import JobSpec
from shared.runtime._metrics import RuntimeMetrics
from shared.runtime._ratelimit import RateLimited, RateLimiter
from shared.runtime._retry import (
    DeadLetterReason,
    Decision,
    Outcome,
    OutcomeKind,
    Settle,
    decide,
    interrupted_by_infrastructure,
    interruption_is_free,
    is_infrastructure_failure,
    past_last_attempt,
    was_dead_lettered,
)
from shared.runtime._steps import Suspended
from shared.runtime._suspend import suspend
from shared.schedules import Schedule, parse_schedule
from shared.schemas import (
    SCHEMA_VERSION,
    Alert,
    AlertKind,
    AttemptRecord,
    DeadLetter,
    JobRequest,
    RunRecord,
    RunStatus,
    Trigger,
    utcnow,
)
from shared.settings import JobPolicy, Settings
from shared.store import Database, store_errors

log = logging.getLogger("shared.runtime")

_RAW_LIMIT = 65536


class AttemptInterrupted(Unreachable):
    """The store or NATS failed under the handler: the attempt is taken back, and the delivery put back.

    An `Unreachable`, so the worker puts the delivery back with the infrastructure delay
    and counts no attempt (`Settings.max_interruptions` bounds how often per run).
    """


class RecordedNotAnnounced(Exception):
    """The run's terminal record is written, but its dead letter, event or alert was not.

    The message is left for redelivery, which finds the run terminal and publishes them
    again (deduplicated by `Nats-Msg-Id`) and does the once-only effects the first
    delivery did not get to: see `settle_already_finished` and `announce`.
    """

    def __init__(self, record: RunRecord, cause: BaseException) -> None:
        super().__init__(f"run {record.run_id} is {record.status.value}, but publishing failed: {type(cause).__name__}")
        self.record = record
        self.cause = cause


@dataclass
class Runtime:
    """What every run of a worker shares: settings, clients, limiter, budgets, metrics."""

    settings: Settings
    names: Names
    db: Database
    nats: NatsClient
    js: JetStreamContext
    http: httpx.AsyncClient
    limiter: RateLimiter
    budgets: Budgets
    metrics: RuntimeMetrics
    worker_id: str
    scrub: Callable[[str], str]
    #: Attempts running in this process, by run_id (for the core-NATS cancel hint).
    controls: dict[str, RunControl] = field(default_factory=dict)


@dataclass(frozen=True)
class Bound:
    """A job as one worker serves it: the declaration and its effective policy."""

    spec: JobSpec
    policy: JobPolicy


@dataclass(frozen=True)
class Parsed:
    request: JobRequest
    args: BaseModel


@dataclass(frozen=True)
class Invalid:
    error: str
    request: JobRequest | None
    run_id: str | None
    #: The request names another job than its subject's: it is no run of this job, and
    #: recording it as a failed run of the job it names would count toward that job's
    #: failure streak, so it is only dead-lettered.
    foreign: bool = False


async def run_message(rt: Runtime, job: Bound, msg: Msg) -> Decision:
    """Run one delivery of a request of `job` and settle the message; return the decision.

    The attempt number comes from the run record (`start`), not from the delivery count:
    deliveries that failed before the start (store or NATS unreachable) cost no attempt.
    """
    delivery = msg.metadata.num_delivered
    parsed = parse_request(msg.data, job.spec)
    if isinstance(parsed, Invalid):
        return await reject_invalid(rt, job, msg, parsed, delivery)
    request = parsed.request
    first = delivery == 1 and not is_resume(msg, request)
    schedule = await _schedule_now(rt, job) if first and request.trigger is Trigger.SCHEDULE else None
    skipped = guard(job.policy, request, first=first, schedule=schedule)
    if skipped is not None:
        return await end_without_running(rt, job, msg, request, skipped, attempt=0)
    spent = await rt.budgets.exhausted(job.policy.upstreams)
    if spent is not None and not await records.cancel_requested(rt.db, request.run_id):
        return await defer(rt, job, msg, request, deferral(rt, spent))
    started = await start(rt, job, request, seq=msg.metadata.sequence.stream, delivery=delivery, first=first)
    if started is None:
        return await settle_already_finished(rt, job, msg, request)
    attempt = started.record.attempt_count
    lost = past_last_attempt(attempt + 1, job.policy.retry) if started.lost_last else None
    if lost is not None:  # the last attempt's worker died: fail the run, do not run it again
        return await end_without_running(rt, job, msg, request, lost, attempt=attempt)
    if started.record.cancel_requested:
        outcome = Outcome(OutcomeKind.CANCELED, error="canceled before it started")
    else:
        outcome = await run_attempt(rt, job, msg, parsed, attempt, started.token)
    if interruption_is_free(outcome, started.record.interruptions, rt.settings.max_interruptions):
        await take_back_interrupted(rt, job, request, attempt, outcome, started)
    decision = decide(outcome, attempt, job.policy.retry)
    await record_attempt(rt, job, request, attempt, outcome, decision, started)
    await settle(msg, decision)
    return decision


async def end_without_running(
    rt: Runtime, job: Bound, msg: Msg, request: JobRequest, outcome: Outcome, *, attempt: int
) -> Decision:
    """End the run with an outcome decided without running it (skipped, or its last worker died)."""
    decision = decide(outcome, attempt + 1, job.policy.retry)
    await record_terminal(rt, job, request, outcome, decision, attempt=attempt, ended=None)
    await settle(msg, decision)
    return decision


# -- parse ------------------------------------------------------------------------------


def parse_request(data: bytes, spec: JobSpec) -> Parsed | Invalid:
    """Validate the payload as a JobRequest for `spec`, with valid args."""
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Invalid(
            f"invalid request for job {spec.name}: the payload is not JSON ({exc}). "
            "Publish a JobRequest as JSON (shared.requests.publish_request).",
            None,
            None,
        )
    if not isinstance(payload, dict):
        return Invalid(
            f"invalid request for job {spec.name}: expected a JSON object, got {type(payload).__name__}.", None, None
        )
    run_id = payload.get("run_id") if isinstance(payload.get("run_id"), str) else None
    if payload.get("v") != SCHEMA_VERSION:
        return Invalid(
            f"invalid request for job {spec.name}: schema version {payload.get('v')!r} is not "
            f"supported (this worker reads v={SCHEMA_VERSION}); upgrade the worker or the publisher.",
            None,
            run_id,
        )
    try:
        request = JobRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        return Invalid(f"invalid request for job {spec.name}: {problems}.", None, run_id)
    if request.job != spec.name:
        return Invalid(
            f"unknown job {request.job!r} in a request on the subject of job {spec.name!r}; "
            f"publish requests of {request.job!r} on its own subject.",
            request,
            request.run_id,
            foreign=True,
        )
    try:
        args = spec.args_model.model_validate(request.args)
    except ValidationError as exc:
        return Invalid(
            f"invalid args for job {spec.name}: {args_problem(spec.name, spec.args_model, exc)}",
            request,
            request.run_id,
        )
    return Parsed(request, args)


# -- guard ------------------------------------------------------------------------------


def is_resume(msg: Msg, request: JobRequest) -> bool:
    """True for a request published again to resume a workflow (a wake-up or a signal).

    Such a request is never a run's first delivery: it is not judged for overlap (a
    scheduled workflow woken after its next slot runs on) and its record exists.
    """
    headers = msg.headers or {}
    return SCHEDULER_HEADER in headers or headers.get(MSG_ID_HEADER, request.run_id) != request.run_id


async def _schedule_now(rt: Runtime, job: Bound) -> Schedule:
    """The schedule the ticker follows for `job` now (a runtime override included)."""
    return (await current_schedule(rt.js, rt.names, job.spec.name, job.policy)).schedule


def guard(policy: JobPolicy, request: JobRequest, *, first: bool, schedule: Schedule | None = None) -> Outcome | None:
    """Skip a stale scheduled request without running it, or None to go on.

    Overlap `skip` judges only a first delivery (a retry already under way is never
    skipped). `schedule` is the job's current schedule (with any runtime override); None
    means the policy's default.
    """
    if (
        policy.overlap == "skip"
        and request.trigger is Trigger.SCHEDULE
        and first
        and (schedule or parse_schedule(policy.schedule)).next_slot(request.scheduled_for) <= utcnow()
    ):
        return Outcome(
            OutcomeKind.SKIPPED,
            reason="overlap",
            error="the next scheduled slot had already passed when this request arrived",
        )
    return None


def deferral(rt: Runtime, exc: QuotaExhausted) -> Outcome:
    """The outcome of a run held back by a spent quota: look again at the reset, or sooner.

    The nak delay is capped by `quota_recheck_s`, so a raised quota or a cancel is
    noticed within that interval; each look is one read, never a provider call.
    """
    wait_s = (exc.resets_at - rt.budgets.now()).total_seconds()
    return Outcome(
        OutcomeKind.DEFERRED,
        error=str(exc),
        reason="quota_exhausted",
        delay_s=min(max(wait_s, 0.0), rt.settings.quota_recheck_s),
        defer_until=exc.resets_at,
    )


async def defer(rt: Runtime, job: Bound, msg: Msg, request: JobRequest, outcome: Outcome) -> Decision:
    """Defer a run before it starts (its quota is spent): record it, put the request back until then."""
    decision = decide(outcome, 0, job.policy.retry)
    if not await record_deferred(rt, job, request, outcome, decision, ended=None):
        return await settle_already_finished(rt, job, msg, request)
    await settle(msg, decision)
    return decision


async def record_deferred(
    rt: Runtime,
    job: Bound,
    request: JobRequest,
    outcome: Outcome,
    decision: Decision,
    *,
    ended: records.EndedAttempt | None,
) -> bool:
    """Record the run `deferred` (the reason and when it may go), count and log it; False when it was terminal."""
    until = outcome.defer_until or utcnow()
    if not await records.record_deferred(rt.db, request, until=until, error=outcome.error or "", attempt=ended):
        return False
    rt.metrics.runs_deferred.labels(job=job.spec.name).inc()
    _run_log(rt, job, request.run_id, ended.record.number if ended else 0).warning(
        "run %s deferred: %s",
        request.run_id,
        outcome.error,
        extra={"event": "run.deferred", "status": RunStatus.DEFERRED.value, "delay_s": decision.delay_s},
    )
    return True


# -- start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A run marked running for its next attempt."""

    record: RunRecord
    #: The previous start was the last attempt and its worker died: fail, do not run.
    lost_last: bool
    #: This delivery's start token: the attempt's writes are fenced by it (`AttemptTakenOver`).
    token: str


async def start(
    rt: Runtime, job: Bound, request: JobRequest, *, seq: int, delivery: int, first: bool
) -> Started | None:
    """Record the run `running` as its next attempt; None when it is already terminal.

    Counting the attempt and putting the delivery back are one decision: if anything
    fails between the start's write (which may have applied even when it timed out)
    and the handler, the start is taken back before the error reaches the put-back,
    so the delivery costs no attempt. A refused start (`StartRefused`: superseded,
    or the run held by a live attempt elsewhere) wrote nothing and is left to the
    worker, which settles it by its kind.
    """
    max_attempts = job.policy.retry.max_attempts
    # `cancels` is the truth; a cancel requested after this read is seen by the
    # attempt's first heartbeat or check point. Read first: its failure writes nothing.
    canceled = await records.cancel_requested(rt.db, request.run_id)
    token = records.start_token(rt.worker_id, seq, delivery)
    previous: RunRecord | None = None
    try:
        previous, started = await records.start_attempt(
            rt.db,
            request,
            rt.worker_id,
            seq=seq,
            delivery=delivery,
            max_attempts=max_attempts,
            lease_s=records.run_lease_s(rt.settings.heartbeat_interval_s, rt.settings.ack_wait_s),
            likely_new=first,
        )
        if started is None:
            return None
        if previous is not None and previous.status is RunStatus.RUNNING:
            # The previous attempt's worker died without a word: keep that attempt in the history.
            await records.record_lost_attempt(rt.db, request.run_id, previous.attempt_count, None)
    except records.StartRefused:
        raise  # it wrote nothing: the worker settles the delivery by its kind
    except Exception as exc:
        if _may_have_written(exc):
            await _take_back_start(rt, request.run_id, token, previous)
        raise
    lost_last = previous is not None and previous.attempt_count >= max_attempts
    return Started(started.model_copy(update={"cancel_requested": canceled}), lost_last=lost_last, token=token)


def _may_have_written(exc: BaseException) -> bool:
    """False when no store server was reached at all: then nothing was written to take back."""
    while exc is not None:
        if isinstance(exc, ServerSelectionTimeoutError):
            return False
        exc = exc.__cause__  # type: ignore[assignment]
    return True


async def _take_back_start(
    rt: Runtime, run_id: str, token: str, previous: RunRecord | None, *, interrupted: bool = False
) -> None:
    """Void this delivery's start after a failure; if the store cannot be reached for that either, say so."""
    try:
        await records.void_start(rt.db, run_id, token, previous, interrupted=interrupted)
    except records.AttemptTakenOver:
        raise  # the delivery that holds the run settles its message
    except Exception as exc:
        # Rare (the store failed twice in a row): the next delivery finds the run
        # `running`, records a lost attempt and counts it; at most one per delivery.
        log.warning(
            "run %s: a start that may have been recorded could not be taken back (%s); "
            "it may count as one lost attempt",
            run_id,
            type(exc).__name__,
            extra={"event": "run.start_not_voided", "run_id": run_id},
        )


# -- attempt ----------------------------------------------------------------------------


async def run_attempt(rt: Runtime, job: Bound, msg: Msg, parsed: Parsed, attempt: int, token: str) -> Outcome:
    """Run the handler once, with heartbeats, the per-attempt timeout and cancel.

    Raises:
        AttemptTakenOver: a heartbeat found another delivery holding the run; the
            attempt was stopped and nothing of it is recorded.
    """
    control = RunControl()
    request = parsed.request
    async with Heartbeat(msg, rt.db, request.run_id, token, rt.settings.heartbeat_interval_s, control) as heartbeat:
        ctx = JobContext(
            request=request,
            attempt=attempt,
            args=parsed.args,
            settings=rt.settings,
            policy=job.policy,
            db=rt.db,
            nats=rt.nats,
            js=rt.js,
            http=rt.http,
            log=context_logger(request.job, request.run_id, attempt),
            limiter=rt.limiter,
            budgets=rt.budgets,
            metrics=rt.metrics,
            _heartbeat=heartbeat,
            _control=control,
            _scrub=rt.scrub,
        )
        # The task copies the context now: every line the job (or a library) logs carries the run.
        with run_context(job=request.job, run_id=request.run_id, attempt=attempt):
            task = asyncio.create_task(_call(job.spec, ctx), name=f"attempt:{request.run_id}:{attempt}")
        control.attach(task)
        rt.controls[request.run_id] = control
        try:
            done, _ = await asyncio.wait({task}, timeout=job.policy.timeout_s)
        finally:
            rt.controls.pop(request.run_id, None)
            if not task.done():  # timed out, or this worker is shutting down
                await stop_task(task, rt.settings.heartbeat_interval_s)
        await _count_provider_calls(rt, request.run_id, ctx.provider_calls)
        if control.taken_over:
            raise records.AttemptTakenOver(
                f"run {request.run_id}: attempt {attempt} was taken over by another delivery while it ran "
                "and was stopped; its outcome is not recorded"
            )
        if not done:
            return Outcome(OutcomeKind.FAILED, error=f"the attempt timed out after {job.policy.timeout_s:g}s")
        return classify(rt, job.policy, task, control)


async def _count_provider_calls(rt: Runtime, run_id: str, calls: dict[str, int]) -> None:
    """Add the attempt's upstream calls to the record; best effort, so that the outcome is never lost.

    The count is what the run record shows (the quota itself is kept by `Budgets`): a
    store error here must not put the delivery back and run a finished handler again.
    """
    try:
        await records.add_provider_calls(rt.db, run_id, calls)
    except Exception as exc:
        log.warning(
            "run %s: its upstream call counts %s could not be added to the record (%s)",
            run_id,
            calls,
            type(exc).__name__,
            extra={"event": "run.provider_calls_unrecorded", "run_id": run_id},
        )


async def _call(spec: JobSpec, ctx: JobContext) -> Any:
    # A hung or lost store inside the handler is `StoreUnavailable` (retryable), not a PyMongo error.
    with store_errors(f"job {spec.name}"):
        return await spec.handler(ctx)


def classify(rt: Runtime, policy: JobPolicy, task: asyncio.Task[Any], control: RunControl) -> Outcome:
    """Turn a finished attempt task into an Outcome."""
    # A cancel seen as the handler suspended wins: recorded `waiting`, nothing would read it.
    if not task.cancelled() and isinstance(suspended := task.exception(), Suspended) and not control.canceled:
        return Outcome(OutcomeKind.SUSPENDED, suspension=suspended.suspension)
    if task.cancelled():
        return (
            Outcome(OutcomeKind.CANCELED, error="canceled while running")
            if control.canceled
            else Outcome(OutcomeKind.FAILED, error="the attempt was interrupted")
        )
    exc = task.exception()
    if exc is None:
        summary = task.result()
        if summary is not None and not isinstance(summary, dict):
            return Outcome(
                OutcomeKind.FAILED, error=f"the handler returned {type(summary).__name__}; return a small dict or None"
            )
        return Outcome(OutcomeKind.SUCCEEDED, summary=summary or {})
    error = rt.scrub(bounded(f"{type(exc).__name__}: {exc}"))
    if isinstance(exc, RunCanceled) or control.canceled:
        return Outcome(OutcomeKind.CANCELED, error=error)
    if isinstance(exc, QuotaExhausted):
        return deferral(rt, exc)
    if isinstance(exc, RateLimited):
        if policy.on_rate_limited == "skip":
            return Outcome(OutcomeKind.SKIPPED, reason="rate_limited", error=error)
        return Outcome(OutcomeKind.FAILED, error=error, delay_s=exc.retry_in_s)
    if interrupted_by_infrastructure(exc):
        return Outcome(OutcomeKind.FAILED, error=error, interrupted=True)
    if isinstance(exc, PermanentError):
        return Outcome(OutcomeKind.PERMANENT, error=error)
    if isinstance(exc, InvalidRequest):
        return Outcome(OutcomeKind.INVALID, error=error)
    if isinstance(exc, RetryableError):
        return Outcome(OutcomeKind.FAILED, error=error, delay_s=exc.delay_s)
    return Outcome(OutcomeKind.FAILED, error=error)


async def take_back_interrupted(
    rt: Runtime, job: Bound, request: JobRequest, attempt: int, outcome: Outcome, started: Started
) -> None:
    """Take back an attempt the store or NATS failed under, and raise to put its delivery back.

    The attempt is not counted (its start is voided, `interruptions` counted instead)
    and nothing else of it is recorded: it runs again on the next delivery with the same
    attempt number. If the store cannot take the start back either (it is the store that
    is away), the next delivery finds the run `running` and counts it as one lost attempt.

    Raises:
        AttemptInterrupted: always; the worker nak's the delivery with the infrastructure delay.
    """
    rt.metrics.attempts.labels(job=job.spec.name, outcome="interrupted").inc()
    await _take_back_start(rt, request.run_id, started.token, None, interrupted=True)
    raise AttemptInterrupted(
        f"attempt {attempt} of run {request.run_id} was interrupted by the store or NATS and will run "
        f"again without counting ({started.record.interruptions + 1} of {rt.settings.max_interruptions} "
        f"such interruptions per run): {outcome.error}"
    )


# -- record -----------------------------------------------------------------------------


async def record_attempt(
    rt: Runtime,
    job: Bound,
    request: JobRequest,
    attempt: int,
    outcome: Outcome,
    decision: Decision,
    started: Started,
) -> None:
    """Write the outcome of an attempt that ran: retrying, or the run's terminal status.

    Every write is fenced by the attempt's start token (`AttemptTakenOver` when another
    delivery took the run over meanwhile).
    """
    rt.metrics.attempts.labels(job=job.spec.name, outcome=outcome.kind.value).inc()
    ended = records.EndedAttempt(
        AttemptRecord(
            number=attempt,
            started_at=started.record.heartbeat_at or utcnow(),
            ended_at=utcnow(),
            outcome=outcome.kind.value,
            error=outcome.error,
            worker=rt.worker_id,
        ),
        started.token,
    )
    if decision.status is RunStatus.RETRYING:
        await record_retry(rt, job, request.run_id, ended, decision)
    elif decision.status is RunStatus.DEFERRED:
        await record_deferred(rt, job, request, outcome, decision, ended=ended)
    elif outcome.suspension is not None and not decision.is_terminal:
        await suspend(rt.db, rt.js, rt.names, request, ended, outcome.suspension)
    else:
        await record_terminal(rt, job, request, outcome, decision, attempt=attempt, ended=ended)


async def record_retry(rt: Runtime, job: Bound, run_id: str, attempt: records.EndedAttempt, decision: Decision) -> None:
    """The attempt failed and another follows after the decision's delay."""
    delay = decision.delay_s or 0.0
    await records.record_retry(rt.db, run_id, attempt, utcnow() + timedelta(seconds=delay))
    _run_log(rt, job, run_id, attempt.record.number).warning(
        "attempt %d failed, retrying in %.2fs: %s",
        attempt.record.number,
        delay,
        attempt.record.error,
        extra={"event": "run.retrying", "delay_s": round(delay, 3)},
    )


async def record_terminal(
    rt: Runtime,
    job: Bound,
    request: JobRequest,
    outcome: Outcome,
    decision: Decision,
    *,
    attempt: int,
    ended: records.EndedAttempt | None,
) -> RunRecord | None:
    """End the run with the decision's status; then its dead letter, event, metrics and alerts.

    Returns None (and publishes nothing) when the run was terminal already: a duplicate,
    or the watchdog was first, owns the outcome. The write is fenced by the start token
    of the attempt that ended the run (`ended`).
    """
    # A failed run's reason says why it was dead-lettered, and `effects_pending` (set by
    # finish_run) that its once-only effects are not done, so a redelivery after a
    # failure or crash right here finishes the announcement (see settle_already_finished).
    record = await records.finish_run(
        rt.db,
        request.run_id,
        decision.status,
        error=outcome.error,
        summary=outcome.summary,
        reason=outcome.reason or decision.dead_letter,
        attempt=ended,
        request=request,
    )
    if record is None:
        return None
    try:
        await announce(rt, job, record, request)
    except Exception as exc:
        raise RecordedNotAnnounced(record, exc) from exc
    level = logging.INFO if decision.status in (RunStatus.COMPLETED, RunStatus.SKIPPED) else logging.ERROR
    _run_log(rt, job, request.run_id, attempt).log(
        level,
        "run %s %s",
        request.run_id,
        decision.status.value,
        extra={
            "event": f"run.{decision.status.value}",
            "status": decision.status.value,
            "duration_ms": record.duration_ms,
        },
    )
    return record


def dead_letter(
    job: str,
    run_id: str | None,
    request: JobRequest | None,
    error: str | None,
    attempts: int,
    reason: DeadLetterReason,
    raw: bytes | None = None,
) -> DeadLetter:
    """The dead letter of a request, with its error and raw payload bounded (never rejected)."""
    return DeadLetter(
        job=job,
        run_id=run_id,
        request=request,
        error=bounded(error or "unknown"),
        attempts=attempts,
        reason=reason,
        raw=raw.decode(errors="replace")[:_RAW_LIMIT] if raw is not None else None,
    )


def _run_log(rt: Runtime, job: Bound, run_id: str | None, attempt: int) -> logging.LoggerAdapter[logging.Logger]:
    return bind(log, job=job.spec.name, run_id=run_id, attempt=attempt, worker=rt.worker_id)


async def announce(rt: Runtime, job: Bound, record: RunRecord, request: JobRequest) -> None:
    """Everything that follows a run's terminal record, safe to repeat until it all succeeded.

    The publishes are deduplicated by `Nats-Msg-Id` and the journal write is idempotent;
    the once-only effects (`note_terminal`) run while the record says they are pending.
    """
    if was_dead_lettered(record):
        # Attempts that ran, as the run record counts them: a request refused as invalid ran none.
        reason = cast(DeadLetterReason, record.reason)
        letter = dead_letter(record.job, record.run_id, request, record.error, record.attempt_count, reason)
        await publish_dead_letter(rt.js, rt.names, letter, f"{record.run_id}:dlq")
        await alert_dead_letter(rt, letter, f"{record.run_id}:dlq")
    await journal.record_run_ended(rt.db, record.run_id, record.ended_at or utcnow())
    await publish_run_event(rt.js, rt.names, record)
    await publish_follow_ups(rt.js, rt.names, record, job.policy.on_complete)
    if record.effects_pending:
        await note_terminal(rt, job, record)


async def note_terminal(rt: Runtime, job: Bound, record: RunRecord) -> None:
    """Alerts and metrics of a run that reached a terminal status, each once per run.

    The alerts first: they are idempotent per run (`_monitor`), so a failure here leaves
    them and the metrics to the redelivery. Then one conditional write claims the
    metrics (`take_effects`), so two deliveries that both get here count the run once.
    """
    name = job.spec.name
    if record.status is RunStatus.COMPLETED:
        await monitor.alert_on_recovery(rt.db, rt.js, rt.names, name, record.run_id)
    elif record.status is RunStatus.FAILED:
        await monitor.alert_on_failure(
            rt.db, rt.js, rt.names, name, job.policy.alert_after_failures, record.error, run_id=record.run_id
        )
    if not await records.take_effects(rt.db, record.run_id):
        return
    rt.metrics.runs.labels(job=name, status=record.status.value).inc()
    duration = record.duration_ms
    if duration is not None:
        rt.metrics.run_duration.labels(job=name, status=record.status.value).observe(duration / 1000)
    if record.status is RunStatus.COMPLETED:
        rt.metrics.observe_success_time(name, (record.ended_at or utcnow()).timestamp())


async def alert_dead_letter(rt: Runtime, letter: DeadLetter, key: str) -> None:
    """One `dead_letter` alert per dead letter (`key`, the letter's msg id, de-duplicates a repeat)."""
    what = f"run {letter.run_id}" if letter.run_id else "an unreadable request"
    await publish_alert(
        rt.js,
        rt.names,
        Alert(
            job=letter.job,
            kind=AlertKind.DEAD_LETTER,
            since=letter.dead_at,
            detail=f"{what} of {letter.job} was dead-lettered ({letter.reason}): {letter.error}"[:2000],
        ),
        msg_id=f"alert:{key}",
    )


async def reject_invalid(rt: Runtime, job: Bound, msg: Msg, invalid: Invalid, attempt: int) -> Decision:
    """A request that can never run: failed at once, dead letter with the raw payload, term."""
    outcome = Outcome(OutcomeKind.INVALID, error=invalid.error)
    decision = decide(outcome, attempt, job.policy.retry)
    if invalid.request is not None and not invalid.foreign:  # parsed, not runnable: a failed run, a dead letter
        await record_terminal(rt, job, invalid.request, outcome, decision, attempt=attempt, ended=None)
    else:  # no run of this job to record: only the dead letter, with the raw payload
        letter = dead_letter(job.spec.name, invalid.run_id, invalid.request, invalid.error, 0, "invalid", raw=msg.data)
        # A foreign request's run id belongs to another job's run: key its letter by message.
        keyed_by_run = invalid.run_id and not invalid.foreign
        msg_id = f"{invalid.run_id}:dlq" if keyed_by_run else f"dlq:seq:{msg.metadata.sequence.stream}"
        await publish_dead_letter(rt.js, rt.names, letter, msg_id)
        await alert_dead_letter(rt, letter, msg_id)
        _run_log(rt, job, invalid.run_id, attempt).error(
            "%s", invalid.error, extra={"event": "run.invalid", "status": decision.status.value}
        )
    await settle(msg, decision)
    return decision


async def settle_already_finished(rt: Runtime, job: Bound, msg: Msg, request: JobRequest) -> Decision:
    """A redelivered request whose run is terminal: finish its announcement, then ack.

    This repairs a failure or crash between recording and settling: the dead letter,
    event and follow-ups are sent again (deduplicated), and the alerts and metrics the
    earlier delivery did not get to are done now, once (`announce`).
    """
    record = await records.get_run(rt.db, request.run_id)
    if record is not None:
        await announce(rt, job, record, request)
        decision = Decision(Settle.ACK, record.status)
    else:
        decision = Decision(Settle.ACK, RunStatus.COMPLETED)
    log.info(
        "run %s already %s; acked without running",
        request.run_id,
        decision.status.value,
        extra={"event": "run.duplicate", "job": request.job, "run_id": request.run_id},
    )
    await settle(msg, decision)
    return decision


async def fail_unhandled(rt: Runtime, job: Bound, msg: Msg, outcome: Outcome) -> Decision:
    """End a request whose handling kept raising an unexpected error: failed, dead-lettered, termed.

    The run is recorded `failed` through `record_terminal` (its dead letter and alerts
    follow). When that is impossible (the request has no run, the run already ended, or
    recording hits the same bug) the dead letter carries the raw payload instead. Only
    an unreachable store or NATS stops this (it raises and the delivery is put back):
    anything else still terms the message, so the request stops coming back.
    """
    decision = decide(outcome, 0, job.policy.retry)
    try:
        parsed: Parsed | Invalid = parse_request(msg.data, job.spec)
    except Exception as exc:  # the bug may be in parsing: then only the raw payload is known
        parsed = Invalid(_described(rt, exc), None, None)
    request = parsed.request
    foreign = isinstance(parsed, Invalid) and parsed.foreign
    run_id = request.run_id if request is not None else parsed.run_id if isinstance(parsed, Invalid) else None
    log_run = _run_log(rt, job, run_id, 0)
    recorded = False
    if request is not None and not foreign:
        try:
            record = await record_terminal(rt, job, request, outcome, decision, attempt=0, ended=None)
            recorded = record is not None
        except RecordedNotAnnounced as exc:
            if is_infrastructure_failure(exc.cause):
                raise  # put back: the redelivery announces the failed run
            recorded = True  # failed and recorded; its announcement hit the bug again
        except Exception as exc:
            _raise_if_unreachable(exc)
            log_run.error("run %s could not be recorded failed either: %s", run_id, _described(rt, exc))
    if not recorded:
        letter = dead_letter(job.spec.name, run_id, request, outcome.error, 0, "permanent", raw=msg.data)
        msg_id = f"{run_id}:dlq" if run_id and not foreign else f"dlq:seq:{msg.metadata.sequence.stream}"
        try:
            await publish_dead_letter(rt.js, rt.names, letter, msg_id)
            await alert_dead_letter(rt, letter, msg_id)
        except Exception as exc:
            _raise_if_unreachable(exc)
            log_run.error(
                "a request of %s is termed without a dead letter (%s): %s",
                job.spec.name,
                _described(rt, exc),
                outcome.error,
                extra={"event": "run.unhandled_dropped"},
            )
    await settle(msg, decision)
    return decision


def _raise_if_unreachable(exc: Exception) -> None:
    if is_infrastructure_failure(exc):
        raise exc


def _described(rt: Runtime, exc: BaseException) -> str:
    return rt.scrub(bounded(f"{type(exc).__name__}: {exc}"))


# -- settle -----------------------------------------------------------------------------


async def settle(msg: Msg, decision: Decision) -> None:
    """Ack, nak with the decision's delay, or term the message."""
    if decision.settle is Settle.ACK:
        await msg.ack()
    elif decision.settle is Settle.NAK:
        await msg.nak(delay=decision.delay_s or None)
    else:
        await msg.term()
