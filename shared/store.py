"""MongoDB wiring: the async client, the database, deadlines, and idempotent index set-up.

The one boundary where PyMongo's network and timeout errors become `StoreUnavailable`
(`store_errors`). Every call has a deadline: the client's operation timeout
(`PULSE_MONGO_OP_TIMEOUT_S`, PyMongo's `timeoutMS`), or for an operation that may
legitimately take longer, its own bound in a `store_deadline` block. Every query in the
code base must also run on FerretDB 1.24 (see DESIGN.md's subset).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pymongo
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from shared.errors import ConfigError, StoreUnavailable
from shared.names import Collections
from shared.settings import Settings

log = logging.getLogger(__name__)

Document = dict[str, Any]
Database = AsyncDatabase[Document]
T = TypeVar("T")

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
    # The slot ledger: a job's slots in a window (pulse slots), and retention by slot time.
    (Collections.SLOTS, [("job", ASCENDING), ("slot", DESCENDING)], {"name": "job_slot"}),
    (Collections.SLOTS, [("slot", ASCENDING)], {"name": "slot"}),
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


def tls_options(settings: Settings) -> dict[str, Any]:
    """PyMongo's TLS keywords from the `PULSE_MONGO_TLS_*` files (empty when none is set).

    The client certificate and key may be two files (as Kubernetes mounts them) or one
    PEM holding both (give the same path twice); PyMongo wants one (`client_pem`).
    """
    options: dict[str, Any] = {}
    if settings.mongo_tls_ca_file is not None:
        options["tls"] = True
        options["tlsCAFile"] = str(settings.mongo_tls_ca_file)
    if settings.mongo_tls_cert_file is not None and settings.mongo_tls_key_file is not None:
        options["tls"] = True
        options["tlsCertificateKeyFile"] = str(client_pem(settings.mongo_tls_cert_file, settings.mongo_tls_key_file))
    return options


@functools.lru_cache(maxsize=4)
def client_pem(cert_file: Path, key_file: Path) -> Path:
    """One PEM with the client certificate and its key, as PyMongo needs it.

    Kubernetes mounts `tls.crt` and `tls.key` separately; they are joined once per process
    into a private file (mode 0600, in a fresh 0700 temporary directory) removed at exit.
    """
    if cert_file == key_file:
        return cert_file
    try:
        joined = cert_file.read_bytes().rstrip(b"\n") + b"\n" + key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read PULSE_MONGO_TLS_CERT_FILE/PULSE_MONGO_TLS_KEY_FILE ({type(exc).__name__}: {exc.filename})"
        ) from None
    directory = Path(tempfile.mkdtemp(prefix="pulse-mongo-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    pem = directory / "client.pem"
    pem.touch(mode=0o600)
    pem.write_bytes(joined)
    return pem


def make_client(settings: Settings) -> AsyncMongoClient[Document]:
    """A lazily connecting client with bounded timeouts and TLS from settings (no network I/O here).

    Every operation has the deadline `settings.mongo_op_timeout_s` (PyMongo's client-side
    operation timeout); server selection and connecting give up after `mongo_timeout_s`.
    """
    timeout_ms = int(settings.mongo_timeout_s * 1000)
    try:
        return AsyncMongoClient(
            settings.mongo_url.get_secret_value(),
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            timeoutMS=int(settings.mongo_op_timeout_s * 1000),
            tz_aware=True,
            appname="marketpulse",
            **tls_options(settings),
        )
    except (ConfigurationError, ValueError) as exc:
        raise StoreUnavailable(
            f"invalid MongoDB URI {settings.mongo_url_redacted}: {type(exc).__name__}. Check PULSE_MONGO_URL."
        ) from None


#: PyMongo errors that say the store is away, slow or cut off, not that the request is wrong.
_UNAVAILABLE = (ConnectionFailure, AutoReconnect, ExecutionTimeout, WTimeoutError)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` is PyMongo saying the store did not answer (network, timeout, deadline)."""
    return isinstance(exc, _UNAVAILABLE) or (isinstance(exc, PyMongoError) and exc.timeout)


@contextlib.contextmanager
def store_errors(what: str = "MongoDB") -> Iterator[None]:
    """Translate PyMongo's network and timeout errors raised inside into `StoreUnavailable`.

    Other PyMongo errors (a duplicate key, a rejected query) pass through unchanged: they
    are answers, not silence. The message names the error class only, since PyMongo's
    texts may quote the URI.
    """
    try:
        yield
    except PyMongoError as exc:
        if not is_unavailable(exc):
            raise
        kind = "did not answer within its deadline" if exc.timeout else "could not be reached"
        raise StoreUnavailable(
            f"{what}: the store {kind} ({type(exc).__name__}); it will be retried. "
            "Check that MongoDB is running and PULSE_MONGO_URL."
        ) from exc


@contextlib.contextmanager
def store_deadline(seconds: float, what: str) -> Iterator[None]:
    """Give the operations inside one deadline of `seconds` (instead of the client's per-call one).

    For long operations that legitimately exceed `PULSE_MONGO_OP_TIMEOUT_S` (a market_sync
    chunk, a stats aggregation, a cleanup batch); the bound must still be finite.
    """
    with store_errors(what), pymongo.timeout(seconds):
        yield


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size` (the bound of one bulk write)."""
    if size < 1:
        raise ValueError("a batch holds at least one item")
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def ping(client: AsyncMongoClient[Document], settings: Settings) -> None:
    """Raise `StoreUnavailable` unless the server answers within `mongo_timeout_s`."""
    try:
        # With timeoutMS set, PyMongo's server selection waits for the whole operation
        # deadline instead of serverSelectionTimeoutMS: bound the first contact explicitly.
        with pymongo.timeout(settings.mongo_timeout_s):
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
