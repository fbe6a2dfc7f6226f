"""Delayed one-off runs against a real nats-server: what fires, what is listed, what cancel does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nats.js import JetStreamContext

from shared.delayed import cancel_delayed, delayed_token, list_delayed, schedule_delayed
from shared.errors import InvalidRequest
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from tests.helpers import wait_for
from tests.integration.test_ticker import read_requests


def delayed_request(job: str = "stats", **args: object) -> JobRequest:
    return JobRequest(
        run_id=new_run_id(job, Trigger.DELAYED),
        job=job,
        trigger=Trigger.DELAYED,
        scheduled_for=utcnow(),
        requested_by="tests",
        args=dict(args),
    )


async def test_delayed_request_fires_once_unchanged_at_its_time(js: JetStreamContext, settings: Settings) -> None:
    request = delayed_request(window="24h")
    at = utcnow() + timedelta(seconds=2)
    await schedule_delayed(js, settings.names, request, at)
    assert [(r.run_id, when) for r, when in await list_delayed(js, settings.names)] == [
        (request.run_id, at.replace(microsecond=0))
    ]

    fired = await wait_for(lambda: read_requests(js, settings, "stats"), timeout_s=10, what="the delayed request")

    assert fired == [request]  # the body arrives unchanged
    assert utcnow() >= at.replace(microsecond=0)
    info = await js.stream_info(settings.names.jobs_stream)
    message = await js.get_msg(settings.names.jobs_stream, info.state.last_seq, direct=True)
    assert message.subject == settings.names.job_subject("stats")
    headers = message.headers or {}
    assert headers.get("Nats-Scheduler") == settings.names.delayed_subject("stats", delayed_token(request.run_id))
    assert await list_delayed(js, settings.names) == []  # the holding message is purged on fire


async def test_canceled_delayed_request_never_fires(js: JetStreamContext, settings: Settings) -> None:
    at = utcnow() + timedelta(seconds=2)
    canceled = delayed_request("stats")
    witness = delayed_request("cleanup")  # fires at the same time: proves the moment passed
    await schedule_delayed(js, settings.names, canceled, at)
    await schedule_delayed(js, settings.names, witness, at)

    assert await cancel_delayed(js, settings.names, canceled.run_id) is True
    assert await cancel_delayed(js, settings.names, canceled.run_id) is False
    assert [r.run_id for r, _ in await list_delayed(js, settings.names)] == [witness.run_id]

    await wait_for(lambda: read_requests(js, settings, "cleanup"), timeout_s=10, what="the witness request")
    assert await read_requests(js, settings, "stats") == []


async def test_scheduling_the_same_run_twice_keeps_one(js: JetStreamContext, settings: Settings) -> None:
    request = delayed_request()
    at = utcnow() + timedelta(hours=1)
    await schedule_delayed(js, settings.names, request, at)
    await schedule_delayed(js, settings.names, request, at)

    pending = await list_delayed(js, settings.names, "stats")
    assert [r.run_id for r, _ in pending] == [request.run_id]
    assert await list_delayed(js, settings.names, "cleanup") == []
    assert await cancel_delayed(js, settings.names, request.run_id)


async def test_list_is_ordered_by_fire_time_and_skips_foreign_messages(
    js: JetStreamContext, settings: Settings
) -> None:
    later, sooner = delayed_request("stats"), delayed_request("cleanup")
    now = utcnow()
    await schedule_delayed(js, settings.names, later, now + timedelta(hours=2))
    await schedule_delayed(js, settings.names, sooner, now + timedelta(hours=1))
    # Another client's malformed holding message must not break the listing.
    await js.publish(
        settings.names.delayed_subject("stats", "foreign"),
        b"not a request",
        headers={
            "Nats-Schedule": "@at 2099-01-01T00:00:00Z",
            "Nats-Schedule-Target": settings.names.job_subject("stats"),
        },
    )

    assert [r.run_id for r, _ in await list_delayed(js, settings.names)] == [sooner.run_id, later.run_id]


async def test_cancel_of_unknown_or_malformed_run_ids_is_false(js: JetStreamContext, settings: Settings) -> None:
    assert await cancel_delayed(js, settings.names, "stats:delayed:nothing") is False
    assert await cancel_delayed(js, settings.names, "Not A Job:x") is False


async def test_naive_time_is_refused(js: JetStreamContext, settings: Settings) -> None:
    with pytest.raises(InvalidRequest, match="timezone"):
        await schedule_delayed(js, settings.names, delayed_request(), utcnow().replace(tzinfo=None))
    info = await js.stream_info(settings.names.jobs_stream, subjects_filter=settings.names.delayed_wildcard())
    assert not info.state.subjects


async def test_a_time_in_the_past_fires_at_once(js: JetStreamContext, settings: Settings) -> None:
    request = delayed_request()
    await schedule_delayed(js, settings.names, request, utcnow() - timedelta(minutes=5))

    fired = await wait_for(lambda: read_requests(js, settings, "stats"), timeout_s=10, what="the overdue request")
    assert fired == [request]
