"""Writers racing on one document, from separate clients, on the default store.

Our guarantees (one owner per run outcome, no lost cancel, exact counters) rest on
MongoDB's single-document atomicity; these tests race real writers enough times to catch
a lost update instead of assuming it. Each writer has its own `AsyncMongoClient`, so the
writes travel on separate connections and the server really interleaves them.

Tests marked `atomic_store` need that atomicity and fail on FerretDB 1.24 by design
(it applies an update by reading, changing and writing back the whole document); the
others hold on any MongoDB-compatible store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from shared.names import Collections
from shared.runtime import _records as records
from shared.runtime._watchdog import time_out_dead_runs
from shared.schemas import AttemptRecord, JobRequest, RunRecord, RunStatus, utcnow
from shared.settings import Settings
from shared.store import Database, make_client
from tests.integration.test_runtime_support import request_for

#: Separate clients (and so connections) writing at once.
WRITERS = 4
#: Trials per race: enough to catch a lost update that happens a few times in a hundred.
TRIALS = 60

#: The starts' lease: a heartbeat younger than this holds the run.
LEASE_S = 5.0

ENDINGS = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELED)


@pytest.fixture
async def writers(settings: Settings, db: Database) -> AsyncIterator[list[Database]]:
    """The test's database, seen through `WRITERS` separate clients."""
    clients = [make_client(settings) for _ in range(WRITERS)]
    yield [client[settings.mongo_db] for client in clients]
    for client in clients:
        await client.close()


async def _running_record(db: Database, request: JobRequest, *, silent_for_s: float = 0.0) -> None:
    """A run record as a worker leaves it mid-attempt (its last heartbeat `silent_for_s` ago)."""
    beat = utcnow() - timedelta(seconds=silent_for_s)
    await db[Collections.RUNS].insert_one(
        {
            "_id": request.run_id,
            "job": request.job,
            "trigger": request.trigger.value,
            "status": RunStatus.RUNNING.value,
            "attempt_count": 1,
            "started_at": beat,
            "heartbeat_at": beat,
        }
    )


async def _status(db: Database, run_id: str) -> str:
    doc = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1})
    assert doc is not None
    return str(doc["status"])


async def _racing_starts(writers: list[Database], request: JobRequest) -> tuple[list[Any], list[Any]]:
    """Every writer starts the run as another delivery of one message; (outcomes, the starts that stood)."""
    outcomes = await asyncio.gather(
        *(
            records.start_attempt(db, request, f"worker-{n}", seq=1, delivery=n + 1, max_attempts=10, lease_s=LEASE_S)
            for n, db in enumerate(writers)
        ),
        return_exceptions=True,
    )
    return outcomes, [o for o in outcomes if not isinstance(o, records.StartRefused)]


async def test_racing_first_starts_create_the_record_once(writers: list[Database]) -> None:
    """Exactly one starter created the record (this rests on the unique `_id`, which FerretDB
    keeps too); every other one marked it running, or stood down because a later delivery
    had started it already (the delivery fence)."""
    for _ in range(TRIALS):
        request = request_for("racing")
        outcomes, starts = await _racing_starts(writers, request)
        assert all(isinstance(o, tuple) for o in starts), outcomes
        creators = [n for n, (before, _after) in enumerate(starts) if before is None]  # type: ignore[misc]
        assert len(creators) == 1, f"{request.run_id}: starters {creators} all created the record"
        assert all(after is not None and after.status is RunStatus.RUNNING for _before, after in starts)  # type: ignore[misc]
        doc = await writers[0][Collections.RUNS].find_one({"_id": request.run_id})
        assert doc is not None
        assert doc["status"] == RunStatus.RUNNING.value


@pytest.mark.atomic_store
async def test_racing_starts_count_one_attempt_each(writers: list[Database]) -> None:
    """Each start that stood counted exactly one attempt (concurrent `$inc`s, which FerretDB 1.24 loses)."""
    for _ in range(TRIALS):
        request = request_for("racing")
        outcomes, starts = await _racing_starts(writers, request)
        doc = await writers[0][Collections.RUNS].find_one({"_id": request.run_id})
        assert doc is not None
        assert doc["attempt_count"] == len(starts), (doc, outcomes)


@pytest.mark.atomic_store
async def test_racing_finishes_give_one_owner_whose_status_stands(writers: list[Database]) -> None:
    """Four writers end one run with four different statuses: one owns the transition, and
    the record keeps that owner's status (no loser's write survives)."""
    for _ in range(TRIALS):
        request = request_for("racing")
        await _running_record(writers[0], request)
        finishes = zip(writers, ENDINGS, strict=True)
        ends = await asyncio.gather(*(records.finish_run(db, request.run_id, end, error="x") for db, end in finishes))
        owners = [end for end in ends if end is not None]
        assert len(owners) == 1, f"{request.run_id}: {len(owners)} owners {[o.status for o in owners]}"
        assert await _status(writers[0], request.run_id) == owners[0].status.value


