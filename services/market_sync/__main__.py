"""market_sync service: consume `jobs.market_sync` (sync the market catalogue) and `jobs.market_refresh`."""

from __future__ import annotations

from functools import partial
from typing import Any

from services.market_sync.refresh import (
    Quote,
    RefreshedMarket,
    TradesSummary,
    fetch_market,
    fetch_quote,
    fetch_recent_trades,
    record_change,
    write_refresh,
)
from services.market_sync.sync import sync_markets
from shared.jobargs import MarketRefreshArgs
from shared.providers import make_provider
from shared.runtime import JobContext, job, run_service


@job("market_sync")
async def market_sync(ctx: JobContext) -> dict[str, Any]:
    """Stream the provider's catalogue into `markets`; the summary holds the counts."""
    provider = make_provider(ctx.settings, ctx.http, ctx)
    counts = await sync_markets(ctx.db, provider, checkpoint=ctx.checkpoint, chunk_size=ctx.settings.store_write_batch)
    return counts.as_summary()


@job("market_refresh", args=MarketRefreshArgs)
async def market_refresh(ctx: JobContext) -> dict[str, Any]:
    """Refresh one market (a workflow): fetch it, then its prices and recent trades at once,
    write the merged result, sleep, check its prices again and record the change."""
    args = ctx.args
    assert isinstance(args, MarketRefreshArgs)
    provider = make_provider(ctx.settings, ctx.http, ctx)
    step = ctx.step
    market = await step.run("market", partial(fetch_market, provider), args.market, returns=RefreshedMarket)
    quote, trades = await step.all(
        step.run("prices", partial(fetch_quote, provider), market.market_id, returns=Quote),
        step.run("trades", partial(fetch_recent_trades, provider), market.condition_id, returns=TradesSummary),
    )
    assert isinstance(quote, Quote)
    assert isinstance(trades, TradesSummary)
    written = await step.run("write", partial(write_refresh, ctx.db, ctx.run_id), market, quote, trades)
    await step.sleep("settle", ctx.settings.market_refresh_recheck_s)
    later = await step.run("check", partial(fetch_quote, provider), market.market_id, returns=Quote)
    change = await step.run("record", partial(record_change, ctx.db, ctx.run_id), market, quote, later)
    return {"market": market.id, **written, **change}


if __name__ == "__main__":
    run_service("market_sync", [market_sync, market_refresh])
