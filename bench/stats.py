"""Benchmark: the stats snapshot computed in the database vs the replaced approach.

The replaced system loaded every market (and the window's trades) into the application
and reduced them there. Both approaches run here, in the same process, against the same
seeded data, and their figures are checked to agree before the times are printed.

    .venv/bin/python -m bench.stats                      # local nats-less FerretDB, 200k/100k
    .venv/bin/python -m bench.stats --markets 20000 --trades 10000
    .venv/bin/python -m bench.stats --mongo-url mongodb://127.0.0.1:27017/

Not a test: it prints a table (time of each approach, ratio against the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pymongo import AsyncMongoClient

from services.stats.stats import TOP_MARKETS, WHALE_WINDOW, MarketStats, TopMarket, compute_stats, ratio
from shared.names import Collections
from shared.store import Database, Document, ensure_indexes

SLOT = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
SEED_BATCH = 20_000


def make_market(i: int, rng: random.Random) -> Document:
    yes = None if i % 23 == 0 else rng.random()
    vol24 = None if i % 29 == 0 else rng.random() * 1e5
    return {
        "_id": f"polymarket:{i}",
        "provider": "polymarket",
        "market_id": str(i),
        "question": f"Will event number {i} happen before the end of the year?",
        "slug": f"event-{i}",
        "category": "politics",
        "outcomes": ["Yes", "No"],
        "yes_price": yes,
        "no_price": None if yes is None else 1 - yes,
        "volume_total": rng.random() * 1e7,
        "volume_24h": vol24,
        "liquidity": rng.random() * 1e5,
        "active": i % 5 != 0,
        "closed": i % 5 == 0,
        "yes_volume_24h": None if yes is None or vol24 is None else yes * vol24,
    }


def make_trade(i: int, rng: random.Random) -> Document:
    at = SLOT - timedelta(seconds=rng.randint(0, 48 * 3600))
    size = rng.uniform(1e4, 2e5)
    price = rng.random()
    return {
        "_id": f"0xabc{i}:0",
        "provider": "polymarket",
        "wallet": f"0xw{i % 997}",
        "market": f"polymarket:{i % 5000}",
        "side": "BUY",
        "outcome": "Yes",
        "size": size,
        "price": price,
        "notional": size * price,
        "traded_at": at,
        "ingested_at": at,
    }


async def seed(db: Database, markets: int, trades: int) -> None:
    rng = random.Random(6)
    for collection, count, make in (
        (Collections.MARKETS, markets, make_market),
        (Collections.WHALE_TRADES, trades, make_trade),
    ):
        for first in range(0, count, SEED_BATCH):
            batch = [make(i, rng) for i in range(first, min(count, first + SEED_BATCH))]
            await db[collection].insert_many(batch, ordered=False)


async def stats_in_application(db: Database, *, window_end: datetime) -> MarketStats:
    """The replaced approach: every market into Python, reduced there."""
    total = active = priced = 0
    volume_total = volume_24h = priced_volume = yes_sum = yes_volume = 0.0
    ranked: list[Document] = []
    async for market in db[Collections.MARKETS].find({}):
        total += 1
        active += market.get("active") is True
        volume_total += market.get("volume_total") or 0.0
        vol24 = market.get("volume_24h")
        volume_24h += vol24 or 0.0
        yes = market.get("yes_price")
        if yes is not None:
            priced += 1
            yes_sum += yes
            priced_volume += vol24 or 0.0
            yes_volume += market.get("yes_volume_24h") or 0.0
        if vol24 is not None:
            ranked.append(market)
    ranked.sort(key=lambda m: (-m["volume_24h"], m["_id"]))
    window = {"traded_at": {"$gte": window_end - WHALE_WINDOW, "$lt": window_end}}
    notionals = [t["notional"] async for t in db[Collections.WHALE_TRADES].find(window)]
    return MarketStats(
        total_markets=total,
        active_markets=active,
        priced_markets=priced,
        volume_total=volume_total,
        volume_24h=volume_24h,
        avg_yes_price=ratio(yes_sum, priced),
        vw_yes_price=ratio(yes_volume, priced_volume),
        whale_trades_1h=len(notionals),
        whale_notional_1h=sum(notionals),
        top_markets=[
            TopMarket(market=m["_id"], question=m["question"], volume_24h=m["volume_24h"], yes_price=m.get("yes_price"))
            for m in ranked[:TOP_MARKETS]
        ],
    )


def agree(a: MarketStats, b: MarketStats) -> bool:
    def close(x: float | None, y: float | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9))

    return (
        (a.total_markets, a.active_markets, a.priced_markets, a.whale_trades_1h)
        == (b.total_markets, b.active_markets, b.priced_markets, b.whale_trades_1h)
        and all(
            close(getattr(a, f), getattr(b, f))
            for f in ("volume_total", "volume_24h", "avg_yes_price", "vw_yes_price", "whale_notional_1h")
        )
        and [m.market for m in a.top_markets] == [m.market for m in b.top_markets]
    )


async def timed(make: Callable[[], Awaitable[MarketStats]], repeat: int) -> tuple[float, MarketStats]:
    best, result = math.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await make()
        best = min(best, time.perf_counter() - started)
    assert result is not None
    return best, result


async def bench(mongo_url: str, markets: int, trades: int, repeat: int) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    db = client[f"bench_stats_{int(time.time())}"]
    try:
        await ensure_indexes(db)
        started = time.perf_counter()
        await seed(db, markets, trades)
        print(f"seeded {markets:,} markets and {trades:,} trades in {time.perf_counter() - started:.1f}s")
        baseline_s, baseline = await timed(lambda: stats_in_application(db, window_end=SLOT), repeat)
        database_s, in_db = await timed(lambda: compute_stats(db, window_end=SLOT), repeat)
        if not agree(baseline, in_db):
            raise SystemExit(f"the two approaches disagree:\n  application {baseline}\n  database    {in_db}")
        print(
            f"\nstats over {markets:,} markets and {trades:,} whale trades ({mongo_url.split('@')[-1]}), "
            f"best of {repeat}"
        )
        print(f"{'approach':<44}{'time (s)':>10}{'ratio vs baseline':>20}")
        print(f"{'load every market, reduce in Python (baseline)':<44}{baseline_s:>10.2f}{1.0:>19.2f}x")
        print(f"{'aggregate in the database (stats job)':<44}{database_s:>10.2f}{baseline_s / database_s:>19.2f}x")
    finally:
        await client.drop_database(db.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=200_000)
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each approach; the best time counts")
    parser.add_argument("--mongo-url", help="an existing MongoDB/FerretDB (default: start a local FerretDB)")
    args = parser.parse_args()
    if args.mongo_url:
        asyncio.run(bench(args.mongo_url, args.markets, args.trades, args.repeat))
        return
    from shared.localstack import local_servers

    with local_servers(Path(tempfile.mkdtemp(prefix="bench-stats-"))) as servers:
        asyncio.run(bench(servers.mongo_url, args.markets, args.trades, args.repeat))


if __name__ == "__main__":
    main()
