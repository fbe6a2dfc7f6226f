"""The stats service: the hourly `stats` job (a thin adapter over `stats.take_snapshot`)."""

from __future__ import annotations

from typing import Any

from services.stats.stats import take_snapshot
from shared.runtime import JobContext, job, run_service
from shared.schemas import utcnow


@job("stats")
async def stats_job(ctx: JobContext) -> dict[str, Any]:
    """Store this slot's market stats snapshot and drop snapshots past retention."""
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
