"""The slot ledger and the catch-up policies against real NATS and the real store, on a fake clock.

The ticker is stopped across several slots, then restarted (one replica, or two racing):
each policy must produce exactly the requests and the `missed` entries it promises, one
ledger entry per slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import SecretStr

from services.ticker import Ticker
from services.ticker.ledger import SlotLedger
from shared.names import Collections
from shared.schedules import ScheduleOverride
from shared.schemas import scheduled_run_id
from shared.settings import Settings
from shared.store import Database, make_client
from tests.helpers import wait_for
from tests.integration.test_ticker import FakeClock, read_requests, settings_with

NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)
JOB = "whale_sync"


def minute(n: int) -> datetime:
    return NOON + timedelta(minutes=n)


def run_ids(*minutes: int) -> list[str]:
    return [scheduled_run_id(JOB, minute(n)) for n in minutes]


MakeTickers = Callable[..., Any]


@pytest.fixture
async def make_tickers(js: JetStreamContext, db: Database) -> AsyncIterator[MakeTickers]:
    """Factory of started tickers with a ledger each (one per replica name); all stopped after the test."""
    started: list[Ticker] = []

    async def _make(settings: Settings, clock: FakeClock, *replicas: str) -> list[Ticker]:
        tickers = []
        for replica in replicas or ("one",):
            ledger = SlotLedger(db, replica=replica, batch_size=settings.store_write_batch)
            ticker = Ticker(settings, js, clock=clock, replica=replica, ledger=ledger)
            await ticker.start()
            started.append(ticker)
            tickers.append(ticker)
        return tickers

    yield _make
    for ticker in started:
        await ticker.stop()


async def tick_all(tickers: list[Ticker]) -> None:
    """One evaluation by every replica at once, then every ledger entry written."""
    await asyncio.gather(*(ticker.tick() for ticker in tickers))
    for ticker in tickers:
        assert ticker.ledger is not None
        assert await ticker.ledger.flush(timeout_s=10), "ledger entries not written within 10 s"


async def stop_all(tickers: list[Ticker]) -> None:
    for ticker in tickers:
        await ticker.stop()


async def ledger(db: Database) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc async for doc in db[Collections.SLOTS].find({})}


async def requested_ids(js: JetStreamContext, settings: Settings) -> list[str]:
    return [request.run_id for request in await read_requests(js, settings, JOB)]


def with_catch_up(settings: Settings, policy: str) -> Settings:
    """`settings` with JOB's catch-up policy set in its JobPolicy (as PULSE_JOBS__<JOB>__CATCH_UP does)."""
    policy_ = settings.jobs.for_job(JOB).model_copy(update={"catch_up": policy})
    return settings.model_copy(update={"jobs": settings.jobs.model_copy(update={JOB: policy_})})


async def downtime(
    make_tickers: MakeTickers, settings: Settings, replicas: tuple[str, ...]
) -> tuple[list[Ticker], FakeClock]:
    """Fire 12:00, stop every replica for 7.5 minutes (slots 12:01..12:07 pass), restart, tick once."""
    clock = FakeClock(NOON + timedelta(seconds=0.5))
    first = await make_tickers(settings, clock, *replicas)
    await tick_all(first)
    await stop_all(first)
    clock.advance(minutes=7)
    restarted = await make_tickers(settings, clock, *replicas)
    await tick_all(restarted)
    await tick_all(restarted)  # a second look changes nothing
    return restarted, clock


REPLICAS = [pytest.param(("one",), id="one-replica"), pytest.param(("one", "two"), id="two-replicas")]


