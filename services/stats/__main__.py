"""The stats service: the hourly `stats` job (a thin adapter over `stats.take_snapshot`).

At start-up stats would otherwise count an empty `markets` collection: while no
market_sync run has ever completed, a stats attempt waits for the first one (with check
points, at most three quarters of its time limit), and retries later if it is still
missing (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.stats.stats import take_snapshot
from shared.errors import RetryableError
from shared.names import Collections
from shared.runtime import JobContext, job, run_service
from shared.schemas import RunStatus, utcnow

#: How often a waiting stats attempt looks for the first completed market sync.
_FIRST_SYNC_POLL_S = 1.0
#: When the first market sync is still missing, try again after this long.
_FIRST_SYNC_RETRY_S = 60.0


async def wait_for_first_market_sync(ctx: JobContext) -> None:
    """Return once any market_sync run has completed; raise RetryableError if none does in time."""
    limit = 0.75 * (ctx.policy.timeout_s or 60.0)
    deadline = time.monotonic() + limit
    runs = ctx.db[Collections.RUNS]
    while await runs.find_one({"job": "market_sync", "status": RunStatus.COMPLETED.value}, {"_id": 1}) is None:
        if time.monotonic() >= deadline:
            raise RetryableError(
                f"stats waits for the first market sync: no market_sync run has completed yet "
                f"(waited {limit:g}s); it tries again in {_FIRST_SYNC_RETRY_S:g}s",
                delay_s=_FIRST_SYNC_RETRY_S,
            )
        await ctx.checkpoint({"waiting_for": "the first market_sync"})
        await asyncio.sleep(_FIRST_SYNC_POLL_S)


@job("stats")
async def stats_job(ctx: JobContext) -> dict[str, Any]:
    """Store this slot's market stats snapshot and drop snapshots past retention."""
    await wait_for_first_market_sync(ctx)
    return await take_snapshot(
        ctx.db,
        slot=ctx.request.scheduled_for,
        now=utcnow(),
        retention_days=ctx.settings.stats_retention_days,
        run_id=ctx.run_id,
        checkpoint=ctx.checkpoint,
    )


def main() -> None:
    run_service("stats", [stats_job])


if __name__ == "__main__":
    main()