@pytest.mark.atomic_store
async def test_a_start_racing_finishes_never_reopens_an_ended_run(writers: list[Database]) -> None:
    """A late start (a redelivery) racing the run's end leaves it ended, with one owner."""
    for _ in range(TRIALS):
        request = request_for("racing")
        await _running_record(writers[0], request, silent_for_s=2 * LEASE_S)  # its worker died
        finishes = zip(writers[1:], ENDINGS[1:], strict=True)
        start, *ends = await asyncio.gather(
            records.start_attempt(
                writers[0],
                request,
                "late-worker",
                seq=1,
                delivery=100,
                max_attempts=10,
                lease_s=LEASE_S,
                likely_new=False,
            ),
            *(records.finish_run(db, request.run_id, end) for db, end in finishes),
        )
        owners = [end for end in ends if end is not None]
        assert len(owners) == 1
        assert await _status(writers[0], request.run_id) == owners[0].status.value
        _before, after = start
        assert after is None or after.status is RunStatus.RUNNING


async def _beat_until_canceled(db: Database, run_id: str, canceled: asyncio.Event) -> int:
    """Heartbeat with progress in a tight loop until a beat reports the cancel; return its number."""
    step = 0
    while True:
        step += 1
        begun_after_cancel = canceled.is_set()
        if await records.heartbeat(db, run_id, {"step": step}):
            return step
        assert not begun_after_cancel, f"{run_id}: a beat begun after the cancel did not see it"


async def _cancel_soon(db: Database, request: JobRequest, canceled: asyncio.Event) -> RunRecord:
    await asyncio.sleep(0.005)  # let the beats start first
    record = await records.request_cancel(db, request.run_id, request.job)
    canceled.set()
    return record


async def test_no_cancel_is_lost_to_racing_heartbeats(writers: list[Database]) -> None:
    """Heartbeats writing progress in tight loops from three clients while a fourth cancels:
    every beat begun after `request_cancel` returned sees the cancel, in every trial. (Cancels
    live apart from the run record, so this holds even on a store without single-document
    atomicity.)"""
    beaters, canceler = writers[1:], writers[0]
    for _ in range(TRIALS):
        request = request_for("racing")
        await _running_record(canceler, request)
        canceled = asyncio.Event()
        *seen_at, record = await asyncio.gather(
            *(_beat_until_canceled(db, request.run_id, canceled) for db in beaters),
            _cancel_soon(canceler, request, canceled),
        )
        assert record.cancel_requested
        assert all(step >= 1 for step in seen_at)
        assert await records.cancel_requested(canceler, request.run_id)


@pytest.mark.atomic_store
async def test_the_watchdog_verdict_racing_a_completion_has_one_owner(writers: list[Database]) -> None:
    """The watchdog ends a silent run `timed_out` while its worker completes it: exactly one
    of them owns the end (one RunEvent), and the record shows that one's status."""
    watchdog_db, worker_db = writers[0], writers[1]
    for _ in range(TRIALS):
        request = request_for("racing")
        await _running_record(worker_db, request, silent_for_s=60)
        published: list[RunRecord] = []
        verdict, completion = await asyncio.gather(
            time_out_dead_runs(
                watchdog_db,
                now=utcnow(),
                heartbeat_interval_s=1.0,
                finish=records.finish_run,
                publish=_append_to(published),
            ),
            records.finish_run(worker_db, request.run_id, RunStatus.COMPLETED, summary={"done": 1}),
        )
        owners: list[RunRecord] = [*published, *([completion] if completion is not None else [])]
        assert len(owners) == 1, f"{request.run_id}: owners {[o.status for o in owners]}"
        assert len(verdict.timed_out) == len(published)
        assert await _status(worker_db, request.run_id) == owners[0].status.value


def _append_to(published: list[RunRecord]) -> Callable[[RunRecord], Awaitable[None]]:
    """A `publish` effect for the watchdog that only collects the records it would announce."""

    async def publish(record: RunRecord) -> None:
        published.append(record)

    return publish


@pytest.mark.atomic_store
async def test_increments_from_several_clients_are_never_lost(writers: list[Database]) -> None:
    """`$inc` by `WRITERS` clients at once, 100 times each, on one document: the exact sum."""
    counters = writers[0][Collections.JOB_STATE]
    await counters.insert_one({"_id": "test:counter", "count": 0})

    async def increment(db: Database) -> None:
        for _ in range(100):
            await db[Collections.JOB_STATE].update_one({"_id": "test:counter"}, {"$inc": {"count": 1}})

    await asyncio.gather(*(increment(db) for db in writers))
    doc: dict[str, Any] | None = await counters.find_one({"_id": "test:counter"})
    assert doc is not None
    assert doc["count"] == WRITERS * 100


async def _attempts(db: Database, run_id: str) -> int:
    doc = await db[Collections.RUNS].find_one({"_id": run_id}, {"attempt_count": 1})
    assert doc is not None
    return int(doc["attempt_count"])


