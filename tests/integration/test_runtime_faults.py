"""Requests are never lost or stuck under faults (issue 13), through a real worker.

Real NATS and the real store; an outage is a TCP proxy in front of the store that drops
its connections (`tests/proxy.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict
from pymongo.errors import NetworkTimeout

from shared.errors import MAX_ERROR_CHARS
from shared.names import Collections
from shared.providers.http import get_json
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.runtime import _records as records
from shared.runtime._monitor import failure_streak
from shared.schemas import DeadLetter, Trigger, new_run_id, utcnow
from shared.settings import RetryPolicy, Settings
from shared.store import Database, store_deadline
from tests.helpers import wait_for
from tests.integration.test_runtime_support import (
    WorkerFactory,
    collect,
    policy,
    request_for,
    terminal_run,
    wait_value,
)
from tests.integration.test_runtime_support import start_worker as start_worker
from tests.proxy import TcpProxy


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def test_a_store_outage_costs_no_attempt_and_loses_no_request(
    settings: Settings, make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Before: each failed claim used a delivery, and past max_attempts + 1 the request sat in JOBS."""
    target = urlsplit(settings.mongo_url.get_secret_value())
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 27017)
    await proxy.start()
    proxied = make_settings(
        mongo_url=_through(settings.mongo_url.get_secret_value(), proxy),
        mongo_db=settings.mongo_db,
        namespace=settings.namespace,
        mongo_timeout_s=1.0,
    )
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0)

    @job("outage", policy=policy(retry=retry, overlap="parallel", concurrency=3))
    async def outage(ctx: JobContext) -> dict[str, int]:
        return {"attempt": ctx.attempt}

    worker = await start_worker([outage], proxied)
    await proxy.cut()
    requests = [request_for("outage") for _ in range(3)]
    for request in requests:
        await publish_request(js, settings.names, request)
    # Every request is delivered past what the old consumer allowed (max_attempts + 1).
    enough = len(requests) * (retry.max_attempts + 2)

    async def deferred() -> float:
        return worker.metrics.deferred.labels(job="outage")._value.get()  # type: ignore[no-any-return]

    await wait_for(lambda: _at_least(deferred, enough), timeout_s=60, what=f"{enough} deferred deliveries")
    await proxy.restore()
    for request in requests:
        doc = await wait_value(lambda r=request: terminal_run(db, r.run_id), timeout_s=30, what="run after outage")
        # Completed, and the outage spent no attempt (a start whose write applied but
        # whose reply was lost or late is taken back: `runner.start`).
        assert (doc["status"], doc["attempt_count"], [a["outcome"] for a in doc["attempts"]]) == (
            "completed",
            1,
            ["succeeded"],
        ), doc
    await worker.run_until_idle(timeout_s=20)
    await proxy.cut()


