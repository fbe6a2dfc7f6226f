"""whale_sync service: consume `jobs.whale_sync` and store recent large trades."""

from __future__ import annotations

from typing import Any

from services.whale_sync.whales import sync_whales
from shared.providers import make_provider
from shared.runtime import JobContext, job, run_service


@job("whale_sync")
async def whale_sync(ctx: JobContext) -> dict[str, Any]:
    """Store trades above the whale threshold once each; the summary holds the counts."""
    provider = make_provider(ctx.settings, ctx.http, ctx)
    counts = await sync_whales(
        ctx.db,
        provider,
        threshold_usd=ctx.settings.whale_threshold_usd,
        overlap_s=ctx.settings.whale_overlap_s,
        checkpoint=ctx.checkpoint,
        write_batch=ctx.settings.store_write_batch,
    )
    return counts.as_summary()


if __name__ == "__main__":
    run_service("whale_sync", [whale_sync])
