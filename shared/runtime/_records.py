"""The only code that writes `runs` (and `cancels`).

A run record moves `queued`? → `running` ⇄ `retrying` (⇄ `deferred` while an upstream
quota is spent) → exactly one terminal status.
Every write that changes a run's state is conditional on the record not being terminal
yet (`status` not terminal in the filter of one `findAndModify`), so two workers (or a
worker and the watchdog) racing to finish one run produce one outcome, the record keeps
the owner's status, and the caller learns whether its write was the transition (and so
owns the RunEvent). This rests on MongoDB's single-document atomicity: the filter and
the update are one atomic step on MongoDB and on mongo-java-server (whose writes to a
collection hold one lock); FerretDB 1.24 does not keep it (docs/decisions.md).

An attempt's own writes (heartbeat, retry, suspension, deferral, outcome) are also
conditional on the start token it wrote (`EndedAttempt`): once another delivery has
taken the run over (`start_attempt`'s lease), a late write of the old attempt changes
nothing and raises `AttemptTakenOver`.

Why no "undo": these writes used to filter on `_id` alone (FerretDB 1.24 scanned the
collection on any other filter) and put the previous document back with `replace_one`
when it showed a terminal run. Two such undos interleave: a loser's "previous document"
can be another loser's write not yet undone, and putting it back leaves that loser's
status in the record (four racing `finish_run`s left a non-owner's status in 276 of 300
trials on mongo-java-server; `tests/integration/test_store_atomicity.py` races them). No
code writes a whole run document any more.

Cancels live in their own collection, `cancels` (`_id` = run_id), written once by
`request_cancel` and never updated: no heartbeat, progress or start write can touch them,
so a cancel cannot be lost whatever else overlaps. The runtime reads them at the start
of each attempt and at every heartbeat; the run record's `cancel_requested` only shows
the request to operators.

A first delivery's start is tried as a plain insert first (`likely_new`): the cheapest
write for a new run on every store, and atomic (it creates the record or fails on the
duplicate `_id`, and then the conditional write runs). All queries run on MongoDB 6+ and
on FerretDB 1.24 (which also ignores `$slice` in `$push`, hence the explicit trim).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared.errors import StoreUnavailable, bounded
from shared.names import Collections
from shared.schemas import (
    MAX_ATTEMPT_HISTORY,
    TERMINAL_STATUSES,
    AttemptRecord,
    JobRequest,
    RunRecord,
    RunStatus,
    Trigger,
    utcnow,
)
from shared.store import Database, Document

_TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)
#: Matches a record that may still change state (the filter of every conditional write).
_NOT_TERMINAL: Document = {"status": {"$nin": sorted(_TERMINAL)}}
#: A conditional upsert can meet a record created or ended concurrently; each retry
#: follows a real state change (missing → present → terminal), so two always suffice.
_WRITE_TRIES = 3


def _is_terminal(doc: dict[str, Any] | None) -> bool:
    return doc is not None and doc.get("status") in _TERMINAL


class StartRefused(Exception):
    """This delivery must not start an attempt; its start wrote nothing (see the subclasses)."""


class SupersededDelivery(StartRefused):
    """A later delivery of the same message has started an attempt: this one stands down.

    A delivery that stayed in a slow store call past the ack wait is redelivered to a
    concurrent handler; the older one must neither start a second attempt nor settle
    the message the newer one holds.
    """


class SupersededRequest(StartRefused):
    """A newer message of the same run (a workflow's wake-up or signal) has started it.

    That message carries the run from here on, so this one is done: it is acked.
    """


class RunHeldElsewhere(StartRefused):
    """Another delivery's attempt is running and heartbeating: this one waits its turn.

    A worker cut off from NATS (or with a stalled event loop) past the ack wait keeps
    its attempt while JetStream redelivers the request; a heartbeat younger than the
    lease says that attempt is alive, so the redelivery is put back (no attempt
    counted) instead of running the request a second time at once.
    """


class AttemptTakenOver(Exception):
    """Another delivery took this attempt's run over while it ran: nothing more of it is recorded.

    An attempt whose heartbeat stopped for longer than the lease (its worker was cut off
    from the store, or its event loop stalled) looks dead, and the next delivery takes
    the run over (`start_attempt` writes its own start token). When the old attempt
    comes back, every write it makes (heartbeat, retry, suspension, outcome) is fenced
    by its start token and refused: it stops, records nothing, and leaves its delivery
    to the one that holds the run, which alone settles the message.
    """


@dataclass(frozen=True)
class EndedAttempt:
    """An attempt as it ended: its entry in the run's history, and the start token that held the run.

    Every write of an attempt's end is fenced by the token (`AttemptTakenOver`).
    """

    record: AttemptRecord
    token: str


class StartUnconfirmed(StoreUnavailable):
    """The start's write was sent twice (the driver retried it) and the record shows it applied.

    The record as it was before is not known, so the start is taken back and the
    delivery put back like any store failure.
    """


def _delivery_fence(seq: int, delivery: int) -> Document:
    """Match a record that no delivery at or after (`seq`, `delivery`) has started."""
    return {
        "$or": [
            {"start_seq": None},
            {"start_seq": {"$lt": seq}},
            {"start_seq": seq, "start_delivery": {"$lt": delivery}},
        ]
    }


def _not_held(token: str, now: datetime, lease_s: float) -> Document:
    """Match a record that no other live attempt holds: not running, or its heartbeat older than the lease."""
    return {
        "$or": [
            {"status": {"$ne": RunStatus.RUNNING.value}},
            {"heartbeat_at": None},
            {"heartbeat_at": {"$lt": now - timedelta(seconds=lease_s)}},
            {"start_token": token},
        ]
    }


def _held_by(token: str | None) -> Document:
    """The fence of an attempt's writes: its start `token` still holds the run (no token: no fence)."""
    return {} if token is None else {"start_token": token}


def _raise_if_taken_over(run_id: str, current: dict[str, Any] | None, token: str | None) -> None:
    """After a fenced write did not apply: raise `AttemptTakenOver` unless the run simply ended (or is gone)."""
    if token is None or current is None or _is_terminal(current) or current.get("start_token") == token:
        return
    raise AttemptTakenOver(
        f"run {run_id} was taken over by {current.get('worker') or 'another worker'} while this attempt "
        f"({token}) ran: its heartbeat had stopped for longer than the lease; this attempt's outcome is not recorded"
    )


def _started_at_or_after(doc: dict[str, Any], seq: int, delivery: int) -> bool:
    started = doc.get("start_seq")
    return started is not None and (started, doc.get("start_delivery") or 0) >= (seq, delivery)


async def _write_unless_terminal(
    db: Database,
    run_id: str,
    update: dict[str, Any],
    *,
    upsert: bool,
    likely_new: bool = False,
    fence: Document | None = None,
    held_by: str | None = None,
) -> tuple[bool, dict[str, Any] | None]:
    """Apply `update` unless the run is terminal; return (applied, document before).

    One `findAndModify` whose filter says "not terminal": atomic on MongoDB. With
    `upsert`, a missing record is created by the same command; a duplicate key then
    means the record exists but is terminal (the filter did not match), or was created
    by a concurrent writer in between (then the write is tried again). `likely_new`
    tries a plain insert first. `fence` narrows the filter further (the start's
    delivery fence); `held_by` is the start token of the attempt writing (`EndedAttempt`).

    Returns:
        (True, before) when applied (`before` is None for a record just created);
        (False, current) when the run is terminal, has no record and `upsert` is false,
        or the fence did not match.

    Raises:
        AttemptTakenOver: `held_by` no longer holds the run (another delivery took it over).
    """
    runs = db[Collections.RUNS]
    fence = {**(fence or {}), **_held_by(held_by)}
    if upsert and likely_new:
        try:
            await runs.insert_one(_as_new_document(run_id, update))
            return True, None
        except DuplicateKeyError:
            pass  # it exists: the conditional write below decides
    for _ in range(_WRITE_TRIES):
        try:
            before = await runs.find_one_and_update(
                {"_id": run_id, **_NOT_TERMINAL, **fence},
                update,
                upsert=upsert,
                return_document=ReturnDocument.BEFORE,
            )
        except DuplicateKeyError:
            before = None
        else:
            if before is not None or upsert:
                return True, before
        current = await runs.find_one({"_id": run_id})
        if current is None and not upsert:
            return False, None
        if _is_terminal(current) or (fence and current is not None and not await _matches(runs, run_id, fence)):
            _raise_if_taken_over(run_id, current, held_by)
            return False, current
        # Created (or un-deleted) between the write and the read: write again.
    raise RuntimeError(f"run {run_id!r} kept changing while recording it; try again")


async def _update_if(db: Database, run_id: str, condition: Document, update: Document) -> bool:
    """Apply `update` to the run if it also matches `condition`; True when it did.

    A `findAndModify`, not an `update_one`: both are one atomic write by `_id` on
    MongoDB, but the embedded store (mongo-java-server) scans the whole collection for an
    `update_one` whose filter has more than `_id` (33 ms at 50,000 runs against 2.6 ms,
    measured 2026-12-02), and these writes happen on every run.
    """
    # No projection: FerretDB 1.24 (the optional store) refuses `fields` in `findAndModify`.
    before = await db[Collections.RUNS].find_one_and_update({"_id": run_id, **condition}, update)
    return before is not None


async def _matches(runs: Any, run_id: str, condition: Document) -> bool:
    return await runs.find_one({"_id": run_id, **condition}, {"_id": 1}) is not None


def _as_new_document(run_id: str, update: dict[str, Any]) -> dict[str, Any]:
    """The document an upsert of `update` would create (for $set, $setOnInsert, $inc and $push)."""
    doc: dict[str, Any] = {
        "_id": run_id,
        **update.get("$setOnInsert", {}),
        **update.get("$set", {}),
        **update.get("$inc", {}),
    }
    for field, value in update.get("$push", {}).items():
        doc[field] = list(value["$each"]) if isinstance(value, dict) and "$each" in value else [value]
    return doc


def _request_fields(request: JobRequest) -> dict[str, Any]:
    return {
        "job": request.job,
        "trigger": request.trigger.value,
        "scheduled_for": request.scheduled_for,
        "requested_at": request.requested_at,
        "requested_by": request.requested_by,
        "args": request.args,
    }


def _attempt_doc(attempt: AttemptRecord) -> dict[str, Any]:
    doc = attempt.model_dump(exclude_none=True)
    if "error" in doc:
        doc["error"] = bounded(doc["error"], 500)
    return doc


async def _trim_attempts(db: Database, run_id: str, count: int) -> None:
    # `$push` with `$slice` bounds the list on MongoDB; FerretDB 1.24 ignores `$slice`,
    # so drop the oldest entries explicitly (only runs past the history limit get here).
    for _ in range(max(0, count - MAX_ATTEMPT_HISTORY)):
        await db[Collections.RUNS].update_one({"_id": run_id}, {"$pop": {"attempts": -1}})


def _push_attempt(attempt: AttemptRecord) -> dict[str, Any]:
    return {"attempts": {"$each": [_attempt_doc(attempt)], "$slice": -MAX_ATTEMPT_HISTORY}}


async def start_attempt(
    db: Database,
    request: JobRequest,
    worker: str,
    *,
    seq: int,
    delivery: int,
    max_attempts: int,
    lease_s: float,
    likely_new: bool = True,
) -> tuple[RunRecord | None, RunRecord | None]:
    """Mark the run `running` as its next attempt; the attempt number is counted here.

    `attempt_count` is incremented atomically in the record, not taken from the
    message's delivery count: a delivery that never got this far (the store or NATS was
    unreachable) spends nothing of the run's retry budget. A start past `max_attempts`
    (the last attempt's worker died) leaves the count at `max_attempts`; the caller
    then fails the run.

    The write is fenced by the delivery (`seq`, `delivery`): a delivery older than one
    that already started the run (it sat in a slow call past the ack wait and was
    redelivered meanwhile) raises `SupersededDelivery` and writes nothing; a message
    older than the one that started the run raises `SupersededRequest`. It is also
    fenced by the lease: a run `running` with a heartbeat younger than `lease_s` from
    another start is alive elsewhere (`RunHeldElsewhere`, nothing written); an older
    heartbeat means that attempt's worker died, and its attempt is taken over. The write
    records the delivery's `start_token(worker, seq, delivery)`, so that a start
    which failed or timed out after its write may have applied can be taken back
    (`void_start`). The returned record's `cancel_requested` is False: the caller reads
    `cancels` (before this write, so that a failed read has written nothing).

    Args:
        db: the database.
        request: the request being run.
        worker: this worker's id, recorded on the run.
        seq: the request message's stream sequence.
        delivery: the message's delivery count.
        max_attempts: the job's attempt limit.
        lease_s: a running attempt whose heartbeat is younger than this is alive; it
            must exceed the heartbeat interval and stay below the ack wait
            (`run_lease_s`).
        likely_new: try the insert first (a first delivery): cheaper for a new run.

    Returns:
        (before, after): the record as it was (None if new) and as it is now; `after`
        is None when the run already had a terminal record (nothing was written).

    Raises:
        SupersededDelivery: a later delivery of this message started the run.
        SupersededRequest: a later message of this run started it.
        RunHeldElsewhere: another start's attempt is running and alive.
        StartUnconfirmed: this very start was applied by an earlier send of the write.
    """
    now = utcnow()
    token = start_token(worker, seq, delivery)
    update = {
        "$set": {
            **_request_fields(request),
            "status": RunStatus.RUNNING.value,
            "start_token": token,
            "start_seq": seq,
            "start_delivery": delivery,
            "attempt_started_at": now,
            "heartbeat_at": now,
            "worker": worker,
            "next_attempt_at": None,
            "updated_at": now,
        },
        "$inc": {"attempt_count": 1},
        # A record created earlier by a cancel request has no start, and never gets one.
        "$setOnInsert": {"started_at": now},
    }
    fence = {"$and": [_delivery_fence(seq, delivery), _not_held(token, now, lease_s)]}
    applied, before = await _write_unless_terminal(
        db, request.run_id, update, upsert=True, likely_new=likely_new, fence=fence
    )
    if not applied:
        assert before is not None  # with upsert, "not applied" always comes with the record
        if _is_terminal(before):
            return RunRecord.model_validate(before), None
        if before.get("start_token") == token:
            raise StartUnconfirmed(f"the start of run {request.run_id} was applied by an earlier send of its write")
        if (before.get("start_seq") or 0) > seq:
            raise SupersededRequest(f"run {request.run_id}: message {seq} is superseded by a later message of the run")
        if _started_at_or_after(before, seq, delivery):
            raise SupersededDelivery(f"run {request.run_id}: delivery {delivery} of message {seq} is superseded")
        raise RunHeldElsewhere(
            f"run {request.run_id} is running in {before.get('worker') or 'another worker'}, "
            f"which heartbeat less than {lease_s:g}s ago"
        )
    previous = RunRecord.model_validate(before) if before else None
    count = (previous.attempt_count if previous else 0) + 1
    if count > max_attempts:  # rare: keep the count at the limit; the run is failed next
        count = max_attempts
        await db[Collections.RUNS].update_one({"_id": request.run_id}, {"$inc": {"attempt_count": -1}})
    after = RunRecord.model_validate(
        {
            **(before or {}),
            **update["$set"],
            "attempt_count": count,
            "_id": request.run_id,
            "started_at": previous.started_at if previous else now,
            "cancel_requested": False,
        }
    )
    return previous, after


def run_lease_s(heartbeat_interval_s: float, ack_wait_s: float) -> float:
    """How young a heartbeat says its attempt is alive: midway between the two.

    Above the heartbeat interval, so a live attempt always holds its run; below the
    ack wait, so the first redelivery after a worker died (which comes at least an ack
    wait after its last beat) takes the run over. Settings keep ack wait >= 2 beats.
    """
    return (heartbeat_interval_s + ack_wait_s) / 2


def start_token(worker: str, seq: int, delivery: int) -> str:
    """The token of one delivery's start, recorded on the run (`void_start` matches it)."""
    return f"{worker}:{seq}:{delivery}"


async def void_start(
    db: Database, run_id: str, token: str, previous: RunRecord | None, *, interrupted: bool = False
) -> bool:
    """Take back the start `token` of an attempt that must not count; True if one was taken back.

    Called when the start failed after its write may have applied (a timeout, a reply
    lost in a cut) or before the handler began, and (`interrupted`) when the store or
    NATS failed under the handler: the delivery is put back, and the attempt it counted
    must not stand. An interrupted attempt is counted in `interruptions` instead (the
    runtime bounds them). Conditional on the token, so it undoes exactly this delivery's
    start and nothing written since. The status goes back to what it was when that is
    known (`previous`), otherwise to `retrying` (the run waits for its next delivery).

    Returns False when there was nothing to take back (the run ended meanwhile, or
    the start never applied).

    Raises:
        AttemptTakenOver: (`interrupted` only: that start surely applied) another delivery
            holds the run now; its message is not ours to put back.
    """
    status = previous.status if previous is not None else RunStatus.RETRYING
    counts: dict[str, int] = {"attempt_count": -1, **({"interruptions": 1} if interrupted else {})}
    voided = await _update_if(
        db,
        run_id,
        {"start_token": token, "status": RunStatus.RUNNING.value},
        {"$inc": counts, "$set": {"status": status.value, "start_token": None, "updated_at": utcnow()}},
    )
    if not voided and interrupted:  # rare: read why
        current = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1, "start_token": 1, "worker": 1})
        _raise_if_taken_over(run_id, current, token)
    return voided


