"""Each service's NATS user can do its work and nothing else, on a real nats-server.

The server runs the committed `deploy/k8s/base/nats/auth.conf`, so these tests hold the
deployed permissions to what the code actually calls: topology set-up, publishing
requests, fetching and acking, KV reads and writes, run events and dead letters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from shared.bus import ensure_kv, ensure_topology, kv_configs, nats_connect_options
from shared.names import JOBS, Names
from shared.permissions import OPERATOR, jobs_of
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings, load_settings
from tests.deploy.natsauth import AuthServer, auth_server
from tests.helpers import wait_for

NAMES = Names()  # the generated config is for production's empty namespace
Connect = Callable[[str], Awaitable[tuple[NatsClient, list[str]]]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AuthServer]:
    with auth_server(tmp_path) as running:
        yield running


def user_settings(server: AuthServer, user: str, password: str | None = None) -> Settings:
    return load_settings(
        nats_url=server.url,
        nats_user=user,
        nats_password=password if password is not None else server.passwords[user],
        namespace="",
        nats_connect_timeout_s=3.0,
    )


@asynccontextmanager
async def login(server: AuthServer, user: str) -> AsyncIterator[tuple[NatsClient, list[str]]]:
    """Connect as `user`; the list collects the server's permission errors."""
    await wait_for(server.listening, timeout_s=15, what="nats-server to listen")
    errors: list[str] = []

    async def collect(exc: Exception) -> None:
        errors.append(str(exc))

    options = nats_connect_options(user_settings(server, user), name=user)
    client = await nats.connect(**{**options, "max_reconnect_attempts": 0}, error_cb=collect)
    try:
        yield client, errors
    finally:
        await client.close()


def request_for(job: str) -> JobRequest:
    now = utcnow()
    return JobRequest(
        run_id=new_run_id(job, Trigger.MANUAL),
        job=job,
        trigger=Trigger.MANUAL,
        scheduled_for=now,
        requested_at=now,
        requested_by="tests",
    )


def violations(errors: list[str], subject: str) -> bool:
    """True when the server refused a publish or subscribe on `subject` (nats-py lower-cases the text)."""
    return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors)


async def test_operator_sets_up_and_every_service_reapplies_its_topology(server: AuthServer) -> None:
    """Set-up is idempotent and every service runs it at start, each for its own consumers only."""
    async with login(server, OPERATOR) as (client, errors):
        await ensure_topology(client.jetstream(timeout=3), user_settings(server, OPERATOR))
        assert errors == []
    for service in ("ticker", "market_sync", "whale_sync", "stats", "janitor"):
        async with login(server, service) as (client, errors):
            await ensure_topology(client.jetstream(timeout=3), user_settings(server, service), jobs_of(service))
            assert errors == [], f"{service}: {errors}"


async def test_ticker_requests_every_job_and_a_worker_fetches_and_acks_its_own(server: AuthServer) -> None:
    async with login(server, OPERATOR) as (admin, _):
        await ensure_topology(admin.jetstream(timeout=3), user_settings(server, OPERATOR))
    async with login(server, "ticker") as (ticker, errors):
        for job in JOBS:
            ack = await publish_request(ticker.jetstream(timeout=3), NAMES, request_for(job), timeout_s=3)
            assert ack.stream == NAMES.jobs_stream
        assert errors == []
    async with login(server, "market_sync") as (worker, errors):
        js = worker.jetstream(timeout=3)
        sub = await js.pull_subscribe_bind(NAMES.consumer_name("market_sync"), stream=NAMES.jobs_stream)
        [message] = await sub.fetch(1, timeout=5)
        assert JobRequest.model_validate_json(message.data).job == "market_sync"
        await message.in_progress()
        await message.ack_sync(timeout=3)
        await js.publish(NAMES.run_event_subject("market_sync", "completed"), b"{}", timeout=3)
        await js.publish(NAMES.dlq_subject("market_sync"), b"{}", timeout=3)
        assert errors == []
        info = await js.consumer_info(NAMES.jobs_stream, NAMES.consumer_name("market_sync"))
        assert info.num_ack_pending == 0
        assert info.num_pending == 0


