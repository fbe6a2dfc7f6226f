"""Workflows between steps: suspending a run (sleep, wait), waking it, signaling it, canceling it.

A sleeping or waiting run is held by no worker: its attempt ended (the message was
acked) after the run was recorded `sleeping`/`waiting`. It comes back as its own request
published again on `jobs.<job>`:

- at its wake-up time (a sleep's end, a wait's timeout) through a JetStream message
  schedule, the mechanism of delayed runs (`shared/delayed.py`): durable in the JOBS
  stream, so it survives a restart of every process, nats-server included;
- or when a signal for the step it waits on is recorded (`deliver_signal`), which drops
  the pending timeout and publishes the request at once.

The resumed attempt replays the journal: the sleep or wait step checks the time or the
signal itself, so a wake-up that comes early (a crash between recording and acking)
only suspends the run again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext

from shared.delayed import cancel_delayed, format_at, schedule_delayed
from shared.errors import SignalRejected
from shared.names import Names
from shared.requests import publish_request
from shared.runtime import _journal as journal
from shared.runtime import _records as records
from shared.runtime._events import publish_run_event
from shared.runtime._steps import Suspension
from shared.schemas import JobRequest, RunRecord, RunStatus, StepStatus, utcnow
from shared.store import Database

log = logging.getLogger("shared.runtime")

#: Header of a signal message naming its run (run ids contain '.', so never a subject token).
RUN_ID_HEADER = "Pulse-Run-Id"
#: Header of a signal message naming the signal (the waiting step's name).
SIGNAL_HEADER = "Pulse-Signal"


def wake_time(wake_at: datetime) -> datetime:
    """The whole second a wake-up is scheduled for: rounded up, never before `wake_at`."""
    at = wake_at.astimezone(UTC)
    whole = at.replace(microsecond=0)
    return whole if whole == at else whole + timedelta(seconds=1)


async def suspend(
    db: Database,
    js: JetStreamContext,
    names: Names,
    request: JobRequest,
    attempt: records.EndedAttempt,
    suspension: Suspension,
) -> None:
    """Record the run `sleeping`/`waiting` and schedule its wake-up (if it has a time).

    The record comes first: a crash before the wake-up is scheduled leaves the message
    unacked, and its redelivery suspends the run again and schedules the wake-up. The
    record is fenced by the attempt's start token (`AttemptTakenOver`).
    """
    recorded = await records.record_suspended(
        db,
        request.run_id,
        suspension.status,
        attempt,
        wake_at=suspension.wake_at,
        waiting_for=suspension.waiting_for,
    )
    if not recorded:
        return  # ended meanwhile (canceled): nothing to wake
    if await records.cancel_requested(db, request.run_id):
        # A cancel that came while the attempt ran, after its last look (its hint found
        # the run still `running`): nothing else would read it while the run waits.
        await cancel_suspended(db, js, names, request.run_id)
        return
    if suspension.wake_at is not None:
        at = wake_time(suspension.wake_at)
        # A wake-up of its own per step and second: the request's Nats-Msg-Id (its run id)
        # is still in the duplicate window, and a rescheduled early wake-up must not be dropped.
        await schedule_delayed(
            js, names, request, at, msg_id=f"{request.run_id}:wake:{suspension.step}:{format_at(at)}"
        )
    log.info(
        "run %s %s at step %s",
        request.run_id,
        suspension.status.value,
        suspension.step,
        extra={
            "event": f"run.{suspension.status.value}",
            "job": request.job,
            "run_id": request.run_id,
            "step": suspension.step,
            "wake_at": suspension.wake_at.isoformat() if suspension.wake_at else None,
        },
    )


async def cancel_suspended(db: Database, js: JetStreamContext, names: Names, run_id: str) -> RunRecord | None:
    """End a sleeping or waiting run `canceled` now and drop its pending wake-up; None unless it was suspended.

    Called when a cancel hint reaches a worker that does not hold the run. The run's one
    event is published by whoever ends it: here, or a woken attempt that sees the cancel.
    """
    record = await records.finish_suspended_run(
        db, run_id, RunStatus.CANCELED, error="canceled while sleeping or waiting"
    )
    if record is None:
        return None
    await cancel_delayed(js, names, run_id)
    await journal.record_run_ended(db, run_id, record.ended_at or utcnow())
    await publish_run_event(js, names, record)
    log.info(
        "run %s canceled while suspended",
        run_id,
        extra={"event": "run.canceled", "job": record.job, "run_id": run_id, "status": record.status.value},
    )
    return record


@dataclass(frozen=True)
class SignalDelivered:
    run_id: str
    name: str


async def deliver_signal(
    db: Database, js: JetStreamContext, names: Names, run_id: str, name: str, payload: Any, *, max_bytes: int
) -> SignalDelivered:
    """Record signal `name` (with its JSON `payload`) for `run_id`, and resume the run.

    The signal ends the waiting step in the journal (conditional on it still waiting,
    so a timeout racing with it gives one outcome), the pending timeout is dropped, and
    the run's request is published again with a `Nats-Msg-Id` of its own.

    Raises:
        SignalRejected: unknown run, run not waiting for `name`, or payload too large.
    """
    record = await records.get_run(db, run_id)
    if record is None:
        raise SignalRejected(f"no run {run_id!r}: check the run id (pulse runs --status waiting)")
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > max_bytes:
        raise SignalRejected(
            f"the payload of signal {name!r} is {len(text.encode())} bytes; at most {max_bytes} "
            "(PULSE_STEP_RESULTS_MAX_BYTES): send an id and keep the data in the database"
        )
    step = await journal.get_step(db, run_id, name)
    ended = step is not None and await journal.end_suspension(
        db, run_id, name, StepStatus.WAITING, result_json=text, result_bytes=len(text.encode())
    )
    if not ended:
        waiting = f"waiting for {record.waiting_for!r}" if record.status is RunStatus.WAITING else record.status.value
        raise SignalRejected(f"run {run_id} is not waiting for signal {name!r} (it is {waiting})")
    await cancel_delayed(js, names, run_id)  # the timeout wake-up, if any
    await publish_request(js, names, record.as_request(), msg_id=f"{run_id}:signal:{name}")
    log.info("signal %s delivered to run %s", name, run_id, extra={"event": "run.signaled", "run_id": run_id})
    return SignalDelivered(run_id, name)