@pytest.mark.parametrize("fails", ["start_attempt", "record_lost_attempt"])
async def test_a_start_whose_write_applied_but_failed_counts_no_attempt(
    fails: str,
    settings: Settings,
    js: JetStreamContext,
    db: Database,
    start_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store applied the start, then the call failed (a reply lost in a cut, a timeout): no attempt is spent.

    Before: the increment stood while the delivery was put back as "nothing counted",
    and the run ended with attempt_count 2 and a made-up `lost` attempt.
    """
    real = getattr(records, fails)
    failed: list[str] = []

    async def applied_then_failed(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if not failed:
            failed.append(fails)
            raise NetworkTimeout("the reply was lost after the write applied (injected)")
        return result

    monkeypatch.setattr(records, fails, applied_then_failed)
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, jitter=0)

    @job("lost_reply", policy=policy(retry=retry))
    async def lost_reply(ctx: JobContext) -> dict[str, int]:
        return {"attempt": ctx.attempt}

    request = request_for("lost_reply")
    if fails == "record_lost_attempt":
        # A run left `running` by a dead worker: the next start records its attempt as lost.
        await db[Collections.RUNS].insert_one(
            {"_id": request.run_id, "job": "lost_reply", "trigger": "manual", "status": "running", "attempt_count": 1}
        )
    worker = await start_worker([lost_reply])
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to complete")
    assert failed == [fails]
    expected = 2 if fails == "record_lost_attempt" else 1  # the dead worker's attempt counts, the voided one not
    assert (doc["status"], doc["attempt_count"]) == ("completed", expected), doc
    outcomes = [a["outcome"] for a in doc["attempts"]]
    assert outcomes == (["lost", "succeeded"] if fails == "record_lost_attempt" else ["succeeded"]), doc
    assert doc["summary"] == {"attempt": expected}, doc  # the handler saw the attempt number that was kept
    await worker.run_until_idle(timeout_s=20)


async def _at_least(probe: Any, value: float) -> bool:
    return bool(await probe() >= value)


async def test_a_request_whose_worker_dies_in_every_attempt_ends_failed_with_a_dead_letter(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Deliveries are unlimited now: the attempt count in the record still ends a poison request."""
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0)

    @job("poison", policy=policy(retry=retry))
    async def poison(ctx: JobContext) -> None:
        await asyncio.Event().wait()  # hangs until its worker goes away

    request = request_for("poison")
    await publish_request(js, settings.names, request)
    for number in (1, 2):
        worker = await start_worker([poison])

        async def running(n: int = number) -> bool:
            doc = await db[Collections.RUNS].find_one({"_id": request.run_id})
            return bool(doc and doc["status"] == "running" and doc["attempt_count"] == n)

        await wait_for(running, timeout_s=30, what=f"attempt {number} to run")
        await worker.stop(timeout_s=0)  # the attempt is interrupted, nothing is recorded or acked
    worker = await start_worker([poison])
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the poison run to fail")
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "exhausted", 2)
    assert "attempt 2 (the last) stopped answering" in doc["error"]
    letters = await collect(js, settings.names.dlq_subject("poison"), settings.names.dlq_stream, 1)
    assert DeadLetter.model_validate_json(letters[0]).reason == "exhausted"
    await worker.run_until_idle(timeout_s=10)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = 1


