"""Polymarket: Gamma's keyset market listing and the Data API's trades.

Parsers turn one upstream record into our stored shape or a `RecordError`; they never
raise. Upstream quirks handled here (see the handbook's provider-apis.md):

- `outcomes`, `outcomePrices` and `clobTokenIds` arrive as JSON-encoded strings;
- numbers arrive as numbers or numeric strings, and new markets omit volume/liquidity;
- the listing pages with `after_cursor` (`cursor=` is silently ignored upstream and would
  loop on page 1 forever), so a repeating cursor is detected and refused;
- trades have no id: the natural key hashes the transaction hash with the fill's fields;
- the trades endpoint's CASH filter is not trusted: callers re-check the threshold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from shared.errors import ConfigError, ProviderDataError
from shared.providers.base import MAX_REASON_CHARS, Limiter, MarketParse, Provider, RecordError, TradeParse
from shared.providers.http import auth_headers, get_json
from shared.providers.sanitize import clean_text
from shared.schemas import MarketDoc, WhaleTradeDoc, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "polymarket"
GAMMA_BUCKET = "polymarket_gamma"
DATA_BUCKET = "polymarket_data"
#: Hard stop for one listing: 20,000 pages of 100 is ten times today's catalogue.
MAX_MARKET_PAGES = 20_000
#: Cursors remembered to detect a listing that cycles (a repeat of any of them stops it).
CURSOR_MEMORY = 16
TRADES_PAGE = 500
#: The Data API documents offsets up to 10,000 and repeats data beyond; never page past it.
MAX_TRADES_OFFSET = 10_000
#: Longest text kept in a field; longer is garbage, not a question.
MAX_TEXT = 2000
#: Longest JSON-encoded list decoded (bounds json.loads on hostile input).
MAX_ENCODED = 20_000
#: Trade timestamps outside [2000-01-01, 2100-01-01) are corrupt, not old or future.
_MIN_TS, _MAX_TS = 946_684_800, 4_102_444_800


# -- field coercions (pydantic BeforeValidators) -----------------------------------------


def _text(value: Any) -> Any:
    if isinstance(value, str):
        cleaned = clean_text(value)
        if len(cleaned) > MAX_TEXT:
            raise ValueError(f"longer than {MAX_TEXT} characters")
        return cleaned
    return value


def _optional_text(value: Any) -> Any:
    value = _text(value)
    return value or None if isinstance(value, str) else value


def _identifier(value: Any) -> Any:
    """Ids may arrive as numbers; keep them as text. Booleans are not ids."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        cleaned = clean_text(value)
        if not cleaned or len(cleaned) > 200:
            raise ValueError("must be 1 to 200 characters")
        return cleaned
    return value


