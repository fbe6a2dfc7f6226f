"""whale_sync service: consume `jobs.whale_sync` and store recent large trades."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.whale_sync.whales import sync_whales
from shared.chains import keyed_request
from shared.providers import make_provider
from shared.requests import publish_request
from shared.runtime import JobContext, job, run_service


async def request_market_refreshes(ctx: JobContext, keys: list[tuple[str, datetime]]) -> int:
    """Request one market_refresh per (market, hour), keyed on both: a repeat starts no second run."""
    for market, hour in keys:
        key = f"market_refresh:{market}@{hour.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        request = keyed_request(
            "market_refresh", key, scheduled_for=hour, after_run_id=ctx.run_id, args={"market": market}
        )
        await publish_request(ctx.js, ctx.settings.names, request)
    return len(keys)


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
        request_refreshes=(
            (lambda keys: request_market_refreshes(ctx, keys)) if ctx.settings.whale_market_refresh else None
        ),
    )
    return counts.as_summary()


if __name__ == "__main__":
    run_service("whale_sync", [whale_sync])
