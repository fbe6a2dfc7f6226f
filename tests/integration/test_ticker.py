"""The ticker against real NATS, driven by a fake clock: no sleeping, every rule checked exactly.

Helpers here (`FakeClock`, `read_requests`, `settings_with`) are reused by the other
ticker test files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from services.ticker import SlotState, Ticker, TickerTiming
from shared.names import JOBS
from shared.requests import publish_request
from shared.schedules import ScheduleOverride
from shared.schemas import JobRequest, Trigger, scheduled_run_id
from shared.settings import JobPolicies, Settings
from tests.helpers import wait_for

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


def settings_with(make_settings: Callable[..., Settings], schedules: dict[str, str], **overrides: Any) -> Settings:
    """Settings where only the jobs in `schedules` are enabled, with those schedules."""
    defaults = JobPolicies()
    policies = {
        job: defaults.for_job(job).model_copy(
            update={"schedule": schedules.get(job, defaults.for_job(job).schedule), "enabled": job in schedules}
        )
        for job in JOBS
    }
    return make_settings(jobs=JobPolicies(**policies), **overrides)


async def read_requests(js: JetStreamContext, settings: Settings, job: str | None = None) -> list[JobRequest]:
    """Every request now in JOBS (on `jobs.<job>`, or all jobs), oldest first, without consuming any.

    Reads by sequence with direct gets: JOBS is a work queue, so a second consumer on
    the same subjects would be refused, and acking would remove what we want to count.
    """
    names = settings.names
    info = await js.stream_info(names.jobs_stream)
    prefix = names.job_subject(job) if job else names.job_subject("x")[: -len("x")]
    found: list[JobRequest] = []
    if not info.state.messages:
        return found
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        try:
            message = await js.get_msg(names.jobs_stream, seq, direct=True)
        except nats.js.errors.NotFoundError:
            continue
        if message.subject and message.subject.startswith(prefix) and message.data:
            found.append(JobRequest.model_validate_json(message.data))
    return found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_ticker(js: JetStreamContext, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """Factory of started tickers that are stopped after the test."""
    started: list[Ticker] = []

    async def _make(settings: Settings, **kwargs: Any) -> Ticker:
        ticker = Ticker(settings, js, clock=kwargs.pop("clock", clock), **kwargs)
        await ticker.start()
        started.append(ticker)
        return ticker

    yield _make
    for ticker in started:
        await ticker.stop()


async def test_new_schedule_fires_its_latest_slot_once_at_start_up(
    make_settings: Any, js: JetStreamContext, make_ticker: Any
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 1m"})
    ticker = await make_ticker(settings)

    fired = await ticker.tick()
    again = await ticker.tick()

    slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert [(f.job, f.slot, f.catch_up) for f in fired] == [("whale_sync", slot, True)]
    assert again == []
    requests = await read_requests(js, settings)
    assert [r.run_id for r in requests] == [scheduled_run_id("whale_sync", slot)]
    assert requests[0].trigger is Trigger.SCHEDULE
    assert requests[0].scheduled_for == slot


async def test_each_slot_fires_once_as_time_passes(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 10s"})
    ticker = await make_ticker(settings)
    await ticker.tick()
    for _ in range(3):
        clock.advance(seconds=10)
        fired = await ticker.tick()
        assert len(fired) == 1
        assert not fired[0].catch_up
        clock.advance(seconds=3)  # inside the same slot: nothing
        assert await ticker.tick() == []

    run_ids = [r.run_id for r in await read_requests(js, settings)]
    assert run_ids == [
        scheduled_run_id("whale_sync", T0.replace(microsecond=0) + timedelta(seconds=10 * i)) for i in range(4)
    ]


async def test_after_downtime_only_the_latest_missed_slot_fires(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 1m"})
    first = await make_ticker(settings)
    await first.tick()
    await first.stop()

    clock.advance(minutes=7, seconds=30)  # seven slots pass with no ticker running
    restarted = await make_ticker(settings)
    fired = await restarted.tick()

    latest = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)
    assert [(f.slot, f.catch_up) for f in fired] == [(latest, True)]
    assert await restarted.tick() == []
    assert [r.scheduled_for for r in await read_requests(js, settings)] == [latest - timedelta(minutes=7), latest]


async def test_two_replicas_racing_for_the_same_slot_publish_once(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 1s", "watchdog": "every 1s"})
    one = await make_ticker(settings, replica="one")
    two = await make_ticker(settings, replica="two")
    for _ in range(5):
        fired = await asyncio.gather(one.tick(), two.tick())
        assert sum(len(batch) for batch in fired) == 2  # one request per job per slot
        clock.advance(seconds=1)

    requests = await read_requests(js, settings)
    run_ids = [r.run_id for r in requests]
    assert len(run_ids) == len(set(run_ids)) == 10


async def test_claim_left_unpublished_by_a_crash_is_published_again(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    """A claimer that died between claim and publish: the slot is still requested, once."""
    settings = settings_with(make_settings, {"whale_sync": "every 1m"})
    slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    kv = await js.key_value(settings.names.ticker_bucket)
    claim = SlotState(
        slot=slot,
        run_id=scheduled_run_id("whale_sync", slot),
        published=False,
        claimed_at=clock.now(),
        claimed_by="dead",
    )
    await kv.put("whale_sync", claim.to_bytes())

    ticker = await make_ticker(settings, timing=TickerTiming(claim_grace_s=2.0))
    assert await ticker.tick() == []  # the claimer may still be publishing
    clock.advance(seconds=3)
    fired = await ticker.tick()
    assert [(f.run_id, f.republished) for f in fired] == [(claim.run_id, True)]
    assert await ticker.tick() == []

    stored = SlotState.model_validate_json((await kv.get("whale_sync")).value or b"")
    assert stored.published
    assert [r.run_id for r in await read_requests(js, settings)] == [claim.run_id]


async def test_republish_after_a_publish_that_did_get_through_is_deduplicated(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 1m"})
    slot = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    run_id = scheduled_run_id("whale_sync", slot)
    await publish_request(
        js, settings.names, JobRequest(run_id=run_id, job="whale_sync", trigger=Trigger.SCHEDULE, scheduled_for=slot)
    )
    kv = await js.key_value(settings.names.ticker_bucket)
    await kv.put(
        "whale_sync",
        SlotState(
            slot=slot, run_id=run_id, published=False, claimed_at=clock.now() - timedelta(seconds=10), claimed_by="dead"
        ).to_bytes(),
    )

    ticker = await make_ticker(settings)
    fired = await ticker.tick()

    assert [(f.republished, f.duplicate) for f in fired] == [(True, True)]
    assert [r.run_id for r in await read_requests(js, settings)] == [run_id]


async def test_disabled_job_never_fires(make_settings: Any, js: JetStreamContext, make_ticker: Any) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 1m"})
    kv = await js.key_value(settings.names.schedules_bucket)
    await kv.put("stats", ScheduleOverride(schedule="every 1s").to_bytes())  # an override does not enable

    ticker = await make_ticker(settings)
    fired = await ticker.tick()

    assert {f.job for f in fired} == {"whale_sync"}
    assert ticker.schedule_of("stats").source == "override"


async def test_override_in_the_bucket_changes_a_running_ticker(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "daily at 02:00"})
    ticker = await make_ticker(settings)
    assert [f.slot for f in await ticker.tick()] == [datetime(2026, 3, 1, 2, 0, tzinfo=UTC)]
    kv = await js.key_value(settings.names.schedules_bucket)

    await kv.put("whale_sync", ScheduleOverride(schedule="every 5s").to_bytes())
    await wait_for(lambda: _source_is(ticker, "whale_sync", "override"), timeout_s=5, what="override applied")
    fired = await ticker.tick()
    assert [f.slot for f in fired] == [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]

    await kv.delete("whale_sync")
    await wait_for(lambda: _source_is(ticker, "whale_sync", "default"), timeout_s=5, what="override removed")
    clock.advance(seconds=30)
    assert await ticker.tick() == []  # back to daily: 02:00 already fired


async def test_paused_job_does_not_fire_and_resume_skips_the_paused_slots(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 10s"})
    ticker = await make_ticker(settings)
    await ticker.tick()
    kv = await js.key_value(settings.names.schedules_bucket)

    await kv.put("whale_sync", ScheduleOverride(paused=True).to_bytes())
    await wait_for(lambda: _paused_is(ticker, "whale_sync", True), timeout_s=5, what="pause applied")
    clock.advance(seconds=35)
    assert await ticker.tick() == []

    resumed_at = clock.now()  # 12:00:35.5: the 12:00:30 slot fell while paused
    await kv.put("whale_sync", ScheduleOverride(paused=False, resumed_at=resumed_at).to_bytes())
    await wait_for(lambda: _paused_is(ticker, "whale_sync", False), timeout_s=5, what="resume applied")
    assert await ticker.tick() == []
    clock.advance(seconds=5)
    fired = await ticker.tick()
    assert [f.slot for f in fired] == [datetime(2026, 3, 1, 12, 0, 40, tzinfo=UTC)]


async def test_bad_override_is_ignored_and_the_previous_schedule_kept(
    make_settings: Any, js: JetStreamContext, make_ticker: Any
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 1m"})
    ticker = await make_ticker(settings)
    kv = await js.key_value(settings.names.schedules_bucket)
    await kv.put("whale_sync", json.dumps({"schedule": "every 0s"}).encode())
    await kv.put("market_sync", ScheduleOverride(schedule="every 2m").to_bytes())  # a later, good write

    await wait_for(lambda: _source_is(ticker, "market_sync", "override"), timeout_s=5, what="later override")
    assert ticker.schedule_of("whale_sync").schedule.text == "every 1m"


async def _source_is(ticker: Ticker, job: str, source: str) -> bool:
    return ticker.schedule_of(job).source == source


async def _paused_is(ticker: Ticker, job: str, paused: bool) -> bool:
    return ticker.schedule_of(job).paused is paused


async def test_slot_claimed_ahead_is_published_at_the_slot_without_a_second_claim(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 10s"})
    one = await make_ticker(settings, replica="one")
    two = await make_ticker(settings, replica="two")
    await one.tick()
    next_slot = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    clock.advance(seconds=9.3)  # 250 ms before the slot, as run() does

    assert await one.prepare(next_slot) == 1
    assert await two.prepare(next_slot) == 0  # already claimed by one
    assert await one.tick() == []  # not due yet
    assert await two.tick() == []
    clock.advance(seconds=0.25)
    fired = await asyncio.gather(two.tick(), one.tick())

    assert [[(f.slot, f.catch_up) for f in batch] for batch in fired] == [[], [(next_slot, False)]]
    assert [r.scheduled_for for r in await read_requests(js, settings)][-1] == next_slot


async def test_no_slot_is_claimed_ahead_while_earlier_slots_wait_for_their_catch_up(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    """Before: a replica claiming the next slot ahead moved the job's state past the slots
    another replica was still catching up (policy all): those slots were neither requested
    nor recorded missed (seen in CI as a slot without a ledger entry)."""
    defaults = JobPolicies()
    policy = defaults.for_job("whale_sync").model_copy(
        update={"schedule": "every 10s", "enabled": True, "catch_up": "all", "overlap": "queue"}
    )
    policies = {job: defaults.for_job(job).model_copy(update={"enabled": False}) for job in JOBS}
    settings = make_settings(jobs=JobPolicies(**{**policies, "whale_sync": policy}))
    catching_up = await make_ticker(settings, replica="catching-up")
    ahead = await make_ticker(settings, replica="ahead")
    start = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert [f.slot for f in await catching_up.tick()] == [start]
    clock.advance(seconds=39.3)  # three slots pass with no tick; the fourth is 250 ms away
    upcoming = start + timedelta(seconds=40)

    assert await ahead.prepare(upcoming) == 0  # 12:00:10–30 are not settled yet
    caught_up = [f.slot for f in await catching_up.tick()]
    clock.advance(seconds=0.25)
    on_time = [f.slot for f in await ahead.tick()] + [f.slot for f in await catching_up.tick()]

    assert caught_up == [start + timedelta(seconds=s) for s in (10, 20, 30)]
    assert on_time == [upcoming]
    requested = [r.scheduled_for for r in await read_requests(js, settings)]
    assert requested == [start + timedelta(seconds=s) for s in (0, 10, 20, 30, 40)]


async def test_claim_ahead_by_a_replica_that_dies_is_published_by_another(
    make_settings: Any, js: JetStreamContext, make_ticker: Any, clock: FakeClock
) -> None:
    settings = settings_with(make_settings, {"whale_sync": "every 10s"})
    doomed = await make_ticker(settings, replica="doomed")
    survivor = await make_ticker(settings, replica="survivor", timing=TickerTiming(claim_grace_s=2.0))
    await doomed.tick()
    next_slot = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    clock.advance(seconds=9.3)
    assert await doomed.prepare(next_slot) == 1
    await doomed.stop()  # dies before the slot: its claim is never published

    clock.advance(seconds=0.25)
    assert await survivor.tick() == []  # within the grace
    clock.advance(seconds=2)
    fired = await survivor.tick()

    assert [(f.slot, f.republished) for f in fired] == [(next_slot, True)]
    run_ids = [r.run_id for r in await read_requests(js, settings)]
    assert run_ids.count(scheduled_run_id("whale_sync", next_slot)) == 1


@pytest.mark.parametrize(
    ("start", "hours", "schedules", "expected"),
    [
        # Berlin springs forward at 01:00Z on 29 March: 02:30 is skipped and runs at 03:00 CEST.
        (
            datetime(2026, 3, 28, 23, 5, 0, 500000, tzinfo=UTC), 4,
            {"whale_sync": "hourly at :30 Europe/Berlin", "market_sync": "daily at 02:30 Europe/Berlin"},
            {"whale_sync": ["2026-03-28T22:30:00Z", "2026-03-28T23:30:00Z", "2026-03-29T00:30:00Z",
                            "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:30:00Z"],
             "market_sync": ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z"]},
        ),
        # New York falls back at 06:00Z on 1 November: 01:30 happens twice and runs once (EDT).
        (
            datetime(2026, 11, 1, 4, 5, 0, 500000, tzinfo=UTC), 5,
            {"whale_sync": "hourly at :30 America/New_York", "market_sync": "daily at 01:30 America/New_York"},
            {"whale_sync": ["2026-11-01T03:30:00Z", "2026-11-01T04:30:00Z", "2026-11-01T05:30:00Z",
                            "2026-11-01T07:30:00Z", "2026-11-01T08:30:00Z"],
             "market_sync": ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z"]},
        ),
    ],
)  # fmt: skip
async def test_zoned_schedules_request_each_slot_once_across_a_dst_change(
    make_settings: Any,
    js: JetStreamContext,
    make_ticker: Any,
    start: datetime,
    hours: int,
    schedules: dict[str, str],
    expected: dict[str, list[str]],
) -> None:
    """Ticking every 5 minutes (twice each time) through a transition: one request per slot, in UTC."""
    settings = settings_with(make_settings, schedules)
    clock = FakeClock(start)
    ticker = await make_ticker(settings, clock=clock)
    for _ in range(hours * 12):
        await ticker.tick()
        await ticker.tick()
        clock.advance(minutes=5)

    requested = await read_requests(js, settings)
    for job, slots in expected.items():
        assert [r.run_id for r in requested if r.job == job] == [f"{job}:{slot}" for slot in slots]
