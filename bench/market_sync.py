"""Benchmark: market_sync (streamed, hash-compared, bulk upserts) vs the replaced approach.

The replaced system fetched the whole catalogue first, then wrote one market at a time.
Both run in this process against the same simulator (a child process) and the same
database server, each into an empty database. Times are measured without tracemalloc;
peak Python memory is measured in separate traced runs (tracemalloc slows code down).

    .venv/bin/python bench/market_sync.py                    # 50,000 markets, peak also at 200,000
    .venv/bin/python bench/market_sync.py --markets 5000 --large 20000
    .venv/bin/python bench/market_sync.py --baseline-budget-s 0     # no budget: run it to the end

Servers: PULSE_MONGO_URL if set (a real MongoDB gives the full comparison), else a local
FerretDB is started.

The replaced approach gets a time budget (--baseline-budget-s). If it has not finished by
then it is stopped, and its time is extrapolated from the markets it wrote: its fetch
time plus its write time so far scaled to the whole catalogue. That is a lower bound, so
the ratio is printed as "≥": each of its writes costs at least as much on a larger
collection (on FerretDB 1.24 an upsert costs the same or more as the collection grows;
on MongoDB it is an indexed write), so the writes it did not do would not be faster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo import AsyncMongoClient

from services.market_sync.sync import market_document, sync_markets
from shared.names import Collections
from shared.providers import NoLimit, PolymarketProvider, make_http_client
from shared.providers.base import MarketParse
from shared.providers.simprocess import simulator_process
from shared.schemas import MarketDoc, utcnow
from shared.settings import Settings, load_settings
from shared.store import Database, Document

PAGE_SIZE = 100


@contextlib.contextmanager
def mongo_url() -> Iterator[str]:
    if os.environ.get("PULSE_MONGO_URL"):
        yield os.environ["PULSE_MONGO_URL"]
        return
    from shared.localstack import local_servers

    with tempfile.TemporaryDirectory() as folder, local_servers(Path(folder)) as servers:
        yield servers.mongo_url


async def noop_checkpoint(progress: dict[str, Any]) -> None:
    return None


async def fetch_everything(settings: Settings) -> list[MarketParse]:
    async with make_http_client(settings) as http:
        provider = PolymarketProvider(settings, http, NoLimit())
        return [item async for page in provider.iter_market_pages() for item in page]


@dataclass
class BaselineRun:
    """How far the replaced approach got within its budget."""

    fetch_s: float
    write_s: float
    written: int
    valid: int

    @property
    def finished(self) -> bool:
        return self.written == self.valid

    def projected_s(self) -> float:
        """Its whole time if finished, else a lower bound (writes so far scaled to all)."""
        if self.finished or self.written == 0:
            return self.fetch_s + self.write_s if self.finished else float("inf")
        return self.fetch_s + self.write_s * self.valid / self.written


async def replaced(settings: Settings, db: Database, budget_s: float) -> BaselineRun:
    """Fetch everything first, then one upsert per market (same parser, same documents)."""
    markets = db[Collections.MARKETS]
    started = time.perf_counter()
    everything = [item for item in await fetch_everything(settings) if isinstance(item, MarketDoc)]
    fetched = time.perf_counter()
    deadline = started + budget_s if budget_s > 0 else float("inf")
    now = utcnow()
    written = 0
    for item in everything:
        if time.perf_counter() >= deadline:
            break
        document = market_document(item)
        market_id = document.pop("_id")
        await markets.update_one({"_id": market_id}, {"$set": {**document, "synced_at": now}}, upsert=True)
        written += 1
    return BaselineRun(fetched - started, time.perf_counter() - fetched, written, len(everything))


async def ours(settings: Settings, db: Database) -> int:
    async with make_http_client(settings) as http:
        provider = PolymarketProvider(settings, http, NoLimit())
        counts = await sync_markets(db, provider, checkpoint=noop_checkpoint)
    return counts.inserted + counts.updated


async def fresh_db(client: AsyncMongoClient[Document]) -> Database:
    name = f"bench{os.getpid()}"
    await client.drop_database(name)
    return client[name]


async def timed_ours(
    settings: Settings, client: AsyncMongoClient[Document], *, traced: bool
) -> tuple[float, int, float]:
    """(seconds, markets written, peak MiB or nan) of one run into an empty database."""
    db = await fresh_db(client)
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    written = await ours(settings, db)
    elapsed = time.perf_counter() - started
    peak = float("nan")
    if traced:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    await client.drop_database(db.name)
    return elapsed, written, peak


def sim_settings(url: str, sim_url: str) -> Settings:
    return load_settings(mongo_url=url, polymarket_gamma_url=sim_url, page_size=PAGE_SIZE, http_timeout_s=60)


async def bench(args: argparse.Namespace, url: str, sim_url: str) -> None:
    settings = sim_settings(url, sim_url)
    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    try:
        server = await client.admin.command("buildInfo")
        kind = (
            f"FerretDB {server['ferretdbVersion']}" if "ferretdbVersion" in server else f"MongoDB {server['version']}"
        )
        print(f"server: {kind}; catalogue {args.markets:,} markets, page size {PAGE_SIZE}", flush=True)
        t_ours, n_ours, _ = await timed_ours(settings, client, traced=False)
        print(f"  ours untraced: {t_ours:.1f}s", flush=True)
        _, _, peak_ours = await timed_ours(settings, client, traced=True)
        print(f"  ours traced: peak {peak_ours:.2f} MiB", flush=True)
        tracemalloc.start()
        await fetch_everything(settings)  # the replaced approach's memory is all in its first phase
        peak_old = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        db = await fresh_db(client)
        old = await replaced(settings, db, args.baseline_budget_s)
        await client.drop_database(db.name)
        print(f"  replaced: {old.written:,} of {old.valid:,} written in {old.fetch_s + old.write_s:.1f}s", flush=True)
        large: tuple[float, int, float] | None = None
        if args.large:
            with simulator_process(markets=args.large, seed=1) as sim:
                large = await timed_ours(sim_settings(url, sim.url), client, traced=True)
    finally:
        await client.close()
    report(args, (t_ours, n_ours, peak_ours), old, peak_old, large)


def row(name: str, markets: int, seconds: float, written: int, peak: float, rate: float) -> str:
    """One table line."""
    return f"{name:38} {markets:>8} {seconds:>9.1f} {written:>8} {rate:>10.0f} {peak:>9.2f}"


def report(
    args: argparse.Namespace,
    ours_run: tuple[float, int, float],
    old: BaselineRun,
    peak_old: float,
    large: tuple[float, int, float] | None,
) -> None:
    t_ours, n_ours, peak_ours = ours_run
    old_s = old.fetch_s + old.write_s
    old_note = "" if old.finished else f"  (stopped at the {args.baseline_budget_s:g}s budget)"
    print(f"\n{'approach':38} {'markets':>8} {'seconds':>9} {'written':>8} {'markets/s':>10} {'peak MiB':>9}")
    print("(seconds of ours: untraced run; peak MiB: separate tracemalloc run; last row: traced run)")
    print(row("market_sync (streamed, bulk)", args.markets, t_ours, n_ours, peak_ours, n_ours / t_ours))
    # The baseline's rate is that of its write phase (written / write time): the throughput so far.
    old_rate = old.written / old.write_s if old.write_s else float("nan")
    print(row("replaced (fetch all, 1 write each)", args.markets, old_s, old.written, peak_old, old_rate) + old_note)
    if large is not None:
        print(row("market_sync, traced", args.large, *large, large[1] / large[0]))
    if old.finished:
        print(f"\nspeed-up at {args.markets}: {old_s / t_ours:.1f}x (target >= 10x)")
    else:
        print(
            f"\nspeed-up at {args.markets}: >= {old.projected_s() / t_ours:.1f}x (target >= 10x); lower bound: the "
            f"replaced approach wrote {old.written:,} of {old.valid:,} markets in {old.write_s:.0f}s after a "
            f"{old.fetch_s:.1f}s fetch, projected >= {old.projected_s():.0f}s for all"
        )
    print(f"peak memory, replaced (fetch phase) / ours at {args.markets}: {peak_old / peak_ours:.1f}x")
    if large is not None:
        growth = (large[2] / peak_ours - 1) * 100
        print(f"peak memory at {args.large} vs {args.markets}: {growth:+.1f} % (target within 25 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=50_000, help="catalogue size of the comparison")
    parser.add_argument("--large", type=int, default=200_000, help="catalogue size of the memory check (0: skip)")
    parser.add_argument(
        "--baseline-budget-s", type=float, default=300, help="stop the replaced approach after this long (0: no limit)"
    )
    args = parser.parse_args()
    if args.markets < 1 or args.large < 0 or args.baseline_budget_s < 0:
        parser.error("--markets must be >= 1, --large and --baseline-budget-s >= 0")
    with mongo_url() as url, simulator_process(markets=args.markets, seed=1) as sim:
        asyncio.run(bench(args, url, sim.url))


if __name__ == "__main__":
    main()
