"""Market-data providers: the `Provider` seam, the Polymarket client, and the HTTP boundary."""

from shared.providers.base import Limiter, MarketParse, NoLimit, Provider, RecordError, TradeParse
from shared.providers.http import make_http_client
from shared.providers.polymarket import PolymarketProvider, make_provider

__all__ = [
    "Limiter",
    "MarketParse",
    "NoLimit",
    "PolymarketProvider",
    "Provider",
    "RecordError",
    "TradeParse",
    "make_http_client",
    "make_provider",
]
