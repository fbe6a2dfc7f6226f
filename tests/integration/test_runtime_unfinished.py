"""Work a delivery could not finish is finished by a later one, once (issue 13), through a real worker.

Real NATS and the real store; the faults are one runtime call monkeypatched to raise.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import nats.errors
import pytest
from nats.js import JetStreamContext
from pymongo.errors import NetworkTimeout

from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.runtime import _monitor as monitor
from shared.runtime import _records as records
from shared.runtime import _runner as runner
from shared.runtime._worker import Worker
from shared.schemas import DeadLetter, JobRequest
from shared.settings import RetryPolicy, Settings
from shared.store import Database
from tests.integration.test_runtime_support import (
    WorkerFactory,
    collect,
    policy,
    request_for,
    stored_count,
    terminal_run,
    wait_value,
)
from tests.integration.test_runtime_support import start_worker as start_worker


def _fail_first_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, error: Exception) -> list[int]:
    """Make `owner.name` raise `error` on its first call only; returns the list of calls made."""
    real = getattr(owner, name)
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            raise error
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return calls


async def _run_to_the_end(worker: Worker, js: JetStreamContext, db: Database, request: JobRequest) -> dict[str, Any]:
    """Publish `request`, wait for its terminal record and for the worker to settle everything."""
    await publish_request(js, worker.settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=30, what="the run to end")
    await worker.run_until_idle(timeout_s=30)
    return doc


@pytest.mark.parametrize(
    "fault",
    [
        # Before: the redelivery re-sent the events but never counted the run or raised the streak alert.
        "run_event_publish",
        # Both deliveries reach the alerts: the second must not send them or count the run again.
        "metrics_claim",
        # The first delivery claims the streak alert but cannot publish it: the redelivery does.
        "streak_alert_publish",
    ],
)
async def test_a_failed_announcement_is_finished_once_by_the_redelivery(
    fault: str,
    settings: Settings,
    js: JetStreamContext,
    db: Database,
    start_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if fault == "run_event_publish":
        calls = _fail_first_call(monkeypatch, runner, "publish_run_event", nats.errors.TimeoutError())
    elif fault == "metrics_claim":
        calls = _fail_first_call(monkeypatch, records, "take_effects", NetworkTimeout("timed out"))
    else:
        calls = _fail_first_call(monkeypatch, monitor, "publish_alert", nats.errors.TimeoutError())
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0)

    @job("unlucky", policy=policy(retry=retry, alert_after_failures=1))
    async def unlucky(ctx: JobContext) -> None:
        raise ValueError(f"attempt {ctx.attempt} failed")

    names = settings.names
    worker = await start_worker([unlucky])
    request = request_for("unlucky")
    with caplog.at_level(logging.WARNING, logger="shared.runtime"):
        doc = await _run_to_the_end(worker, js, db, request)
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "exhausted", 2)
    assert len(calls) == 2, calls  # the first delivery failed there, the redelivery finished
    deferred = [r for r in caplog.records if getattr(r, "event", None) == "run.publish_deferred"]
    assert len(deferred) == 1, [r.getMessage() for r in deferred]
    done = await db[Collections.RUNS].find_one({"_id": request.run_id})
    assert done is not None
    assert done["effects_pending"] is False

    letters = await collect(js, names.dlq_subject("unlucky"), names.dlq_stream, 1)
    assert [DeadLetter.model_validate_json(letter).reason for letter in letters] == ["exhausted"]
    alerts = await collect(js, names.alert_subject("unlucky"), names.events_stream, 2)
    assert sorted(json.loads(alert)["kind"] for alert in alerts) == ["consecutive_failures", "dead_letter"]
    events = await collect(js, names.run_events_wildcard("unlucky"), names.events_stream, 1)
    assert [json.loads(event)["status"] for event in events] == ["failed"]
    assert worker.metrics.runs.labels(job="unlucky", status="failed")._value.get() == 1
    assert worker.metrics.run_duration.labels(job="unlucky", status="failed")._sum.get() > 0


async def test_a_request_whose_handling_keeps_raising_a_bug_ends_failed_after_the_set_deliveries(
    make_settings: Any,
    js: JetStreamContext,
    db: Database,
    start_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: left unsettled, it came back after every ack wait, forever."""
    fast: Settings = make_settings(ack_wait_s=0.5, heartbeat_interval_s=0.25, unhandled_error_deliveries=3)
    names = fast.names
    starts: list[str] = []

    async def broken_start(rt: Any, bound: Any, request: Any, **kwargs: Any) -> None:
        starts.append(request.run_id)
        raise RuntimeError("a bug in start")

    monkeypatch.setattr(runner, "start", broken_start)
    ran: list[int] = []

    @job("buggy", policy=policy())
    async def buggy(ctx: JobContext) -> None:
        ran.append(ctx.attempt)

    worker = await start_worker([buggy], fast)
    request = request_for("buggy")
    with caplog.at_level(logging.ERROR, logger="shared.runtime"):
        doc = await _run_to_the_end(worker, js, db, request)
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "permanent", 0)
    assert "in 3 deliveries" in doc["error"]
    assert "RuntimeError: a bug in start" in doc["error"]
    assert starts == [request.run_id] * 3
    assert ran == []
    errors = [r for r in caplog.records if getattr(r, "event", None) == "run.error"]
    assert [r.unhandled for r in errors] == [1, 2, 3]  # type: ignore[attr-defined]
    assert [bool(r.exc_info or r.exc_text) for r in errors] == [True, False, False]  # the traceback once

    letters = await collect(js, names.dlq_subject("buggy"), names.dlq_stream, 1)
    [letter] = [DeadLetter.model_validate_json(raw) for raw in letters]
    assert (letter.run_id, letter.reason) == (request.run_id, "permanent")
    assert "RuntimeError: a bug in start" in letter.error
    alerts = await collect(js, names.alert_subject("buggy"), names.events_stream, 1)
    assert [json.loads(alert)["kind"] for alert in alerts] == ["dead_letter"]
    assert await stored_count(js, names.job_subject("buggy"), names.jobs_stream) == 0
    assert worker.metrics.runs.labels(job="buggy", status="failed")._value.get() == 1


