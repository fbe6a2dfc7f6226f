"""Timeouts, cancel, overlap, alerts and staleness through a real worker (real NATS and the real store)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import JobContext, job, request_cancel
from shared.runtime._records import finish_run
from shared.schedules import ScheduleOverride
from shared.schemas import Alert, RunStatus, Trigger, scheduled_run_id, utcnow
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


async def test_attempt_timeout_fails_the_attempt_and_the_retry_policy_applies(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("slow", policy=policy(timeout_s=0.5, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.2, jitter=0)))
    async def slow(ctx: JobContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            await asyncio.sleep(30)
        return {"attempt": ctx.attempt}

    await start_worker([slow])
    request = request_for("slow")
    await publish_request(js, settings.names, request)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=15, what="slow run")
    assert doc["status"] == "completed"
    assert doc["summary"] == {"attempt": 2}
    first = doc["attempts"][0]
    assert first["outcome"] == "failed"
    assert "timed out after 0.5s" in first["error"]


async def test_cancel_of_a_queued_run_ends_it_canceled_without_running(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    calls: list[int] = []

    @job("queued", policy=policy())
    async def queued(ctx: JobContext) -> None:
        calls.append(ctx.attempt)

    request = request_for("queued")
    record = await request_cancel(db, request.run_id, "queued")
    assert record.status is RunStatus.QUEUED
    assert record.cancel_requested
    await publish_request(js, settings.names, request)
    worker = await start_worker([queued])
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=10, what="canceled run")
    assert doc["status"] == "canceled"
    await worker.run_until_idle(timeout_s=10)
    assert calls == []
    events = await collect(js, settings.names.run_events_wildcard("queued"), settings.names.events_stream, 1)
    assert [json.loads(e)["status"] for e in events] == ["canceled"]


async def test_cancel_of_a_running_run_stops_it_at_the_next_check_point(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    started = asyncio.Event()
    steps: list[int] = []

    @job("looping", policy=policy(timeout_s=60))
    async def looping(ctx: JobContext) -> None:
        started.set()
        for step in range(600):
            steps.append(step)
            await ctx.checkpoint({"step": step})
            await asyncio.sleep(0.05)

    @job("sleeping", policy=policy(timeout_s=60))
    async def sleeping(ctx: JobContext) -> None:
        await asyncio.sleep(60)  # no check point: the heartbeat interrupts it

    await start_worker([looping, sleeping])
    looping_request, sleeping_request = request_for("looping"), request_for("sleeping")
    await publish_request(js, settings.names, looping_request)
    await publish_request(js, settings.names, sleeping_request)
    await asyncio.wait_for(started.wait(), timeout=10)
    await wait_for(lambda: _status_is(db, sleeping_request.run_id, "running"), timeout_s=10, what="sleeping runs")
    for request in (looping_request, sleeping_request):
        record = await request_cancel(db, request.run_id, request.job)
        assert record.cancel_requested
    for request in (looping_request, sleeping_request):
        doc = await wait_value(lambda r=request: terminal_run(db, r.run_id), timeout_s=10, what="cancel")  # type: ignore[misc]
        assert doc["status"] == "canceled"
        assert doc["attempt_count"] == 1
    count = len(steps)
    assert count < 600
    await asyncio.sleep(0.3)  # not a synchronization: proves the handler no longer advances
    assert len(steps) == count


async def _status_is(db: Database, run_id: str, status: str) -> bool:
    doc = await db[Collections.RUNS].find_one({"_id": run_id})
    return bool(doc and doc["status"] == status)


async def test_overlap_skip_skips_stale_scheduled_requests_but_never_manual_ones(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    calls: list[str] = []

    # A daily schedule: the current slot stays current for the whole test (with a minutely
    # one, a test running across a minute boundary saw its "fresh" request skipped too).
    @job("ticking", policy=policy(overlap="skip", schedule="daily at 00:00"))
    async def ticking(ctx: JobContext) -> None:
        calls.append(ctx.run_id)

    current_slot = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    old_slot = current_slot - timedelta(days=5)
    stale = request_for(
        "ticking", run_id=scheduled_run_id("ticking", old_slot), trigger=Trigger.SCHEDULE, scheduled_for=old_slot
    )
    fresh = request_for(
        "ticking",
        run_id=scheduled_run_id("ticking", current_slot),
        trigger=Trigger.SCHEDULE,
        scheduled_for=current_slot,
    )
    manual = request_for("ticking", scheduled_for=old_slot)
    for request in (stale, fresh, manual):
        await publish_request(js, settings.names, request)
    worker = await start_worker([ticking])
    await worker.run_until_idle(timeout_s=15)
    stale_doc = await terminal_run(db, stale.run_id)
    assert stale_doc is not None
    assert (stale_doc["status"], stale_doc["reason"]) == ("skipped", "overlap")
    assert sorted(calls) == sorted([fresh.run_id, manual.run_id])


async def test_overlap_skip_follows_the_runtime_schedule_override(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Slots are judged by the schedule the ticker obeys: a daily override keeps today's request."""
    calls: list[str] = []

    @job("ticking", policy=policy(overlap="skip", schedule="every 1m"))
    async def ticking(ctx: JobContext) -> None:
        calls.append(ctx.run_id)

    bucket = await js.key_value(settings.names.schedules_bucket)
    await bucket.put("ticking", ScheduleOverride(schedule="every 1d").model_dump_json().encode())
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    todays = request_for(
        "ticking", run_id=scheduled_run_id("ticking", today), trigger=Trigger.SCHEDULE, scheduled_for=today
    )
    await publish_request(js, settings.names, todays)
    worker = await start_worker([ticking])
    await worker.run_until_idle(timeout_s=15)
    doc = await terminal_run(db, todays.run_id)
    assert doc is not None
    assert doc["status"] == "completed"
    assert calls == [todays.run_id]


