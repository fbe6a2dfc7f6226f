"""The janitor service: the `cleanup` and `watchdog` jobs (thin adapters over the domain code and the runtime),
and the delivery of alerts to the sinks in settings (`shared/alerting.py`)."""

from __future__ import annotations

from typing import Any

from services.janitor.cleanup import Retention, clean_up
from shared.alerting import AlertDelivery
from shared.runtime import (
    JobContext,
    check_freshness,
    dead_letter_unserved_requests,
    job,
    run_service,
    time_out_silent_runs,
)
from shared.schemas import utcnow


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
    """End `timed_out` the runs whose heartbeat stopped, dead-letter requests no job serves, check freshness targets."""
    timed_out = await time_out_silent_runs(ctx)
    unserved = await dead_letter_unserved_requests(ctx)
    freshness = await check_freshness(ctx.db, ctx.js, ctx.settings.names, ctx.settings.jobs.items())
    return {**timed_out.summary(), "unserved": unserved, "freshness": freshness}


def main() -> None:
    run_service("janitor", [cleanup_job, watchdog_job], companions=[AlertDelivery.from_settings])


if __name__ == "__main__":
    main()
