"""Chains end to end, with the real services as processes against the provider simulator.

- market_refresh (a workflow in the market_sync service) refreshes a market while the
  simulator fails every trades request: only the trades step is tried again, across
  attempts; the market and prices steps ran once (counted by the simulator's requests).
- a market_refresh whose worker is killed while it sleeps is finished by another process.
- whale_sync requests one market_refresh per market and hour of its whale trades, once.
- stats is chained after the market sync of its hour, once, and `pulse status` shows it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from typer.testing import CliRunner

from shared.chains import hour_of
from shared.cli.app import app
from shared.names import Collections
from shared.providers.simprocess import RunningSimulator, simulator_process
from shared.providers.simulator import hex_id
from shared.requests import publish_request
from shared.runtime import read_steps
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.conftest import settings_env
from tests.e2e.conftest import Spawn
from tests.helpers import wait_for
from tests.integration.test_runtime_support import wait_value

MARKETS = 200
SEED = 1
#: Trades at or above this many USD are whales here: about one trade in twenty-five of the
#: simulator's, so a first whale sync requests a handful of refreshes, not dozens.
WHALE_USD = 150_000
#: What the services need beyond `settings_env`: a short recheck sleep, single HTTP tries
#: (so a fault reaches the step at once) and quick step and run retries.
FAST_ENV = {
    "PULSE_MARKET_REFRESH_RECHECK_S": "2",
    "PULSE_HTTP_ATTEMPTS": "1",
    "PULSE_WHALE_THRESHOLD_USD": str(WHALE_USD),
    "PULSE_STEP_RETRY": json.dumps({"max_attempts": 2, "initial_backoff_s": 0.1, "jitter": 0}),
    "PULSE_JOBS__MARKET_REFRESH__RETRY__INITIAL_BACKOFF_S": "0.3",
    "PULSE_JOBS__MARKET_REFRESH__RETRY__MAX_ATTEMPTS": "10",
}
Launch = Callable[[str], subprocess.Popen[bytes]]


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with simulator_process(markets=MARKETS, seed=SEED, frozen=True) as sim:
        yield sim


@pytest.fixture
def sim_settings(make_settings: Callable[..., Settings], simulator: RunningSimulator) -> Settings:
    return make_settings(polymarket_gamma_url=simulator.url, polymarket_data_url=simulator.url)


@pytest.fixture
def launch(spawn: Spawn, sim_settings: Settings) -> Launch:
    """Start a real service process (`services.<name>`) against the simulator, with `FAST_ENV`."""
    return lambda service: spawn(f"services.{service}", env=FAST_ENV, worker_settings=sim_settings)


async def sim_control(sim: RunningSimulator, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await (client.post(sim.url + route, json=body) if body is not None else client.get(sim.url + route))
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def request(job: str, *, args: dict[str, Any] | None = None, when: Any = None) -> JobRequest:
    return JobRequest(
        run_id=new_run_id(job, Trigger.MANUAL),
        job=job,
        trigger=Trigger.MANUAL,
        scheduled_for=when or utcnow(),
        requested_by="tests",
        args=args or {},
    )


async def completed_run(db: Database, run_id: str, timeout_s: float, what: str) -> dict[str, Any]:
    async def _done() -> dict[str, Any] | None:
        doc = await db[Collections.RUNS].find_one({"_id": run_id})
        if doc is not None and doc["status"] in ("failed", "canceled", "timed_out"):
            raise AssertionError(f"{run_id} ended {doc['status']}: {doc.get('error')}")
        return doc if doc is not None and doc["status"] == "completed" else None

    return await wait_value(_done, timeout_s=timeout_s, what=what)


async def test_market_refresh_retries_only_the_failing_parallel_step(
    sim_settings: Settings, js: JetStreamContext, db: Database, launch: Launch, simulator: RunningSimulator
) -> None:
    market = hex_id(SEED, "condition", 7)  # market #7 of the simulator's catalogue
    await sim_control(simulator, "/_sim/faults", {"trades": {"5xx": 1.0}})
    launch("market_sync")
    refresh = request("market_refresh", args={"market": market})
    await publish_request(js, sim_settings.names, refresh)

    async def _trades_failed_twice() -> dict[str, Any] | None:
        doc = await db[Collections.RUNS].find_one({"_id": refresh.run_id})
        return doc if doc is not None and len(doc.get("attempts", [])) >= 2 else None

    await wait_value(_trades_failed_twice, timeout_s=60, what="two attempts failed by the trades step")
    steps = {step.name: step for step in await read_steps(db, refresh.run_id)}
    assert (steps["market"].status.value, steps["market"].tries) == ("completed", 1)
    assert (steps["prices"].status.value, steps["prices"].tries) == ("completed", 1)
    assert steps["trades"].status.value == "failed"
    assert "503" in (steps["trades"].error or "")
    await sim_control(simulator, "/_sim/faults", {})
    await sim_control(simulator, "/_sim/advance", {"seconds": 600})  # prices move before the recheck

    doc = await completed_run(db, refresh.run_id, 60, "the refresh to complete once the trades endpoint answers")
    steps_after = await read_steps(db, refresh.run_id)
    assert [(s.name, s.status.value) for s in steps_after] == [
        ("market", "completed"),
        ("prices", "completed"),
        ("trades", "completed"),
        ("write", "completed"),
        ("settle", "completed"),
        ("check", "completed"),
        ("record", "completed"),
    ]
    assert [s.tries for s in steps_after if s.name in ("market", "prices")] == [1, 1]
    failed_attempts = [a for a in doc["attempts"] if a["outcome"] == "failed"]
    assert len(failed_attempts) >= 2
    assert all("trades" in (a.get("error") or "") for a in failed_attempts)
    # The simulator counts what was asked: the market, its prices and the recheck, once
    # each, however many attempts the trades step took.
    served = (await sim_control(simulator, "/_sim/stats"))["requests"]
    assert served["markets"] == 3
    assert served["trades"] >= 2 * len(failed_attempts) + 1
    stored = await db[Collections.MARKET_REFRESHES].find_one({"_id": refresh.run_id})
    assert stored is not None
    assert stored["market"] == market
    assert stored["quote"]["yes_price"] is not None
    assert stored["recent_trades"]["trades"] >= 0
    assert stored["yes_change"] == pytest.approx(stored["quote_after"]["yes_price"] - stored["quote"]["yes_price"])
    assert doc["summary"]["yes_change"] == stored["yes_change"]


async def test_market_refresh_whose_worker_is_killed_while_it_sleeps_is_finished_by_another(
    sim_settings: Settings, js: JetStreamContext, db: Database, launch: Launch, simulator: RunningSimulator
) -> None:
    first = launch("market_sync")
    refresh = request("market_refresh", args={"market": hex_id(SEED, "condition", 11)})
    await publish_request(js, sim_settings.names, refresh)

    async def _sleeping() -> dict[str, Any] | None:
        doc = await db[Collections.RUNS].find_one({"_id": refresh.run_id})
        return doc if doc is not None and doc["status"] == "sleeping" else None

    await wait_value(_sleeping, timeout_s=60, what="the refresh to sleep")
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 10)
    launch("market_sync")
    doc = await completed_run(db, refresh.run_id, 60, "the refresh to be finished by the second process")
    assert [a["outcome"] for a in doc["attempts"]][-1] == "succeeded"
    steps = await read_steps(db, refresh.run_id)
    assert [(s.name, s.tries) for s in steps] == [
        ("market", 1),
        ("prices", 1),
        ("trades", 1),
        ("write", 1),
        ("settle", 0),
        ("check", 1),
        ("record", 1),
    ]
    served = (await sim_control(simulator, "/_sim/stats"))["requests"]
    assert (served["markets"], served["trades"]) == (3, 1)  # nothing asked twice across the crash


async def test_whale_sync_requests_one_market_refresh_per_market_and_hour(
    sim_settings: Settings, js: JetStreamContext, db: Database, launch: Launch
) -> None:
    launch("whale_sync")
    launch("market_sync")
    first = request("whale_sync")
    await publish_request(js, sim_settings.names, first)
    synced = await completed_run(db, first.run_id, 60, "the first whale sync")
    trades = await db[Collections.WHALE_TRADES].find({}, {"market": 1, "traded_at": 1}).to_list(None)
    keys = {(t["market"], hour_of(t["traded_at"].replace(tzinfo=UTC))) for t in trades}
    assert keys, "the simulator's backlog holds whale trades"
    assert synced["summary"]["refreshes_requested"] == len(keys)

    async def _refreshes_done() -> list[dict[str, Any]] | None:
        runs = await db[Collections.RUNS].find({"job": "market_refresh"}).to_list(None)
        return runs if len(runs) == len(keys) and all(r["status"] == "completed" for r in runs) else None

    runs = await wait_value(_refreshes_done, timeout_s=90, what=f"{len(keys)} market refreshes to complete")
    assert {r["args"]["market"] for r in runs} == {market for market, _ in keys}
    assert {r["trigger"] for r in runs} == {"chain"}
    assert {r["requested_by"] for r in runs} == {f"chain:{first.run_id}"}

    second = request("whale_sync")  # re-reads the same trades (overlap): the same refreshes, dropped
    await publish_request(js, sim_settings.names, second)
    assert (await completed_run(db, second.run_id, 60, "the second whale sync"))["summary"]["new"] == 0
    assert await db[Collections.RUNS].count_documents({"job": "market_refresh"}) == len(keys)


async def test_stats_runs_once_after_the_market_sync_of_its_hour_and_status_shows_the_chain(
    sim_settings: Settings, js: JetStreamContext, db: Database, launch: Launch
) -> None:
    launch("market_sync")
    launch("stats")
    hour = hour_of(utcnow())
    syncs = [request("market_sync", when=hour), request("market_sync", when=hour + timedelta(minutes=20))]
    await publish_request(js, sim_settings.names, syncs[0])
    first = await completed_run(db, syncs[0].run_id, 90, "the hour's first market sync")
    await publish_request(js, sim_settings.names, syncs[1])
    await completed_run(db, syncs[1].run_id, 90, "the hour's second market sync")

    async def _stats_done() -> dict[str, Any] | None:
        return await db[Collections.RUNS].find_one({"job": "stats", "status": "completed"})

    stats = await wait_value(_stats_done, timeout_s=60, what="the chained stats run")
    assert stats["trigger"] == "chain"
    assert stats["requested_by"] == f"chain:{syncs[0].run_id}"
    assert stats["scheduled_for"].replace(tzinfo=UTC) == hour
    assert stats["started_at"] >= first["ended_at"]  # after the sync's writes, never during them
    snapshot = await db[Collections.MARKET_STATS].find_one({"_id": hour.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert snapshot is not None
    assert snapshot["total_markets"] == first["summary"]["fetched"] == MARKETS
    # The second sync of the hour requested the same stats run, which JetStream dropped:
    # wait until the stats consumer has nothing pending, then count.
    await wait_for(lambda: _consumer_idle(js, sim_settings, "stats"), timeout_s=10, what="stats' queue to drain")
    assert await db[Collections.RUNS].count_documents({"job": "stats"}) == 1

    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["status", "--job", "stats", "--job", "market_sync", "--json"],
        env=settings_env(sim_settings),
    )
    assert result.exit_code == 0, result.output
    rows = {row["job"]: row for row in json.loads(result.stdout)}
    assert rows["stats"]["chained_after"] == ["market_sync, once per hour"]
    assert rows["stats"]["last_chained_run_id"] == stats["_id"]
    assert rows["stats"]["last_chained_status"] == "completed"
    assert rows["stats"]["last_chained_by"] == syncs[0].run_id
    assert rows["market_sync"]["chains_to"] == ["stats, once per hour"]
    text = await asyncio.to_thread(CliRunner().invoke, app, ["status"], env=settings_env(sim_settings))
    assert text.exit_code == 0, text.output
    assert "chains" in text.stdout
    assert "market_refresh" in text.stdout


async def _consumer_idle(js: JetStreamContext, settings: Settings, job: str) -> bool:
    info = await js.consumer_info(settings.names.jobs_stream, settings.names.consumer_name(job))
    return not info.num_pending and not info.num_ack_pending
