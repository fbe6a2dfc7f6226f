"""Benchmark: market_sync (streamed, hash-compared, bulk upserts) vs the replaced approach.

The replaced system fetched the whole catalogue first, then wrote one market at a time.
Both run in this process against the same simulator (a child process) and the same
database server, each into an empty database. Measured per store:

- first sync of the catalogue into an empty database (ours, untraced) and the replaced
  approach (same parser, same documents) under a time budget;
- repeat sync: ours again over the unchanged catalogue, into the database it just filled;
- peak Python memory (tracemalloc, separate runs: it slows code down) at `--markets` and
  at `--large`, on the first store only (it is the process's memory, not the store's).

    uv run --frozen python bench/market_sync.py                   # 50,000 markets, embedded then FerretDB
    uv run --frozen python bench/market_sync.py --store embedded --markets 5000 --large 20000
    uv run --frozen python bench/market_sync.py --baseline-budget-s 0     # no budget: run it to the end
    PULSE_MONGO_URL=mongodb://... uv run --frozen python bench/market_sync.py   # a running server

`--store embedded|ferretdb|both` (default both) starts a fresh local store of each kind.
FerretDB 1.24 gets `--ferretdb-markets` (default 10,000: its lookups and updates scan the
whole collection) and `--ferretdb-budget-s` per step; a step past its budget is reported
as such, never waited for.

The replaced approach gets a time budget (--baseline-budget-s). If it has not finished by
then it is stopped, and its time is extrapolated from the markets it wrote: its fetch
time plus its write time so far scaled to the whole catalogue. That is a lower bound, so
the ratio is printed as "≥": each of its writes costs at least as much on a larger
collection, so the writes it did not do would not be faster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo import AsyncMongoClient

from bench.stores import MACHINE_NOTE, add_store_option, local_store, store_kinds, within
from services.market_sync.sync import market_document, sync_markets
from shared.errors import StoreUnavailable
from shared.names import Collections
from shared.providers import NoLimit, PolymarketProvider, make_http_client
from shared.providers.base import MarketParse
from shared.providers.simprocess import simulator_process
from shared.schemas import MarketDoc, utcnow
from shared.settings import Settings, load_settings
from shared.store import Database, Document

PAGE_SIZE = 100


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
    """One sync of the whole catalogue; returns markets inserted or updated."""
    async with make_http_client(settings) as http:
        provider = PolymarketProvider(settings, http, NoLimit())
        counts = await sync_markets(db, provider, checkpoint=noop_checkpoint)
    return counts.inserted + counts.updated


async def fresh_db(client: AsyncMongoClient[Document]) -> Database:
    name = f"bench{os.getpid()}"
    await client.drop_database(name)
    return client[name]


@dataclass
class StoreRun:
    """What one store measured; None for a step stopped at its budget."""

    label: str
    markets: int
    budget_s: float
    first: tuple[float, int] | None
    repeat: tuple[float, int] | None
    old: BaselineRun
    old_budget_s: float


async def timed_sync(settings: Settings, db: Database, budget_s: float) -> tuple[float, int] | None:
    """(seconds, written), or None when it passed its budget or the store stopped answering (said here)."""
    started = time.perf_counter()
    try:
        written = await within(budget_s, ours(settings, db))
    except StoreUnavailable as exc:  # FerretDB 1.24 stops answering some bulk updates (docs/decisions.md)
        print(f"  stopped after {time.perf_counter() - started:.1f}s: {str(exc).split(';')[0]}", flush=True)
        return None
    return None if written is None else (time.perf_counter() - started, written)


async def traced_peak(settings: Settings, client: AsyncMongoClient[Document]) -> tuple[float, int, float]:
    """(seconds, markets written, peak MiB) of one traced sync into an empty database."""
    db = await fresh_db(client)
    tracemalloc.start()
    started = time.perf_counter()
    written = await ours(settings, db)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    await client.drop_database(db.name)
    return elapsed, written, peak


def sim_settings(url: str, sim_url: str) -> Settings:
    return load_settings(mongo_url=url, polymarket_gamma_url=sim_url, page_size=PAGE_SIZE, http_timeout_s=60)


def _seconds(step: tuple[float, int] | None, budget_s: float) -> str:
    return f"{step[0]:.1f}s" if step else f"not finished (budget {budget_s:g}s, or the store stopped answering)"


async def bench_store(
    label: str, url: str, sim_url: str, markets: int, budget_s: float, old_budget_s: float
) -> StoreRun:
    """First sync, repeat sync and the replaced approach on one store."""
    settings = sim_settings(url, sim_url)
    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    try:
        server = await client.admin.command("buildInfo")
        kind = f"FerretDB {server['ferretdbVersion']}" if "ferretdbVersion" in server else f"server {server['version']}"
        print(f"{label} ({kind}): catalogue {markets:,} markets, page size {PAGE_SIZE}", flush=True)
        db = await fresh_db(client)
        first = await timed_sync(settings, db, budget_s)
        print(f"  first sync: {_seconds(first, budget_s)}", flush=True)
        repeat = await timed_sync(settings, db, budget_s) if first else None
        print(f"  repeat sync: {_seconds(repeat, budget_s)}", flush=True)
        await client.drop_database(db.name)
        db = await fresh_db(client)
        old = await replaced(settings, db, old_budget_s)
        await client.drop_database(db.name)
        print(f"  replaced: {old.written:,} of {old.valid:,} written in {old.fetch_s + old.write_s:.1f}s", flush=True)
    finally:
        await client.close()
    return StoreRun(label, markets, budget_s, first, repeat, old, old_budget_s)


async def memory(
    url: str, sim_url: str, markets: int, large: int
) -> tuple[float, float, tuple[float, int, float] | None]:
    """Peak MiB of ours and of the replaced approach's fetch at `markets`; a traced run at `large`."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    try:
        _, _, peak_ours = await traced_peak(sim_settings(url, sim_url), client)
        tracemalloc.start()
        await fetch_everything(sim_settings(url, sim_url))  # the replaced approach's memory is all in its fetch
        peak_old = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        big = None
        if large:
            with simulator_process(markets=large, seed=1, start_timeout_s=120) as sim:
                big = await traced_peak(sim_settings(url, sim.url), client)
    finally:
        await client.close()
    return peak_ours, peak_old, big


