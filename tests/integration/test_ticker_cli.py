"""`pulse schedule ...` against a running ticker (real clock, real NATS): changes apply without a restart."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import nats.js.errors
import pytest
from nats.js import JetStreamContext
from typer.testing import CliRunner, Result

from services.ticker import Ticker, TickerTiming
from shared.cli.app import app
from shared.delayed import schedule_delayed
from shared.schedules import ScheduleOverride
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from tests.conftest import settings_env
from tests.helpers import wait_for
from tests.integration.test_ticker import read_requests, settings_with


async def pulse(settings: Settings, *args: str) -> Result:
    """Run `pulse ARGS` with the test's environment (in a thread: the CLI runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, list(args), env=settings_env(settings))


@pytest.fixture
def ticker_settings(make_settings: Any) -> Settings:
    return settings_with(make_settings, {"whale_sync": "every 1m", "stats": "hourly at :00"})


@pytest.fixture
async def running_ticker(js: JetStreamContext, ticker_settings: Settings) -> AsyncIterator[Ticker]:
    ticker = Ticker(ticker_settings, js, timing=TickerTiming(max_idle_s=0.5))
    await ticker.start()
    task = asyncio.create_task(ticker.run())
    yield ticker
    await ticker.stop()
    await asyncio.wait_for(task, timeout=5)


async def test_set_pause_resume_and_reset_apply_to_a_running_ticker(
    js: JetStreamContext, ticker_settings: Settings, running_ticker: Ticker
) -> None:
    settings = ticker_settings

    async def whale_requests() -> list[JobRequest]:
        return await read_requests(js, settings, "whale_sync")

    await wait_for(whale_requests, timeout_s=5, what="the start-up request")  # first seen: fires once

    result = await pulse(settings, "schedule", "set", "whale_sync", "--every", "1s")
    assert result.exit_code == 0, result.output
    assert "every 1s" in result.output
    await wait_for(lambda: _at_least(whale_requests, 3), timeout_s=10, what="requests every second")

    result = await pulse(settings, "schedule", "pause", "whale_sync")
    assert result.exit_code == 0, result.output
    await wait_for(lambda: _paused_is(running_ticker, True), timeout_s=5, what="the pause applied")
    paused_count = len(await whale_requests())
    ticks = running_ticker.ticks
    # Proof that time passed while paused: the loop evaluated at least 4 more times (>= 2 s).
    await wait_for(lambda: _ticked(running_ticker, ticks + 4), timeout_s=10, what="ticks while paused")
    assert len(await whale_requests()) == paused_count

    listed = json.loads((await pulse(settings, "schedule", "list", "--json")).output)
    whale = next(row for row in listed if row["job"] == "whale_sync")
    assert (whale["schedule"], whale["schedule_source"], whale["paused"], whale["next_fire"]) == (
        "every 1s",
        "override",
        True,
        None,
    )

    before_resume = utcnow()
    result = await pulse(settings, "schedule", "resume", "whale_sync")
    assert result.exit_code == 0, result.output
    await wait_for(lambda: _at_least(whale_requests, paused_count + 2), timeout_s=10, what="requests after resume")
    resumed = (await whale_requests())[paused_count:]
    # Slots that fell while paused never fire: the first one after resume is at or after it.
    assert resumed[0].scheduled_for >= before_resume - timedelta(seconds=1)

    result = await pulse(settings, "schedule", "reset", "whale_sync")
    assert result.exit_code == 0, result.output
    await wait_for(lambda: _source_is(running_ticker, "default"), timeout_s=5, what="the reset applied")
    listed = json.loads((await pulse(settings, "schedule", "list", "--json")).output)
    whale = next(row for row in listed if row["job"] == "whale_sync")
    assert (whale["schedule"], whale["schedule_source"], whale["paused"]) == ("every 1m", "default", False)
    assert whale["last_slot"] is not None


async def test_a_schedule_change_fires_nothing_by_itself_unless_now(
    js: JetStreamContext, ticker_settings: Settings, running_ticker: Ticker
) -> None:
    settings = ticker_settings
    stats_requests = functools.partial(read_requests, js, settings, "stats")
    await wait_for(stats_requests, timeout_s=5, what="the start-up request")
    # A daily slot one minute ago is newer than the hourly slot fired at start-up (except
    # at minute 0), so without the fence the ticker would fire it at once.
    spec = f"daily at {(utcnow() - timedelta(minutes=1)):%H:%M}"
    result = await pulse(settings, "schedule", "set", "stats", "--spec", spec)
    assert result.exit_code == 0, result.output
    await wait_for(
        lambda: _schedule_is(running_ticker, "stats", spec), timeout_s=5, what="the ticker to apply the change"
    )
    ticks = running_ticker.ticks
    await wait_for(lambda: _ticked(running_ticker, ticks + 4), timeout_s=10, what="ticks after the change")
    assert [request.trigger for request in await stats_requests()] == [Trigger.SCHEDULE]

    result = await pulse(settings, "schedule", "set", "stats", "--spec", spec, "--now")
    assert result.exit_code == 0, result.output
    requests = await wait_for(lambda: _at_least_list(stats_requests, 2), timeout_s=5, what="the --now request")
    assert [request.trigger for request in requests] == [Trigger.SCHEDULE, Trigger.MANUAL]
    assert requests[1].run_id in result.output


