"""Freshness targets through the janitor's watchdog job (real NATS and the real store)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from services.janitor.__main__ import watchdog_job
from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import JobContext, Worker, check_freshness, job, read_freshness
from shared.schemas import Alert, AlertKind, Trigger, scheduled_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.helpers import wait_for
from tests.integration.test_runtime_support import WorkerFactory, collect, request_for, stored_count, terminal_run
from tests.integration.test_runtime_support import start_worker as start_worker

TARGET_S = 4.0


async def _run(worker: Worker, js: JetStreamContext, settings: Settings, name: str, **fields: Any) -> dict[str, Any]:
    request = request_for(name, **fields)
    await publish_request(js, settings.names, request)
    await worker.run_until_idle(timeout_s=20)
    doc = await terminal_run(worker.db, request.run_id)
    assert doc is not None, f"{request.run_id} did not end"
    return doc


async def _skipped_slot(worker: Worker, js: JetStreamContext, settings: Settings, minutes_ago: int) -> None:
    """A scheduled request whose next slot passed long ago: the runtime records it skipped."""
    slot = (utcnow() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    doc = await _run(
        worker,
        js,
        settings,
        "whale_sync",
        run_id=scheduled_run_id("whale_sync", slot),
        trigger=Trigger.SCHEDULE,
        scheduled_for=slot,
    )
    assert (doc["status"], doc["reason"]) == ("skipped", "overlap")


async def _freshness_alerts(js: JetStreamContext, settings: Settings, expected: int) -> list[str]:
    stored = await collect(js, settings.names.alert_subject("whale_sync"), settings.names.events_stream, expected)
    return [Alert.model_validate_json(raw).kind.value for raw in stored]


@pytest.mark.atomic_store  # three janitor replicas race conditional updates of one job_state document
async def test_a_job_whose_runs_are_all_skipped_alerts_once_and_recovers_once(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    settings = make_settings(jobs={"whale_sync": {"freshness_target_s": TARGET_S}})

    @job("whale_sync", policy=settings.jobs.whale_sync)
    async def whale_sync(ctx: JobContext) -> dict[str, int]:
        return {"trades": 0}

    worker = await start_worker([whale_sync, watchdog_job], settings)
    assert (await _run(worker, js, settings, "whale_sync"))["status"] == "completed"

    async def missed() -> bool:
        return (await read_freshness(db, "whale_sync", TARGET_S)).missed

    # Every run in between is skipped: nothing fails, yet the data ages past the target.
    for minutes_ago in (12, 11):
        await _skipped_slot(worker, js, settings, minutes_ago)
    await wait_for(missed, timeout_s=TARGET_S + 5, what="the freshness target to pass")
    # The watchdog every minute: the first pass alerts, the second must not alert again.
    passes = [(await _run(worker, js, settings, "watchdog"))["summary"]["freshness"] for _ in range(2)]
    assert passes == [{"missed": ["whale_sync"], "restored": []}, {"missed": [], "restored": []}]
    await _skipped_slot(worker, js, settings, 10)
    # Three janitor replicas checking at once raise it once too.
    await asyncio.gather(*(check_freshness(db, js, settings.names, settings.jobs.items()) for _ in range(3)))
    assert await _freshness_alerts(js, settings, 1) == [AlertKind.FRESHNESS_MISSED.value]
    alert = Alert.model_validate_json(
        (await collect(js, settings.names.alert_subject("whale_sync"), settings.names.events_stream, 1))[0]
    )
    assert f"older than its freshness target of {TARGET_S:g}s" in alert.detail

    assert (await _run(worker, js, settings, "whale_sync"))["status"] == "completed"
    results = await asyncio.gather(*(check_freshness(db, js, settings.names, settings.jobs.items()) for _ in range(3)))
    assert sum(len(result["restored"]) for result in results) == 1
    await _run(worker, js, settings, "watchdog")  # a later pass says nothing more
    assert await _freshness_alerts(js, settings, 2) == [
        AlertKind.FRESHNESS_MISSED.value,
        AlertKind.FRESHNESS_RESTORED.value,
    ]
    assert await stored_count(js, settings.names.alert_subject("whale_sync"), settings.names.events_stream) == 2
    state = await db[Collections.JOB_STATE].find_one({"_id": "runtime:whale_sync"})
    assert state is not None
    assert state["freshness_open"] is False


async def test_the_watchdog_job_raises_the_alert_and_reports_it_in_its_summary(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """A job first served and never completed ages from its first serving."""
    settings = make_settings(jobs={"whale_sync": {"freshness_target_s": 1.0}})

    @job("whale_sync", policy=settings.jobs.whale_sync)
    async def whale_sync(ctx: JobContext) -> None:
        return None

    worker = await start_worker([whale_sync, watchdog_job], settings)

    async def missed() -> bool:
        return (await read_freshness(db, "whale_sync", 1.0)).missed

    await wait_for(missed, timeout_s=10, what="the freshness target to pass")
    summary = (await _run(worker, js, settings, "watchdog"))["summary"]
    assert summary["freshness"] == {"missed": ["whale_sync"], "restored": []}
    alert = Alert.model_validate_json(
        (await collect(js, settings.names.alert_subject("whale_sync"), settings.names.events_stream, 1))[0]
    )
    assert alert.kind is AlertKind.FRESHNESS_MISSED
    assert "has never completed a run since it was first served" in alert.detail