async def record_lost_attempt(db: Database, run_id: str, number: int, worker: str | None) -> None:
    """Add an attempt whose worker died (it never reported an end) to the history, once.

    Once: a start taken back after this write (`void_start`) comes again and finds the
    run still `running`, so the same lost attempt is recorded a second time otherwise.
    """
    lost = AttemptRecord(
        number=number,
        started_at=utcnow(),
        outcome="lost",
        worker=worker,
        error="the worker stopped answering (heartbeat lost); the request was redelivered",
    )
    await _update_if(db, run_id, {"attempts.number": {"$ne": number}}, {"$push": _push_attempt(lost)})


async def heartbeat(
    db: Database, run_id: str, progress: dict[str, Any] | None = None, *, token: str | None = None
) -> bool:
    """Refresh `heartbeat_at` (and progress); return True when a cancel was requested.

    The refresh leaves a terminal record alone (a late beat of an attempt the watchdog
    already ended), and the cancel is read from `cancels`, which this write never touches.
    With the attempt's start `token`, the refresh is fenced by it too.

    Raises:
        AttemptTakenOver: another delivery holds the run now (only with `token`).
    """
    fields: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress:
        fields["progress"] = progress
    refresh = _update_if(db, run_id, {**_NOT_TERMINAL, **_held_by(token)}, {"$set": fields})
    refreshed, canceled = await asyncio.gather(refresh, cancel_requested(db, run_id))
    if not refreshed and token is not None:  # rare: the run ended, or was taken over
        current = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1, "start_token": 1, "worker": 1})
        _raise_if_taken_over(run_id, current, token)
    return canceled


