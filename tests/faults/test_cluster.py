"""A three-node JetStream cluster, streams and KV at R3 (as deploy/k8s/overlays/prod deploys
them): the stream leader's node is SIGKILLed mid-run and again mid-publish; no request is
lost or doubled and the services carry on with the survivors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from shared.bus import connect_nats, ensure_topology
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import Database, ensure_indexes, make_client
from tests.conftest import settings_env
from tests.faults.cluster import NatsCluster, replicas_current, stream_leader
from tests.faults.conftest import StartSim, record_recovery, settle_and_audit, start_serving, wait_completed, with_jobs
from tests.faults.system import System
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(300)
JOB = "whale_sync"
REPLICAS = 3


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster", REPLICAS).start()
    try:
        yield nodes
    finally:
        nodes.stop()


async def publish_until_acked(js: JetStreamContext, settings: Settings, request: JobRequest) -> None:
    """Publish as any client should across a leader change: again, with the same Nats-Msg-Id."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await publish_request(js, settings.names, request, timeout_s=2)
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # an election is under way: there is nothing to wait on but time


async def kill_leader(cluster: NatsCluster, js: JetStreamContext, stream: str) -> str:
    """SIGKILL the node leading `stream`; return its name."""
    leader: str = await wait_for(lambda: stream_leader(js, stream), timeout_s=20, what="a stream leader")
    cluster.kill(leader)
    return leader


async def new_leader_after(js: JetStreamContext, stream: str, old: str) -> float:
    """Wait for a leader other than `old`; return how long that took."""
    started = time.monotonic()

    async def elected() -> str | None:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            found = await stream_leader(js, stream)
            return found if found and found != old else None
        return None

    await wait_for(elected, timeout_s=30, interval_s=0.2, what="a new stream leader")
    return time.monotonic() - started


async def rejoin(cluster: NatsCluster, js: JetStreamContext, stream: str, name: str) -> None:
    cluster.restart(name)

    async def caught_up() -> bool:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return await replicas_current(js, stream, REPLICAS)
        return False

    await wait_for(caught_up, timeout_s=60, interval_s=0.5, what=f"{name} to catch up")


async def test_stream_leader_killed_mid_run_and_mid_publish(
    cluster: NatsCluster,
    make_settings: Callable[..., Settings],
    simulator: StartSim,
    tmp_path: Path,
) -> None:
    settings = make_settings(nats_url=cluster.urls, stream_replicas=REPLICAS)
    client = await connect_nats(settings, name="faults-cluster", timeout_s=30)
    js = client.jetstream(timeout=5)
    await wait_for(lambda: _ready(js, settings), timeout_s=60, interval_s=0.5, what="JetStream at R3")
    mongo = make_client(settings)
    db: Database = mongo[settings.mongo_db]
    await ensure_indexes(db)
    sim = simulator(markets=100, frozen=False)
    env = {**settings_env(settings), "PULSE_LOG_JSON": "true", "PULSE_STREAM_REPLICAS": str(REPLICAS)}
    system = System(env, tmp_path / "logs")
    stream = settings.names.jobs_stream
    try:
        services = with_jobs({JOB: "every 2s"}, PULSE_POLYMARKET_GAMMA_URL=sim.url, PULSE_POLYMARKET_DATA_URL=sim.url)
        await start_serving(system, [("ticker", services), (JOB, services), (JOB, services)])
        await wait_completed(db, JOB, 2)

        # 1. Mid-run: the scheduled runs keep flowing while the leader dies.
        leader = await kill_leader(cluster, js, stream)
        killed_at, started = utcnow(), time.monotonic()
        record_recovery(
            "cluster: leader killed mid-run", "new JOBS leader elected", await new_leader_after(js, stream, leader)
        )
        await wait_completed(db, JOB, 2, after=killed_at, timeout_s=60)
        record_recovery("cluster: leader killed mid-run", "kill → 2 completed runs", time.monotonic() - started)
        await rejoin(cluster, js, stream, leader)

        # 2. Mid-publish: a client publishing a burst while the (new) leader dies.
        burst = [JobRequest(run_id=new_run_id(JOB, Trigger.MANUAL), job=JOB, trigger=Trigger.MANUAL,
                            scheduled_for=utcnow(), requested_by="faults") for _ in range(80)]  # fmt: skip
        acked: list[str] = []

        async def publish_burst() -> None:
            for request in burst:
                await publish_until_acked(js, settings, request)
                acked.append(request.run_id)
                await asyncio.sleep(0.05)  # paced: the kill must land in the middle of the burst

        publishing = asyncio.create_task(publish_burst())

        async def some_acked() -> bool:
            return len(acked) >= 20

        await wait_for(some_acked, timeout_s=30, what="20 requests of the burst published")
        second = await kill_leader(cluster, js, stream)
        assert not publishing.done(), "the burst ended before the kill: not mid-publish"
        election_s = await new_leader_after(js, stream, second)
        record_recovery("cluster: leader killed mid-publish", "new JOBS leader elected", election_s)
        await asyncio.wait_for(publishing, timeout=90)
        await rejoin(cluster, js, stream, second)

        audit = await settle_and_audit(system, js, db, settings, {r.run_id for r in burst}, timeout_s=90)
        assert all(audit.records[r.run_id]["status"] in ("completed", "skipped") for r in burst)
        assert all(p.alive() for p in system.procs if p.name.startswith(JOB)), "a service died with a node"
    finally:
        system.stop_all()
        await client.close()
        await mongo.drop_database(settings.mongo_db)
        await mongo.close()


async def _ready(js: JetStreamContext, settings: Settings) -> bool:
    """Streams, buckets and consumers at R3 (the meta leader is elected only once the nodes meet)."""
    try:
        await ensure_topology(js, settings)
    except Exception:
        return False
    info = await js.stream_info(settings.names.jobs_stream)
    return info.config.num_replicas == REPLICAS
