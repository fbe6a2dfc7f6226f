"""market_refresh's domain work: one market's quote and recent trades, merged, then checked again.

The workflow (`services/market_sync/__main__.py`) calls each function here as a durable
step; each is safe to repeat (a step runs again if its worker dies before the result is
recorded): reads are reads, and the writes set fields keyed by the run id.

Prices come from the market's Gamma record (Gamma serves a market's quote with it), asked
for by the market's Gamma id; the recent trades from the Data API, filtered to the market.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.errors import PermanentError, ProviderDataError
from shared.names import Collections
from shared.providers.base import Provider, RecordError
from shared.schemas import MarketDoc, WhaleTradeDoc, utcnow
from shared.store import Database

#: Trades read per refresh (one page of the market's newest trades).
RECENT_TRADES = 100


class RefreshedMarket(BaseModel):
    """The market a refresh is about: our `_id`, the provider's id, its condition id and title."""

    model_config = ConfigDict(frozen=True)

    id: str
    market_id: str
    condition_id: str
    question: str


class Quote(BaseModel):
    """A market's prices at one moment."""

    model_config = ConfigDict(frozen=True)

    outcome_prices: list[float]
    yes_price: float | None
    no_price: float | None
    upstream_updated_at: datetime | None


class TradesSummary(BaseModel):
    """The market's recent trades, summed up (the trades themselves stay with the provider)."""

    model_config = ConfigDict(frozen=True)

    trades: int
    invalid: int
    notional: float
    newest_at: datetime | None


def _valid_market(found: MarketDoc | RecordError | None, wanted: str) -> MarketDoc:
    if found is None:
        raise PermanentError(f"the provider lists no market {wanted}: nothing to refresh")
    if isinstance(found, RecordError):
        raise ProviderDataError(f"the provider's record of market {wanted} is invalid: {found.reason}")
    return found


async def fetch_market(provider: Provider, condition_id: str) -> RefreshedMarket:
    """The market with `condition_id` (PermanentError when the provider has none)."""
    market = _valid_market(await provider.fetch_market(condition_id=condition_id), condition_id)
    return RefreshedMarket(
        id=market.id, market_id=market.market_id, condition_id=condition_id, question=market.question
    )


async def fetch_quote(provider: Provider, market_id: str) -> Quote:
    """The market's current prices, by its provider id."""
    market = _valid_market(await provider.fetch_market(market_id=market_id), market_id)
    return Quote(
        outcome_prices=market.outcome_prices,
        yes_price=market.yes_price,
        no_price=market.no_price,
        upstream_updated_at=market.updated_at,
    )


def summarize_trades(parsed: list[WhaleTradeDoc | RecordError]) -> TradesSummary:
    """Count and sum the valid trades (pure)."""
    valid = [trade for trade in parsed if isinstance(trade, WhaleTradeDoc)]
    return TradesSummary(
        trades=len(valid),
        invalid=len(parsed) - len(valid),
        notional=round(sum(trade.notional for trade in valid), 2),
        newest_at=max((trade.traded_at for trade in valid), default=None),
    )


async def fetch_recent_trades(provider: Provider, condition_id: str) -> TradesSummary:
    """The summary of the market's newest `RECENT_TRADES` trades."""
    return summarize_trades(await provider.fetch_market_trades(condition_id, limit=RECENT_TRADES))


async def _apply_quote(db: Database, market: RefreshedMarket, quote: Quote, now: datetime) -> None:
    # Only a market market_sync has stored: a refresh adds fresher prices, never a half document.
    await db[Collections.MARKETS].update_one(
        {"_id": market.id},
        {
            "$set": {
                "outcome_prices": quote.outcome_prices,
                "yes_price": quote.yes_price,
                "no_price": quote.no_price,
                "refreshed_at": now,
            }
        },
    )


async def write_refresh(
    db: Database, run_id: str, market: RefreshedMarket, quote: Quote, trades: TradesSummary
) -> dict[str, Any]:
    """Store the merged result under the run id, and the quote on the market; return a small summary."""
    now = utcnow()
    document = {
        "market": market.condition_id,
        "market_id": market.id,
        "question": market.question,
        "quote": quote.model_dump(),
        "recent_trades": trades.model_dump(),
        "written_at": now,
    }
    await db[Collections.MARKET_REFRESHES].update_one({"_id": run_id}, {"$set": document}, upsert=True)
    await _apply_quote(db, market, quote, now)
    return {"yes_price": quote.yes_price, "recent_trades": trades.trades}


def yes_change(before: Quote, after: Quote) -> float | None:
    """How far the yes price moved (None when either quote has none)."""
    if before.yes_price is None or after.yes_price is None:
        return None
    return round(after.yes_price - before.yes_price, 6)


async def record_change(
    db: Database, run_id: str, market: RefreshedMarket, before: Quote, after: Quote
) -> dict[str, Any]:
    """Store the later quote and the change on the run's refresh document, and the quote on the market."""
    now = utcnow()
    change = yes_change(before, after)
    await db[Collections.MARKET_REFRESHES].update_one(
        {"_id": run_id}, {"$set": {"quote_after": after.model_dump(), "yes_change": change, "checked_at": now}}
    )
    await _apply_quote(db, market, after, now)
    return {"yes_price_after": after.yes_price, "yes_change": change}
