"""Durable sleeps and waits through a real worker: suspended runs, wake-ups, signals, timeouts, cancel."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import BaseModel

from shared.delayed import list_delayed
from shared.names import Collections
from shared.operations import cancel_run
from shared.requests import publish_request
from shared.runtime import JobContext, Worker, job, publish_cancel_hint, read_steps, request_cancel
from shared.runtime._suspend import RUN_ID_HEADER, SIGNAL_HEADER
from shared.schemas import JobRequest, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.helpers import wait_for
from tests.integration import test_runtime_support as support
from tests.integration.test_cli_common import invoke
from tests.integration.test_runtime_support import WorkerFactory, policy, request_for, terminal_run
from tests.integration.test_runtime_support import start_worker as start_worker


async def _run_in(db: Database, run_id: str, status: str) -> dict[str, Any] | None:
    doc = await db[Collections.RUNS].find_one({"_id": run_id})
    return doc if doc and doc["status"] == status else None


async def _start(js: JetStreamContext, settings: Settings, name: str) -> JobRequest:
    request = request_for(name)
    await publish_request(js, settings.names, request)
    return request


async def _signal(nc: NatsClient, settings: Settings, job: str, run_id: str, name: str, body: bytes) -> dict[str, Any]:
    reply = await nc.request(
        settings.names.signal_subject(job), body, timeout=5, headers={RUN_ID_HEADER: run_id, SIGNAL_HEADER: name}
    )
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_a_sleeping_run_is_held_by_no_worker_and_resumes_after_its_wake_up(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    ran: dict[str, list[Any]] = {"before": [], "after": []}

    @job("wf_nap", policy=policy())
    async def wf_nap(ctx: JobContext) -> dict[str, Any]:
        await ctx.step.run("before", _note, ran, "before")
        await ctx.step.sleep("nap", timedelta(seconds=2))
        await ctx.step.run("after", _note, ran, "after")
        return {}

    worker: Worker = await start_worker([wf_nap])
    request = await _start(js, settings, "wf_nap")
    sleeping = await support.wait_value(
        lambda: _run_in(db, request.run_id, "sleeping"), timeout_s=20, what="a sleeping run"
    )
    wake_at = sleeping["wake_at"]
    assert timedelta(seconds=1.5) < wake_at - ran["before"][0] <= timedelta(seconds=2.5)
    # Recorded first, then the wake-up scheduled, then the request acked: no worker holds the run.
    await wait_for(worker.is_idle, timeout_s=5, what="the worker to settle the sleeping run's request")
    assert worker.runtime.controls == {}
    assert [r.run_id for r, _ in await list_delayed(js, settings.names, "wf_nap")] == [request.run_id]

    doc = await support.wait_value(
        lambda: terminal_run(db, request.run_id), timeout_s=20, what="the woken run to finish"
    )
    assert doc["status"] == "completed"
    assert len(ran["before"]) == 1
    assert len(ran["after"]) == 1
    assert ran["after"][0] >= wake_at
    assert [a["outcome"] for a in doc["attempts"]] == ["suspended", "succeeded"]
    steps = await read_steps(db, request.run_id)
    assert [(s.name, s.status.value) for s in steps] == [
        ("before", "completed"),
        ("nap", "completed"),
        ("after", "completed"),
    ]
    events = await support.collect(js, settings.names.run_events_wildcard("wf_nap"), settings.names.events_stream, 1)
    assert [json.loads(e)["status"] for e in events] == ["completed"]


async def _note(ran: dict[str, list[Any]], key: str) -> None:
    ran[key].append(utcnow())


async def test_wait_for_event_is_resumed_by_a_raw_nats_signal_with_its_payload(
    settings: Settings, js: JetStreamContext, db: Database, nats_client: NatsClient, start_worker: WorkerFactory
) -> None:
    @job("wf_approval", policy=policy())
    async def wf_approval(ctx: JobContext) -> dict[str, Any]:
        approval = await ctx.step.wait_for_event("approved", timeout=timedelta(minutes=5))
        return {"approval": approval}

    worker: Worker = await start_worker([wf_approval])
    request = await _start(js, settings, "wf_approval")
    waiting = await support.wait_value(
        lambda: _run_in(db, request.run_id, "waiting"), timeout_s=20, what="a waiting run"
    )
    assert waiting["waiting_for"] == "approved"
    await wait_for(worker.is_idle, timeout_s=5, what="the worker to settle the waiting run's request")

    answer = await _signal(nats_client, settings, "wf_approval", request.run_id, "approved", b'{"by": "ops"}')
    assert answer == {"run_id": request.run_id, "signal": "approved", "delivered": True}
    doc = await support.wait_value(
        lambda: terminal_run(db, request.run_id), timeout_s=20, what="the signaled run to finish"
    )
    assert (doc["status"], doc["summary"]) == ("completed", {"approval": {"by": "ops"}})
    assert await list_delayed(js, settings.names, "wf_approval") == []  # the timeout wake-up was dropped
    again = await _signal(nats_client, settings, "wf_approval", request.run_id, "approved", b"{}")
    assert again == {"error": f"run {request.run_id} is not waiting for signal 'approved' (it is completed)"}


async def test_a_signal_for_an_unknown_run_or_without_headers_gets_a_clear_error(
    settings: Settings, nats_client: NatsClient, start_worker: WorkerFactory
) -> None:
    @job("wf_lonely", policy=policy())
    async def wf_lonely(ctx: JobContext) -> None:
        await ctx.step.wait_for_event("never", timeout=None)

    await start_worker([wf_lonely])
    answer = await _signal(nats_client, settings, "wf_lonely", "wf_lonely:manual:nope", "never", b"")
    assert answer == {"error": "no run 'wf_lonely:manual:nope': check the run id (pulse runs --status waiting)"}
    reply = await nats_client.request(settings.names.signal_subject("wf_lonely"), b"{}", timeout=5)
    assert json.loads(reply.data) == {"error": "a signal needs the headers Pulse-Run-Id and Pulse-Signal"}


class Choice(BaseModel):
    strict: bool = False
    wait: bool = False


async def test_a_wait_times_out_returning_none_or_raising_as_chosen(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("wf_timeout", args=Choice, policy=policy())
    async def wf_timeout(ctx: JobContext) -> dict[str, Any]:
        strict = ctx.args.strict  # type: ignore[attr-defined]
        value = await ctx.step.wait_for_event("reply", timeout=1.0, raise_on_timeout=strict)
        return {"value": value}

    await start_worker([wf_timeout])
    lenient = request_for("wf_timeout")
    strict = request_for("wf_timeout", args={"strict": True})
    for request in (lenient, strict):
        await publish_request(js, settings.names, request)
    done = await support.wait_value(
        lambda: terminal_run(db, lenient.run_id), timeout_s=20, what="the lenient wait to end"
    )
    assert (done["status"], done["summary"]) == ("completed", {"value": None})
    (step,) = await read_steps(db, lenient.run_id)
    assert (step.status.value, step.timed_out) == ("completed", True)
    assert step.ended_at is not None
    assert step.wake_at is not None
    assert step.ended_at >= step.wake_at
    failed = await support.wait_value(
        lambda: terminal_run(db, strict.run_id), timeout_s=20, what="the strict wait to fail"
    )
    assert (failed["status"], failed["reason"]) == ("failed", "permanent")
    assert (
        failed["error"] == f"WaitTimedOut: step 'reply': no signal 'reply' for run {strict.run_id} before its timeout"
    )


async def test_cancel_of_a_sleeping_or_waiting_run_is_immediate_with_one_event(
    settings: Settings, js: JetStreamContext, db: Database, nats_client: NatsClient, start_worker: WorkerFactory
) -> None:
    @job("wf_idle", args=Choice, policy=policy())
    async def wf_idle(ctx: JobContext) -> None:
        if ctx.args.wait:  # type: ignore[attr-defined]
            await ctx.step.wait_for_event("go", timeout=timedelta(hours=1))
        else:
            await ctx.step.sleep("nap", timedelta(hours=1))

    await start_worker([wf_idle])
    sleeper = request_for("wf_idle")
    waiter = request_for("wf_idle", args={"wait": True})
    for request, status in ((sleeper, "sleeping"), (waiter, "waiting")):
        await publish_request(js, settings.names, request)
        await support.wait_value(lambda r=request, s=status: _run_in(db, r.run_id, s), timeout_s=20, what=status)  # type: ignore[misc]
    assert len(await list_delayed(js, settings.names, "wf_idle")) == 2
    for request in (sleeper, waiter):
        await request_cancel(db, request.run_id, "wf_idle")
        await publish_cancel_hint(nats_client, settings.names, "wf_idle", request.run_id)
    for request in (sleeper, waiter):
        doc = await support.wait_value(lambda r=request: terminal_run(db, r.run_id), timeout_s=5, what="canceled")  # type: ignore[misc]
        assert doc["status"] == "canceled"
    # The worker ends the record first, then drops the wake-up, ages the journal and
    # publishes the event: the events say both cancels are done.
    events = await support.collect(js, settings.names.run_events_wildcard("wf_idle"), settings.names.events_stream, 2)
    assert sorted(json.loads(e)["run_id"] for e in events) == sorted([sleeper.run_id, waiter.run_id])
    assert {json.loads(e)["status"] for e in events} == {"canceled"}
    assert await list_delayed(js, settings.names, "wf_idle") == []
    steps = await read_steps(db, sleeper.run_id) + await read_steps(db, waiter.run_id)
    assert [s.run_ended_at is not None for s in steps] == [True, True]


async def test_cancel_during_a_step_stops_the_run_at_once(
    settings: Settings, js: JetStreamContext, db: Database, nats_client: NatsClient, start_worker: WorkerFactory
) -> None:
    started: list[str] = []

    async def long_step(run_id: str) -> None:
        started.append(run_id)
        await _forever()

    @job("wf_busy", policy=policy(timeout_s=60))
    async def wf_busy(ctx: JobContext) -> None:
        await ctx.step.run("long", long_step, ctx.run_id)

    await start_worker([wf_busy])
    request = await _start(js, settings, "wf_busy")
    await support.wait_value(lambda: _started(started), timeout_s=20, what="the long step to start")
    await request_cancel(db, request.run_id, "wf_busy")
    await publish_cancel_hint(nats_client, settings.names, "wf_busy", request.run_id)
    doc = await support.wait_value(lambda: terminal_run(db, request.run_id), timeout_s=5, what="the run to be canceled")
    assert doc["status"] == "canceled"
    assert doc["attempt_count"] == 1


async def _started(started: list[str]) -> bool:
    return bool(started)


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_pulse_signal_resumes_a_waiting_run_and_pulse_run_shows_its_steps(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("wf_cli", policy=policy())
    async def wf_cli(ctx: JobContext) -> dict[str, Any]:
        await ctx.step.run("prepare", _noop)
        return {"go": await ctx.step.wait_for_event("go", timeout=None)}

    await start_worker([wf_cli])
    request = await _start(js, settings, "wf_cli")
    await support.wait_value(lambda: _run_in(db, request.run_id, "waiting"), timeout_s=20, what="a waiting run")

    bad = await asyncio.to_thread(invoke, settings, "signal", request.run_id, "go", "{oops")
    assert bad.exit_code == 2
    assert "the payload is not JSON" in bad.output
    unknown = await asyncio.to_thread(invoke, settings, "signal", "wf_cli:manual:missing", "go")
    assert unknown.exit_code == 1
    assert "no run 'wf_cli:manual:missing'" in unknown.output
    wrong = await asyncio.to_thread(invoke, settings, "signal", request.run_id, "stop")
    assert wrong.exit_code == 1
    assert f"run {request.run_id} is not waiting for signal 'stop' (it is waiting for 'go')" in wrong.output
    waiting = json.loads((await asyncio.to_thread(invoke, settings, "run", request.run_id, "--json")).stdout)
    assert [(s["name"], s["status"]) for s in waiting["steps"]] == [("prepare", "completed"), ("go", "waiting")]
    listed = json.loads((await asyncio.to_thread(invoke, settings, "runs", "--status", "waiting", "--json")).stdout)
    assert [r["run_id"] for r in listed] == [request.run_id]

    sent = await asyncio.to_thread(invoke, settings, "signal", request.run_id, "go", '{"by": "cli"}')
    assert sent.exit_code == 0, sent.output
    assert f"{request.run_id}: signal go delivered" in sent.stdout
    audited = await db[Collections.AUDIT].find({"action": "signal"}).sort("at", 1).to_list(None)
    assert [(e["source"], e["target"], e["outcome"]) for e in audited][-1] == ("cli", request.run_id, "done")
    assert audited[-1]["params"] == {"name": "go", "payload": '{"by": "cli"}'}
    doc = await support.wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="the run to finish")
    assert (doc["status"], doc["summary"]) == ("completed", {"go": {"by": "cli"}})
    shown = await asyncio.to_thread(invoke, settings, "run", request.run_id)
    assert shown.exit_code == 0
    assert "steps" in shown.stdout
    assert "prepare" in shown.stdout
    assert "go" in shown.stdout


async def _noop() -> None:
    return None


async def test_cancel_of_a_sleeping_run_with_no_worker_connected_ends_it_at_once(
    settings: Settings, js: JetStreamContext, db: Database, nats_client: NatsClient, start_worker: WorkerFactory
) -> None:
    """Before: only the core-NATS hint ended a suspended run, and with no worker of the job
    connected nobody took it: the run slept on, `cancels` written but never read."""

    @job("wf_alone", policy=policy())
    async def wf_alone(ctx: JobContext) -> None:
        await ctx.step.sleep("nap", timedelta(hours=1))

    worker = await start_worker([wf_alone])
    request = await _start(js, settings, "wf_alone")
    await support.wait_value(lambda: _run_in(db, request.run_id, "sleeping"), timeout_s=20, what="a sleeping run")
    await wait_for(worker.is_idle, timeout_s=5, what="the worker to settle the sleeping run's request")
    await worker.stop()

    canceled = await cancel_run(nats_client, js, db, settings.names, request.run_id, by="test")

    assert canceled.status == "canceled"
    doc = await terminal_run(db, request.run_id)
    assert doc is not None
    assert doc["status"] == "canceled"
    assert await list_delayed(js, settings.names, "wf_alone") == []
