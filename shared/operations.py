"""Operator actions on runs, shared by the `pulse` CLI and the dashboard: trigger, cancel, re-run.

Both front ends call these, so an action means the same thing wherever it is taken.
Run records are never written here except through the runtime's `request_cancel`;
requests enter JOBS only through `shared.requests.publish_request`
or, for later runs, `shared.delayed.schedule_delayed`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import ValidationError

from shared.delayed import cancel_delayed, list_delayed, schedule_delayed
from shared.errors import InvalidRequest
from shared.jobargs import check_args
from shared.names import Names
from shared.requests import MSG_ID_HEADER, publish_request
from shared.runtime import cancel_suspended, finish_run, get_run, publish_cancel_hint, request_cancel
from shared.schemas import JobRequest, RunRecord, RunStatus, Trigger, new_run_id, utcnow
from shared.store import Database

_SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: Requests read at most when looking for a queued run (a backlog is rarely this long).
QUEUE_SCAN_LIMIT = 10_000


def run_id_for(job: str, trigger: Trigger, key: str | None) -> str:
    """The run id of a manual/delayed request; the same `key` always gives the same id.

    A key that is already safe in a run id is used as is (readable in run listings);
    anything else is hashed, so any text can serve as an idempotency key.
    """
    if key is None:
        return new_run_id(job, trigger)
    if _SAFE_KEY_RE.match(key):
        return new_run_id(job, trigger, key)
    return new_run_id(job, trigger, "k" + hashlib.sha256(key.encode()).hexdigest()[:32])


# -- trigger -------------------------------------------------------------------------


@dataclass(frozen=True)
class Triggered:
    """What a trigger did: the run id, whether it was a duplicate, the existing record if any."""

    run_id: str
    request: JobRequest
    duplicate: bool
    existing: RunRecord | None


def build_request(
    job: str, args: dict[str, Any], at: datetime | None, key: str | None, requested_by: str
) -> JobRequest:
    """A manual (or, with `at`, delayed) request for `job`.

    Raises:
        InvalidRequest: the request would not validate (e.g. args too large), or its args
            do not fit the job's args model (checked here, before anything is published).
    """
    problem = check_args(job, args)
    if problem is not None:
        raise InvalidRequest(f"{job} refuses these args, nothing was published: {problem}")
    trigger = Trigger.DELAYED if at is not None else Trigger.MANUAL
    try:
        return JobRequest(
            run_id=run_id_for(job, trigger, key),
            job=job,
            trigger=trigger,
            scheduled_for=at or utcnow(),
            requested_by=requested_by,
            args=args,
        )
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request for {job}: {exc.errors()[0]['msg']}") from None


async def _delayed_exists(js: JetStreamContext, names: Names, job: str, run_id: str) -> bool:
    return any(request.run_id == run_id for request, _ in await list_delayed(js, names, job))


async def trigger_run(
    js: JetStreamContext, db: Database, names: Names, request: JobRequest, *, at: datetime | None, keyed: bool
) -> Triggered:
    """Publish `request` now, or hold it until `at`; a keyed request already known is not sent again."""
    existing = await get_run(db, request.run_id) if keyed else None
    duplicate = existing is not None
    if existing is None and at is not None:
        if keyed and await _delayed_exists(js, names, request.job, request.run_id):
            duplicate = True
        else:
            await schedule_delayed(js, names, request, at)
    elif existing is None:
        ack = await publish_request(js, names, request)
        duplicate = bool(ack.duplicate)
    return Triggered(request.run_id, request, duplicate, existing)


# -- cancel --------------------------------------------------------------------------


class RunAlreadyEnded(Exception):
    """The run is terminal: nothing to cancel."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(f"{record.run_id} already ended {record.status.value}; nothing to cancel")
        self.record = record


class RunNotFound(LookupError):
    """No run of that id is queued, delayed or recorded."""


@dataclass(frozen=True)
class Canceled:
    """What a cancel did: the status the run has now, and whether a delayed request was removed."""

    run_id: str
    status: str
    delayed: bool


