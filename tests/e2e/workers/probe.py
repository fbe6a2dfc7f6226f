"""A worker process running one test job through `run_service`, configured by environment.

    PROBE_JOB        job name (default "probe")
    PROBE_SLEEP_S    how long each run works, with check points (default 0.2)
    PROBE_OVERLAP    the job's overlap policy (default "skip")

Each run records its start in `probe_starts` (one document per attempt: shows repeats)
and, at the end, upserts its result in `probe_results` keyed by run_id (idempotent: a
repeated run leaves one document).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shared.runtime import JobContext, job, run_service
from shared.settings import JobPolicy, RetryPolicy

SLEEP_S = float(os.environ.get("PROBE_SLEEP_S", "0.2"))
NAME = os.environ.get("PROBE_JOB", "probe")
POLICY = JobPolicy(
    schedule="every 1m",
    retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.2, jitter=0),
    timeout_s=60,
    stale_after_s=3600,
    overlap=os.environ.get("PROBE_OVERLAP", "skip"),
)


@job(NAME, policy=POLICY)
async def probe(ctx: JobContext) -> dict[str, Any]:
    await ctx.db["probe_starts"].insert_one({"run_id": ctx.run_id, "attempt": ctx.attempt, "pid": os.getpid()})
    deadline = asyncio.get_running_loop().time() + SLEEP_S
    while asyncio.get_running_loop().time() < deadline:
        await ctx.checkpoint()
        await asyncio.sleep(min(0.05, SLEEP_S))
    await ctx.db["probe_results"].update_one({"_id": ctx.run_id}, {"$set": {"pid": os.getpid()}}, upsert=True)
    return {"pid": os.getpid()}


if __name__ == "__main__":
    run_service("probe", [probe])
