"""Delayed one-off runs: durable, listable, cancelable, kept by JetStream itself.

A delayed request is a message on `delayed.<job>.<token>` in the JOBS stream with the
headers `Nats-Schedule: @at <RFC 3339 UTC>` and `Nats-Schedule-Target: jobs.<job>`
(ADR-51, server 2.12+). At its time the server publishes the body, unchanged, to
`jobs.<job>` and purges the holding message. Because the holding message lives in a
file-backed stream, it survives a restart of every process, nats-server included; no
marketpulse process has to be running at the fire time.

Verified against nats-server 2.15 (tests/integration/test_delayed.py):
- the fired message carries `Nats-Scheduler: <holding subject>` and
  `Nats-Schedule-Next: purge`, and *not* the holding message's `Nats-Msg-Id`: the
  consumer reads the `run_id` from the body, which is the `JobRequest` unchanged;
- deleting the holding message (`js.delete_msg`) before its time means it never fires;
- the holding message's `Nats-Msg-Id` is the `run_id`, so scheduling the same request
  twice (a retried CLI call) keeps one within the duplicate window.

`<token>` is derived from the `run_id` (a hash: subject tokens cannot hold every run_id
character), so a pending run is found by `run_id` with one direct get, no scan.
Listing reads the stream's `delayed.>` subjects (stream info with a subject filter),
then the one message on each subject by direct get.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from pydantic import ValidationError

from shared.errors import InvalidRequest
from shared.names import Names, check_job_name
from shared.requests import MSG_ID_HEADER
from shared.schemas import JobRequest

log = logging.getLogger(__name__)

SCHEDULE_HEADER = "Nats-Schedule"
SCHEDULE_TARGET_HEADER = "Nats-Schedule-Target"
#: Set by the server on a message it published from a schedule (names the holding subject).
SCHEDULER_HEADER = "Nats-Scheduler"
_AT_PREFIX = "@at "


def delayed_token(run_id: str) -> str:
    """The subject token of a delayed run: a hash of its `run_id` (stable, subject-safe)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


def format_at(at: datetime) -> str:
    """`at` as the RFC 3339 UTC text `Nats-Schedule: @at` expects (whole seconds)."""
    if at.tzinfo is None:
        raise InvalidRequest("a delayed run needs a timezone-aware time (use UTC, e.g. 2026-12-01T09:00:00Z)")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_at(header: str | None) -> datetime | None:
    if not header or not header.startswith(_AT_PREFIX):
        return None
    try:
        return datetime.fromisoformat(header.removeprefix(_AT_PREFIX).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


async def schedule_delayed(
    js: JetStreamContext, names: Names, request: JobRequest, at: datetime, *, msg_id: str | None = None
) -> None:
    """Store `request` in JetStream so that it is published on `jobs.<job>` at `at`.

    A time in the past fires at once. Scheduling the same `run_id` again within the
    duplicate window is a no-op.

    Args:
        js: JetStream context.
        names: resource names (namespace).
        request: the request to publish later; its body arrives unchanged.
        at: when to publish it (timezone-aware; rounded down to the second).
        msg_id: the holding message's `Nats-Msg-Id` (default the `run_id`); a workflow's
            wake-up, which reuses the run's request, needs one of its own.

    Raises:
        InvalidRequest: `at` has no timezone.
    """
    await js.publish(
        names.delayed_subject(request.job, delayed_token(request.run_id)),
        request.to_bytes(),
        stream=names.jobs_stream,
        headers={
            SCHEDULE_HEADER: _AT_PREFIX + format_at(at),
            SCHEDULE_TARGET_HEADER: names.job_subject(request.job),
            MSG_ID_HEADER: msg_id or request.run_id,
        },
    )
    log.info("delayed.scheduled", extra={"job": request.job, "run_id": request.run_id, "at": format_at(at)})


async def _get_holding(js: JetStreamContext, names: Names, subject: str) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg(names.jobs_stream, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None


def _decode(message: RawStreamMsg) -> tuple[JobRequest, datetime] | None:
    at = _parse_at((message.headers or {}).get(SCHEDULE_HEADER))
    try:
        request = JobRequest.model_validate_json(message.data or b"")
    except ValidationError:
        return None
    return (request, at) if at is not None else None


async def list_delayed(js: JetStreamContext, names: Names, job: str | None = None) -> list[tuple[JobRequest, datetime]]:
    """Pending delayed runs (of `job`, or of every job), earliest first.

    Holding messages that cannot be read as a `JobRequest` with an `@at` time (written by
    some other client) are skipped with a warning.
    """
    if job is not None:
        check_job_name(job)
    info = await js.stream_info(names.jobs_stream, subjects_filter=names.delayed_wildcard(job))
    pending: list[tuple[JobRequest, datetime]] = []
    for subject in sorted((info.state.subjects or {}).keys()):
        message = await _get_holding(js, names, subject)
        if message is None:
            continue  # fired or canceled since the stream info was read
        decoded = _decode(message)
        if decoded is None:
            log.warning("delayed.unreadable", extra={"subject": subject})
            continue
        pending.append(decoded)
    pending.sort(key=lambda item: (item[1], item[0].run_id))
    return pending


async def cancel_delayed(js: JetStreamContext, names: Names, run_id: str) -> bool:
    """Cancel the pending delayed run `run_id`; False when none is pending (fired or unknown).

    Args:
        js: JetStream context.
        names: resource names (namespace).
        run_id: the run to cancel, `<job>:delayed:<id>` as printed by `pulse schedule pending`.
    """
    job = run_id.split(":", 1)[0]
    try:
        check_job_name(job)
    except ValueError:
        return False
    message = await _get_holding(js, names, names.delayed_subject(job, delayed_token(run_id)))
    if message is None or message.seq is None:
        return False
    decoded = _decode(message)
    if decoded is None or decoded[0].run_id != run_id:
        return False
    try:
        deleted = await js.delete_msg(names.jobs_stream, message.seq)
    except nats.js.errors.NotFoundError:
        return False  # fired between the read and the delete
    except nats.js.errors.APIError as exc:
        # The server answers "no message found" with a plain API error on some versions.
        if "not found" in str(exc).lower() or "no message" in str(exc).lower():
            return False
        raise
    if deleted:
        log.info("delayed.canceled", extra={"job": job, "run_id": run_id})
    return bool(deleted)


__all__ = ["cancel_delayed", "delayed_token", "format_at", "list_delayed", "schedule_delayed"]