async def cancel_requested(db: Database, run_id: str) -> bool:
    """Whether a cancel of `run_id` was requested (one read of `cancels` by `_id`)."""
    return await db[Collections.CANCELS].find_one({"_id": run_id}, {"_id": 1}) is not None


async def record_retry(db: Database, run_id: str, attempt: EndedAttempt, next_attempt_at: datetime) -> None:
    """The attempt failed and another will follow: status `retrying`, last error, next time.

    Raises:
        AttemptTakenOver: the attempt's start no longer holds the run.
    """
    applied, _ = await _write_unless_terminal(
        db,
        run_id,
        {
            "$set": {
                "status": RunStatus.RETRYING.value,
                "error": bounded(attempt.record.error or ""),
                "next_attempt_at": next_attempt_at,
                "updated_at": utcnow(),
            },
            "$push": _push_attempt(attempt.record),
        },
        upsert=False,
        held_by=attempt.token,
    )
    if applied and attempt.record.number > MAX_ATTEMPT_HISTORY:
        await _trim_attempts(db, run_id, attempt.record.number)


async def record_deferred(
    db: Database,
    request: JobRequest,
    *,
    until: datetime,
    error: str,
    attempt: EndedAttempt | None = None,
) -> bool:
    """An upstream quota holds the run back: status `deferred` until `until`, with the reason.

    A run deferred before it started gets a record (from `request`); one deferred inside
    an attempt keeps that attempt in its history but not in its count: waiting for a
    quota spends nothing of the retry budget. Returns False when the run was terminal.

    Raises:
        AttemptTakenOver: the attempt's start no longer holds the run.
    """
    now = utcnow()
    update: dict[str, Any] = {
        "$set": {
            "status": RunStatus.DEFERRED.value,
            "reason": "quota_exhausted",
            "error": bounded(error),
            "next_attempt_at": until,
            "heartbeat_at": None,
            "updated_at": now,
        },
        "$setOnInsert": {**_request_fields(request), "attempt_count": 0},
    }
    if attempt is not None:
        update["$push"] = _push_attempt(attempt.record)
        update["$inc"] = {"attempt_count": -1}
        del update["$setOnInsert"]["attempt_count"]
    held_by = attempt.token if attempt is not None else None
    applied, _ = await _write_unless_terminal(db, request.run_id, update, upsert=True, held_by=held_by)
    return applied


