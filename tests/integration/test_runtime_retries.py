"""Retries, dead letters and invalid requests through a real worker (real NATS and the real store)."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import BaseModel

from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.schemas import DeadLetter, RunEvent
from shared.settings import RetryPolicy, Settings
from shared.store import Database
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


async def test_handler_failing_twice_then_succeeding_completes_with_three_attempts(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Gaps between attempts follow initial_backoff * base^(n-1): 0.4 s then 0.8 s."""
    calls: list[float] = []

    @job("flaky", policy=policy())
    async def flaky(ctx: JobContext) -> dict[str, Any]:
        calls.append(time.monotonic())
        if ctx.attempt < 3:
            raise RuntimeError(f"boom {ctx.attempt}")
        return {"ok": 1}

    worker = await start_worker([flaky])
    request = request_for("flaky")
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="flaky run to finish")
    assert doc["status"] == "completed"
    assert doc["attempt_count"] == 3
    assert [a["outcome"] for a in doc["attempts"]] == ["failed", "failed", "succeeded"]
    assert doc["attempts"][0]["error"] == "RuntimeError: boom 1"
    assert doc["summary"] == {"ok": 1}
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(gaps) == 2
    assert 0.35 <= gaps[0] <= 0.4 + 1.5, gaps
    assert 0.75 <= gaps[1] <= 0.8 + 1.5, gaps
    await worker.run_until_idle(timeout_s=10)
    events = await collect(js, settings.names.run_events_wildcard("flaky"), settings.names.events_stream, 1)
    assert len(events) == 1
    event = RunEvent.model_validate_json(events[0])
    assert (event.status, event.attempts, event.summary) == ("completed", 3, {"ok": 1})


async def test_always_failing_handler_is_dead_lettered_after_max_attempts(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("doomed", policy=policy(retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1, jitter=0)))
    async def doomed(ctx: JobContext) -> None:
        raise ValueError("always broken")

    worker = await start_worker([doomed])
    request = request_for("doomed")
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="doomed run to fail")
    assert doc["status"] == "failed"
    assert doc["attempt_count"] == 3
    assert "always broken" in doc["error"]
    await worker.run_until_idle(timeout_s=10)
    letters = await collect(js, settings.names.dlq_subject("doomed"), settings.names.dlq_stream, 1)
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0])
    assert letter.request == request
    assert letter.reason == "exhausted"
    assert letter.attempts == 3
    assert "always broken" in letter.error
    info = await js.stream_info(settings.names.jobs_stream)
    assert info.state.messages == 0


class Pages(BaseModel):
    model_config = {"extra": "forbid"}
    pages: int


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "not JSON"),
        (b'{"v": 9, "run_id": "strict:manual:x"}', "schema version 9"),
        ("unknown", "unknown job 'nosuchjob'"),
        ("badargs", "invalid args for job strict: argument 'pages': input should be a valid integer"),
    ],
)
async def test_invalid_requests_fail_at_once_with_a_dead_letter(
    settings: Settings,
    js: JetStreamContext,
    db: Database,
    start_worker: WorkerFactory,
    payload: bytes | str,
    expected: str,
) -> None:
    calls: list[int] = []

    @job("strict", args=Pages, policy=policy())
    async def strict(ctx: JobContext) -> None:
        calls.append(ctx.attempt)

    worker = await start_worker([strict])
    subject = settings.names.job_subject("strict")
    run_id: str | None = None
    if payload == "unknown":
        request = request_for("nosuchjob")
        run_id, data = request.run_id, request.to_bytes()
    elif payload == "badargs":
        request = request_for("strict", args={"pages": "many"})
        run_id, data = request.run_id, request.to_bytes()
    else:
        assert isinstance(payload, bytes)
        data = payload
    await js.publish(subject, data, stream=settings.names.jobs_stream)
    await worker.run_until_idle(timeout_s=15)
    letters = await collect(js, settings.names.dlq_subject("strict"), settings.names.dlq_stream, 1)
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0])
    assert letter.reason == "invalid"
    assert letter.attempts == 0  # refused before any attempt ran, as the run record counts it
    assert expected in letter.error
    if letter.request is None:
        assert letter.raw == data.decode()
    assert calls == []
    if payload == "unknown":  # a run of another job: nothing is recorded under its id
        assert await db[Collections.RUNS].find_one({"_id": run_id}) is None
    elif run_id is not None:
        doc = await db[Collections.RUNS].find_one({"_id": run_id})
        assert doc is not None
        assert doc["status"] == "failed"
        assert expected in doc["error"]
    info = await js.consumer_info(settings.names.jobs_stream, "strict")
    assert info.num_redelivered == 0
    assert (await js.stream_info(settings.names.jobs_stream)).state.messages == 0


