"""Benchmark: server time of the dashboard's Overview and Runs pages with 1k, 10k and 100k runs stored.

The dashboard runs in this process (uvicorn on a free port) against a local nats-server
and the embedded store (or `--nats-url`/`--mongo-url`). Runs are seeded in steps (1k,
then up to 10k, then up to 100k: five jobs, mixed statuses, started over two days),
and after each step every page is fetched `--repeat` times (best time counts). Then
each read-model query behind the pages is timed alone, to show which dominate.

    .venv/bin/python -m bench.dashboard
    .venv/bin/python -m bench.dashboard --sizes 1000 10000 --repeat 5

Not a test: it prints a table (milliseconds, and the ratio against the 1k figure of the
same run).
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
from typing import Any

import httpx

from services.dashboard.app import Dashboard
from shared.bus import connect_nats, ensure_topology
from shared.names import JOBS, Collections
from shared.readmodel import runs, status
from shared.runtime import HttpServer, failure_streak
from shared.settings import Settings, load_settings
from shared.store import Database, Document, connect_store, ensure_indexes

SEED_BATCH = 5_000
STATUSES = ["completed"] * 90 + ["failed"] * 4 + ["skipped"] * 3 + ["canceled", "timed_out", "retrying"]
PAGES = {
    "Overview /": "/",
    "Runs /runs": "/runs",
    "Runs, job+status filter": "/runs?job=whale_sync&status=failed",
    "Runs, page 2 (keyset)": None,  # filled in from page 1's "older" link
}


def make_run(i: int, now: datetime, rng: random.Random) -> Document:
    job = JOBS[i % len(JOBS)]
    started = now - timedelta(seconds=rng.uniform(0, 2 * 86400))
    took = rng.uniform(0.05, 30)
    run_status = rng.choice(STATUSES)
    ended = None if run_status == "retrying" else started + timedelta(seconds=took)
    return {
        "_id": f"{job}:manual:bench{i:07d}",
        "job": job,
        "trigger": "schedule" if i % 3 else "manual",
        "status": run_status,
        "requested_at": started - timedelta(milliseconds=5),
        "requested_by": "bench",
        "scheduled_for": started,
        "started_at": started,
        "heartbeat_at": ended or started,
        "ended_at": ended,
        "attempt_count": 1,
        "attempts": [{"number": 1, "started_at": started, "ended_at": ended, "outcome": run_status, "worker": "w1"}],
        "summary": {"rows": i % 100},
        "error": "upstream 503" if run_status in ("failed", "timed_out") else None,
        "args": {},
    }


async def seed(db: Database, start: int, stop: int) -> None:
    rng, now = random.Random(start), datetime.now(UTC)
    for first in range(start, stop, SEED_BATCH):
        await db[Collections.RUNS].insert_many(
            [make_run(i, now, rng) for i in range(first, min(stop, first + SEED_BATCH))]
        )


async def best_ms(make: Callable[[], Awaitable[Any]], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        await make()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def page_times(http: httpx.AsyncClient, repeat: int) -> dict[str, float]:
    first = await http.get("/runs")
    older = first.text.split('id="older"')[0].rsplit('href="', 1)[-1].split('"')[0].replace("&amp;", "&")
    times = {}
    for label, path in PAGES.items():
        target = path or older

        async def fetch(target: str = target) -> None:
            answer = await http.get(target)
            assert answer.status_code == 200, (target, answer.status_code)

        times[label] = await best_ms(fetch, repeat)
    return times


async def query_times(db: Database, settings: Settings, js: Any, repeat: int) -> dict[str, float]:
    """Each query behind the pages, alone (summed over the five jobs where the page does that)."""
    col = db[Collections.RUNS]

    async def per_job(make: Callable[[str], Awaitable[Any]]) -> None:
        for job in JOBS:
            await make(job)

    return {
        "last run per job (job, requested_at)": await best_ms(
            lambda: per_job(lambda j: col.find_one({"job": j}, sort=[("requested_at", -1), ("started_at", -1)])), repeat
        ),
        "last success per job (job, ended_at)": await best_ms(
            lambda: per_job(lambda j: col.find_one({"job": j, "status": "completed"}, sort=[("ended_at", -1)])), repeat
        ),
        "running count per job": await best_ms(
            lambda: per_job(lambda j: col.count_documents({"job": j, "status": {"$in": ["running", "retrying"]}})),
            repeat,
        ),
        "failure streak per job (50 runs)": await best_ms(lambda: per_job(lambda j: failure_streak(db, j, 50)), repeat),
        "24 h window per job (success rate, p50/p95)": await best_ms(
            lambda: per_job(lambda j: status.job_window(db, j)), repeat
        ),
        "queue per job (consumer info, NATS)": await best_ms(
            lambda: per_job(lambda j: status.queue_info(js, settings, j)), repeat
        ),
        "runs page (50, newest first)": await best_ms(lambda: runs.list_runs(db, runs.RunFilter(), 50), repeat),
        "runs page, job+status filter": await best_ms(
            lambda: runs.list_runs(db, runs.RunFilter(job="whale_sync", status="failed"), 50), repeat
        ),
    }


def table(title: str, rows: dict[int, dict[str, float]]) -> None:
    sizes = sorted(rows)
    base = sizes[0]
    print(f"\n{title}")
    header = f"{'':<46}" + "".join(f"{f'{n:,} runs':>16}" for n in sizes)
    print(header)
    for label in rows[base]:
        cells = "".join(f"{rows[n][label]:>9.1f} ms {rows[n][label] / rows[base][label]:>4.1f}x" for n in sizes)
        print(f"{label:<46}{cells}")


async def bench(settings: Settings, sizes: list[int], repeat: int) -> None:
    client, db = await connect_store(settings)
    nats_client = await connect_nats(settings, name="bench-dashboard")
    js = nats_client.jetstream()
    await ensure_topology(js, settings)
    await ensure_indexes(db)
    dashboard = Dashboard(settings)
    http_server = HttpServer(dashboard.app(), "127.0.0.1", 0)  # the service's app: health routes + pages
    await http_server.start()
    await dashboard.start()
    pages: dict[int, dict[str, float]] = {}
    queries: dict[int, dict[str, float]] = {}
    try:
        stored = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_server.port}", timeout=120) as http:
            for size in sizes:
                started = time.perf_counter()
                await seed(db, stored, size)
                stored = size
                print(f"seeded up to {size:,} runs in {time.perf_counter() - started:.1f}s", flush=True)
                pages[size] = await page_times(http, repeat)
                queries[size] = await query_times(db, settings, js, repeat)
                # Printed after every size: a store that gives up at the next size keeps these figures.
                table(f"dashboard pages, server time (best of {repeat}), ratio against {sizes[0]:,} runs", pages)
                table("queries behind them, alone", queries)
    finally:
        await dashboard.stop()
        await dashboard.sources.broker.stop()
        await dashboard.close()
        await http_server.stop()
        await nats_client.close()
        await client.drop_database(settings.mongo_db)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3, help="fetches of each page; the best time counts")
    parser.add_argument("--nats-url", help="an existing nats-server (default: start one)")
    parser.add_argument("--mongo-url", help="an existing MongoDB (default: start the embedded store)")
    args = parser.parse_args()
    suffix = str(int(time.time()))

    def settings_for(nats_url: str, mongo_url: str) -> Settings:
        return load_settings(nats_url=nats_url, mongo_url=mongo_url, mongo_db=f"bench_dash_{suffix}",
                             namespace=f"bd{suffix}", mongo_timeout_s=60)  # fmt: skip

    if args.nats_url and args.mongo_url:
        asyncio.run(bench(settings_for(args.nats_url, args.mongo_url), sorted(args.sizes), args.repeat))
        return
    from shared.localstack import local_servers

    with local_servers(Path(tempfile.mkdtemp(prefix="bench-dashboard-"))) as servers:
        asyncio.run(bench(settings_for(servers.nats_url, servers.mongo_url), sorted(args.sizes), args.repeat))


if __name__ == "__main__":
    main()
