"""market_sync service: consume `jobs.market_sync` and sync the market catalogue."""

from __future__ import annotations

from typing import Any

from services.market_sync.sync import sync_markets
from shared.providers import make_provider
from shared.runtime import JobContext, job, run_service


@job("market_sync")
async def market_sync(ctx: JobContext) -> dict[str, Any]:
    """Stream the provider's catalogue into `markets`; the summary holds the counts."""
    provider = make_provider(ctx.settings, ctx.http, ctx)
    counts = await sync_markets(ctx.db, provider, checkpoint=ctx.checkpoint, chunk_size=ctx.settings.store_write_batch)
    return counts.as_summary()


if __name__ == "__main__":
    run_service("market_sync", [market_sync])