async def test_request_with_a_terminal_record_is_acked_without_running(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    calls: list[int] = []

    @job("once", policy=policy())
    async def once(ctx: JobContext) -> None:
        calls.append(ctx.attempt)

    worker = await start_worker([once])
    request = request_for("once")
    await publish_request(js, settings.names, request)
    await wait_for(lambda: terminal_run(db, request.run_id), timeout_s=10, what="first run")
    # A replay of the same run_id past the duplicate window: publish without the Msg-Id.
    await js.publish(settings.names.job_subject("once"), request.to_bytes(), stream=settings.names.jobs_stream)
    await worker.run_until_idle(timeout_s=10)
    assert calls == [1]
    events = await collect(js, settings.names.run_events_wildcard("once"), settings.names.events_stream, 1)
    assert len(events) == 1


async def test_permanent_error_fails_at_once_and_alerts(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    from shared.errors import ProviderRejected

    @job("rejected", policy=policy())
    async def rejected(ctx: JobContext) -> None:
        raise ProviderRejected("401 from the provider: check PULSE_POLYMARKET_API_KEY")

    worker = await start_worker([rejected])
    request = request_for("rejected")
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=10, what="permanent failure")
    assert (doc["status"], doc["attempt_count"]) == ("failed", 1)
    await worker.run_until_idle(timeout_s=10)
    alerts = await collect(js, settings.names.alert_subject("rejected"), settings.names.events_stream, 1)
    kinds = [json.loads(a)["kind"] for a in alerts]
    assert kinds == ["dead_letter"]
    assert "dead-lettered (permanent)" in json.loads(alerts[0])["detail"]
    letters = await collect(js, settings.names.dlq_subject("rejected"), settings.names.dlq_stream, 1)
    assert [DeadLetter.model_validate_json(x).reason for x in letters] == ["permanent"]


async def test_redelivery_after_a_crash_past_the_record_repairs_event_and_dead_letter(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """A worker that recorded `failed` and died before publishing: the redelivery publishes both, once."""
    from shared.runtime._records import finish_run
    from shared.schemas import RunStatus

    calls: list[int] = []

    @job("repaired", policy=policy())
    async def repaired(ctx: JobContext) -> None:
        calls.append(ctx.attempt)

    request = request_for("repaired")
    await finish_run(db, request.run_id, RunStatus.FAILED, error="boom", reason="exhausted", request=request)
    worker = await start_worker([repaired])
    for _ in range(2):  # the second delivery finds both already published: deduplicated
        await js.publish(settings.names.job_subject("repaired"), request.to_bytes(), stream=settings.names.jobs_stream)
        await worker.run_until_idle(timeout_s=10)
    assert calls == []
    letters = await collect(js, settings.names.dlq_subject("repaired"), settings.names.dlq_stream, 1)
    assert [DeadLetter.model_validate_json(x).reason for x in letters] == ["exhausted"]
    events = await collect(js, settings.names.run_events_wildcard("repaired"), settings.names.events_stream, 1)
    assert [RunEvent.model_validate_json(e).status for e in events] == ["failed"]


async def test_invalid_json_declared_as_json_still_reaches_the_runner_and_is_dead_lettered(
    settings: Settings, js: JetStreamContext, start_worker: WorkerFactory
) -> None:
    """FastStream would JSON-decode a body whose content-type says JSON (and fail before the
    handler); the worker's subscriber decodes nothing, so the runner dead-letters it."""

    @job("typed", policy=policy())
    async def typed(ctx: JobContext) -> None:
        raise AssertionError("an invalid request must not run")

    worker = await start_worker([typed])
    data = b'{"v": 1, "run_id": '
    await js.publish(
        settings.names.job_subject("typed"),
        data,
        stream=settings.names.jobs_stream,
        headers={"content-type": "application/json"},
    )
    await worker.run_until_idle(timeout_s=15)
    letters = await collect(js, settings.names.dlq_subject("typed"), settings.names.dlq_stream, 1)
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0])
    assert (letter.reason, letter.raw) == ("invalid", data.decode())
    assert "not JSON" in letter.error
