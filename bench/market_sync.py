"""Benchmark: market_sync (streamed, hash-compared, bulk upserts) vs the replaced approach.

The replaced system fetched the whole catalogue first, then wrote one market at a time.
Both run in this process against the same simulator (a child process) and the same
database server, each into an empty database. Times are measured without tracemalloc;
peak Python memory is measured in separate traced runs (tracemalloc slows code down).

    .venv/bin/python bench/market_sync.py                    # 50,000 markets, peak also at 200,000
    .venv/bin/python bench/market_sync.py --markets 5000 --large 20000

Servers: PULSE_MONGO_URL if set, else a local FerretDB (and nats-server) is started.
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
from collections.abc import Awaitable, Callable, Iterator
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
from shared.store import Document

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


async def ours(settings: Settings, client: AsyncMongoClient[Document], db_name: str) -> int:
    async with make_http_client(settings) as http:
        provider = PolymarketProvider(settings, http, NoLimit())
        counts = await sync_markets(client[db_name], provider, checkpoint=noop_checkpoint)
    return counts.inserted + counts.updated


async def fetch_everything(settings: Settings) -> list[MarketParse]:
    async with make_http_client(settings) as http:
        provider = PolymarketProvider(settings, http, NoLimit())
        return [item async for page in provider.iter_market_pages() for item in page]


async def replaced(settings: Settings, client: AsyncMongoClient[Document], db_name: str) -> int:
    """Fetch everything first, then one upsert per market (same parser, same documents)."""
    markets = client[db_name][Collections.MARKETS]
    everything = await fetch_everything(settings)
    now = utcnow()
    written = 0
    for item in everything:
        if isinstance(item, MarketDoc):
            document = market_document(item)
            market_id = document.pop("_id")
            await markets.update_one({"_id": market_id}, {"$set": {**document, "synced_at": now}}, upsert=True)
            written += 1
    return written


async def measure(
    run: Callable[[Settings, AsyncMongoClient[Document], str], Awaitable[int]],
    settings: Settings,
    client: AsyncMongoClient[Document],
    *,
    traced: bool,
) -> tuple[float, int, float]:
    """(seconds, documents written, peak MiB or nan) of one run into a fresh database."""
    db_name = f"bench{os.getpid()}"
    await client.drop_database(db_name)
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    written = await run(settings, client, db_name)
    elapsed = time.perf_counter() - started
    peak = float("nan")
    if traced:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    await client.drop_database(db_name)
    return elapsed, written, peak


async def bench(args: argparse.Namespace, url: str, sim_url: str, large_url: str | None) -> None:
    settings = load_settings(mongo_url=url, polymarket_gamma_url=sim_url, page_size=PAGE_SIZE, http_timeout_s=60)
    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    rows: list[tuple[str, int, float, int, float]] = []
    try:
        t_ours, n_ours, _ = await measure(ours, settings, client, traced=False)
        rows.append(("market_sync (streamed, bulk)", args.markets, t_ours, n_ours, float("nan")))
        t_old, n_old, _ = await measure(replaced, settings, client, traced=False)
        rows.append(("replaced (fetch all, 1 write each)", args.markets, t_old, n_old, float("nan")))
        _, _, peak_ours = await measure(ours, settings, client, traced=True)
        rows[0] = (*rows[0][:4], peak_ours)
        tracemalloc.start()
        await fetch_everything(settings)  # the replaced approach's memory is all in its first phase
        peak_old = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rows[1] = (*rows[1][:4], peak_old)
        if large_url is not None:
            large_settings = load_settings(mongo_url=url, polymarket_gamma_url=large_url, page_size=PAGE_SIZE)
            t_large, n_large, peak_large = await measure(ours, large_settings, client, traced=True)
            rows.append(("market_sync (streamed, bulk), traced", args.large, t_large, n_large, peak_large))
    finally:
        await client.close()

    print(f"\n{'approach':40} {'markets':>8} {'seconds':>9} {'written':>8} {'peak MiB':>9}")
    for name, markets, seconds, written, peak in rows:
        print(f"{name:40} {markets:>8} {seconds:>9.2f} {written:>8} {peak:>9.2f}")
    print(f"\nspeed-up at {args.markets}: {t_old / t_ours:.1f}x (target >= 10x)")
    print(f"peak memory, replaced / ours at {args.markets}: {peak_old / peak_ours:.1f}x")
    if large_url is not None:
        growth = (rows[2][4] / peak_ours - 1) * 100
        print(f"peak memory at {args.large} vs {args.markets}: {growth:+.1f} % (target within 25 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=50_000, help="catalogue size of the comparison")
    parser.add_argument("--large", type=int, default=200_000, help="catalogue size of the memory check (0: skip)")
    args = parser.parse_args()
    with (
        mongo_url() as url,
        simulator_process(markets=args.markets, seed=1) as sim,
        contextlib.ExitStack() as stack,
    ):
        large_url = None
        if args.large:
            large_url = stack.enter_context(simulator_process(markets=args.large, seed=1)).url
        asyncio.run(bench(args, url, sim.url, large_url))


if __name__ == "__main__":
    main()
