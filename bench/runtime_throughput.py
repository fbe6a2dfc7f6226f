"""Throughput and latency of no-op runs: our runtime vs a plain nats-py loop vs taskiq-nats.

    uv run --frozen python bench/runtime_throughput.py [--runs 5000] [--preload 50000] [--store both]

For each store (`--store embedded|ferretdb|both`, default both: the embedded store, then
FerretDB 1.24, each in its own child process) it starts a fresh nats-server and store
(shared.localstack), then for each system:
1. burst: publishes `--runs` requests at once and measures throughput (runs per second,
   first publish to last terminal record);
2. latency: publishes `--latency-runs` requests paced at half the measured throughput and
   reports p50/p99 of publish → terminal record.
Then it stores `--preload` more completed runs in each system's `runs` collection and
measures both again: the cost of a collection that has grown.

FerretDB gets `--ferretdb-runs` (default 1,000) and `--ferretdb-preload` (default 0): an
update by `_id` there costs ≈ 415 ms at 50,000 documents (issue 11), so 5,000 runs over
50,000 stored would take hours. Every burst has a time budget (`--budget-s`); a system
past it is reported with the runs it completed, never waited for.

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
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nats.js.api import ConsumerConfig, StreamConfig  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from taskiq_nats import PullBasedJetStreamBroker  # noqa: E402

from bench.stores import MACHINE_NOTE, store_kinds  # noqa: E402
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
        self.ready = False

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


async def wait_done(system: System, prefix: str, count: int, last_id: str, timeout_s: float) -> int:
    """Wait until `count` runs named `prefix...` completed; return how many did within `timeout_s`.

    Watches the last published run by `_id` (FerretDB answers that from its index; a
    filtered count scans every document and would slow down the system under test),
    then confirms with one count.
    """
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        if await system.runs.find_one({"_id": last_id, "status": "completed"}):
            done = await completed(system, prefix)
            if done >= count:
                return done
        await asyncio.sleep(0.5)
    return await completed(system, prefix)


async def completed(system: System, prefix: str) -> int:
    count: int = await system.runs.count_documents({"_id": {"$regex": f"^{prefix}"}, "status": "completed"})
    return count


async def preload(system: System, runs: int, chunk: int = 5000) -> None:
    """Store `runs` completed no-op runs, as weeks of history would leave them."""
    now = datetime.now(UTC)
    for first in range(0, runs, chunk):
        await system.runs.insert_many(
            [
                {
                    "_id": f"pre:manual:{i:07d}",
                    "job": "noop",
                    "trigger": "manual",
                    "status": "completed",
                    "attempt_count": 1,
                    "started_at": now,
                    "ended_at": now,
                    "updated_at": now,
                    "worker": "bench",
                    "attempts": [{"number": 1, "started_at": now, "ended_at": now, "outcome": "succeeded"}],
                }
                for i in range(first, min(runs, first + chunk))
            ]
        )


async def measure(system: System, runs: int, latency_runs: int, tag: str, budget_s: float) -> dict[str, float]:
    """Burst throughput and paced latency of `system`; run ids are prefixed with `tag`."""
    if not system.ready:
        await system.setup()
        system.ready = True
    system.start_consumer()
    # Warm-up: the consumer is up and bound once one run completes.
    await system.publish(f"warm{tag}:manual:0")
    await wait_done(system, f"warm{tag}:", 1, f"warm{tag}:manual:0", 120)

    burst = [f"burst{tag}:manual:{i:06d}" for i in range(runs)]
    started = await publish_all(system, burst)
    done = await wait_done(system, f"burst{tag}:", runs, burst[-1], budget_s)
    query = {"_id": {"$regex": f"^burst{tag}:"}, "status": "completed"}
    docs = await system.runs.find(query, {"ended_at": 1}).to_list(None)
    elapsed = max(d["ended_at"].timestamp() for d in docs) - started if docs else float("inf")
    throughput = len(docs) / elapsed
    if done < runs:  # past the budget: no latency phase, the backlog would distort it
        system.stop_consumer()
        return {"throughput": throughput, "p50": float("nan"), "p99": float("nan"), "done": done}

    pace = 1 / max(1.0, throughput / 2)
    latencies: list[float] = []
    sent: dict[str, float] = {}
    for i in range(latency_runs):
        run_id = f"lat{tag}:manual:{i:06d}"
        sent[run_id] = time.time()
        await system.publish(run_id)
        await asyncio.sleep(pace)
    await wait_done(system, f"lat{tag}:", latency_runs, f"lat{tag}:manual:{latency_runs - 1:06d}", 600)
    for doc in await system.runs.find({"_id": {"$regex": f"^lat{tag}:"}}, {"ended_at": 1}).to_list(None):
        latencies.append((doc["ended_at"].timestamp() - sent[doc["_id"]]) * 1000)
    system.stop_consumer()
    latencies.sort()
    return {
        "throughput": throughput,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "done": done,
    }


SYSTEMS = {"baseline": Baseline, "runtime": Runtime, "taskiq": Taskiq}


def table(store: str, scenario: str, runs: int, results: dict[str, dict[str, float]]) -> list[str]:
    """Rows of one scenario, ratios against this scenario's baseline."""
    base = results.get(Baseline.name, {}).get("throughput", float("nan"))
    rows = []
    for name, r in results.items():
        note = "" if r["done"] >= runs else f"  (budget: {r['done']:.0f} of {runs} done)"
        rows.append(
            f"{store:<10}{scenario:<16}{runs:>7}  {name:<26}{r['throughput']:>8.0f}{r['throughput'] / base:>11.0%}"
            f"{r['p50']:>9.1f}{r['p99']:>9.1f}{note}"
        )
    return rows


