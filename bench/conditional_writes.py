"""What a conditional write of one run costs on each store, as the `runs` collection grows.

    uv run --frozen python bench/conditional_writes.py [--sizes 1000,5000,20000] [--store both]

The runtime's state changes are conditional single-document writes: "by `_id`, and only
if the run is not terminal / still held by this attempt / its effects still pending"
(`shared/runtime/_records.py`). This bench times the four shapes such a write can take,
against the cheapest (an `update_one` by `_id` alone, the baseline of the same run):

- `update_one` and `find_one_and_update` (findAndModify), each
- filtered by `_id` alone, or by `_id` plus a `status` condition.

A ratio that grows with the collection means the store scans `runs` for that shape
instead of looking the document up by `_id`. MongoDB looks it up in every shape.
This is a benchmark, not a test: it prints a table of ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymongo import AsyncMongoClient  # noqa: E402

from bench.stores import MACHINE_NOTE, add_store_option, local_store, store_kinds  # noqa: E402
from shared.schemas import TERMINAL_STATUSES  # noqa: E402

NOT_TERMINAL = {"status": {"$nin": sorted(status.value for status in TERMINAL_STATUSES)}}  # as _records writes it
SET = {"$set": {"heartbeat_at": 1}}

Write = Callable[[Any, str], Awaitable[Any]]
SHAPES: dict[str, Write] = {
    "update_one {_id} (baseline)": lambda runs, run_id: runs.update_one({"_id": run_id}, SET),
    "update_one {_id, status}": lambda runs, run_id: runs.update_one({"_id": run_id, **NOT_TERMINAL}, SET),
    "findAndModify {_id}": lambda runs, run_id: runs.find_one_and_update({"_id": run_id}, SET),
    "findAndModify {_id, status}": lambda runs, run_id: runs.find_one_and_update({"_id": run_id, **NOT_TERMINAL}, SET),
}


async def grow(runs: Any, have: int, size: int, chunk: int = 50) -> None:
    """Add running runs `have`..`size` (chunks of 50: FerretDB hangs on larger bulk writes)."""
    for start in range(have, size, chunk):
        docs = [
            {"_id": f"run-{n}", "job": "bench", "status": "running", "error": "x" * 200}
            for n in range(start, min(start + chunk, size))
        ]
        await runs.insert_many(docs)


async def time_shape(runs: Any, write: Write, size: int, writes: int) -> float:
    """Mean milliseconds of `writes` writes of one shape, spread over the collection."""
    started = time.perf_counter()
    for n in range(writes):
        await write(runs, f"run-{(n * 7919) % size}")
    return 1000 * (time.perf_counter() - started) / writes


async def measure(kind: str, sizes: list[int], writes: int) -> list[str]:
    rows = []
    with local_store(kind) as servers:  # type: ignore[arg-type]
        client: AsyncMongoClient[Any] = AsyncMongoClient(servers.mongo_url, directConnection=True)
        runs = client["bench"]["runs"]
        have = 0
        for size in sizes:
            await grow(runs, have, size)
            have = size
            times = {name: await time_shape(runs, write, size, writes) for name, write in SHAPES.items()}
            base = times["update_one {_id} (baseline)"]
            for name, ms in times.items():
                rows.append(f"{kind:9s} {size:>7,}  {name:30s} {ms:8.2f} {ms / base:8.1f}x")
        await client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000", help="runs stored at each step, comma-separated")
    parser.add_argument("--writes", type=int, default=50, help="writes timed per shape and size")
    add_store_option(parser)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    rows = []
    for kind in store_kinds(args.store):
        print(f"{kind}: measuring ...", flush=True)
        rows += asyncio.run(measure(kind, sizes, args.writes))
    print(f"\nconditional writes of one run by _id; {MACHINE_NOTE}\n")
    print(f"{'store':9s} {'runs':>7s}  {'shape':30s} {'mean ms':>8s} {'vs base':>9s}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