def _number(value: Any) -> Any:
    """A finite number from a number or numeric string; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number") from None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError("number too large") from None
        if not math.isfinite(number):
            raise ValueError("must be finite (NaN and Infinity are not accepted)")
        return number
    raise ValueError("must be a number or a numeric string")


def _encoded_list(value: Any) -> Any:
    """Decode a JSON-encoded list (Gamma's outcomes/outcomePrices); accept a real list too."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if len(value) > MAX_ENCODED:
            raise ValueError("encoded list is too long")
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError("not a JSON-encoded list") from None
    if not isinstance(value, list):
        raise ValueError("must be a list (or a JSON-encoded list)")
    return value


def _price_list(value: Any) -> Any:
    items = _encoded_list(value)
    prices = [_number(item) for item in items]
    for price in prices:
        if price is None or not 0.0 <= price <= 1.0:
            raise ValueError("each price must be a number from 0 to 1")
    return prices


def _label_list(value: Any) -> Any:
    items = _encoded_list(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError("each outcome must be a string")
    labels = [_text(item) for item in items]
    if len(labels) > 100:
        raise ValueError("more than 100 outcomes")
    return labels


def _unix_seconds(value: Any) -> Any:
    """Unix seconds as an int, from an int, an integral float or a digit string."""
    number = _number(value)
    if number is None or not float(number).is_integer():
        raise ValueError("must be whole unix seconds")
    return int(number)


Text = Annotated[str, BeforeValidator(_text), Field(min_length=1)]
OptText = Annotated[str | None, BeforeValidator(_optional_text)]
Identifier = Annotated[str, BeforeValidator(_identifier)]
Metric = Annotated[float | None, BeforeValidator(_number), Field(ge=0)]
Labels = Annotated[list[str], BeforeValidator(_label_list)]
Prices = Annotated[list[float], BeforeValidator(_price_list)]
Amount = Annotated[float, BeforeValidator(_number)]


class _Named(BaseModel):
    model_config = ConfigDict(extra="ignore")

    label: OptText = None
    title: OptText = None


class GammaMarket(BaseModel):
    """One record of Gamma's `/markets/keyset` as we accept it (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Identifier
    question: Text
    slug: OptText = None
    category: OptText = None
    condition_id: OptText = Field(None, alias="conditionId")
    outcomes: Labels = Field(default_factory=list)
    outcome_prices: Prices = Field(default_factory=list, alias="outcomePrices")
    volume_num: Metric = Field(None, alias="volumeNum")
    volume: Metric = None
    volume_24h: Metric = Field(None, alias="volume24hr")
    liquidity_num: Metric = Field(None, alias="liquidityNum")
    liquidity: Metric = None
    active: StrictBool | None = None
    closed: StrictBool | None = None
    end_date: datetime | None = Field(None, alias="endDate")
    updated_at: datetime | None = Field(None, alias="updatedAt")
    tags: list[_Named] | None = None
    events: list[_Named] | None = None


class DataTrade(BaseModel):
    """One record of the Data API's `/trades` as we accept it (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    proxy_wallet: Identifier = Field(alias="proxyWallet")
    side: Literal["BUY", "SELL"]
    asset: Identifier
    condition_id: Identifier = Field(alias="conditionId")
    size: Amount = Field(gt=0)
    price: Amount = Field(ge=0, le=1)
    timestamp: Annotated[int, BeforeValidator(_unix_seconds), Field(ge=_MIN_TS, lt=_MAX_TS)]
    outcome: OptText = None
    transaction_hash: Identifier = Field(alias="transactionHash")


# -- parsers ----------------------------------------------------------------------------


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # Gamma's times carry a zone; a naive one is taken as UTC rather than local time.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _reason(exc: ValidationError) -> str:
    """Field names and messages only: record content (possibly huge or hostile) is left out."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "record"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    text = "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
    return text[:MAX_REASON_CHARS]


def _raw_id(raw: Any, key: str) -> str | None:
    value = raw.get(key) if isinstance(raw, dict) else None
    return clean_text(value)[:100] if isinstance(value, str) else None


def _pick(labels: list[str], prices: list[float], name: str, fallback: int) -> float | None:
    for index, label in enumerate(labels):
        if label.casefold() == name:
            return prices[index]
    # Two-outcome markets without Yes/No labels (team names) still read as yes/no by position.
    return prices[fallback] if len(prices) == 2 else None


def _category(market: GammaMarket) -> str | None:
    if market.category:
        return market.category
    for group in (market.tags, market.events):
        for item in group or ():
            if item.label or item.title:
                return item.label or item.title
    return None


def market_from_gamma(market: GammaMarket) -> MarketDoc:
    """Map a validated Gamma record to the stored `MarketDoc` (without `synced_at`).

    Raises:
        ValueError: outcomes and prices do not line up.
    """
    if market.outcome_prices and len(market.outcome_prices) != len(market.outcomes):
        raise ValueError("outcomePrices and outcomes have different lengths")
    closed = bool(market.closed)
    return MarketDoc(
        id=f"{PROVIDER}:{market.id}",
        provider=PROVIDER,
        market_id=market.id,
        question=market.question,
        slug=market.slug,
        category=_category(market),
        condition_id=market.condition_id,
        outcomes=market.outcomes,
        outcome_prices=market.outcome_prices,
        yes_price=_pick(market.outcomes, market.outcome_prices, "yes", 0),
        no_price=_pick(market.outcomes, market.outcome_prices, "no", 1),
        volume_total=market.volume_num if market.volume_num is not None else market.volume,
        volume_24h=market.volume_24h,
        liquidity=market.liquidity_num if market.liquidity_num is not None else market.liquidity,
        # A closed market is never active, whatever the `active` flag says.
        active=(market.active is not False) and not closed,
        closed=closed,
        end_date=_as_utc(market.end_date),
        updated_at=_as_utc(market.updated_at),
    )


def parse_market(raw: Any) -> MarketParse:
    """Parse one Gamma market record: a `MarketDoc`, or a `RecordError` saying why not. Never raises."""
    if not isinstance(raw, dict):
        return RecordError("market", None, f"record is a {type(raw).__name__}, not an object")
    try:
        return market_from_gamma(GammaMarket.model_validate(raw))
    except ValidationError as exc:
        return RecordError("market", _raw_id(raw, "id"), _reason(exc))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return RecordError("market", _raw_id(raw, "id"), str(exc)[:MAX_REASON_CHARS])


def trade_key(trade: DataTrade) -> str:
    """The natural key of a fill: no trade id exists, and one transaction settles several fills."""
    parts = (
        trade.transaction_hash,
        trade.asset,
        trade.proxy_wallet.lower(),
        trade.side,
        repr(trade.size),
        repr(trade.price),
        str(trade.timestamp),
    )
    return f"{PROVIDER}:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def parse_trade(raw: Any, ingested_at: datetime | None = None) -> TradeParse:
    """Parse one Data API trade: a `WhaleTradeDoc`, or a `RecordError` saying why not. Never raises."""
    if not isinstance(raw, dict):
        return RecordError("trade", None, f"record is a {type(raw).__name__}, not an object")
    try:
        trade = DataTrade.model_validate(raw)
        notional = trade.size * trade.price
        if not math.isfinite(notional):
            raise ValueError("size × price is not finite")
        return WhaleTradeDoc(
            id=trade_key(trade),
            provider=PROVIDER,
            wallet=trade.proxy_wallet,
            market=trade.condition_id,
            asset=trade.asset,
            side=trade.side,
            outcome=trade.outcome,
            size=trade.size,
            price=trade.price,
            notional=notional,
            transaction_hash=trade.transaction_hash,
            traded_at=datetime.fromtimestamp(trade.timestamp, UTC),
            ingested_at=ingested_at or utcnow(),
        )
    except ValidationError as exc:
        return RecordError("trade", _raw_id(raw, "transactionHash"), _reason(exc))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return RecordError("trade", _raw_id(raw, "transactionHash"), str(exc)[:MAX_REASON_CHARS])


def split_market_page(body: Any) -> tuple[list[Any], str | None]:
    """The records and the next cursor of one keyset page.

    Raises:
        ProviderDataError: the body is not `{"markets": [...], "next_cursor": ...}`.
    """
    if not isinstance(body, dict) or not isinstance(body.get("markets"), list):
        raise ProviderDataError(
            "the markets listing answered without a 'markets' list; "
            "check PULSE_POLYMARKET_GAMMA_URL points at the Gamma API"
        )
    cursor = body.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ProviderDataError("the markets listing sent a next_cursor that is not a string")
    return body["markets"], cursor or None


# -- the client -------------------------------------------------------------------------


class PolymarketProvider:
    """Polymarket through Gamma (markets) and the Data API (trades).

    Args:
        settings: base URLs, page size, API key, timeouts and quick-retry attempts.
        http: the process's shared client.
        limiter: shared rate limiter (buckets `polymarket_gamma` and `polymarket_data`).
    """

    name = PROVIDER

    def __init__(self, settings: Settings, http: httpx.AsyncClient, limiter: Limiter) -> None:
        self._settings = settings
        self._http = http
        self._limiter = limiter
        self._headers = auth_headers(settings)
        self.pages_fetched = 0
        self.trade_pages_fetched = 0

    def __repr__(self) -> str:
        return f"PolymarketProvider(pages_fetched={self.pages_fetched}, trade_pages_fetched={self.trade_pages_fetched})"

    async def _get(self, url: str, params: dict[str, str | int], bucket: str) -> Any:
        return await get_json(
            self._http,
            url,
            params=params,
            headers=self._headers,
            limiter=self._limiter,
            bucket=bucket,
            attempts=self._settings.http_attempts,
            timeout_s=self._settings.http_timeout_s,
        )

    async def iter_market_pages(self) -> AsyncIterator[list[MarketParse]]:
        """Yield every market, one parsed page at a time (see `Provider.iter_market_pages`)."""
        url = f"{self._settings.polymarket_gamma_url}/markets/keyset"
        recent: deque[str] = deque(maxlen=CURSOR_MEMORY)
        cursor: str | None = None
        for _ in range(MAX_MARKET_PAGES):
            params: dict[str, str | int] = {"limit": self._settings.page_size}
            if cursor is not None:
                params["after_cursor"] = cursor
            records, next_cursor = split_market_page(await self._get(url, params, GAMMA_BUCKET))
            self.pages_fetched += 1
            yield [parse_market(record) for record in records]
            if next_cursor is None:
                return
            if next_cursor in recent:
                raise ProviderDataError(
                    f"the markets listing repeated a cursor after {self.pages_fetched} pages; "
                    "stopping instead of looping (is the API honouring after_cursor?)"
                )
            recent.append(next_cursor)
            cursor = next_cursor
        raise ProviderDataError(f"the markets listing did not end within {MAX_MARKET_PAGES} pages")

    async def fetch_market(
        self, *, condition_id: str | None = None, market_id: str | None = None
    ) -> MarketParse | None:
        """One market, by its condition id or its Gamma id (exactly one); None when the provider has none."""
        if (condition_id is None) == (market_id is None):
            raise ValueError("fetch_market takes exactly one of condition_id and market_id")
        url = f"{self._settings.polymarket_gamma_url}/markets/keyset"
        params: dict[str, str | int] = {"limit": 1}
        if condition_id is not None:
            params["condition_ids"] = condition_id
        else:
            params["id"] = str(market_id)
        records, _ = split_market_page(await self._get(url, params, GAMMA_BUCKET))
        return parse_market(records[0]) if records else None

    async def fetch_market_trades(self, condition_id: str, *, limit: int) -> list[TradeParse]:
        """The market's most recent taker trades (at most `limit`, one page), newest first."""
        url = f"{self._settings.polymarket_data_url}/trades"
        params: dict[str, str | int] = {"market": condition_id, "limit": limit, "takerOnly": "true"}
        body = await self._get(url, params, DATA_BUCKET)
        if not isinstance(body, list):
            raise ProviderDataError("the trades endpoint answered with something other than a list")
        now = utcnow()
        return [parse_trade(raw, now) for raw in body]

    async def fetch_trades(self, *, since: datetime, min_notional: float) -> list[TradeParse]:
        """Large taker trades at or after `since`, newest first, across as many pages as needed."""
        url = f"{self._settings.polymarket_data_url}/trades"
        # Rounded down so the provider's filter never drops a trade our own check would keep.
        amount = f"{math.floor(min_notional * 100) / 100:.2f}"
        now = utcnow()
        found: list[TradeParse] = []
        offset = 0
        while offset <= MAX_TRADES_OFFSET:
            params: dict[str, str | int] = {
                "limit": TRADES_PAGE,
                "offset": offset,
                "takerOnly": "true",
                "filterType": "CASH",
                "filterAmount": amount,
            }
            body = await self._get(url, params, DATA_BUCKET)
            if not isinstance(body, list):
                raise ProviderDataError("the trades endpoint answered with something other than a list")
            self.trade_pages_fetched += 1
            reached_since = False
            for raw in body:
                parsed = parse_trade(raw, now)
                if isinstance(parsed, WhaleTradeDoc) and parsed.traded_at < since:
                    reached_since = True
                    continue
                found.append(parsed)
            if reached_since or len(body) < TRADES_PAGE:
                return found
            offset += TRADES_PAGE
        log.warning("trades.offset_cap", extra={"offset": offset, "since": since.isoformat()})
        return found


def make_provider(settings: Settings, http: httpx.AsyncClient, limiter: Limiter) -> Provider:
    """The provider named by `settings.provider`.

    Raises:
        ConfigError: the provider is not one we implement.
    """
    if settings.provider == PROVIDER:
        return PolymarketProvider(settings, http, limiter)
    raise ConfigError(f"PULSE_PROVIDER={settings.provider!r} is not supported; use 'polymarket'")  # pragma: no cover