async def add_provider_calls(db: Database, run_id: str, calls: dict[str, int]) -> None:
    """Add an attempt's upstream requests to the run's `provider_calls` (one `$inc` by `_id`)."""
    if calls:
        increments = {f"provider_calls.{upstream}": count for upstream, count in calls.items()}
        await db[Collections.RUNS].update_one({"_id": run_id}, {"$inc": increments})


async def finish_run(
    db: Database,
    run_id: str,
    status: RunStatus,
    *,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
    reason: str | None = None,
    attempt: EndedAttempt | None = None,
    request: JobRequest | None = None,
) -> RunRecord | None:
    """Set one terminal status, unless the record is terminal already.

    The record also says that the run's once-only effects (metrics, failure-streak and
    recovery alerts) are still to be done (`effects_pending`); `take_effects` claims them.

    Args:
        db: the database.
        run_id: the run.
        status: a terminal status.
        error: the last error (bounded here; must not hold secrets).
        summary: small dict of counts from the handler.
        reason: why a run was skipped (or failed without running), e.g. "overlap".
        attempt: the attempt that ended the run, appended to the history; its start
            token fences the write.
        request: when given, a missing record is created from it (runs that end before
            they start: skipped, invalid, canceled while queued).

    Returns:
        The record after the transition, or None when it was already terminal (or
        missing and no `request` was given): the caller then publishes no event.

    Raises:
        ValueError: when `status` is not terminal.
        AttemptTakenOver: the attempt's start no longer holds the run.
    """
    if not status.is_terminal:
        raise ValueError(f"finish_run needs a terminal status, got {status.value!r}")
    now = utcnow()
    fields: dict[str, Any] = {"status": status.value, "ended_at": now, "updated_at": now, "next_attempt_at": None}
    if error is not None:
        fields["error"] = bounded(error)
    if summary:
        fields["summary"] = summary
    if reason is not None:
        fields["reason"] = reason
    fields["effects_pending"] = True
    update: dict[str, Any] = {"$set": fields}
    if attempt is not None:
        update["$push"] = _push_attempt(attempt.record)
    if request is not None:
        update["$setOnInsert"] = {**_request_fields(request), "attempt_count": 0}
    held_by = attempt.token if attempt is not None else None
    applied, before = await _write_unless_terminal(db, run_id, update, upsert=request is not None, held_by=held_by)
    if not applied or (before is None and request is None):
        return None
    if attempt is not None and attempt.record.number > MAX_ATTEMPT_HISTORY:
        await _trim_attempts(db, run_id, attempt.record.number)
    # The document after the write, built from the one before (saves a read per run).
    doc: dict[str, Any] = {**update.get("$setOnInsert", {}), **(before or {}), **fields, "_id": run_id}
    if attempt is not None:
        doc["attempts"] = [*doc.get("attempts", []), _attempt_doc(attempt.record)][-MAX_ATTEMPT_HISTORY:]
    return RunRecord.model_validate(doc)


