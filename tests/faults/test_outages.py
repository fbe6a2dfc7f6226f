"""Server outages: nats-server or the store down for a while, then started again where it was.

The ticker requests whale_sync every 2 s throughout; afterwards every request it
published must end in exactly one terminal record (or a dead letter with an alert),
nothing doubled, nothing left in JOBS; the time from the restart to the next completed
run is printed.
"""

from __future__ import annotations

import time

import pytest
from nats.js import JetStreamContext

from shared.schemas import utcnow
from shared.settings import Settings
from shared.store import Database
from tests.faults.conftest import (
    StartSim,
    hold,
    record_recovery,
    settle_and_audit,
    start_serving,
    wait_completed,
    with_jobs,
)
from tests.faults.system import ServerStack, System

pytestmark = pytest.mark.timeout(300)


async def _outage(
    server: str,
    seconds: float,
    stack: ServerStack,
    settings: Settings,
    js: JetStreamContext,
    db: Database,
    system: System,
    simulator: StartSim,
) -> None:
    sim = simulator(markets=200, frozen=False)
    env = with_jobs({"whale_sync": "every 2s"}, PULSE_POLYMARKET_GAMMA_URL=sim.url, PULSE_POLYMARKET_DATA_URL=sim.url)
    await start_serving(system, [("ticker", env), ("whale_sync", env)])
    await wait_completed(db, "whale_sync", 2)

    stop, start = (stack.stop_nats, stack.start_nats) if server == "nats" else (stack.stop_store, stack.start_store)
    stop()
    await hold(seconds, f"{seconds:g} s of {server} outage")
    start()
    restarted = utcnow()
    started = time.monotonic()
    await wait_completed(db, "whale_sync", 1, after=restarted, timeout_s=90)
    record_recovery(f"{server} down {seconds:g} s", "restart → next completed run", time.monotonic() - started)
    await wait_completed(db, "whale_sync", 3, after=restarted, timeout_s=60)  # ticking and running again
    audit = await settle_and_audit(system, js, db, settings)
    assert audit.terminal >= 5
    assert all(p.alive() for p in system.procs if p.name.startswith("whale_sync")), "a service died of the outage"


async def test_nats_down_15s_then_restarted(
    restore_servers: ServerStack, settings: Settings, js: JetStreamContext, db: Database, system: System,
    simulator: StartSim,
) -> None:  # fmt: skip
    await _outage("nats", 15, restore_servers, settings, js, db, system, simulator)


@pytest.mark.parametrize("seconds", [15, 90])
async def test_store_down_then_restarted(
    seconds: float, restore_servers: ServerStack, settings: Settings, js: JetStreamContext, db: Database,
    system: System, simulator: StartSim,
) -> None:  # fmt: skip
    await _outage("store", seconds, restore_servers, settings, js, db, system, simulator)
