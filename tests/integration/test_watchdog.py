"""The watchdog against real NATS and a real database, with the runtime's own record path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.runtime._events import publish_run_event
from shared.runtime._records import finish_run
from shared.runtime._watchdog import TIMEOUT_REASON, WatchdogResult, time_out_dead_runs
from shared.schemas import JobRequest, RunRecord, RunStatus, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.conftest import settings_env
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def run_events(nats_client: NatsClient, js: JetStreamContext, settings: Settings) -> AsyncIterator[list[Any]]:
    """Every RunEvent published in this test's namespace, as parsed JSON."""
    seen: list[Any] = []

    async def collect(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    subscription = await nats_client.subscribe(settings.names.run_events_wildcard(), cb=collect)
    yield seen
    await subscription.unsubscribe()


def watchdog_pass(db: Database, js: JetStreamContext, settings: Settings) -> Callable[[], Any]:
    async def publish(record: RunRecord) -> None:
        await publish_run_event(js, settings.names, record)

    async def once() -> WatchdogResult:
        return await time_out_dead_runs(
            db, now=utcnow(), heartbeat_interval_s=settings.heartbeat_interval_s, finish=finish_run, publish=publish
        )

    return once


def running(
    run_id: str, *, started_ago: timedelta, beat_ago: timedelta | None, status: str = "running"
) -> dict[str, Any]:
    now = utcnow()
    return {
        "_id": run_id,
        "job": "market_sync",
        "trigger": "manual",
        "status": status,
        "attempt_count": 1,
        "started_at": now - started_ago,
        "heartbeat_at": None if beat_ago is None else now - beat_ago,
    }


async def test_silent_run_is_timed_out_once_and_live_runs_are_left_alone(
    db: Database, js: JetStreamContext, settings: Settings, run_events: list[Any]
) -> None:
    silence = timedelta(seconds=3 * settings.heartbeat_interval_s)
    await db[Collections.RUNS].insert_many(
        [
            running("dead", started_ago=timedelta(minutes=5), beat_ago=silence + timedelta(seconds=5)),
            running("never-beat", started_ago=silence + timedelta(seconds=5), beat_ago=None),
            # Running for hours but heartbeating: slow, not dead.
            running("slow-but-alive", started_ago=timedelta(hours=3), beat_ago=timedelta(0)),
            # Just inside the limit: one missed heartbeat is not death.
            running("late-beat", started_ago=timedelta(minutes=5), beat_ago=silence - timedelta(seconds=1)),
            running("retrying", started_ago=timedelta(hours=1), beat_ago=timedelta(hours=1), status="retrying"),
        ]
    )
    once = watchdog_pass(db, js, settings)

    first = await once()
    second = await once()

    assert sorted(first.timed_out) == ["dead", "never-beat"]
    assert second.timed_out == []
    statuses = {doc["_id"]: doc for doc in await db[Collections.RUNS].find({}).to_list()}
    assert statuses["dead"]["status"] == "timed_out"
    assert statuses["dead"]["reason"] == TIMEOUT_REASON
    assert "no heartbeat" in statuses["dead"]["error"]
    assert statuses["dead"]["ended_at"] is not None
    assert {run_id: statuses[run_id]["status"] for run_id in ("slow-but-alive", "late-beat", "retrying")} == {
        "slow-but-alive": "running",
        "late-beat": "running",
        "retrying": "retrying",
    }
    events = await wait_for(lambda: _events_for(run_events, 2), timeout_s=10, what="two RunEvents")
    assert sorted((e["run_id"], e["status"]) for e in events) == [("dead", "timed_out"), ("never-beat", "timed_out")]


async def _events_for(seen: list[Any], count: int) -> list[Any] | None:
    return list(seen) if len(seen) >= count else None


async def test_a_run_ended_by_its_worker_first_is_not_reported_twice(
    db: Database, js: JetStreamContext, settings: Settings, run_events: list[Any]
) -> None:
    await db[Collections.RUNS].insert_one(
        running("raced", started_ago=timedelta(minutes=5), beat_ago=timedelta(minutes=1))
    )

    async def finish_lost_race(*args: Any, **kwargs: Any) -> RunRecord | None:
        # The worker recovers and completes the run between the watchdog's find and its write.
        await finish_run(db, "raced", RunStatus.COMPLETED)
        return await finish_run(*args, **kwargs)

    async def publish(record: RunRecord) -> None:
        await publish_run_event(js, settings.names, record)

    result = await time_out_dead_runs(
        db, now=utcnow(), heartbeat_interval_s=settings.heartbeat_interval_s, finish=finish_lost_race, publish=publish
    )

    assert result.timed_out == []
    assert result.already_ended == 1
    record = await db[Collections.RUNS].find_one({"_id": "raced"})
    assert record is not None
    assert record["status"] == "completed"


# -- a real worker process, killed mid-run ------------------------------------------------


@pytest.fixture
def worker_settings(make_settings: Callable[..., Settings]) -> Settings:
    # One-second heartbeats: the watchdog's limit is 3 s, wide enough for a busy machine.
    return make_settings(heartbeat_interval_s=1.0, ack_wait_s=30.0)


@pytest.fixture
def spawn_probe(worker_settings: Settings, tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start `tests.e2e.workers.probe` processes running one long job each; stopped at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def _spawn(job: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **settings_env(worker_settings), "PROBE_JOB": job, "PROBE_SLEEP_S": "3600"}
        log = (tmp_path / f"{job}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.workers.probe"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        processes.append(process)
        return process

    yield _spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def _status(db: Database, run_id: str) -> str | None:
    doc = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1})
    return None if doc is None else str(doc["status"])


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_run_of_a_killed_worker_is_timed_out_and_a_live_long_run_is_not(
    worker_settings: Settings, spawn_probe: Callable[[str], Any]
) -> None:
    from shared.bus import connect_nats, ensure_topology
    from shared.store import connect_store

    nats = await connect_nats(worker_settings, name="tests")
    mongo, db = await connect_store(worker_settings)
    try:
        js = nats.jetstream()
        await ensure_topology(js, worker_settings)
        victim = spawn_probe("probe_victim")
        spawn_probe("probe_alive")
        requests = {
            job: JobRequest(
                run_id=new_run_id(job, Trigger.MANUAL),
                job=job,
                trigger=Trigger.MANUAL,
                scheduled_for=utcnow(),
                requested_by="tests",
            )
            for job in ("probe_victim", "probe_alive")
        }
        for request in requests.values():
            await publish_request(js, worker_settings.names, request)
        for request in requests.values():
            await wait_for(lambda r=request: _is(db, r.run_id, "running"), timeout_s=45, what=f"{request.job} running")

        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        once = watchdog_pass(db, js, worker_settings)

        async def victim_timed_out() -> bool:
            await once()
            return await _is(db, requests["probe_victim"].run_id, "timed_out")

        await wait_for(victim_timed_out, timeout_s=30, interval_s=0.5, what="the killed worker's run timed out")
        # The live worker has been running as long, and keeps heartbeating: more passes, each
        # after a fresh heartbeat, leave it alone.
        alive = requests["probe_alive"].run_id
        for _ in range(3):
            last = await _heartbeat(db, alive)
            await wait_for(lambda last=last: _beat_after(db, alive, last), timeout_s=15, what="a new heartbeat")
            result = await once()
            assert alive not in result.timed_out
        assert await _status(db, alive) == "running"
    finally:
        await mongo.drop_database(worker_settings.mongo_db)
        await mongo.close()
        await nats.close()


async def _is(db: Database, run_id: str, status: str) -> bool:
    return await _status(db, run_id) == status


async def _heartbeat(db: Database, run_id: str) -> Any:
    doc = await db[Collections.RUNS].find_one({"_id": run_id}, {"heartbeat_at": 1})
    return None if doc is None else doc.get("heartbeat_at")


async def _beat_after(db: Database, run_id: str, last: Any) -> bool:
    beat = await _heartbeat(db, run_id)
    return beat is not None and (last is None or beat > last)