async def take_effects(db: Database, run_id: str) -> bool:
    """Claim a finished run's once-only effects; True for exactly one caller per run.

    One conditional update by `_id` (single-document atomic): the delivery that recorded
    the run and a redelivery that repairs its failed announcement cannot both win. A
    claim whose reply is lost leaves the effects undone (at most once, never twice).
    """
    return await _update_if(db, run_id, {"effects_pending": True}, {"$set": {"effects_pending": False}})


async def get_run(db: Database, run_id: str) -> RunRecord | None:
    """The record of `run_id`, or None."""
    doc = await db[Collections.RUNS].find_one({"_id": run_id})
    return RunRecord.model_validate(doc) if doc else None


def _trigger_of(run_id: str) -> Trigger:
    # run_id is `<job>:<trigger>:<id>` for non-scheduled runs, `<job>:<slot>` otherwise.
    parts = run_id.split(":")
    if len(parts) >= 3 and parts[1] in Trigger._value2member_map_:
        return Trigger(parts[1])
    return Trigger.SCHEDULE


async def request_cancel(db: Database, run_id: str, job: str, *, by: str | None = None) -> RunRecord:
    """Ask for a run to be canceled; the runtime ends it `canceled` at its next check point.

    The request is one document in `cancels` (`_id` = run_id), inserted once and never
    changed, which the worker reads at the claim and at every heartbeat. The run record
    shows it too (`cancel_requested`), for operators. A run with no record yet (still
    queued) gets a `queued` record, so the worker that picks it up ends it at once. A
    run already terminal when asked is returned unchanged (nothing is written).

    `by` (who asked) is kept in `cancels` and in the record (`canceled_by`), with the time
    (`cancel_requested_at`).

    Raises:
        LookupError: the run's record disappeared meanwhile (removed by retention).
    """
    existing = await db[Collections.RUNS].find_one({"_id": run_id})
    if _is_terminal(existing):
        return RunRecord.model_validate(existing)
    now = utcnow()
    # First the request the runtime obeys; the record below only shows it.
    cancel: dict[str, Any] = {"job": job, "requested_at": now}
    if by is not None:
        cancel["by"] = by[:200]
    await db[Collections.CANCELS].update_one({"_id": run_id}, {"$setOnInsert": cancel}, upsert=True)
    fields: dict[str, Any] = {"cancel_requested": True, "cancel_requested_at": now, "updated_at": now}
    if by is not None:
        fields["canceled_by"] = by[:200]
    update = {
        "$set": fields,
        "$setOnInsert": {
            "job": job,
            "trigger": _trigger_of(run_id).value,
            "status": RunStatus.QUEUED.value,
            "attempt_count": 0,
        },
    }
    applied, before = await _write_unless_terminal(db, run_id, update, upsert=True)
    # Not applied: it ended meanwhile, often canceled by this very request (a worker can
    # see `cancels` and finish the run before the record's flag is written).
    doc = before if not applied else await db[Collections.RUNS].find_one({"_id": run_id})
    if doc is None:  # deleted between the two calls by retention: report it as gone
        raise LookupError(f"run {run_id!r} has no record")
    # The request stands in `cancels` whatever the record shows of its flag.
    return RunRecord.model_validate({**doc, "cancel_requested": True})


