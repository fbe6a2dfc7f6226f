"""A worker process whose `stats` job logs, for the per-run log tests; configured by environment.

    CHATTY_WAIT   "1": after its first line, wait (with check points, at most 60 s) until a
                  document `{_id: <run_id>}` appears in `chatty_go`, then log the second line.

The job logs through `ctx.log` (with a structured field) and through a module logger, as a
library would: both lines must carry the run's fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from shared.runtime import JobContext, job, run_service
from shared.settings import JobPolicy, RetryPolicy

WAIT = os.environ.get("CHATTY_WAIT") == "1"
POLICY = JobPolicy(
    schedule="every 1h",
    retry=RetryPolicy(max_attempts=1),
    timeout_s=90,
    stale_after_s=7200,
    overlap="queue",
)
library_log = logging.getLogger("tests.chatty.library")


@job("stats", policy=POLICY)
async def chatty(ctx: JobContext) -> dict[str, Any]:
    ctx.log.info("step one done", extra={"pages": 1})
    library_log.warning("a library says hello")
    if WAIT:
        deadline = asyncio.get_running_loop().time() + 60
        while await ctx.db["chatty_go"].find_one({"_id": ctx.run_id}) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("nobody said go")
            await ctx.checkpoint({"step": "waiting"})
            await asyncio.sleep(0.1)
    ctx.log.info("step two done", extra={"pages": 2})
    return {"pages": 2}


if __name__ == "__main__":
    run_service("stats", [chatty])