async def test_a_start_while_another_attempt_heartbeats_waits_and_takes_over_once_it_is_silent(
    writers: list[Database],
) -> None:
    """The lease: a live attempt (heartbeat younger than the lease) holds its run against a
    redelivery; a silent one (its worker died) is taken over, its attempt counted lost."""
    db = writers[0]
    alive, dead = request_for("leased"), request_for("leased")
    await _running_record(db, alive, silent_for_s=LEASE_S / 2)
    await _running_record(db, dead, silent_for_s=LEASE_S * 2)

    with pytest.raises(records.RunHeldElsewhere):
        await records.start_attempt(db, alive, "redelivered", seq=1, delivery=2, max_attempts=3, lease_s=LEASE_S)
    previous, started = await records.start_attempt(
        db, dead, "redelivered", seq=1, delivery=2, max_attempts=3, lease_s=LEASE_S
    )

    assert await _attempts(db, alive.run_id) == 1  # refused: nothing written
    assert await _status(db, alive.run_id) == RunStatus.RUNNING.value
    assert previous is not None
    assert previous.status is RunStatus.RUNNING
    assert started is not None
    assert (started.attempt_count, await _attempts(db, dead.run_id)) == (2, 2)


async def test_a_taken_over_attempt_records_nothing_when_it_comes_back(writers: list[Database]) -> None:
    """An attempt silent past the lease is taken over by a redelivery. When it comes back
    (its worker was cut off, or its event loop stalled), every write of it is refused
    (heartbeat, retry, suspension, deferral, outcome) and the new attempt's record stands.
    Before: its outcome overwrote the run the new attempt was running."""
    db = writers[0]
    request = request_for("taken")
    runs = db[Collections.RUNS]
    await records.start_attempt(db, request, "stalled", seq=1, delivery=1, max_attempts=5, lease_s=LEASE_S)
    silent = utcnow() - timedelta(seconds=2 * LEASE_S)
    await runs.update_one({"_id": request.run_id}, {"$set": {"heartbeat_at": silent}})
    await records.start_attempt(db, request, "fresh", seq=1, delivery=2, max_attempts=5, lease_s=LEASE_S)
    old, new = records.start_token("stalled", 1, 1), records.start_token("fresh", 1, 2)
    late = records.EndedAttempt(AttemptRecord(number=1, started_at=utcnow(), outcome="succeeded"), old)

    with pytest.raises(records.AttemptTakenOver, match="taken over by fresh"):
        await records.heartbeat(db, request.run_id, {"page": 9}, token=old)
    with pytest.raises(records.AttemptTakenOver):
        await records.record_retry(db, request.run_id, late, utcnow())
    with pytest.raises(records.AttemptTakenOver):
        await records.record_suspended(db, request.run_id, RunStatus.SLEEPING, late, wake_at=utcnow())
    with pytest.raises(records.AttemptTakenOver):
        await records.record_deferred(db, request, until=utcnow(), error="quota", attempt=late)
    with pytest.raises(records.AttemptTakenOver):
        await records.finish_run(db, request.run_id, RunStatus.COMPLETED, attempt=late, request=request)
    with pytest.raises(records.AttemptTakenOver):  # its handler met NATS or store errors on the way back
        await records.void_start(db, request.run_id, old, None, interrupted=True)
    doc = await runs.find_one({"_id": request.run_id})
    assert doc is not None
    assert (doc["status"], doc["start_token"], doc["worker"], doc["attempt_count"]) == ("running", new, "fresh", 2)
    assert (doc.get("progress"), doc.get("attempts"), doc.get("interruptions")) == (None, None, None), doc

    # The new attempt's writes stand; once the run has ended, the old one's are plain no-ops.
    assert await records.heartbeat(db, request.run_id, {"page": 1}, token=new) is False
    fresh = records.EndedAttempt(AttemptRecord(number=2, started_at=utcnow(), outcome="succeeded"), new)
    ended = await records.finish_run(db, request.run_id, RunStatus.COMPLETED, attempt=fresh, request=request)
    assert ended is not None
    assert (ended.status, [a.number for a in ended.attempts]) == (RunStatus.COMPLETED, [2])
    assert await records.finish_run(db, request.run_id, RunStatus.FAILED, attempt=late, request=request) is None
    assert await records.heartbeat(db, request.run_id, token=old) is False
    assert await records.void_start(db, request.run_id, old, None, interrupted=True) is False
    assert await _status(db, request.run_id) == RunStatus.COMPLETED.value


async def test_an_older_message_of_a_run_started_by_a_newer_one_is_superseded(writers: list[Database]) -> None:
    """A workflow's wake-up or signal (a later message) started the run: the original message is done."""
    db = writers[0]
    request = request_for("woken")
    await records.start_attempt(db, request, "w1", seq=7, delivery=1, max_attempts=3, lease_s=LEASE_S)
    await db[Collections.RUNS].update_one({"_id": request.run_id}, {"$set": {"status": RunStatus.SLEEPING.value}})

    with pytest.raises(records.SupersededRequest):
        await records.start_attempt(db, request, "w2", seq=3, delivery=2, max_attempts=3, lease_s=LEASE_S)
    assert await _attempts(db, request.run_id) == 1
