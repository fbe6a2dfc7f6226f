"""Benchmark: retention cleanup of a large `runs` backlog, ours vs one plain delete.

Seeds `--runs` completed run records (90 % past retention, 10 % kept), then deletes the
expired ones with:
- baseline: one `delete_many` per sweep filter (the plain way: one statement, no
  heartbeat in between, no bound on how long it runs);
- ours: `services.janitor.cleanup.clean_up` (one sorted `_id` pass cut into ranges, one
  range delete per batch, a checkpoint between batches), once per `--batch-sizes` entry.

Each approach gets freshly seeded data (same seed) and must leave exactly the kept
records; the table gives its time and the ratio against the baseline of the same run.
Meanwhile a probe updates one other run record every 50 ms, as a worker's heartbeat
would, and the table gives its longest wait: the embedded store serialises a
collection's writes, so one long delete stalls every run record behind it.

    uv run --frozen python bench/cleanup.py                          # 200,000 runs, embedded then FerretDB
    uv run --frozen python bench/cleanup.py --store embedded --runs 20000 --batch-sizes 5000,50000

FerretDB 1.24 gets `--ferretdb-runs` (default 50,000) and `--budget-s` per approach; its
one-statement baseline fails past ~32,000 documents ("too many SQL variables"), which the
table reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bench.stores import MACHINE_NOTE, add_store_option, local_store, store_kinds, within
from services.janitor.cleanup import Retention, clean_up, sweeps
from shared.names import Collections
from shared.store import Database, Document, ensure_indexes

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
RETENTION = Retention(runs=timedelta(days=30), failed_runs=timedelta(days=90), whale_trades=timedelta(days=7))
SEED_BATCH = 5_000
#: One run in this many is recent enough to be kept.
KEEP_EVERY = 10
#: The concurrent writer's record: never expired (no `ended_at`), not counted as kept.
PROBE_ID = "probe:heartbeat"
#: Pause between the probe's writes.
PROBE_EVERY_S = 0.05


def make_run(i: int) -> Document:
    kept = i % KEEP_EVERY == 0
    ended = NOW - (timedelta(days=1) if kept else timedelta(days=40, minutes=i % 10_000))
    return {
        "_id": f"whale_sync:{ended:%Y-%m-%dT%H:%M:%SZ}:{i:07d}",
        "job": "whale_sync",
        "trigger": "schedule",
        "status": "completed",
        "attempt_count": 1,
        "started_at": ended - timedelta(seconds=2),
        "ended_at": ended,
        "updated_at": ended,
        "worker": "whale_sync-7f9c",
        "summary": {"fetched": 120, "stored": 3},
        "attempts": [{"number": 1, "started_at": ended, "ended_at": ended, "outcome": "succeeded"}],
    }


async def seed(db: Database, runs: int) -> None:
    await ensure_indexes(db)
    for first in range(0, runs, SEED_BATCH):
        await db[Collections.RUNS].insert_many([make_run(i) for i in range(first, min(runs, first + SEED_BATCH))])


async def plain_delete(db: Database) -> int:
    """The baseline: one delete per sweep."""
    deleted = 0
    for sweep in sweeps(RETENTION, NOW):
        deleted += (await db[sweep.collection].delete_many(sweep.expired)).deleted_count
    return deleted


def ours(batch_size: int) -> Callable[[Database], Awaitable[int]]:
    async def run(db: Database) -> int:
        return sum((await clean_up(db, retention=RETENTION, now=NOW, batch_size=batch_size)).values())

    return run


async def probe_writes(db: Database, done: asyncio.Event) -> float:
    """Update one run record every `PROBE_EVERY_S` until `done`; the longest write in seconds."""
    longest = 0.0
    while not done.is_set():
        started = time.perf_counter()
        await db[Collections.RUNS].update_one({"_id": PROBE_ID}, {"$inc": {"beats": 1}}, upsert=True)
        longest = max(longest, time.perf_counter() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), PROBE_EVERY_S)
    return longest


async def measure(
    client: AsyncMongoClient[Document], runs: int, delete: Callable[[Database], Awaitable[int]], budget_s: float
) -> tuple[str, str]:
    """Seed, delete, check what is left; (time, the probe's longest write) as text, or why there is none."""
    db = client[f"bench_cleanup_{int(time.time() * 1000)}"]
    try:
        await seed(db, runs)
        done = asyncio.Event()
        probe = asyncio.create_task(probe_writes(db, done))
        started = time.perf_counter()
        try:
            deleted = await within(budget_s, delete(db))
        except PyMongoError as exc:
            return f"failed: {str(exc).split(', full error')[0][:90]}", "-"
        finally:
            elapsed = time.perf_counter() - started
            done.set()
            longest = await probe
        if deleted is None:
            return f"past the {budget_s:g}s budget (stopped)", "-"
        kept = await db[Collections.RUNS].count_documents({"_id": {"$ne": PROBE_ID}})
        want = len(range(0, runs, KEEP_EVERY))
        if kept != want or deleted != runs - want:
            raise SystemExit(f"wrong result: deleted {deleted}, kept {kept}; expected {runs - want} and {want}")
        return f"{elapsed:.1f}", f"{longest * 1000:,.0f}"
    finally:
        await client.drop_database(db.name)


async def bench(label: str, url: str, runs: int, batch_sizes: list[int], budget_s: float) -> list[tuple[str, str, str]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    results: list[tuple[str, str, str]] = []
    try:
        approaches: list[tuple[str, Callable[[Database], Awaitable[int]]]] = [
            ("one delete_many per sweep (baseline)", plain_delete)
        ]
        approaches += [(f"clean_up, batch {size:,}", ours(size)) for size in batch_sizes]
        for name, delete in approaches:
            print(f"{label}: {name} over {runs:,} runs ...", file=sys.stderr, flush=True)
            results.append((name, *await measure(client, runs, delete, budget_s)))
    finally:
        await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200_000, help="run records seeded (90 %% expired)")
    parser.add_argument("--batch-sizes", default="5000", help="comma-separated batch sizes of ours (default 5000)")
    parser.add_argument("--budget-s", type=float, default=900, help="budget of each approach (0: none)")
    add_store_option(parser)
    parser.add_argument("--ferretdb-runs", type=int, default=50_000, help="run records on FerretDB")
    args = parser.parse_args()
    try:
        batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r}: expected numbers separated by commas, e.g. 5000,50000")
    if min(args.runs, args.ferretdb_runs, *batch_sizes) < 1:
        parser.error("--runs, --ferretdb-runs and every batch size must be at least 1")
    rows: list[str] = []
    for kind in store_kinds(args.store):
        runs = args.ferretdb_runs if kind == "ferretdb" else args.runs
        with local_store(kind) as servers:
            results = asyncio.run(bench(kind, servers.mongo_url, runs, batch_sizes, args.budget_s))
        base = results[0][1]
        for name, seconds, longest_ms in results:
            try:
                ratio = f"{float(base) / float(seconds):.2f}x"
            except ValueError:
                ratio = "-"
            rows.append(f"{kind:<10}{runs:>9,}  {name:<40}{seconds:>10}{ratio:>9}{longest_ms:>22}")
    print(f"\ncleanup of expired runs (90 % of those seeded); {MACHINE_NOTE}")
    print(f"{'store':<10}{'runs':>9}  {'approach':<40}{'seconds':>10}{'vs base':>9}{'longest run write ms':>22}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