async def record_suspended(
    db: Database,
    run_id: str,
    status: RunStatus,
    attempt: EndedAttempt,
    *,
    wake_at: datetime | None,
    waiting_for: str | None = None,
) -> bool:
    """A workflow's attempt ended in a sleep or a wait: `sleeping` / `waiting`, no worker holds it.

    The attempt count starts again from 0: a run's retry budget counts the attempts since
    its last sleep or wait, so a long workflow is not failed by its own sleeps. Returns
    False when the run was terminal already (canceled meanwhile).

    Raises:
        AttemptTakenOver: the attempt's start no longer holds the run.
    """
    if status not in (RunStatus.SLEEPING, RunStatus.WAITING):
        raise ValueError(f"record_suspended needs sleeping or waiting, got {status.value!r}")
    applied, _ = await _write_unless_terminal(
        db,
        run_id,
        {
            "$set": {
                "status": status.value,
                "wake_at": wake_at,
                "waiting_for": waiting_for,
                "attempt_count": 0,
                "heartbeat_at": None,
                "updated_at": utcnow(),
            },
            "$push": _push_attempt(attempt.record),
        },
        upsert=False,
        held_by=attempt.token,
    )
    return applied


async def finish_suspended_run(db: Database, run_id: str, status: RunStatus, *, error: str) -> RunRecord | None:
    """End a sleeping or waiting run with the terminal `status` (a cancel); None unless it was suspended.

    Conditional on the suspended status in one update (single-document atomicity): a
    wake-up that claims the run first makes this a no-op, and the running attempt then
    sees the cancel at its next check point.
    """
    if not status.is_terminal:
        raise ValueError(f"finish_suspended_run needs a terminal status, got {status.value!r}")
    now = utcnow()
    doc = await db[Collections.RUNS].find_one_and_update(
        {"_id": run_id, "status": {"$in": [RunStatus.SLEEPING.value, RunStatus.WAITING.value]}},
        {"$set": {"status": status.value, "ended_at": now, "updated_at": now, "error": bounded(error)}},
        return_document=ReturnDocument.AFTER,
    )
    return RunRecord.model_validate(doc) if doc else None
