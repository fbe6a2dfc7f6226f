"""Throughput and latency of no-op runs: our runtime vs a plain nats-py loop vs taskiq-nats.

    .venv/bin/python bench/runtime_throughput.py [--runs 5000] [--concurrency 1] [--latency-runs 300]

Starts its own nats-server and FerretDB (shared.localstack), then for each system:
1. burst: publishes `--runs` requests at once and measures throughput (runs per second,
   first publish to last terminal record);
2. latency: publishes `--latency-runs` requests paced at half the measured throughput and
   reports p50/p99 of publish → terminal record.

Each consumer is one separate process with the same concurrency:
- runtime:  `run_service` with a no-op job (run records, events, job state, heartbeats);
- baseline: nats-py pull-consume-ack doing the same two database writes per message
  (insert `running`, then set `completed`; same document shapes, same `runs` indexes);
- taskiq:   taskiq + taskiq-nats (PullBasedJetStreamBroker), the task doing the same two writes.

This is a benchmark, not a test: it prints a table with ratios against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nats.js.api import ConsumerConfig, StreamConfig  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from taskiq_nats import PullBasedJetStreamBroker  # noqa: E402

from shared.store import ensure_indexes  # noqa: E402

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
MONGO_URL = os.environ.get("BENCH_MONGO_URL", "mongodb://127.0.0.1:27017/")
TOKEN = os.environ.get("BENCH_TOKEN", "bench")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "1"))

# -- taskiq: the broker and task must exist at import time in both processes -----------------
taskiq_broker = PullBasedJetStreamBroker(
    NATS_URL,
    subject=f"tq{TOKEN}.tasks",
    stream_name=f"tq{TOKEN}_TASKS",
    durable=f"tq{TOKEN}",
    stream_config=StreamConfig(name=f"tq{TOKEN}_TASKS", subjects=[f"tq{TOKEN}.tasks"]),
    consumer_config=ConsumerConfig(durable_name=f"tq{TOKEN}", max_ack_pending=CONCURRENCY, ack_wait=30),
)
_taskiq_db: Any = None


@taskiq_broker.task(task_name="noop")
async def taskiq_noop(run_id: str, sent_at: float) -> None:
    global _taskiq_db
    if _taskiq_db is None:
        _taskiq_db = AsyncMongoClient(MONGO_URL, tz_aware=True)[f"tq{TOKEN}"]
        await ensure_indexes(_taskiq_db)
    await _two_writes(_taskiq_db, run_id, sent_at)


async def _two_writes(db: Any, run_id: str, sent_at: float) -> None:
    """The two writes our runtime makes per run, with the same document shapes, and nothing else."""
    now = datetime.now(UTC)
    # Insert, as our claim does for a first attempt (an upserting insert scans on FerretDB).
    await db.runs.insert_one(
        {
            "_id": run_id,
            "job": "noop",
            "trigger": "manual",
            "scheduled_for": now,
            "requested_at": now,
            "requested_by": "bench",
            "args": {},
            "status": "running",
            "attempt_count": 1,
            "started_at": now,
            "attempt_started_at": now,
            "heartbeat_at": now,
            "worker": "bench",
            "next_attempt_at": None,
            "updated_at": now,
            "sent_at": sent_at,
        }
    )
    end = datetime.now(UTC)
    await db.runs.find_one_and_update(
        {"_id": run_id},
        {
            "$set": {"status": "completed", "ended_at": end, "updated_at": end, "next_attempt_at": None},
            "$push": {
                "attempts": {
                    "$each": [
                        {"number": 1, "started_at": now, "ended_at": end, "outcome": "succeeded", "worker": "bench"}
                    ],
                    "$slice": -20,
                }
            },
        },
    )


# -- consumer roles (each runs as its own process) ---------------------------------------------


def role_runtime() -> None:
    from shared.runtime import JobContext, job, run_service
    from shared.settings import JobPolicy, RetryPolicy

    policy = JobPolicy(
        schedule="every 1m",
        retry=RetryPolicy(max_attempts=3),
        timeout_s=30,
        stale_after_s=3600,
        overlap="parallel" if CONCURRENCY > 1 else "queue",
        concurrency=CONCURRENCY,
    )

    @job("noop", policy=policy)
    async def noop(ctx: JobContext) -> None:
        return None

    run_service("bench", [noop])


async def role_baseline() -> None:
    import nats

    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=f"bl{TOKEN}_JOBS", subjects=[f"bl{TOKEN}.jobs"]))
    await js.add_consumer(
        f"bl{TOKEN}_JOBS",
        ConsumerConfig(durable_name="noop", filter_subject=f"bl{TOKEN}.jobs", max_ack_pending=CONCURRENCY, ack_wait=30),
    )
    db = AsyncMongoClient(MONGO_URL, tz_aware=True)[f"bl{TOKEN}"]
    await ensure_indexes(db)  # same `runs` indexes as ours, so both pay the same per write
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def loop() -> None:
        sub = await js.pull_subscribe_bind(durable="noop", stream=f"bl{TOKEN}_JOBS")
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch=1, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                body = json.loads(msg.data)
                await _two_writes(db, body["run_id"], body["sent_at"])
                await msg.ack()

    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))


async def role_taskiq() -> None:
    from taskiq.api import run_receiver_task

    taskiq_broker.is_worker_process = True
    await taskiq_broker.startup()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(run_receiver_task(taskiq_broker, max_async_tasks=CONCURRENCY))
    await stop.wait()
    task.cancel()


# -- the driver --------------------------------------------------------------------------------


class System:
    """One system under test: how to publish a run and where its terminal records land."""

    name = ""
    role = ""

    def __init__(self, env: dict[str, str], settings: Any) -> None:
        self.env = env
        self.settings = settings
        self.mongo: Any = AsyncMongoClient(MONGO_URL, tz_aware=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def runs(self) -> Any:
        raise NotImplementedError

    async def setup(self) -> None: ...

    async def publish(self, run_id: str) -> None:
        raise NotImplementedError

    def start_consumer(self) -> None:
        # BENCH_LOG=path keeps the consumers' logs (appended) for a look afterwards.
        with open(os.environ.get("BENCH_LOG", os.devnull), "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--role", self.role],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop_consumer(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Runtime(System):
    name, role = "marketpulse runtime", "runtime"

    async def setup(self) -> None:
        from shared.bus import connect_nats, ensure_stream, stream_configs

        self.nc = await connect_nats(self.settings, name="bench")
        self.js = self.nc.jetstream()
        for config in stream_configs(self.settings):
            await ensure_stream(self.js, config)

    @property
    def runs(self) -> Any:
        return self.mongo[self.settings.mongo_db].runs

    async def publish(self, run_id: str) -> None:
        from shared.requests import publish_request
        from shared.schemas import JobRequest, Trigger

        request = JobRequest(run_id=run_id, job="noop", trigger=Trigger.MANUAL, scheduled_for=datetime.now(UTC))
        await publish_request(self.js, self.settings.names, request)


class Baseline(System):
    name, role = "nats-py loop (baseline)", "baseline"

    async def setup(self) -> None:
        import nats

        self.nc = await nats.connect(NATS_URL)
        self.js = self.nc.jetstream()
        await self.js.add_stream(StreamConfig(name=f"bl{TOKEN}_JOBS", subjects=[f"bl{TOKEN}.jobs"]))

    @property
    def runs(self) -> Any:
        return self.mongo[f"bl{TOKEN}"].runs

    async def publish(self, run_id: str) -> None:
        await self.js.publish(
            f"bl{TOKEN}.jobs",
            json.dumps({"run_id": run_id, "sent_at": time.time()}).encode(),
            headers={"Nats-Msg-Id": run_id},
        )


class Taskiq(System):
    name, role = "taskiq + taskiq-nats", "taskiq"

    async def setup(self) -> None:
        await taskiq_broker.startup()

    @property
    def runs(self) -> Any:
        return self.mongo[f"tq{TOKEN}"].runs

    async def publish(self, run_id: str) -> None:
        await taskiq_noop.kiq(run_id, time.time())


async def publish_all(system: System, run_ids: list[str], chunk: int = 100) -> float:
    started = time.time()
    for i in range(0, len(run_ids), chunk):
        await asyncio.gather(*(system.publish(r) for r in run_ids[i : i + chunk]))
    return started


async def wait_done(system: System, prefix: str, count: int, last_id: str, timeout_s: float) -> None:
    """Wait until `count` runs named `prefix...` completed.

    Watches the last published run by `_id` (FerretDB answers that from its index; a
    filtered count scans every document and would slow down the system under test),
    then confirms with one count.
    """
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        if await system.runs.find_one({"_id": last_id, "status": "completed"}):
            done = await system.runs.count_documents({"_id": {"$regex": f"^{prefix}"}, "status": "completed"})
            if done >= count:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{system.name}: only {done}/{count} runs completed in {timeout_s:g}s")


async def measure(system: System, runs: int, latency_runs: int) -> dict[str, float]:
    await system.setup()
    system.start_consumer()
    # Warm-up: the consumer is up and bound once one run completes.
    await system.publish("warm:manual:0")
    await wait_done(system, "warm:", 1, "warm:manual:0", 120)

    burst = [f"burst:manual:{i:06d}" for i in range(runs)]
    started = await publish_all(system, burst)
    await wait_done(system, "burst:", runs, burst[-1], 1800)
    docs = await system.runs.find({"_id": {"$regex": "^burst:"}}, {"ended_at": 1}).to_list(None)
    elapsed = max(d["ended_at"].timestamp() for d in docs) - started
    throughput = runs / elapsed

    pace = 1 / max(1.0, throughput / 2)
    latencies: list[float] = []
    sent: dict[str, float] = {}
    for i in range(latency_runs):
        run_id = f"lat:manual:{i:06d}"
        sent[run_id] = time.time()
        await system.publish(run_id)
        await asyncio.sleep(pace)
    await wait_done(system, "lat:", latency_runs, f"lat:manual:{latency_runs - 1:06d}", 600)
    for doc in await system.runs.find({"_id": {"$regex": "^lat:"}}, {"ended_at": 1}).to_list(None):
        latencies.append((doc["ended_at"].timestamp() - sent[doc["_id"]]) * 1000)
    system.stop_consumer()
    latencies.sort()
    return {
        "throughput": throughput,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


async def drive(args: argparse.Namespace) -> None:
    from shared.localstack import start_local_servers
    from shared.settings import load_settings

    global NATS_URL, MONGO_URL
    servers = start_local_servers()  # fresh servers: the fixed names below cannot collide
    NATS_URL, MONGO_URL = servers.nats_url, servers.mongo_url
    try:
        env = {
            **os.environ,
            "BENCH_NATS_URL": servers.nats_url,
            "BENCH_MONGO_URL": servers.mongo_url,
            "BENCH_TOKEN": TOKEN,
            "BENCH_CONCURRENCY": str(args.concurrency),
            "PULSE_NATS_URL": servers.nats_url,
            "PULSE_MONGO_URL": servers.mongo_url,
            "PULSE_MONGO_DB": f"rt{TOKEN}",
            "PULSE_NAMESPACE": f"rt{TOKEN}",
            "PULSE_HTTP_PORT": "0",
            "PULSE_LOG_LEVEL": "INFO",
        }
        os.environ.update(env)
        settings = load_settings()
        taskiq_broker.servers = servers.nats_url
        results: dict[str, dict[str, float]] = {}
        for cls in (Baseline, Runtime, Taskiq):
            system = cls(env, settings)
            print(f"measuring {system.name} ...", file=sys.stderr, flush=True)
            try:
                results[system.name] = await measure(system, args.runs, args.latency_runs)
            finally:
                system.stop_consumer()
        base = results[Baseline.name]["throughput"]
        print(
            f"\n{args.runs} no-op runs, concurrency {args.concurrency}, one consumer process each; "
            f"latency over {args.latency_runs} runs paced at half the throughput\n"
        )
        print(f"{'system':<26}{'runs/s':>10}{'vs baseline':>13}{'p50 ms':>10}{'p99 ms':>10}")
        for name, r in results.items():
            print(
                f"{name:<26}{r['throughput']:>10.0f}{r['throughput'] / base:>12.0%} {r['p50']:>10.1f}{r['p99']:>10.1f}"
            )
        await taskiq_broker.shutdown()
    finally:
        servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--role", choices=["runtime", "baseline", "taskiq"])
    args = parser.parse_args()
    if args.role == "runtime":
        role_runtime()
    elif args.role == "baseline":
        asyncio.run(role_baseline())
    elif args.role == "taskiq":
        asyncio.run(role_taskiq())
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