@pytest.mark.parametrize(
    "broken",
    [
        ("start", "finish_run"),  # the run cannot be recorded either
        ("parse_request",),  # the request cannot even be read: its run id is unknown
    ],
)
async def test_a_bug_that_also_breaks_recording_still_ends_with_a_dead_letter_of_the_raw_request(
    broken: tuple[str, ...],
    make_settings: Any,
    js: JetStreamContext,
    db: Database,
    start_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound holds when the run cannot be recorded: the dead letter carries the payload."""
    fast: Settings = make_settings(ack_wait_s=0.5, heartbeat_interval_s=0.25, unhandled_error_deliveries=2)
    names = fast.names

    def bug(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in the runtime")

    async def async_bug(*args: Any, **kwargs: Any) -> None:
        bug()

    for name in broken:
        owner = records if name == "finish_run" else runner
        monkeypatch.setattr(owner, name, bug if name == "parse_request" else async_bug)

    @job("hopeless", policy=policy())
    async def hopeless(ctx: JobContext) -> None:
        raise AssertionError("never runs")

    worker = await start_worker([hopeless], fast)
    request = request_for("hopeless")
    await publish_request(js, names, request)
    letters = await collect(js, names.dlq_subject("hopeless"), names.dlq_stream, 1, timeout_s=30)
    await worker.run_until_idle(timeout_s=20)
    [letter] = [DeadLetter.model_validate_json(raw) for raw in letters]
    known_run = request.run_id if "parse_request" not in broken else None
    assert (letter.run_id, letter.reason) == (known_run, "permanent")
    assert "in 2 deliveries" in letter.error
    assert "RuntimeError: a bug in the runtime" in letter.error
    assert letter.raw is not None
    assert JobRequest.model_validate_json(letter.raw).run_id == request.run_id
    alerts = await collect(js, names.alert_subject("hopeless"), names.events_stream, 1)
    assert [json.loads(alert)["kind"] for alert in alerts] == ["dead_letter"]
    assert await stored_count(js, names.job_subject("hopeless"), names.jobs_stream) == 0
    assert await db[Collections.RUNS].find_one({"_id": request.run_id}) is None


async def test_a_recovery_alert_that_could_not_be_published_is_sent_by_the_same_run_only(
    settings: Settings, js: JetStreamContext, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run that closed the open alert may send `recovered` again (deduplicated); another run may not."""
    names = settings.names
    await monitor.register_job(db, "healing")
    await db[Collections.JOB_STATE].update_one({"_id": monitor.state_id("healing")}, {"$set": {"alert_open": True}})
    calls = _fail_first_call(monkeypatch, monitor, "publish_alert", nats.errors.TimeoutError())
    with pytest.raises(nats.errors.TimeoutError):
        await monitor.alert_on_recovery(db, js, names, "healing", "run-a")
    assert await monitor.alert_on_recovery(db, js, names, "healing", "run-b") is False  # closed by run-a
    assert await monitor.alert_on_recovery(db, js, names, "healing", "run-a") is True
    assert await monitor.alert_on_recovery(db, js, names, "healing", "run-a") is True  # a repeat: deduplicated
    assert len(calls) == 3
    alerts = await collect(js, names.alert_subject("healing"), names.events_stream, 1)
    assert [(json.loads(a)["kind"], "run-a" in json.loads(a)["detail"]) for a in alerts] == [("recovered", True)]