async def test_an_invalid_request_with_a_very_long_error_is_dead_lettered(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Before: 150 unknown args made an error longer than DeadLetter.error allows; never dead-lettered."""

    @job("strict", args=_Strict, policy=policy())
    async def strict(ctx: JobContext) -> None:
        raise AssertionError("an invalid request never runs")

    worker = await start_worker([strict])
    request = request_for("strict", args={f"k{i:03d}": 0 for i in range(150)})
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="the invalid run")
    assert (doc["status"], doc["reason"]) == ("failed", "invalid")
    letters = await collect(js, settings.names.dlq_subject("strict"), settings.names.dlq_stream, 1)
    letter = DeadLetter.model_validate_json(letters[0])
    assert letter.run_id == request.run_id
    assert len(letter.error) <= MAX_ERROR_CHARS
    assert "k000" in letter.error
    await worker.run_until_idle(timeout_s=10)


async def test_a_request_on_another_jobs_subject_records_nothing_for_its_job(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Before: it created a failed record for job A that counted toward A's failure streak."""

    @job("alpha", policy=policy())
    async def alpha(ctx: JobContext) -> None:
        return None

    @job("beta", policy=policy())
    async def beta(ctx: JobContext) -> None:
        return None

    worker = await start_worker([alpha, beta])
    stray = request_for("alpha")
    await js.publish(settings.names.job_subject("beta"), stray.model_dump_json().encode())
    letters = await collect(js, settings.names.dlq_subject("beta"), settings.names.dlq_stream, 1)
    letter = DeadLetter.model_validate_json(letters[0])
    assert (letter.reason, letter.job) == ("invalid", "beta")
    assert "on the subject of job 'beta'" in letter.error
    await worker.run_until_idle(timeout_s=10)
    assert await db[Collections.RUNS].find_one({"_id": stray.run_id}) is None
    assert await failure_streak(db, "alpha", 10) == []


async def test_the_last_attempts_error_does_not_promise_a_retry(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Before: the provider error said 'The run will be retried later' in the failed record and dead letter."""
    from shared.localstack import free_port

    url = f"http://127.0.0.1:{free_port()}/markets"  # nothing listens: a transport error
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0)

    @job("unreachable_provider", policy=policy(retry=retry))
    async def call(ctx: JobContext) -> None:
        gamma = "polymarket_gamma"
        await get_json(ctx.http, url, params={}, headers={}, limiter=ctx.limiter, bucket=gamma, attempts=1, timeout_s=1)

    worker = await start_worker([call])
    request = request_for("unreachable_provider")
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to fail")
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "exhausted", 2)
    assert "connection failed" in doc["error"]
    assert "retried" not in doc["error"]
    letters = await collect(js, settings.names.dlq_subject("unreachable_provider"), settings.names.dlq_stream, 1)
    assert "retried" not in json.loads(letters[0])["error"]
    await worker.run_until_idle(timeout_s=10)


async def test_an_event_that_cannot_be_published_after_the_record_is_published_on_redelivery(
    settings: Settings,
    js: JetStreamContext,
    db: Database,
    start_worker: WorkerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: 'could not be recorded; it will be redelivered' with a traceback, though the record was written."""
    from shared.bus import ensure_stream, stream_configs

    @job("announced", policy=policy())
    async def announced(ctx: JobContext) -> dict[str, int]:
        return {"done": 1}

    worker = await start_worker([announced])
    await js.delete_stream(settings.names.events_stream)  # run events have nowhere to go
    request = request_for("announced")
    with caplog.at_level(logging.WARNING, logger="shared.runtime"):
        await publish_request(js, settings.names, request)
        doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="the run to complete")
        assert doc["status"] == "completed"

        def deferred() -> list[logging.LogRecord]:
            return [r for r in caplog.records if getattr(r, "event", None) == "run.publish_deferred"]

        await wait_for(_sync(deferred), timeout_s=20, what="the deferred publish to be logged")
    [line] = deferred()[:1]
    assert line.exc_info is None
    assert request.run_id in line.getMessage()
    assert not [r for r in caplog.records if "could not be recorded" in r.getMessage() or r.exc_info]
    await ensure_stream(js, next(c for c in stream_configs(settings) if c.name == settings.names.events_stream))
    events = await collect(js, settings.names.run_events_wildcard("announced"), settings.names.events_stream, 1)
    assert [json.loads(e)["status"] for e in events] == ["completed"]
    await worker.run_until_idle(timeout_s=20)
    assert await collect(js, settings.names.run_events_wildcard("announced"), settings.names.events_stream, 1) == events


def _sync(probe: Any) -> Any:
    async def wrapped() -> Any:
        return probe()

    return wrapped


async def test_requests_on_an_unknown_jobs_subject_are_dead_lettered_with_the_reason_and_counted(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Before: `jobs.nosuchjob` was accepted into JOBS and kept forever, unseen."""
    from services.janitor.__main__ import watchdog_job
    from tests.integration.test_runtime_support import stored_count

    fast: Settings = make_settings(ack_wait_s=0.5, heartbeat_interval_s=0.25)  # same namespace; grace: six ack waits
    names = fast.names
    worker = await start_worker([watchdog_job], fast)
    payload = b'{"v": 1, "job": "nosuchjob", "anything": true}'
    await js.publish(names.job_subject("nosuchjob"), payload, stream=names.jobs_stream)
    summaries: list[dict[str, Any]] = []

    async def swept() -> bool:  # one watchdog pass per probe, until the grace is over
        request = request_for("watchdog")
        await publish_request(js, names, request)
        doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="a watchdog pass")
        summaries.append(doc["summary"])
        return doc["summary"]["unserved"] > 0

    await wait_for(swept, timeout_s=30, what="the unserved request to be dead-lettered")
    assert [s["unserved"] for s in summaries][-1] == 1
    letters = await collect(js, names.dlq_subject("nosuchjob"), names.dlq_stream, 1)
    letter = DeadLetter.model_validate_json(letters[0])
    assert (letter.job, letter.reason, letter.raw) == ("nosuchjob", "invalid", payload.decode())
    assert "no worker serves job 'nosuchjob'" in letter.error
    assert await stored_count(js, names.job_subject("nosuchjob"), names.jobs_stream) == 0
    assert worker.metrics.unserved._value.get() == 1


async def test_a_redelivery_waits_while_another_attempt_heartbeats_and_takes_over_once_it_stops(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """A worker cut off from NATS keeps running its attempt while JetStream redelivers the
    request: the redelivery must not run it a second time at once, and must not count an
    attempt. Here the "other worker" is a record kept `running` with fresh heartbeats;
    once they stop (its worker died), the request runs and that attempt counts as lost."""
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, jitter=0)
    calls: list[int] = []

    @job("leased", policy=policy(retry=retry))
    async def leased(ctx: JobContext) -> dict[str, int]:
        calls.append(ctx.attempt)
        return {"attempt": ctx.attempt}

    request = request_for("leased")
    runs = db[Collections.RUNS]
    await runs.insert_one(
        {
            "_id": request.run_id,
            "job": "leased",
            "trigger": "manual",
            "status": "running",
            "attempt_count": 1,
            "start_token": "cut-off-worker:1:1",
            "heartbeat_at": utcnow(),
        }
    )
    died = asyncio.Event()

    async def heartbeats() -> None:  # the cut-off worker's attempt, still beating into the store
        while not died.is_set():
            await records.heartbeat(db, request.run_id)
            with contextlib.suppress(TimeoutError):  # one beat per interval until it dies
                await asyncio.wait_for(died.wait(), settings.heartbeat_interval_s)

    beating = asyncio.create_task(heartbeats())
    try:
        worker = await start_worker([leased])
        await publish_request(js, settings.names, request)
        lease = records.run_lease_s(settings.heartbeat_interval_s, settings.ack_wait_s)
        # Held for several leases (each redelivery refused, nothing counted) while the attempt beats.

        async def refused_three_times() -> bool:
            return worker.runs_started >= 3

        await wait_for(refused_three_times, timeout_s=10 * lease, what="three refused deliveries")
        doc = await runs.find_one({"_id": request.run_id})
        assert doc is not None
        assert (doc["status"], doc["attempt_count"], calls) == ("running", 1, [])
    finally:
        died.set()
        await beating
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to complete")
    assert (doc["status"], doc["attempt_count"], calls) == ("completed", 2, [2]), doc
    assert [a["outcome"] for a in doc["attempts"]] == ["lost", "succeeded"], doc
    await worker.run_until_idle(timeout_s=20)


async def test_an_attempt_taken_over_while_it_ran_stops_and_records_nothing(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """A worker whose attempt looked dead for longer than the lease (cut off from the store,
    or its event loop stalled) finds at its next heartbeat that another delivery holds the
    run: the attempt stops at once, records nothing and leaves the message to that delivery.
    Here the other delivery's start is written into the record by the test; it never
    beats, so the next redelivery takes the run over in turn and completes it.
    Before: the old attempt ran on, wrote its outcome over the new attempt's run and acked."""
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, jitter=0)
    calls: list[int] = []
    interrupted: list[int] = []
    release = asyncio.Event()

    @job("overtaken", policy=policy(retry=retry))
    async def overtaken(ctx: JobContext) -> dict[str, int]:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            try:
                await release.wait()  # the stalled attempt
            except asyncio.CancelledError:
                interrupted.append(ctx.attempt)
                raise
        return {"attempt": ctx.attempt}

    request = request_for("overtaken")
    runs = db[Collections.RUNS]
    worker = await start_worker([overtaken])
    await publish_request(js, settings.names, request)

    async def first_attempt_runs() -> bool:
        return calls == [1]

    await wait_for(first_attempt_runs, timeout_s=10, what="the first attempt to run")
    other = "other-worker:1:2"
    await runs.update_one(
        {"_id": request.run_id},
        {"$set": {"start_token": other, "worker": "other-worker", "heartbeat_at": utcnow()}},
    )

    async def stopped() -> bool:
        return interrupted == [1]

    try:
        await wait_for(stopped, timeout_s=10, what="the taken-over attempt to stop")
    finally:
        release.set()
    doc = await runs.find_one({"_id": request.run_id})
    assert doc is not None
    assert (doc["status"], doc["start_token"], doc["attempt_count"], doc.get("attempts")) == ("running", other, 1, None)

    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to complete")
    assert (doc["status"], doc["attempt_count"], doc["summary"], calls) == ("completed", 2, {"attempt": 2}, [1, 2])
    assert [a["outcome"] for a in doc["attempts"]] == ["lost", "succeeded"], doc
    await worker.run_until_idle(timeout_s=20)


async def test_a_store_error_counting_upstream_calls_loses_no_outcome(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the failed `$inc` of `provider_calls` put the delivery back, so a finished
    handler ran again (and a last attempt was failed as `lost`)."""

    async def unreachable(*_args: Any, **_kwargs: Any) -> None:
        raise NetworkTimeout("the store did not answer (injected)")

    monkeypatch.setattr(records, "add_provider_calls", unreachable)
    calls: list[int] = []

    @job("counted", policy=policy(retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1, jitter=0)))
    async def counted(ctx: JobContext) -> dict[str, int]:
        calls.append(ctx.attempt)
        return {"attempt": ctx.attempt}

    request = request_for("counted")
    worker = await start_worker([counted])
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to complete")
    assert (doc["status"], doc["attempt_count"], calls) == ("completed", 1, [1]), doc
    await worker.run_until_idle(timeout_s=20)


@pytest.mark.parametrize("failing", ["nats", "store"])
async def test_the_store_or_nats_failing_under_a_handler_spends_no_attempt(
    failing: str, settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Before: a NATS timeout inside a handler (a JetStream leader election) was a failed
    attempt, and three of them dead-lettered a whale_sync run in a cluster test."""
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0)
    calls: list[int] = []

    @job("interrupted", policy=policy(retry=retry))
    async def interrupted(ctx: JobContext) -> dict[str, int]:
        calls.append(ctx.attempt)
        if len(calls) <= 3:  # an outage under the first three deliveries, real errors of real servers
            if failing == "nats":
                await ctx.nats.request(f"nobody.listens.{new_run_id('x', Trigger.MANUAL)}", b"", timeout=1)
            else:
                with store_deadline(0.000001, "job interrupted"):
                    await ctx.db[Collections.RUNS].find_one({"_id": ctx.run_id})
        return {"attempt": ctx.attempt}

    worker = await start_worker([interrupted])
    request = request_for("interrupted")
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to complete")
    assert (doc["status"], doc["attempt_count"], doc["interruptions"]) == ("completed", 1, 3), doc
    assert [a["outcome"] for a in doc["attempts"]] == ["succeeded"], doc
    assert calls == [1, 1, 1, 1]  # the same attempt ran again each time
    assert worker.metrics.deferred.labels(job="interrupted")._value.get() == 3
    assert worker.metrics.attempts.labels(job="interrupted", outcome="interrupted")._value.get() == 3
    assert await failure_streak(db, "interrupted", 10) == []
    await worker.run_until_idle(timeout_s=20)


async def test_a_failure_that_only_looks_like_an_outage_ends_with_a_dead_letter(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """A handler that always meets 'no responders' (a subject nobody serves) is not run forever:
    past PULSE_MAX_INTERRUPTIONS its failures count, and the retry policy ends the run."""
    bounded_settings: Settings = make_settings(max_interruptions=2)
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0)
    calls: list[int] = []

    @job("never_served", policy=policy(retry=retry))
    async def never_served(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        await ctx.nats.request("nobody.ever.listens", b"", timeout=1)

    worker = await start_worker([never_served], bounded_settings)
    request = request_for("never_served")
    await publish_request(js, bounded_settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to fail")
    assert (doc["status"], doc["reason"], doc["attempt_count"], doc["interruptions"]) == (
        "failed",
        "exhausted",
        2,
        2,
    ), doc
    assert "NoRespondersError" in doc["error"], doc
    assert calls == [1, 1, 1, 2]  # two free interruptions, then attempts 1 and 2
    names = bounded_settings.names
    letters = await collect(js, names.dlq_subject("never_served"), names.dlq_stream, 1)
    assert json.loads(letters[0])["reason"] == "exhausted"
    await worker.run_until_idle(timeout_s=20)
