"""MongoDB wiring: the async client, the database, and idempotent index set-up.

The one boundary where PyMongo's connection errors become `StoreUnavailable`. Every
query in the code base must also run on FerretDB 1.24 (see DESIGN.md's subset).
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from shared.errors import StoreUnavailable
from shared.names import Collections
from shared.settings import Settings

log = logging.getLogger(__name__)

Document = dict[str, Any]
Database = AsyncDatabase[Document]

#: (collection, keys, options) of every index. Names are explicit so that a change of
#: options is detected as a conflict rather than silently creating a second index.
INDEXES: list[tuple[str, list[tuple[str, int]], dict[str, Any]]] = [
    (Collections.RUNS, [("job", ASCENDING), ("started_at", DESCENDING)], {"name": "job_started"}),
    (Collections.RUNS, [("status", ASCENDING), ("heartbeat_at", ASCENDING)], {"name": "status_heartbeat"}),
    (Collections.RUNS, [("ended_at", ASCENDING)], {"name": "ended_at"}),
    (Collections.RUNS, [("job", ASCENDING), ("ended_at", DESCENDING)], {"name": "job_ended"}),
    # The run listings' filters, each with the listing's sort (newest first).
    (Collections.RUNS, [("started_at", DESCENDING), ("_id", DESCENDING)], {"name": "started"}),
    # A job's last run (status views sort by request time).
    (Collections.RUNS, [("job", ASCENDING), ("requested_at", DESCENDING)], {"name": "job_requested"}),
    (Collections.RUNS, [("status", ASCENDING), ("started_at", DESCENDING)], {"name": "status_started"}),
    (Collections.RUNS, [("trigger", ASCENDING), ("started_at", DESCENDING)], {"name": "trigger_started"}),
    (Collections.AUDIT, [("at", DESCENDING)], {"name": "at"}),
    (Collections.STEPS, [("run_id", ASCENDING), ("index", ASCENDING)], {"name": "run_index"}),
    (Collections.STEPS, [("run_ended_at", ASCENDING)], {"name": "run_ended_at"}),
    (Collections.MARKETS, [("active", ASCENDING)], {"name": "active"}),
    (Collections.MARKETS, [("provider", ASCENDING), ("condition_id", ASCENDING)], {"name": "condition"}),
    (Collections.MARKETS, [("volume_24h", DESCENDING)], {"name": "volume_24h"}),
    (Collections.MARKETS, [("provider", ASCENDING), ("seen_at", ASCENDING)], {"name": "provider_seen"}),
    (Collections.WHALE_TRADES, [("traded_at", DESCENDING)], {"name": "traded_at"}),
    (Collections.WHALE_TRADES, [("market", ASCENDING), ("traded_at", DESCENDING)], {"name": "market_traded"}),
    (Collections.MARKET_STATS, [("computed_at", DESCENDING)], {"name": "computed_at"}),
]


def make_client(settings: Settings) -> AsyncMongoClient[Document]:
    """A lazily connecting client with bounded timeouts (no network I/O here)."""
    timeout_ms = int(settings.mongo_timeout_s * 1000)
    try:
        return AsyncMongoClient(
            settings.mongo_url.get_secret_value(),
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            tz_aware=True,
            appname="marketpulse",
        )
    except (ConfigurationError, ValueError) as exc:
        raise StoreUnavailable(
            f"invalid MongoDB URI {settings.mongo_url_redacted}: {type(exc).__name__}. Check PULSE_MONGO_URL."
        ) from None


async def ping(client: AsyncMongoClient[Document], settings: Settings) -> None:
    """Raise `StoreUnavailable` unless the server answers within the configured timeout."""
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        raise StoreUnavailable(
            f"cannot reach MongoDB at {settings.mongo_url_redacted} within {settings.mongo_timeout_s:g}s "
            f"({type(exc).__name__}). Check PULSE_MONGO_URL and that the server is running."
        ) from None


async def connect_store(settings: Settings) -> tuple[AsyncMongoClient[Document], Database]:
    """Connect, check the server answers, and return the client and the database."""
    client = make_client(settings)
    try:
        await ping(client, settings)
    except StoreUnavailable:
        await client.close()
        raise
    return client, client[settings.mongo_db]


async def ensure_indexes(db: Database) -> None:
    """Create every index in `INDEXES`; a no-op when they exist. Unique `_id`s are implicit."""
    for collection, keys, options in INDEXES:
        try:
            await db[collection].create_index(keys, **options)
        except OperationFailure as exc:
            raise StoreUnavailable(
                f"cannot create index {options.get('name')} on {collection}: {exc.details or exc}"
            ) from None