async def drive(args: argparse.Namespace, store: str) -> list[str]:
    """Measure every system on one store, before and after the preload; return the table rows."""
    from shared.localstack import start_local_servers
    from shared.settings import load_settings

    global NATS_URL, MONGO_URL
    ferret = store == "ferretdb"
    runs = args.ferretdb_runs if ferret else args.runs
    stored = args.ferretdb_preload if ferret else args.preload
    # Fresh servers: the fixed names below cannot collide.
    servers = start_local_servers(Path(tempfile.mkdtemp(prefix=f"bench-rt-{store}-")), store=store)  # type: ignore[arg-type]
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
        systems = [SYSTEMS[name](env, settings) for name in args.systems.split(",")]
        rows: list[str] = []
        scenarios = [("empty", 0)] + ([(f"+{stored:,} stored", stored)] if stored else [])
        for tag, (scenario, count) in enumerate(scenarios):
            results: dict[str, dict[str, float]] = {}
            for system in systems:
                if count:
                    await preload(system, count)
                print(f"{store}: measuring {system.name} ({scenario}) ...", file=sys.stderr, flush=True)
                try:
                    results[system.name] = await measure(system, runs, args.latency_runs, str(tag), args.budget_s)
                finally:
                    system.stop_consumer()
            rows += table(store, scenario, runs, results)
        if any(isinstance(system, Taskiq) for system in systems):
            await taskiq_broker.shutdown()
        return rows
    finally:
        servers.stop()


def print_table(args: argparse.Namespace, rows: list[str]) -> None:
    print(
        f"\nno-op runs, concurrency {args.concurrency}, one consumer process each; latency over "
        f"{args.latency_runs} runs paced at half the throughput; {MACHINE_NOTE}\n"
    )
    header = f"{'store':<10}{'scenario':<16}{'runs':>7}  {'system':<26}{'runs/s':>8}{'vs base':>11}"
    print(f"{header}{'p50 ms':>9}{'p99 ms':>9}")
    print("\n".join(rows))


def drive_stores(args: argparse.Namespace) -> None:
    """Each store in its own child process (the taskiq broker is bound at import time)."""
    kinds = store_kinds(args.store)
    if len(kinds) == 1:
        rows = asyncio.run(drive(args, kinds[0]))
        if args.rows_out:
            Path(args.rows_out).write_text(json.dumps(rows))
        print_table(args, rows)
        return
    rows = []
    for kind in kinds:
        out = Path(tempfile.mkstemp(prefix="bench-rt-rows-")[1])
        child = [sys.executable, __file__, *sys.argv[1:], "--store", kind, "--rows-out", str(out)]
        subprocess.run(child, check=True, stdout=subprocess.DEVNULL)
        rows += json.loads(out.read_text())
        out.unlink()
    print_table(args, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--preload", type=int, default=50_000, help="runs stored before the second pass (0: none)")
    parser.add_argument("--systems", default="baseline,runtime,taskiq", help="comma-separated, baseline first")
    parser.add_argument("--budget-s", type=float, default=900, help="budget of each burst")
    parser.add_argument("--store", choices=["embedded", "ferretdb", "both"], default="both")
    parser.add_argument("--ferretdb-runs", type=int, default=1000)
    parser.add_argument("--ferretdb-preload", type=int, default=0)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["runtime", "baseline", "taskiq"])
    args = parser.parse_args()
    if not args.role and not args.systems.startswith("baseline"):
        parser.error("--systems must start with baseline: the ratios are against it")
    if args.role == "runtime":
        role_runtime()
    elif args.role == "baseline":
        asyncio.run(role_baseline())
    elif args.role == "taskiq":
        asyncio.run(role_taskiq())
    else:
        drive_stores(args)


if __name__ == "__main__":
    main()
