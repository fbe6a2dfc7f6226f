"""The janitor service: the `cleanup` and `watchdog` jobs (thin adapters over the domain code)."""

from __future__ import annotations

from typing import Any

from services.janitor.cleanup import Retention, clean_up
from services.janitor.watchdog import time_out_dead_runs
from shared.runtime import JobContext, finish_run, job, publish_run_event, run_service
from shared.schemas import RunRecord, utcnow


@job("cleanup")
async def cleanup_job(ctx: JobContext) -> dict[str, Any]:
    """Delete run records and whale trades past their retention, in batches."""
    counts = await clean_up(
        ctx.db,
        retention=Retention.from_settings(ctx.settings),
        now=utcnow(),
        batch_size=ctx.settings.cleanup_batch_size,
        checkpoint=ctx.checkpoint,
    )
    return {"deleted": counts}


@job("watchdog")
async def watchdog_job(ctx: JobContext) -> dict[str, Any]:
    """End `timed_out` the runs whose heartbeat stopped."""

    async def publish(record: RunRecord) -> None:
        await publish_run_event(ctx.js, ctx.settings.names, record)

    result = await time_out_dead_runs(
        ctx.db,
        now=utcnow(),
        heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
        redelivery_after_s=ctx.settings.ack_wait_s,
        finish=finish_run,
        publish=publish,
    )
    return result.summary()


def main() -> None:
    run_service("janitor", [cleanup_job, watchdog_job])


if __name__ == "__main__":
    main()
