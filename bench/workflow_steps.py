"""Cost of a recorded workflow step against a whole run: a 10-step no-op workflow vs 10 one-step runs.

    .venv/bin/python bench/workflow_steps.py [--workflows 50]

Starts its own nats-server and embedded store (shared.localstack) and one in-process
`Worker` serving two jobs of the same no-op work:
- `one_step`: a run with one `ctx.step.run` of a no-op (the baseline: a whole run per step);
- `ten_steps`: a workflow with ten `ctx.step.run` no-ops.

It runs `--workflows` workflows and ten times as many one-step runs, one at a time
(each job's default overlap), in the same process against the same servers, and prints
per-step throughput and latency as ratios: the workflow's steps/s against the baseline's
runs/s, and the per-step time of a workflow (its run time / 10) against a one-step run's
time (publish to terminal record), p50 and p99. Target (issue 14): a recorded step costs
no more than a run. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.bus import connect_nats  # noqa: E402
from shared.localstack import start_local_servers  # noqa: E402
from shared.names import Collections  # noqa: E402
from shared.requests import publish_request  # noqa: E402
from shared.runtime import JobContext, Worker, job  # noqa: E402
from shared.schemas import JobRequest, Trigger, utcnow  # noqa: E402
from shared.settings import JobPolicy, RetryPolicy, load_settings  # noqa: E402
from shared.store import connect_store  # noqa: E402

STEPS = 10
POLICY = JobPolicy(schedule="every 1m", retry=RetryPolicy(max_attempts=3), timeout_s=60, stale_after_s=3600)


async def _noop(index: int) -> int:
    return index


@job("one_step", policy=POLICY)
async def one_step(ctx: JobContext) -> None:
    await ctx.step.run("only", _noop, 0)


@job("ten_steps", policy=POLICY)
async def ten_steps(ctx: JobContext) -> None:
    for index in range(STEPS):
        await ctx.step.run(f"step-{index}", _noop, index)


async def _measure(
    worker: Worker, js: Any, db: Any, job_name: str, count: int, label: str
) -> tuple[float, list[float]]:
    """Publish `count` requests of `job_name` at once; (wall seconds, per-run started→ended ms)."""
    started = time.time()
    for index in range(count):
        request = JobRequest(
            run_id=f"{job_name}:manual:{label}{index:06d}", job=job_name, trigger=Trigger.MANUAL, scheduled_for=utcnow()
        )
        await publish_request(js, worker.settings.names, request)
    await worker.run_until_idle(timeout_s=1800)
    query = {"_id": {"$regex": f"^{job_name}:manual:{label}"}}
    docs = await db[Collections.RUNS].find(query, {"started_at": 1, "ended_at": 1}).to_list(None)
    if len(docs) != count or any(d.get("ended_at") is None for d in docs):
        raise RuntimeError(f"{job_name}: {len(docs)} runs recorded, expected {count} completed")
    elapsed = max(d["ended_at"].timestamp() for d in docs) - started
    # Time in the worker per run: one run follows the other (overlap queue), so publish→end
    # would count the queue; started→ended is what a run (or a workflow of ten steps) costs.
    durations = [(d["ended_at"] - d["started_at"]).total_seconds() * 1000 for d in docs]
    return elapsed, durations


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def drive(workflows: int) -> None:
    servers = start_local_servers()
    try:
        settings = load_settings(
            nats_url=servers.nats_url,
            mongo_url=servers.mongo_url,
            mongo_db="benchsteps",
            namespace="benchsteps",
            http_port=0,
            log_level="WARNING",
        )
        worker = Worker(settings, [one_step, ten_steps])
        await worker.start()
        client = await connect_nats(settings, name="bench")
        mongo, db = await connect_store(settings)
        try:
            js = client.jetstream()
            await _measure(worker, js, db, "one_step", 5, "warm")  # connections, indexes, consumers
            runs_s, run_ms = await _measure(worker, js, db, "one_step", workflows * STEPS, "b")
            flows_s, flow_ms = await _measure(worker, js, db, "ten_steps", workflows, "b")
        finally:
            await client.close()
            await mongo.close()
            await worker.stop(timeout_s=10)
    finally:
        servers.stop()
    runs_per_s = workflows * STEPS / runs_s
    steps_per_s = workflows * STEPS / flows_s
    step_ms = [ms / STEPS for ms in flow_ms]
    print(f"\n{workflows * STEPS} one-step runs vs {workflows} workflows of {STEPS} steps (no-op work, one worker)\n")
    print(f"{'':<28}{'per s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'one-step run (baseline)':<28}{runs_per_s:>10.1f}{statistics.median(run_ms):>10.1f}"
        f"{_percentile(run_ms, 0.99):>10.1f}"
    )
    print(
        f"{'workflow step':<28}{steps_per_s:>10.1f}{statistics.median(step_ms):>10.1f}"
        f"{_percentile(step_ms, 0.99):>10.1f}"
    )
    print(
        f"{'step / run':<28}{steps_per_s / runs_per_s:>10.0%}"
        f"{statistics.median(step_ms) / statistics.median(run_ms):>10.0%}"
        f"{_percentile(step_ms, 0.99) / _percentile(run_ms, 0.99):>10.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=50, help="workflows measured (x10 one-step runs)")
    args = parser.parse_args()
    asyncio.run(drive(args.workflows))


if __name__ == "__main__":
    main()
