"""A worker process running a three-step workflow job ("wf_probe") through `run_service`.

Each step counts its executions in `workflow_effects` (one document per execution).
Between step 2 and step 3 the run waits, with check points, until the document
`workflow_go/<run_id>` exists: a test kills the process there, then lets the run go on.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shared.runtime import JobContext, job, run_service
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


if __name__ == "__main__":
    run_service("wf_probe", [wf_probe])
