"""What every benchmark shares: `--store`, a local store of each kind, and time budgets.

`--store both` (the default) measures the embedded store (mongo-java-server, the default
of `pulse up` and the tests) and then FerretDB 1.24 (the optional store) in one
invocation, each against its own same-run baseline. FerretDB hangs on bulk writes of more
than ~100 updates and slows down as collections grow, so each bench gives it smaller
sizes and a time budget (options named `--ferretdb-*`): a run always finishes, and what
was cut is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

from shared.localstack import STORE_KINDS, LocalServers, StoreKind, start_local_servers

T = TypeVar("T")

#: Printed above every table: the figures only mean something as same-run ratios.
MACHINE_NOTE = (
    "2-core machine shared with other engineers' test runs: compare ratios within one run, not absolute speeds"
)


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        choices=[*STORE_KINDS, "both"],
        default="both",
        help="store to measure: embedded (mongo-java-server, the default store), ferretdb (FerretDB 1.24), "
        "or both in one run (default)",
    )


def store_kinds(choice: str) -> list[StoreKind]:
    """The stores `--store` names, the default store first."""
    return list(STORE_KINDS) if choice == "both" else [choice]  # type: ignore[list-item]


@contextlib.contextmanager
def local_store(kind: StoreKind, *, nats: bool = False) -> Iterator[LocalServers]:
    """A fresh store of `kind` (and nats-server if asked) in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    servers = start_local_servers(folder, nats=nats, store=kind)
    try:
        yield servers
    finally:
        servers.stop()
        if not os.environ.get("BENCH_KEEP_DATA"):
            shutil.rmtree(folder, ignore_errors=True)


async def within(budget_s: float, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when it did not finish within `budget_s` (0: no budget)."""
    if budget_s <= 0:
        return await work
    try:
        return await asyncio.wait_for(work, budget_s)
    except TimeoutError:
        return None