async def test_three_failed_runs_in_a_row_publish_exactly_one_alert(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("broken", policy=policy(retry=RetryPolicy(max_attempts=1), alert_after_failures=3))
    async def broken(ctx: JobContext) -> None:
        raise RuntimeError("still broken")

    worker = await start_worker([broken])
    for _ in range(5):
        await publish_request(js, settings.names, request_for("broken"))
    await worker.run_until_idle(timeout_s=20)
    assert await db[Collections.RUNS].count_documents({"job": "broken", "status": "failed"}) == 5
    alerts = [
        Alert.model_validate_json(a)
        for a in await collect(js, settings.names.alert_subject("broken"), settings.names.events_stream, 6)
    ]
    streaks = [a for a in alerts if a.kind != "dead_letter"]  # each failed run also left a dead letter
    assert [a.kind for a in streaks] == ["consecutive_failures"]
    assert "3 runs of broken failed in a row" in streaks[0].detail
    assert [a.kind for a in alerts].count("dead_letter") == 5


async def test_never_succeeding_within_stale_after_alerts_once_and_a_success_recovers(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("idle", policy=policy(stale_after_s=0.5))
    async def idle(ctx: JobContext) -> None:
        return None

    worker = await start_worker([idle])
    await asyncio.sleep(0.6)  # not a synchronization: lets the stale period pass
    await worker.check_stale()
    await worker.check_stale()  # a second check of the same period must not alert again
    subject = settings.names.alert_subject("idle")
    alerts = [Alert.model_validate_json(a) for a in await collect(js, subject, settings.names.events_stream, 1)]
    assert [a.kind for a in alerts] == ["never_succeeded"]

    for _ in range(2):  # the first success after the alert recovers; the second says nothing
        await publish_request(js, settings.names, request_for("idle"))
        await worker.run_until_idle(timeout_s=15)
    alerts = [Alert.model_validate_json(a) for a in await collect(js, subject, settings.names.events_stream, 2)]
    kinds = [a.kind for a in alerts]
    # (with stale_after 0.5 s, a later `stale` of the next period may follow: that is right)
    assert (kinds[:2], kinds.count("recovered"), kinds.count("never_succeeded")) == (
        ["never_succeeded", "recovered"],
        1,
        1,
    )
    assert "idle is healthy again" in alerts[1].detail


async def test_finish_run_sets_one_terminal_status_only(db: Database) -> None:
    request = request_for("manual_finish")
    first = await finish_run(db, request.run_id, RunStatus.SKIPPED, reason="overlap", request=request)
    assert first is not None
    assert first.status is RunStatus.SKIPPED
    assert await finish_run(db, request.run_id, RunStatus.FAILED, error="late") is None
    doc = await db[Collections.RUNS].find_one({"_id": request.run_id})
    assert doc is not None
    assert (doc["status"], doc["reason"]) == ("skipped", "overlap")


async def test_a_success_ends_the_failure_streak(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """fail, fail, succeed, fail, fail: never three in a row, so no alert; one more failure alerts."""
    outcomes = iter([False, False, True, False, False, False])

    @job("wobbly", policy=policy(retry=RetryPolicy(max_attempts=1), alert_after_failures=3))
    async def wobbly(ctx: JobContext) -> None:
        if not next(outcomes):
            raise RuntimeError("wobble")

    worker = await start_worker([wobbly])
    for _ in range(5):
        await publish_request(js, settings.names, request_for("wobbly"))
        await worker.run_until_idle(timeout_s=15)  # one at a time: the streak order is the publish order
    subject = settings.names.alert_subject("wobbly")

    async def streak_alerts(expected: int) -> list[str]:
        stored = await collect(js, subject, settings.names.events_stream, expected)
        alerts = [Alert.model_validate_json(a) for a in stored]
        return [a.kind for a in alerts if a.kind != "dead_letter"]  # each failed run also left a dead letter

    assert await streak_alerts(4) == []  # four failed runs: four dead letters, never three in a row
    await publish_request(js, settings.names, request_for("wobbly"))
    await worker.run_until_idle(timeout_s=15)
    assert await streak_alerts(6) == ["consecutive_failures"]


async def test_empty_bucket_delays_or_skips_the_run_as_configured(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    settings = make_settings(rate_limits={"tiny": {"rate": 1, "period_s": 60, "burst": 1}})
    taken: list[str] = []

    async def take(ctx: JobContext) -> None:
        await ctx.acquire("tiny")
        taken.append(ctx.run_id)

    skipper = job("skipper", policy=policy(on_rate_limited="skip", rate_limit_wait_s=0.2))(take)
    delayer = job(
        "delayer",
        policy=policy(
            on_rate_limited="delay",
            rate_limit_wait_s=0.2,
            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0),
        ),
    )(take)
    first, skipped, delayed = request_for("skipper"), request_for("skipper"), request_for("delayer")
    await start_worker([skipper, delayer], settings)
    await publish_request(js, settings.names, first)
    await wait_value(lambda: terminal_run(db, first.run_id), timeout_s=10, what="first run")
    await publish_request(js, settings.names, skipped)
    doc = await wait_value(lambda: terminal_run(db, skipped.run_id), timeout_s=10, what="skipped run")
    assert (doc["status"], doc["reason"]) == ("skipped", "rate_limited")
    await publish_request(js, settings.names, delayed)
    doc = await wait_value(lambda: _retrying(db, delayed.run_id), timeout_s=10, what="delayed run to retry")
    assert "rate limit bucket 'tiny' stayed empty" in doc["error"]
    assert taken == [first.run_id]


async def _retrying(db: Database, run_id: str) -> dict[str, Any] | None:
    doc = await db[Collections.RUNS].find_one({"_id": run_id})
    return doc if doc and doc["status"] in ("retrying", "failed") and doc.get("error") else None


async def test_cancel_hint_on_core_nats_cancels_at_once_between_heartbeats(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """With 5 s heartbeats, the hint ends the run well before the next beat would."""
    from shared.runtime import publish_cancel_hint

    settings = make_settings(heartbeat_interval_s=5.0, ack_wait_s=30.0)

    @job("hinted", policy=policy(timeout_s=60))
    async def hinted(ctx: JobContext) -> None:
        await asyncio.sleep(60)

    worker = await start_worker([hinted], settings)
    request = request_for("hinted")
    await publish_request(js, settings.names, request)
    await wait_for(lambda: _status_is(db, request.run_id, "running"), timeout_s=10, what="the run to start")
    await request_cancel(db, request.run_id, "hinted")
    await publish_cancel_hint(worker.runtime.nats, settings.names, "hinted", request.run_id)
    doc = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=3, what="canceled at once")
    assert doc["status"] == "canceled"


async def test_the_subscriber_binds_the_durable_as_the_policy_configures_it(
    settings: Settings, js: JetStreamContext, start_worker: WorkerFactory
) -> None:
    """A durable left by an older deployment is updated by the worker, and FastStream's
    subscriber binds it as it is (its own defaults would say ack_wait 30 s, max_ack_pending 1000)."""
    from nats.js.api import ConsumerConfig

    names = settings.names
    await js.add_consumer(
        names.jobs_stream,
        ConsumerConfig(
            durable_name=names.consumer_name("bound"),
            filter_subject=names.job_subject("bound"),
            max_deliver=2,
            max_ack_pending=7,
            ack_wait=99,
        ),
    )

    retry = RetryPolicy(max_attempts=4, initial_backoff_s=0.1, jitter=0)

    @job("bound", policy=policy(overlap="parallel", concurrency=2, retry=retry))
    async def bound(ctx: JobContext) -> dict[str, int]:
        return {"attempt": ctx.attempt}

    worker = await start_worker([bound])
    request = request_for("bound")
    await publish_request(js, names, request)
    doc = await wait_value(lambda: terminal_run(worker.db, request.run_id), timeout_s=10, what="bound run")
    assert doc["status"] == "completed"
    config = (await js.consumer_info(names.jobs_stream, names.consumer_name("bound"))).config
    assert (config.max_deliver, config.max_ack_pending) == (-1, 2)
    assert config.ack_wait == settings.ack_wait_s
    assert await worker.readiness_consumers()
