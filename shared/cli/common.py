"""What every `pulse` command shares: settings, bounded connections, output, exit codes.

Exit codes: 0 success, 1 the operation itself failed (e.g. a waited-for run failed),
2 a server could not be reached or the input/config was invalid.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pymongo import AsyncMongoClient
from rich.console import Console

from shared.bus import connect_nats, ensure_topology
from shared.errors import ConfigError, InvalidRequest, PulseError, Unreachable
from shared.settings import Settings, load_settings
from shared.store import Database, Document, connect_store

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


def fail(message: str, code: int = EXIT_UNREACHABLE) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def cli_settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning our errors into a message and exit code 2."""
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except (Unreachable, ConfigError, InvalidRequest) as exc:
        fail(str(exc))
    except PulseError as exc:
        fail(str(exc), EXIT_FAILED)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")


@dataclass
class Connections:
    settings: Settings
    nats: NatsClient
    js: JetStreamContext
    mongo: AsyncMongoClient[Document]
    db: Database


@asynccontextmanager
async def connect(settings: Settings, *, need_store: bool = True, setup: bool = True) -> AsyncIterator[Connections]:
    """Connect to NATS (and MongoDB) with bounded timeouts; set up streams when `setup`."""
    nats_client = await connect_nats(settings, name="pulse-cli")
    mongo: AsyncMongoClient[Document] | None = None
    try:
        js = nats_client.jetstream(timeout=settings.nats_connect_timeout_s)
        if setup:
            await asyncio.wait_for(ensure_topology(js, settings), timeout=settings.nats_connect_timeout_s * 2)
        if need_store:
            mongo, db = await connect_store(settings)
        else:
            mongo, db = None, None
        yield Connections(settings, nats_client, js, mongo, db)  # type: ignore[arg-type]
    finally:
        if mongo is not None:
            await mongo.close()
        await nats_client.close()