@pytest.mark.parametrize("replicas", REPLICAS)
async def test_latest_requests_the_newest_missed_slot_and_records_the_rest_missed(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers, replicas: tuple[str, ...]
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    await downtime(make_tickers, settings, replicas)

    assert await requested_ids(js, settings) == run_ids(0, 7)
    entries = await ledger(db)
    assert sorted(entries) == run_ids(*range(8))  # one entry per slot, whatever the replicas
    assert [entries[i]["state"] for i in run_ids(0, 7)] == ["requested", "requested"]
    missed = [entries[i] for i in run_ids(1, 2, 3, 4, 5, 6)]
    assert {(e["state"], e["reason"], e["catch_up_policy"]) for e in missed} == {("missed", "ticker_down", "latest")}
    assert entries[run_ids(7)[0]]["catch_up"] is True
    assert entries[run_ids(7)[0]]["slot"] == minute(7)


@pytest.mark.parametrize("replicas", REPLICAS)
async def test_skip_requests_no_missed_slot_and_the_next_slot_fires_as_usual(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers, replicas: tuple[str, ...]
) -> None:
    settings = with_catch_up(settings_with(make_settings, {JOB: "every 1m"}), "skip")
    tickers, clock = await downtime(make_tickers, settings, replicas)

    assert await requested_ids(js, settings) == run_ids(0)
    entries = await ledger(db)
    assert sorted(entries) == run_ids(*range(8))
    assert {(entries[i]["state"], entries[i]["reason"]) for i in run_ids(*range(1, 8))} == {("missed", "ticker_down")}

    clock.advance(minutes=1)
    await tick_all(tickers)
    assert await requested_ids(js, settings) == run_ids(0, 8)
    assert (await ledger(db))[run_ids(8)[0]]["state"] == "requested"


@pytest.mark.parametrize("replicas", REPLICAS)
async def test_all_requests_every_missed_slot_oldest_first(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers, replicas: tuple[str, ...]
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    kv = await js.key_value(settings.names.schedules_bucket)
    await kv.put(JOB, ScheduleOverride(catch_up="all").to_bytes())  # at runtime, as `pulse schedule set` does
    await downtime(make_tickers, settings, replicas)

    assert await requested_ids(js, settings) == run_ids(*range(8))
    entries = await ledger(db)
    assert sorted(entries) == run_ids(*range(8))
    assert {entries[i]["state"] for i in entries} == {"requested"}


async def test_all_stops_at_its_bound_and_records_the_older_slots_missed(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"}, catch_up_max_slots=3)
    kv = await js.key_value(settings.names.schedules_bucket)
    await kv.put(JOB, ScheduleOverride(catch_up="all").to_bytes())
    await downtime(make_tickers, settings, ("one", "two"))

    assert await requested_ids(js, settings) == run_ids(0, 5, 6, 7)
    entries = await ledger(db)
    assert sorted(entries) == run_ids(*range(8))
    assert {(entries[i]["state"], entries[i]["reason"]) for i in run_ids(1, 2, 3, 4)} == {("missed", "catch_up_limit")}


async def test_slots_of_a_paused_job_are_recorded_missed_as_they_pass(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    clock = FakeClock(NOON + timedelta(seconds=0.5))
    (ticker,) = await make_tickers(settings, clock)
    await tick_all([ticker])
    kv = await js.key_value(settings.names.schedules_bucket)
    await kv.put(JOB, ScheduleOverride(paused=True).to_bytes())
    await wait_for(lambda: _paused(ticker, True), timeout_s=5, what="the pause applied")
    for _ in range(3):
        clock.advance(minutes=1)
        await tick_all([ticker])
        await tick_all([ticker])

    resumed = clock.now()
    await kv.put(JOB, ScheduleOverride(paused=False, resumed_at=resumed).to_bytes())
    await wait_for(lambda: _paused(ticker, False), timeout_s=5, what="the resume applied")
    clock.advance(minutes=1)
    await tick_all([ticker])

    assert await requested_ids(js, settings) == run_ids(0, 4)
    entries = await ledger(db)
    assert sorted(entries) == run_ids(0, 1, 2, 3, 4)
    assert {(entries[i]["state"], entries[i]["reason"]) for i in run_ids(1, 2, 3)} == {("missed", "paused")}


async def _paused(ticker: Ticker, paused: bool) -> bool:
    return ticker.schedule_of(JOB).paused is paused


async def test_ledger_entries_wait_while_the_store_is_unreachable_and_firing_goes_on(
    make_settings: Any, js: JetStreamContext, db: Database
) -> None:
    """A ledger on a store that does not answer: the slot is still requested; the entry waits in memory."""
    settings = settings_with(make_settings, {JOB: "every 1m"})
    dead = make_client(
        settings.model_copy(
            update={
                "mongo_url": SecretStr("mongodb://127.0.0.1:9"),  # nothing listens on port 9
                "mongo_timeout_s": 0.2,
                "mongo_op_timeout_s": 0.5,
            }
        )
    )
    try:
        ledger_ = SlotLedger(dead[settings.mongo_db], replica="one", batch_size=10)
        ticker = Ticker(settings, js, clock=FakeClock(NOON + timedelta(seconds=0.5)), replica="one", ledger=ledger_)
        await ticker.start()
        fired = await asyncio.wait_for(ticker.tick(), timeout=5)
        assert [f.run_id for f in fired] == run_ids(0)
        assert await requested_ids(js, settings) == run_ids(0)
        assert not await ledger_.flush(timeout_s=1)
        assert ledger_.pending == 1
        await wait_for(lambda: _errors(ledger_), timeout_s=10, what="a failed ledger write")
        assert ledger_.pending == 1  # kept for the next try, not lost
        await ticker.tick()
        assert ticker.metrics.registry.get_sample_value("pulse_ticker_ledger_pending") == 1  # exported
        await ticker.stop()
    finally:
        await dead.close()


async def _errors(ledger_: SlotLedger) -> bool:
    return ledger_.write_errors > 0