async def test_set_keeps_a_pause_and_reset_of_a_paused_job_fences_the_skipped_slots(
    js: JetStreamContext, ticker_settings: Settings
) -> None:
    settings = ticker_settings
    assert (await pulse(settings, "schedule", "pause", "stats")).exit_code == 0
    assert (await pulse(settings, "schedule", "set", "stats", "--spec", "daily at 03:30")).exit_code == 0
    kv = await js.key_value(settings.names.schedules_bucket)
    stored = ScheduleOverride.from_bytes((await kv.get("stats")).value or b"")
    assert (stored.schedule, stored.paused) == ("daily at 03:30", True)

    assert (await pulse(settings, "schedule", "reset", "stats")).exit_code == 0
    stored = ScheduleOverride.from_bytes((await kv.get("stats")).value or b"")
    assert (stored.schedule, stored.paused) == (None, False)
    assert stored.resumed_at is not None

    assert (await pulse(settings, "schedule", "set", "stats", "--cron", "*/5 * * * *")).exit_code == 0
    assert (await pulse(settings, "schedule", "reset", "stats")).exit_code == 0
    assert (await pulse(settings, "schedule", "reset", "stats")).exit_code == 0  # idempotent
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # deleted: the default schedule again
        await kv.get("stats")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "whale_sync", "--every", "0s"], "at least 1s"),
        (["set", "whale_sync", "--cron", "61 * * * *"], "bad cron expression"),
        (["set", "whale_sync", "--spec", "weekly on 31 at 09:00"], "day of the week"),
        (
            ["set", "whale_sync", "--cron", "0 2 * * * Europe/Berln"],
            "unknown time zone 'Europe/Berln'; use an IANA name such as Europe/Berlin",
        ),
        (["set", "whale_sync", "--every", "5s", "--cron", "* * * * *"], "exactly one of --every, --cron or --spec"),
        (["set", "whale_sync"], "exactly one of --every, --cron or --spec"),
        (["pause", "nojob"], "unknown job 'nojob'"),
    ],
)
async def test_bad_input_exits_2_saying_what_is_wrong(settings: Settings, args: list[str], message: str) -> None:
    result = await pulse(settings, "schedule", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


async def test_unreachable_server_exits_2_naming_the_url(make_settings: Any) -> None:
    settings = make_settings(nats_url="nats://127.0.0.1:1", nats_connect_timeout_s=1)
    result = await pulse(settings, "schedule", "list")
    assert result.exit_code == 2
    assert "nats://127.0.0.1:1" in result.output


async def test_pending_lists_and_cancel_pending_cancels(js: JetStreamContext, settings: Settings) -> None:
    request = JobRequest(
        run_id=new_run_id("stats", Trigger.DELAYED), job="stats", trigger=Trigger.DELAYED, scheduled_for=utcnow()
    )
    await schedule_delayed(js, settings.names, request, utcnow() + timedelta(hours=1))

    listed = json.loads((await pulse(settings, "schedule", "pending", "--json")).output)
    assert [row["run_id"] for row in listed] == [request.run_id]
    table = await pulse(settings, "schedule", "pending")
    assert request.run_id in table.output

    result = await pulse(settings, "schedule", "cancel-pending", request.run_id)
    assert result.exit_code == 0, result.output
    assert json.loads((await pulse(settings, "schedule", "pending", "--json")).output) == []
    again = await pulse(settings, "schedule", "cancel-pending", request.run_id)
    assert again.exit_code == 1
    assert "not pending" in again.output


async def _at_least(probe: Any, count: int) -> bool:
    return len(await probe()) >= count


async def _paused_is(ticker: Ticker, paused: bool) -> bool:
    return ticker.schedule_of("whale_sync").paused is paused


async def _source_is(ticker: Ticker, source: str) -> bool:
    return ticker.schedule_of("whale_sync").source == source


async def _ticked(ticker: Ticker, ticks: int) -> bool:
    return ticker.ticks >= ticks


async def _schedule_is(ticker: Ticker, job: str, text: str) -> bool:
    return ticker.schedule_of(job).schedule.text == text


async def _at_least_list(probe: Any, count: int) -> list[JobRequest]:
    found: list[JobRequest] = await probe()
    return found if len(found) >= count else []