async def test_a_worker_cannot_touch_another_jobs_requests_or_events(server: AuthServer) -> None:
    async with login(server, OPERATOR) as (admin, _):
        await ensure_topology(admin.jetstream(timeout=3), user_settings(server, OPERATOR))
    async with login(server, "market_sync") as (worker, errors):
        js = worker.jetstream(timeout=1)
        with pytest.raises(nats.errors.Error):
            await publish_request(js, NAMES, request_for("whale_sync"), timeout_s=1)
        with pytest.raises(nats.errors.Error):
            await js.publish(NAMES.run_event_subject("whale_sync", "completed"), b"{}", timeout=1)
        sub = await js.pull_subscribe_bind(NAMES.consumer_name("whale_sync"), stream=NAMES.jobs_stream)
        with pytest.raises(nats.errors.Error):
            await sub.fetch(1, timeout=1)

        async def both_refused() -> bool:
            return violations(errors, NAMES.job_subject("whale_sync")) and violations(
                errors, NAMES.run_event_subject("whale_sync", "completed")
            )

        await wait_for(both_refused, timeout_s=5, what="the server to report both publish violations")


async def test_services_write_their_buckets_and_only_read_schedules(server: AuthServer) -> None:
    async with login(server, OPERATOR) as (admin, _):
        js = admin.jetstream(timeout=3)
        await ensure_topology(js, user_settings(server, OPERATOR))
        schedules = await js.key_value(NAMES.schedules_bucket)
        await schedules.put("stats", b"every 2h")
    async with login(server, "whale_sync") as (worker, errors):
        js = worker.jetstream(timeout=1)
        ratelimit = await js.key_value(NAMES.ratelimit_bucket)
        revision = await ratelimit.put("polymarket_data", b"10")
        await ratelimit.update("polymarket_data", b"9", last=revision)
        schedules = await js.key_value(NAMES.schedules_bucket)
        assert (await schedules.get("stats")).value == b"every 2h"
        with pytest.raises(nats.errors.Error):
            await schedules.put("stats", b"every 1s")
        assert violations(errors, "$KV.schedules.stats")
        assert len(errors) == 1, errors
    async with login(server, "ticker") as (ticker, errors):
        js = ticker.jetstream(timeout=1)
        state = await ensure_kv(js, kv_configs(user_settings(server, "ticker"))[1])
        await state.put("market_sync", b"2026-01-01T00:00:00Z")
        watcher = await (await js.key_value(NAMES.schedules_bucket)).watchall()
        first = await watcher.updates(timeout=3)  # type: ignore[no-untyped-call]
        assert first is not None
        assert first.key == "stats"
        await watcher.stop()  # type: ignore[no-untyped-call]
        assert errors == []
        with pytest.raises(nats.errors.Error):
            await (await js.key_value(NAMES.ratelimit_bucket)).put("polymarket_data", b"0")


async def test_janitor_reports_on_every_job_but_consumes_only_its_own(server: AuthServer) -> None:
    async with login(server, OPERATOR) as (admin, _):
        await ensure_topology(admin.jetstream(timeout=3), user_settings(server, OPERATOR))
    async with login(server, "janitor") as (janitor, errors):
        js = janitor.jetstream(timeout=1)
        await js.publish(NAMES.run_event_subject("market_sync", "timed_out"), b"{}", timeout=3)
        await js.publish(NAMES.alert_subject("whale_sync"), b"{}", timeout=3)
        assert errors == []
        sub = await js.pull_subscribe_bind(NAMES.consumer_name("market_sync"), stream=NAMES.jobs_stream)
        with pytest.raises(nats.errors.Error):
            await sub.fetch(1, timeout=1)


