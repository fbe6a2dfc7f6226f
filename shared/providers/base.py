"""What a market-data provider offers the jobs, independent of any one provider's API.

The jobs see a `Provider`: a streamed listing of markets, page by page, and the recent
large trades. Each record arrives already parsed into the stored document shape, or as
a `RecordError` naming what was wrong with that one record; a bad record never fails a
page, and a bad page (the whole body) raises `ProviderDataError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeAlias

from shared.schemas import MarketDoc, WhaleTradeDoc

#: Longest reason kept for one invalid record (they are counted and logged, not stored).
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class RecordError:
    """One upstream record that could not be turned into a valid document.

    Attributes:
        kind: "market" or "trade".
        record_id: the upstream id when one could be read, else None.
        reason: what was wrong, bounded and free of the record's content beyond field names.
    """

    kind: str
    record_id: str | None
    reason: str


MarketParse: TypeAlias = MarketDoc | RecordError
TradeParse: TypeAlias = WhaleTradeDoc | RecordError


class Limiter(Protocol):
    """Anything that can hand out a token of a named shared bucket (the runtime's `ctx.acquire`)."""

    def acquire(self, bucket: str) -> Awaitable[object]:
        """Wait until `bucket` has a token and take it (and spend one request of its quota, if any)."""
        ...

    def hold_off(self, bucket: str, seconds: float) -> Awaitable[object]:
        """The upstream answered 429 with Retry-After: hand out no token of `bucket` for `seconds`, to anyone."""
        ...


class NoLimit:
    """A `Limiter` that never waits: for tests, benchmarks and the simulator's own checks."""

    async def acquire(self, bucket: str) -> None:
        """Return at once."""

    async def hold_off(self, bucket: str, seconds: float) -> None:
        """Ignore the hold."""


class Provider(Protocol):
    """A market-data provider as the sync jobs use it."""

    @property
    def name(self) -> str:
        """Short provider name; the prefix of every stored `_id` (e.g. "polymarket")."""
        ...

    def iter_market_pages(self) -> AsyncIterator[list[MarketParse]]:
        """Yield the whole market catalogue, one page at a time, until the listing ends.

        Raises:
            ProviderUnavailable: transient trouble that outlasted the quick retries.
            ProviderRejected: the provider refused a request.
            ProviderDataError: a page could not be understood, or the cursor repeated.
        """
        ...

    async def fetch_market(
        self, *, condition_id: str | None = None, market_id: str | None = None
    ) -> MarketParse | None:
        """One market, by its condition id or by the provider's market id (exactly one of them).

        Returns None when the provider lists no such market; a `RecordError` when its
        record is invalid. Raises as `iter_market_pages` does.
        """
        ...

    async def fetch_market_trades(self, condition_id: str, *, limit: int) -> list[TradeParse]:
        """The most recent trades (at most `limit`) of the market with `condition_id`, newest first."""
        ...

    async def fetch_trades(self, *, since: datetime, min_notional: float) -> list[TradeParse]:
        """Return trades at or after `since` whose notional the provider says is at least `min_notional`.

        The provider's own filter is not trusted: callers re-check the threshold.
        """
        ...