async def cancel_run(
    nc: NatsClient, js: JetStreamContext, db: Database, names: Names, run_id: str, *, by: str | None = None
) -> Canceled:
    """Cancel a queued, delayed, retrying or running run; it ends `canceled` at its next check point.

    `by` (who asked) and the time are recorded in the run's record, for a delayed run too
    (its record is created `canceled` when the held request is removed).

    Raises:
        RunAlreadyEnded: the run is terminal.
        RunNotFound: nothing of that id is queued, delayed or recorded (or it vanished).
    """
    job = run_id.split(":", 1)[0]
    existing = await get_run(db, run_id)
    if existing is not None and existing.status.is_terminal:
        raise RunAlreadyEnded(existing)
    held = (
        next((request for request, _ in await list_delayed(js, names, job) if request.run_id == run_id), None)
        if existing is None
        else None
    )
    if held is not None and await cancel_delayed(js, names, run_id):
        # It never reached the queue: removing the held request is the whole cancel; the
        # record says who canceled it and when.
        await request_cancel(db, run_id, job, by=by)
        await finish_run(db, run_id, RunStatus.CANCELED, reason="canceled before it fired", request=held)
        return Canceled(run_id, "canceled", delayed=True)
    if existing is None and not await request_queued(js, names, job, run_id):
        # request_cancel would record a typo as a queued run that never ends.
        raise RunNotFound(f"no run {run_id!r} is queued, delayed or recorded")
    try:
        record = await request_cancel(db, run_id, job, by=by)
    except LookupError:
        raise RunNotFound(f"run {run_id!r} disappeared while canceling (removed by retention?)") from None
    if record.status in (RunStatus.SLEEPING, RunStatus.WAITING):
        # No worker holds a suspended run, and one may not be connected to take the hint.
        ended = await cancel_suspended(db, js, names, run_id)
        if ended is not None:
            return Canceled(run_id, ended.status.value, delayed=False)
    # A hint so a worker holding the run can stop before its next heartbeat; the record
    # written above is what the runtime trusts.
    await publish_cancel_hint(nc, names, job, run_id)
    await nc.flush(timeout=5)
    return Canceled(run_id, record.status.value, delayed=False)


async def request_queued(js: JetStreamContext, names: Names, job: str, run_id: str) -> bool:
    """Whether a request for `run_id` waits in JOBS (a bounded scan of the job's subject)."""
    async for queued in queued_run_ids(js, names, job):
        if queued == run_id:
            return True
    return False


async def queued_run_ids(js: JetStreamContext, names: Names, job: str) -> AsyncIterator[str]:
    """The run ids of the requests of `job` waiting in JOBS, oldest first (at most `QUEUE_SCAN_LIMIT`).

    A request counts by its `Nats-Msg-Id` and by the `run_id` of its body (they differ
    for a workflow resumed by a signal).
    """
    subject = names.job_subject(job)
    seq = 1
    for _ in range(QUEUE_SCAN_LIMIT):
        try:
            message = await js.get_msg(names.jobs_stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return
        headers = message.headers or {}
        if MSG_ID_HEADER in headers:
            yield headers[MSG_ID_HEADER]
        try:
            body_id = json.loads(message.data or b"{}").get("run_id")
        except (ValueError, AttributeError):
            body_id = None
        if isinstance(body_id, str) and body_id != headers.get(MSG_ID_HEADER):
            yield body_id
        if message.seq is None:
            return
        seq = message.seq + 1


# -- re-run --------------------------------------------------------------------------


async def rerun(js: JetStreamContext, db: Database, names: Names, record: RunRecord, requested_by: str) -> Triggered:
    """Start `record`'s job again now, with the same args, as a new manual run (also for scheduled runs)."""
    request = build_request(record.job, dict(record.args), None, None, requested_by)
    return await trigger_run(js, db, names, request, at=None, keyed=False)
