"""What every `pulse` command shares: settings, bounded connections, output, exit codes.

Exit codes: 0 success, 1 the operation itself failed (e.g. a waited-for run failed, a
run or dead letter does not exist), 2 a server could not be reached or the input or
configuration was invalid. 130 after Ctrl-C.

Every server call is bounded: connecting uses the settings' timeouts, and any NATS or
MongoDB error that escapes a command is reported with the (redacted) URL it concerns,
never with a traceback or a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import nats.errors
import nats.js.errors
import typer
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from rich.console import Console

from shared.bus import connect_nats, ensure_kv, kv_configs, stream_configs
from shared.errors import ConfigError, InvalidRequest, PulseError, Unreachable
from shared.names import JOBS
from shared.settings import Settings, load_settings
from shared.store import Database, Document, connect_store

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def fail(message: str, code: int = EXIT_UNREACHABLE) -> NoReturn:
    """Print `message` as an error on stderr and exit with `code` (2 unless told)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def cli_settings() -> Settings:
    """The settings from the environment, or exit 2 naming every bad variable."""
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning our errors into a message and an exit code.

    Unreachable servers, bad input and bad configuration exit 2; any other `PulseError`
    exits 1. Foreign NATS/MongoDB errors that escaped a command (a server that went away
    mid-command) exit 2 too: the operator's next step is the same, check the server.
    """
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except (Unreachable, ConfigError, InvalidRequest) as exc:
        fail(str(exc))
    except PulseError as exc:
        fail(str(exc), EXIT_FAILED)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
        fail(f"NATS did not answer in time ({type(exc).__name__}); check the server and PULSE_NATS_URL")
    except nats.js.errors.APIError as exc:
        fail(f"NATS JetStream refused the request: {exc.description or exc}", EXIT_FAILED)
    except PyMongoError as exc:
        # PyMongo messages can quote the URI; name the error class only.
        fail(f"MongoDB did not answer ({type(exc).__name__}); check the server and PULSE_MONGO_URL")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def print_json(data: Any) -> None:
    """Write `data` as indented JSON on stdout (datetimes and enums as strings)."""
    sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")
    sys.stdout.flush()


def operator() -> str:
    """Who is asking, for `requested_by` ("pulse:<user>@<host>")."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"pulse:{user}@{socket.gethostname()}"[:200]


def check_job(settings: Settings, job: str) -> str:
    """Return `job` if the system knows it, else exit 2 listing the jobs it knows."""
    if job not in JOBS:
        fail(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    settings.jobs.for_job(job)
    return job


def parse_duration(text: str, *, option: str) -> timedelta:
    """Parse '90s', '5m', '1h30m', '2d' or a bare number of seconds; exit 2 on anything else."""
    cleaned = text.strip().lower().replace(" ", "")
    try:
        return timedelta(seconds=float(cleaned))
    except ValueError:
        pass
    matches = list(_DURATION_RE.finditer(cleaned))
    if not matches or "".join(m.group(0) for m in matches) != cleaned:
        fail(f"{option} {text!r} is not a duration: use e.g. 90s, 5m, 1h30m or 2d")
    return timedelta(seconds=sum(float(m.group(1)) * _DURATION_UNITS_S[m.group(2)] for m in matches))


def parse_time(text: str, *, option: str) -> datetime:
    """Parse an ISO-8601 time with a timezone ('2026-12-01T09:00:00Z'); exit 2 otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} {text!r} is not a time: use ISO 8601 with a timezone, e.g. 2026-12-01T09:00:00Z")
    if moment.tzinfo is None:
        fail(f"{option} {text!r} has no timezone: add one, e.g. {text}Z for UTC")
    return moment.astimezone(UTC)


def parse_since(text: str, *, option: str = "--since") -> datetime:
    """A start time given as a duration back from now ('2h') or an ISO-8601 time."""
    if _DURATION_RE.search(text) and not any(c in text for c in "T-:"):
        return datetime.now(UTC) - parse_duration(text, option=option)
    return parse_time(text, option=option)


@dataclass
class Connections:
    """Open connections of one command; `db` is None when the store was not needed."""

    settings: Settings
    nats: NatsClient
    js: JetStreamContext
    mongo: AsyncMongoClient[Document] | None
    db: Database

    @property
    def names(self) -> Any:
        return self.settings.names


async def ensure_streams_exist(js: JetStreamContext, settings: Settings) -> None:
    """Create streams and buckets that are missing; never change existing ones.

    The CLI runs with whatever environment the operator has; updating live streams or
    consumers from it could quietly undo the services' configuration. Creating what is
    missing lets `pulse trigger` work before any service ever started (the request
    waits in JOBS until its consumer appears).
    """
    for config in stream_configs(settings):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            # BadRequest: created concurrently by a service, which is fine.
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_stream(config)
    for bucket in kv_configs(settings):
        await ensure_kv(js, bucket)


@asynccontextmanager
async def connect(settings: Settings, *, need_store: bool = True, setup: bool = True) -> AsyncIterator[Connections]:
    """Connect to NATS (and MongoDB) with bounded timeouts.

    Args:
        settings: where to connect.
        need_store: also connect to MongoDB (and fail fast if it does not answer).
        setup: create missing streams and KV buckets (existing ones are left as they are).

    Raises:
        BusUnavailable: NATS did not answer within `nats_connect_timeout_s`.
        StoreUnavailable: MongoDB did not answer within `mongo_timeout_s`.
    """
    nats_client = await connect_nats(settings, name="pulse-cli")
    mongo: AsyncMongoClient[Document] | None = None
    try:
        js = nats_client.jetstream(timeout=settings.nats_connect_timeout_s)
        if setup:
            try:
                await asyncio.wait_for(ensure_streams_exist(js, settings), timeout=settings.nats_connect_timeout_s * 2)
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                raise Unreachable(
                    f"JetStream at {settings.nats_url_redacted} did not answer; is JetStream enabled (nats-server -js)?"
                ) from None
        db: Any = None
        if need_store:
            mongo, db = await connect_store(settings)
        yield Connections(settings, nats_client, js, mongo, db)
    finally:
        if mongo is not None:
            await mongo.close()
        await nats_client.close()


def as_utc(moment: datetime | None) -> datetime | None:
    """Stored datetimes come back aware (tz_aware client); normalize defensively anyway."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'3m ago' / 'in 5s' / '-' for a datetime relative to now."""
    moment = as_utc(moment)
    if moment is None:
        return "-"
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = human_seconds(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def human_seconds(seconds: float) -> str:
    """12s, 4m05s, 3h20m, 2d04h."""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