def report(
    runs: list[StoreRun], peaks: tuple[float, float, tuple[float, int, float] | None] | None, args: argparse.Namespace
) -> None:
    print(f"\nmarket_sync; {MACHINE_NOTE}")
    print(f"{'store':<10}{'markets':>8}  {'approach':<36}{'seconds':>9}{'written':>9}{'markets/s':>10}  vs replaced")
    for run in runs:
        old = run.old
        old_s = old.fetch_s + old.write_s
        for name, step in (("market_sync, first sync", run.first), ("market_sync, repeat sync", run.repeat)):
            if step is None:
                print(f"{run.label:<10}{run.markets:>8}  {name:<36}  stopped (budget, or store did not answer)")
                continue
            speedup = f"{old_s / step[0]:.1f}x" if old.finished else f">= {old.projected_s() / step[0]:.1f}x"
            figures = f"{step[0]:>9.1f}{step[1]:>9}{run.markets / step[0]:>10.0f}"
            print(f"{run.label:<10}{run.markets:>8}  {name:<36}{figures}  {speedup}")
        rate = old.written / old.write_s if old.write_s else float("nan")
        note = (
            ""
            if old.finished
            else f"  (stopped at its {run.old_budget_s:g}s budget; projected >= {old.projected_s():.0f}s)"
        )
        figures = f"{old_s:>9.1f}{old.written:>9}{rate:>10.0f}"
        print(f"{run.label:<10}{run.markets:>8}  {'replaced (fetch all, 1 write each)':<36}{figures}  1.0x{note}")
    print("(repeat sync: the same catalogue again into the filled database; its 'written' counts changed markets)")
    print("(speed-up of the first sync: target >= 10x; 'vs replaced' of the repeat sync: for scale only)")
    if peaks is not None:
        peak_ours, peak_old, big = peaks
        print(f"\npeak Python memory at {args.markets:,}: ours {peak_ours:.2f} MiB, ", end="")
        print(f"replaced (fetch phase) {peak_old:.1f} MiB")
        if big is not None:
            growth = (big[2] / peak_ours - 1) * 100
            print(f"peak at {args.large:,}: {big[2]:.2f} MiB ({growth:+.1f} % vs {args.markets:,}; target within 25 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=50_000, help="catalogue size of the comparison")
    parser.add_argument("--large", type=int, default=200_000, help="catalogue size of the memory check (0: skip)")
    parser.add_argument(
        "--baseline-budget-s", type=float, default=300, help="stop the replaced approach after this long (0: no limit)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the traced (peak memory) runs")
    add_store_option(parser)
    parser.add_argument("--ferretdb-markets", type=int, default=10_000, help="catalogue size on FerretDB")
    parser.add_argument("--ferretdb-budget-s", type=float, default=240, help="budget of each step on FerretDB")
    args = parser.parse_args()
    if min(args.markets, args.ferretdb_markets) < 1 or args.large < 0 or args.baseline_budget_s < 0:
        parser.error("--markets must be >= 1, --large and --baseline-budget-s >= 0")
    given = os.environ.get("PULSE_MONGO_URL")
    runs: list[StoreRun] = []
    peaks = None
    for kind in ["given"] if given else store_kinds(args.store):
        ferret = kind == "ferretdb"
        markets = args.ferretdb_markets if ferret else args.markets
        budget = args.ferretdb_budget_s if ferret else 0
        old_budget = (
            min(args.baseline_budget_s or args.ferretdb_budget_s, args.ferretdb_budget_s)
            if ferret
            else args.baseline_budget_s
        )
        with contextlib.ExitStack() as stack:
            url = given or stack.enter_context(local_store(kind)).mongo_url  # type: ignore[arg-type]
            sim = stack.enter_context(simulator_process(markets=markets, seed=1, start_timeout_s=120))
            runs.append(asyncio.run(bench_store(kind, url, sim.url, markets, budget, old_budget)))
            if peaks is None and not args.no_memory and not ferret:
                peaks = asyncio.run(memory(url, sim.url, markets, args.large))
    report(runs, peaks, args)


if __name__ == "__main__":
    main()
