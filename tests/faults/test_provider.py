"""The provider under faults: failing every call for 30 s, then `pulse dlq replay --all`; and
a market_sync of 10,000 changed markets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.faults.audit import dead_letters
from tests.faults.conftest import (
    StartSim,
    hold,
    record_recovery,
    set_faults,
    settle_and_audit,
    start_serving,
    wait_completed,
    with_jobs,
)
from tests.faults.system import ROOT, System
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(240)


async def pulse(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PULSE_")}
    env.update(system.env)
    command = [str(Path(sys.executable).parent / "pulse"), *args]
    return await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def test_provider_failing_30s_then_recovering_and_dlq_replay(
    settings: Settings, js: JetStreamContext, db: Database, system: System, simulator: StartSim
) -> None:
    sim = simulator(markets=100, frozen=False)
    env = with_jobs({"whale_sync": "every 2s"}, PULSE_POLYMARKET_GAMMA_URL=sim.url, PULSE_POLYMARKET_DATA_URL=sim.url)
    await start_serving(system, [("ticker", env), ("whale_sync", env)])
    await wait_completed(db, "whale_sync", 1)

    await set_faults(sim, {"trades": {"5xx": 1.0}})
    await hold(30, "30 s of provider failures")
    await set_faults(sim, {})
    healed = utcnow()
    started = time.monotonic()
    await wait_completed(db, "whale_sync", 1, after=healed, timeout_s=60)
    record_recovery("provider failing 30 s", "faults off → next completed run", time.monotonic() - started)
    audit = await settle_and_audit(system, js, db, settings)
    failed = [run_id for run_id, doc in audit.records.items() if doc["status"] == "failed"]
    assert failed, "30 s of provider failures failed no run: the fault did not bite"
    assert all(audit.records[r]["reason"] == "exhausted" for r in failed)

    replayed = await pulse(system, "dlq", "replay", "--all", "--json")
    assert replayed.returncode == 0, replayed.stderr
    replays = {result["original_run_id"]: result["run_id"] for result in json.loads(replayed.stdout)}
    assert sorted(replays) == sorted(failed)
    assert len(audit.dead_letters) == len(failed)
    assert await dead_letters(js, settings) == ([], 0), "replayed dead letters stay in the DLQ"
    replay_ids = set(replays.values())
    started = time.monotonic()
    final = await settle_and_audit(system, js, db, settings, replayed=replays)
    assert all(final.records[r]["status"] == "completed" for r in replay_ids)
    assert all(final.records[r]["trigger"] == Trigger.REPLAY.value for r in replay_ids)
    record_recovery("provider failing 30 s", "dlq replay → every replay completed", time.monotonic() - started)


async def test_market_sync_of_10000_changed_markets(
    settings: Settings, js: JetStreamContext, db: Database, system: System, simulator: StartSim
) -> None:
    markets = 10_000
    sim = simulator(markets=markets, frozen=True)
    env = with_jobs({"market_sync": "every 1h"}, PULSE_POLYMARKET_GAMMA_URL=sim.url, PULSE_POLYMARKET_DATA_URL=sim.url)
    env["PULSE_JOBS__MARKET_SYNC__ENABLED"] = "false"  # runs only when asked here
    await start_serving(system, [("market_sync", env)])

    async def sync() -> dict[str, Any]:
        request = JobRequest(run_id=new_run_id("market_sync", Trigger.MANUAL), job="market_sync",
                             trigger=Trigger.MANUAL, scheduled_for=utcnow(), requested_by="faults")  # fmt: skip
        await publish_request(js, settings.names, request)

        async def finished() -> dict[str, Any] | None:
            doc = await db[Collections.RUNS].find_one({"_id": request.run_id})
            return doc if doc and doc["status"] in ("completed", "failed", "timed_out") else None

        doc: dict[str, Any] = await wait_for(finished, timeout_s=150, interval_s=0.5, what="the market_sync run")
        return doc

    first = await sync()
    assert first["status"] == "completed", first.get("error")
    async with httpx.AsyncClient(timeout=5) as http:  # a day of sim time: every price moves
        (await http.post(f"{sim.url}/_sim/advance", json={"seconds": 86_400})).raise_for_status()
    started = time.monotonic()
    second = await sync()
    record_recovery("market_sync of 10,000 changed markets", "second sync (10,000 changed)", time.monotonic() - started)
    assert second["status"] == "completed", second.get("error")
    summary = second["summary"]
    print(json.dumps(summary))
    assert summary["fetched"] == markets
    assert summary["updated"] == markets, summary  # a day of sim time changes every record
    assert second["attempt_count"] == 1, second["attempts"]
    assert await db[Collections.MARKETS].count_documents({}) == first["summary"]["inserted"]
    await settle_and_audit(system, js, db, settings, {first["_id"], second["_id"]})
