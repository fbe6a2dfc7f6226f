"""Benchmark: the stats snapshot computed in the database vs the replaced approach.

The replaced system loaded every market (and the window's trades) into the application
and reduced them there. Both approaches run here, in the same process, against the same
seeded data, and their figures are checked to agree before the times are printed. The stats job is
timed twice: as the first snapshot ever (no previous one) and as every later hour, when
the previous snapshot's top markets narrow the top-markets query (services/stats/stats.py;
the data here is unchanged between the two, so the floor is as good as it gets).

    uv run --frozen python bench/stats.py                    # embedded store, then FerretDB
    uv run --frozen python bench/stats.py --store embedded --markets 20000 --trades 10000
    uv run --frozen python bench/stats.py --mongo-url mongodb://127.0.0.1:27017/

Stores: `--store embedded|ferretdb|both` (default both) starts a fresh local store of each
kind; `--mongo-url` uses a running server instead. FerretDB 1.24 gets smaller sizes
(`--ferretdb-markets`, `--ferretdb-trades`) and a time budget per approach, and cannot run
the stats pipeline at all (no `$avg`, `$cond`, `$multiply` in `$group`): its row says so.

Not a test: it prints a table (time of each approach, ratio against the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from bench.stores import MACHINE_NOTE, add_store_option, local_store, store_kinds, within
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
    # An explicit batch size: mongo-java-server answers a getMore without one with every
    # remaining document in one message, which pymongo refuses past 48 MB.
    async for market in db[Collections.MARKETS].find({}).batch_size(10_000):
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
            yes_volume += yes * (vol24 or 0.0)
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


async def timed(
    make: Callable[[], Awaitable[MarketStats]], repeat: int, budget_s: float
) -> tuple[list[float], MarketStats]:
    """Times of `repeat` runs, best first, and the last result; TimeoutError past `budget_s` (0: none)."""
    times: list[float] = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await within(budget_s, make())
        if result is None:
            raise TimeoutError(f"not finished within the {budget_s:g}s budget")
        times.append(time.perf_counter() - started)
    assert result is not None
    return sorted(times), result


def spread(times: list[float]) -> str:
    """The other runs' times, for the spread: "(also 12.3, 14.0)"."""
    return f"  (also {', '.join(f'{t:.2f}' for t in times[1:])})" if len(times) > 1 else ""


async def bench(label: str, mongo_url: str, markets: int, trades: int, repeat: int, budget_s: float) -> list[str]:
    """Seed, time both approaches, check they agree; return the table rows of this store."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    db = client[f"bench_stats_{int(time.time())}"]
    try:
        await ensure_indexes(db)
        started = time.perf_counter()
        await seed(db, markets, trades)
        print(f"{label}: seeded {markets:,} markets and {trades:,} trades in {time.perf_counter() - started:.1f}s")
        sizes = f"{markets:,} / {trades:,}"
        try:
            baseline_times, baseline = await timed(lambda: stats_in_application(db, window_end=SLOT), repeat, budget_s)
        except TimeoutError as exc:
            return [f"{label:<10}{sizes:>20}  baseline {exc}"]
        baseline_name = "load every market, reduce in Python (baseline)"
        baseline_s = baseline_times[0]
        rows = [f"{label:<10}{sizes:>20}  {baseline_name:<46}{baseline_s:>9.2f}{1.0:>9.2f}x{spread(baseline_times)}"]
        name = "stats job, first snapshot (no previous)"
        try:
            database_times, in_db = await timed(lambda: compute_stats(db, window_end=SLOT), repeat, budget_s)
        except OperationFailure as exc:  # FerretDB 1.24: NotImplemented
            return [*rows, f"{'':<10}{'':>20}  {name:<46}  not supported: {str(exc).split(', full error')[0]}"]
        except TimeoutError as exc:
            return [*rows, f"{'':<10}{'':>20}  {name:<46}  {exc}"]
        # Every later hour: the previous snapshot's top markets give the volume floor.
        hourly = "stats job, hourly (floor from previous)"
        hourly_times, in_db_hourly = await timed(
            lambda: compute_stats(db, window_end=SLOT, previous=in_db), repeat, budget_s
        )
        for result in (in_db, in_db_hourly):
            if not agree(baseline, result):
                raise SystemExit(f"{label}: the approaches disagree:\n  application {baseline}\n  database    {result}")
        return [
            *rows,
            *(
                f"{'':<10}{'':>20}  {title:<46}{times[0]:>9.2f}{baseline_s / times[0]:>9.2f}x{spread(times)}"
                for title, times in ((name, database_times), (hourly, hourly_times))
            ),
        ]
    finally:
        await client.drop_database(db.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=200_000)
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each approach on the same data; the best time counts, the others are shown",
    )
    parser.add_argument("--mongo-url", help="a running MongoDB-compatible server instead of local stores")
    add_store_option(parser)
    parser.add_argument("--ferretdb-markets", type=int, default=50_000, help="markets on FerretDB (default 50,000)")
    parser.add_argument("--ferretdb-trades", type=int, default=25_000, help="trades on FerretDB (default 25,000)")
    parser.add_argument("--ferretdb-budget-s", type=float, default=300, help="budget per approach on FerretDB")
    args = parser.parse_args()
    if min(args.markets, args.trades, args.ferretdb_markets, args.ferretdb_trades) < 0 or args.repeat < 1:
        parser.error("sizes must be >= 0 and --repeat >= 1")
    rows: list[str] = []
    if args.mongo_url:
        rows += asyncio.run(bench("given", args.mongo_url, args.markets, args.trades, args.repeat, 0))
    else:
        for kind in store_kinds(args.store):
            ferret = kind == "ferretdb"
            markets, trades = (args.ferretdb_markets, args.ferretdb_trades) if ferret else (args.markets, args.trades)
            with local_store(kind) as servers:
                budget = args.ferretdb_budget_s if ferret else 0
                rows += asyncio.run(bench(kind, servers.mongo_url, markets, trades, args.repeat, budget))
    print(f"\nstats snapshot, best of {args.repeat} (other times in brackets); {MACHINE_NOTE}")
    print(f"{'store':<10}{'markets / trades':>20}  {'approach':<46}{'time (s)':>9}{'ratio':>10}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