async def test_a_service_cannot_read_another_users_reply_inboxes(server: AuthServer) -> None:
    """Replies go to `_INBOX_<user>`: whale_sync may not listen to market_sync's JetStream replies."""
    async with login(server, "whale_sync") as (client, errors):
        await client.subscribe("_INBOX_market_sync.>")
        await client.subscribe("_INBOX.>")

        async def both_refused() -> bool:
            return violations(errors, "_INBOX_market_sync.>") and violations(errors, "_INBOX.>")

        await wait_for(both_refused, timeout_s=5, what="the server to refuse both subscriptions")


async def test_a_wrong_password_is_refused(server: AuthServer) -> None:
    await wait_for(server.listening, timeout_s=15, what="nats-server to listen")
    options = nats_connect_options(user_settings(server, "ticker", password="not-the-password"), name="ticker")
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(**{**options, "max_reconnect_attempts": 0, "allow_reconnect": False})


async def test_the_dashboard_takes_the_operators_actions_but_administers_nothing(server: AuthServer) -> None:
    """The dashboard's user runs the shared read model and actions; configuration changes are refused."""
    from datetime import timedelta

    from shared.delayed import cancel_delayed, schedule_delayed
    from shared.permissions import DASHBOARD
    from shared.readmodel import deadletters, schedules
    from shared.readmodel.status import queue_info
    from shared.runtime._ratelimit import RateLimiter

    async with login(server, OPERATOR) as (admin, _):
        js = admin.jetstream(timeout=3)
        await ensure_topology(js, user_settings(server, OPERATOR))
    async with login(server, "stats") as (stats, _):
        await stats.jetstream(timeout=3).publish(NAMES.dlq_subject("stats"), b"{}", stream=NAMES.dlq_stream)
    settings = user_settings(server, DASHBOARD)
    async with login(server, DASHBOARD) as (client, errors):
        js = client.jetstream(timeout=2)
        # The live pages' feed: an ordered consumer of EVENTS, and single gets of what a page missed.
        live = await js.subscribe(NAMES.events_stream_subjects[0], stream=NAMES.events_stream, ordered_consumer=True)
        async with login(server, "stats") as (stats, _):
            await stats.jetstream(timeout=3).publish(NAMES.run_event_subject("stats", "completed"), b'{"n": 1}')
        assert (await live.next_msg(timeout=5)).data == b'{"n": 1}'
        assert (await js.get_msg(NAMES.events_stream, 1)).data == b'{"n": 1}'
        rows = await schedules.list_schedules(js, settings)
        assert [row["job"] for row in rows] == list(JOBS)
        await schedules.change_override(js, settings, "stats", schedules.pause("dashboard:tests"))
        assert (await schedules.read_override(js, settings, "stats")).override.paused  # type: ignore[union-attr]
        assert await queue_info(js, settings, "stats") is not None
        await publish_request(js, NAMES, request_for("stats"))
        delayed = request_for("cleanup")
        await schedule_delayed(js, NAMES, delayed, utcnow() + timedelta(hours=1))
        assert await cancel_delayed(js, NAMES, delayed.run_id)
        [letter] = await deadletters.read_letters(js, NAMES, None, 10)
        assert await deadletters.delete_letter(js, NAMES, letter.seq)
        assert await deadletters.purge_letters(js, NAMES, "stats") == 0
        await client.publish(NAMES.cancel_subject("stats"), b"stats:manual:x")
        # A job page's "why isn't it running" peeks at the job's rate limit bucket.
        ratelimit = await js.key_value(NAMES.ratelimit_bucket)
        limits = dict(settings.rate_limits)
        assert await RateLimiter(ratelimit, limits).peek(next(iter(limits))) > 0
        await client.flush()
        assert errors == []
        with pytest.raises(nats.errors.Error):
            await js.delete_stream(NAMES.jobs_stream)
        with pytest.raises(nats.errors.Error):  # it reads the rate limit buckets, never takes a token
            await ratelimit.put(next(iter(limits)), b"{}")
        with pytest.raises(nats.errors.Error):
            await js.publish(NAMES.run_event_subject("stats", "completed"), b"{}", timeout=1)
        await live.unsubscribe()
