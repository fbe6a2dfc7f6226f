"""Market stats snapshots (written hourly by the stats job): the latest one and a trend."""

from __future__ import annotations

from datetime import timedelta

from shared.names import Collections
from shared.schemas import utcnow
from shared.store import Database, Document

#: Most snapshots read for a trend (hourly snapshots: about six weeks).
MAX_TREND_POINTS = 1000
#: Fields of a trend point (top markets are left out: the trend needs only the totals).
TREND_FIELDS = (
    "computed_at",
    "total_markets",
    "active_markets",
    "volume_24h",
    "whale_trades_1h",
    "whale_notional_1h",
)


async def latest_snapshot(db: Database) -> Document | None:
    """The newest snapshot, or None before the stats job ever ran."""
    return await db[Collections.MARKET_STATS].find_one({}, sort=[("computed_at", -1)])


async def trend(db: Database, period: timedelta, fields: tuple[str, ...] = TREND_FIELDS) -> list[Document]:
    """The snapshots of the last `period` (only `fields`), oldest first, at most `MAX_TREND_POINTS`."""
    # Newest first with a limit, so a long period reads a bounded number of points.
    cursor = (
        db[Collections.MARKET_STATS]
        .find({"computed_at": {"$gte": utcnow() - period}}, dict.fromkeys(fields, 1))
        .sort("computed_at", -1)
        .limit(MAX_TREND_POINTS)
    )
    return list(reversed(await cursor.to_list()))
