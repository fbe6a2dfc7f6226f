"""NATS set-up against a real server: idempotent, and updated when settings change."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy

from shared.bus import ensure_topology
from shared.names import JOBS
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, scheduled_run_id, utcnow
from shared.settings import Settings


async def _streams(nats_client: NatsClient, settings: Settings) -> list[str]:
    js = nats_client.jetstream()
    # Every page: one listing holds at most 256 streams, and the tests of a session share
    # one server (each test adds its own namespaced streams).
    names: list[str | None] = []
    while page := await js.streams_info(offset=len(names)):
        names += [info.config.name for info in page]
    return sorted(n for n in names if n and settings.namespace in n)


async def test_setup_twice_leaves_one_of_each_with_configured_limits(
    nats_client: NatsClient, settings: Settings
) -> None:
    js = nats_client.jetstream()
    await ensure_topology(js, settings)
    await ensure_topology(js, settings)

    names = settings.names
    streams = await _streams(nats_client, settings)
    expected_buckets = sorted(f"KV_{bucket}" for bucket in names.kv_buckets)
    assert streams == sorted([*names.streams, *expected_buckets])

    jobs_info = await js.stream_info(names.jobs_stream)
    assert jobs_info.config.retention == RetentionPolicy.WORK_QUEUE
    assert jobs_info.config.allow_msg_schedules is True
    events_info = await js.stream_info(names.events_stream)
    assert events_info.config.max_age == settings.events_max_age_days * 86400
    logs_info = await js.stream_info(names.logs_stream)
    assert (logs_info.config.max_age, logs_info.config.max_bytes) == (
        settings.logs_max_age_days * 86400,
        settings.logs_max_bytes,
    )

    consumers = await js.consumers_info(names.jobs_stream)
    assert sorted(c.name for c in consumers) == sorted(JOBS)
    stats = await js.consumer_info(names.jobs_stream, "stats")
    assert stats.config.max_deliver == -1, "attempts are counted in the run record, not in deliveries"
    assert stats.config.max_ack_pending == 1
    assert stats.config.filter_subject == names.job_subject("stats")


async def test_changed_setting_updates_the_consumer(nats_client: NatsClient, make_settings: Any) -> None:
    js = nats_client.jetstream()
    first: Settings = make_settings()
    await ensure_topology(js, first)
    changed: Settings = make_settings(
        jobs={"market_sync": {"overlap": "parallel", "concurrency": 3}}, events_max_age_days=3
    )
    await ensure_topology(js, changed)

    info = await js.consumer_info(changed.names.jobs_stream, "market_sync")
    assert info.config.max_ack_pending == 3
    events = await js.stream_info(changed.names.events_stream)
    assert events.config.max_age == 3 * 86400
    assert len(await js.consumers_info(changed.names.jobs_stream)) == len(JOBS)


async def test_job_request_round_trip_through_jobs_stream(nats_client: NatsClient, settings: Settings) -> None:
    js = nats_client.jetstream()
    await ensure_topology(js, settings)
    names = settings.names
    request = JobRequest(
        run_id=scheduled_run_id("stats", utcnow().replace(minute=0, second=0, microsecond=0)),
        job="stats",
        trigger=Trigger.SCHEDULE,
        scheduled_for=utcnow(),
        requested_by="test",
        args={"k": 1},
    )
    first = await publish_request(js, names, request)
    again = await publish_request(js, names, request)
    assert again.duplicate is True
    assert again.seq == first.seq

    sub = await js.pull_subscribe_bind(durable="stats", stream=names.jobs_stream)
    [message] = await sub.fetch(1, timeout=5)
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == request.run_id
    assert JobRequest.model_validate_json(message.data) == request
    await message.ack_sync()
    info = await js.stream_info(names.jobs_stream)
    assert info.state.messages == 0  # work queue: acked means gone
