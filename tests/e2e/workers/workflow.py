"""A worker process running two workflow jobs through `run_service`.

`wf_probe` has three steps:
Each step counts its executions in `workflow_effects` (one document per execution).
Between step 2 and step 3 the run waits, with check points, until the document
`workflow_go/<run_id>` exists: a test kills the process there, then lets the run go on.

`wf_sleeper` does a step, sleeps durably for WF_SLEEP_S seconds (default 6), and does
another step, each recording its time in `workflow_effects`.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

from shared.runtime import JobContext, job, run_service
from shared.schemas import utcnow
from shared.store import Database
from tests.integration.test_runtime_support import policy

POLICY = policy(timeout_s=60)


async def _effect(db: Database, run_id: str, step: str, value: int) -> int:
    await db["workflow_effects"].insert_one({"run_id": run_id, "step": step, "pid": os.getpid()})
    return value


@job("wf_probe", policy=POLICY)
async def wf_probe(ctx: JobContext) -> dict[str, Any]:
    one = await ctx.step.run("one", _effect, ctx.db, ctx.run_id, "one", 1)
    two = await ctx.step.run("two", _effect, ctx.db, ctx.run_id, "two", one + 1)
    while await ctx.db["workflow_go"].find_one({"_id": ctx.run_id}) is None:
        await ctx.checkpoint()
        await asyncio.sleep(0.05)
    three = await ctx.step.run("three", _effect, ctx.db, ctx.run_id, "three", two + 1)
    return {"result": three, "pid": os.getpid()}


async def _timed_effect(db: Database, run_id: str, step: str) -> None:
    await db["workflow_effects"].insert_one({"run_id": run_id, "step": step, "pid": os.getpid(), "at": utcnow()})


@job("wf_sleeper", policy=POLICY)
async def wf_sleeper(ctx: JobContext) -> dict[str, Any]:
    await ctx.step.run("before", _timed_effect, ctx.db, ctx.run_id, "before")
    await ctx.step.sleep("nap", timedelta(seconds=float(os.environ.get("WF_SLEEP_S", "6"))))
    await ctx.step.run("after", _timed_effect, ctx.db, ctx.run_id, "after")
    return {"pid": os.getpid()}


if __name__ == "__main__":
    run_service("wf_probe", [wf_probe, wf_sleeper])
