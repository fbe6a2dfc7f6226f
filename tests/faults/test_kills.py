"""Processes SIGKILLed at the worst moment: a ticker just before its slot, a consumer mid-run."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.names import Collections
from shared.schemas import utcnow
from shared.settings import Settings
from shared.store import Database
from tests.faults.conftest import StartSim, record_recovery, settle_and_audit, start_serving, wait_completed, with_jobs
from tests.faults.system import Proc, System
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(240)


def slot_of(run_id: str) -> datetime:
    return datetime.fromisoformat(run_id.split(":", 1)[1].replace("Z", "+00:00"))


def last_fired(proc: Proc) -> datetime | None:
    slots = [slot_of(str(line["run_id"])) for line in proc.log_lines() if line.get("event") == "ticker.fired"]
    return max(slots) if slots else None


async def test_one_of_two_tickers_killed_just_before_its_slot(
    settings: Settings, js: JetStreamContext, db: Database, system: System, simulator: StartSim
) -> None:
    sim = simulator(markets=100, frozen=False)
    env = with_jobs({"whale_sync": "every 2s"}, PULSE_POLYMARKET_GAMMA_URL=sim.url, PULSE_POLYMARKET_DATA_URL=sim.url)
    tickers = await start_serving(system, [("ticker", env), ("ticker", env)])
    await start_serving(system, [("whale_sync", env)])
    await wait_completed(db, "whale_sync", 2)

    # The replica that fired the latest slot is killed 150 ms before the next one.
    async def latest() -> tuple[Proc, datetime] | None:
        fired = [(proc, slot) for proc in tickers if (slot := last_fired(proc)) is not None]
        return max(fired, key=lambda pair: pair[1]) if fired else None

    victim, slot = await wait_for(latest, timeout_s=10, what="a fired slot")
    target = slot + timedelta(seconds=2)
    if target - utcnow() < timedelta(seconds=0.5):  # too close to aim: take the slot after
        target += timedelta(seconds=2)

    async def just_before() -> bool:
        return utcnow() >= target - timedelta(seconds=0.15)

    await wait_for(just_before, timeout_s=10, interval_s=0.01, what="150 ms before the slot")
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    survivor = next(proc for proc in tickers if proc is not victim)

    async def survivor_fired_after() -> bool:
        newest = last_fired(survivor)
        return newest is not None and newest >= target + timedelta(seconds=4)

    await wait_for(survivor_fired_after, timeout_s=30, what="the survivor to carry on")
    lateness = system.fired()
    after_kill = min(run_id for run_id in lateness if slot_of(run_id) >= target)
    record_recovery("ticker SIGKILLed before its slot", "lateness of the slot after the kill", lateness[after_kill])
    record_recovery("ticker SIGKILLed before its slot", "kill → survivor past 2 more slots", time.monotonic() - killed)
    audit = await settle_and_audit(system, js, db, settings)

    slots = sorted(slot_of(run_id) for run_id in system.fired())
    gaps = [(a, b) for a, b in pairwise(slots) if b - a != timedelta(seconds=2)]
    assert gaps == [], f"slots missing around the kill: {gaps}"
    assert target in slots
    assert audit.terminal == len(audit.requested)


async def test_consumer_killed_mid_run_with_a_second_replica(
    settings: Settings, js: JetStreamContext, db: Database, system: System, simulator: StartSim
) -> None:
    sim = simulator(markets=1500, frozen=True)
    env = with_jobs(
        {"market_sync": "every 2s"},
        PULSE_POLYMARKET_GAMMA_URL=sim.url,
        PULSE_POLYMARKET_DATA_URL=sim.url,
        PULSE_PAGE_SIZE="50",
    )
    replicas = await start_serving(system, [("market_sync", env), ("market_sync", env)])
    await start_serving(system, [("ticker", env)])

    async def running_for_a_while() -> dict[str, Any] | None:
        doc = await db[Collections.RUNS].find_one({"job": "market_sync", "status": "running"})
        if doc and doc.get("started_at") and utcnow() - doc["started_at"] > timedelta(seconds=0.5):
            return doc
        return None

    running = await wait_for(running_for_a_while, timeout_s=60, interval_s=0.05, what="a run half-way")
    pid = int(str(running["worker"]).rsplit(":", 1)[1])
    victim = next(proc for proc in replicas if proc.pid == pid)
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()

    async def finished() -> dict[str, Any] | None:
        doc = await db[Collections.RUNS].find_one({"_id": running["_id"]})
        return doc if doc and doc["status"] in ("completed", "failed") else None

    doc = await wait_for(finished, timeout_s=60, interval_s=0.2, what="the killed run to finish elsewhere")
    record_recovery("consumer SIGKILLed mid-run", "kill → the run completed on the replica", time.monotonic() - killed)
    assert doc["status"] == "completed", doc.get("error")
    outcomes = [attempt["outcome"] for attempt in doc["attempts"]]
    assert outcomes[-1] == "succeeded"
    assert "lost" in outcomes, outcomes
    survivor = next(proc for proc in replicas if proc is not victim)
    assert str(doc["attempts"][-1]["worker"]).endswith(f":{survivor.pid}")
    await wait_completed(db, "market_sync", 1, after=doc["ended_at"], timeout_s=60)  # and it keeps going
    await settle_and_audit(system, js, db, settings)
