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
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import nats.errors
import nats.js.errors
import typer
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from shared.bus import connect_nats, ensure_kv, kv_configs, stream_configs
from shared.errors import ConfigError, InvalidRequest, PulseError, Unreachable
from shared.names import JOBS
from shared.readmodel import timetext
from shared.settings import Settings, load_settings
from shared.store import Database, Document, connect_store

from .stack import live_stack

T = TypeVar("T")

#: Width of output that goes to a pipe or file (no COLUMNS set): wide enough that table
#: cells are never wrapped or cut, so piped output keeps full values (run ids, errors).
PIPE_WIDTH = 10_000


class _CliConsole(Console):
    """A console that fits a terminal and, writing to a pipe or file, never wraps or cuts.

    Whether the output is a terminal is decided at each print, not at import: the stream
    (and COLUMNS) in effect then is the one written to. A COLUMNS set by the caller wins.
    """

    @property
    def size(self) -> ConsoleDimensions:
        if not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(PIPE_WIDTH, super().size.height)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console = _CliConsole()
err_console = _CliConsole(stderr=True)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_UNREACHABLE) -> NoReturn:
    """Print `message` as an error on stderr and exit with `code` (2 unless told)."""
    # The message quotes user input: escape it so '[/]' or '[abc]' print as typed, not as markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


#: Settings a running `pulse up` provides, by environment variable.
_STACK_FIELDS = {
    "PULSE_NATS_URL": "nats_url",
    "PULSE_MONGO_URL": "mongo_url",
    "PULSE_MONGO_DB": "mongo_db",
    "PULSE_NAMESPACE": "namespace",
}


def cli_settings(*, use_stack: bool = True) -> Settings:
    """The settings from the environment, or exit 2 naming every bad variable.

    When neither PULSE_NATS_URL nor PULSE_MONGO_URL is set and a `pulse up` is running
    (its record at PULSE_STACK_FILE names a live pid), its servers are used: a second
    shell needs no environment at all. Variables that are set always win.
    """
    try:
        settings = load_settings()
        if not use_stack or "PULSE_NATS_URL" in os.environ or "PULSE_MONGO_URL" in os.environ:
            return settings
        record = live_stack(settings.stack_file)
        if record is None:
            return settings
        from_stack = record.env()
        return load_settings(
            **{field: from_stack[name] for name, field in _STACK_FIELDS.items() if name not in os.environ}
        )
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


def check_job(settings: Settings, job: str) -> str:
    """Return `job` if the system knows it, else exit 2 listing the jobs it knows."""
    if job not in JOBS:
        fail(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    settings.jobs.for_job(job)
    return job


def check_seconds(value: float | None, *, option: str) -> None:
    """Exit 2 unless `value` (a SECONDS option) is None or a finite number above 0.

    Click's float type takes 'nan' and 'inf', which pass a `<= 0` check and break later.
    """
    if value is not None and not (math.isfinite(value) and value > 0):
        fail(f"{option} must be a positive, finite number of seconds, got {value}")


def parse_duration(text: str, *, option: str) -> timedelta:
    """Parse '90s', '5m', '1h30m', '2d' or a bare number of seconds; exit 2 on anything else."""
    try:
        return timetext.parse_duration(text, option=option)
    except ValueError as exc:
        fail(str(exc))


def parse_time(text: str, *, option: str) -> datetime:
    """Parse an ISO-8601 time with a timezone ('2026-12-01T09:00:00Z'); exit 2 otherwise."""
    try:
        return timetext.parse_time(text, option=option)
    except ValueError as exc:
        fail(str(exc))


def parse_since(text: str, *, option: str = "--since") -> datetime:
    """A start time given as a duration back from now ('2h') or an ISO-8601 time; exit 2 otherwise."""
    try:
        return timetext.parse_since(text, option=option)
    except ValueError as exc:
        fail(str(exc))


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


def time_left(limit_s: float, deadline: float | None) -> float:
    """`limit_s`, or what is left until `deadline` (event-loop time) when that is sooner.

    Cut down to a tenth of a second (at least 0.1 s) so an error's "within 1.9s" reads well.
    """
    if deadline is None:
        return limit_s
    left = deadline - asyncio.get_running_loop().time()
    return limit_s if limit_s <= left else max(0.1, math.floor(left * 10) / 10)  # never past the deadline


@asynccontextmanager
async def connect(
    settings: Settings, *, need_store: bool = True, setup: bool = True, deadline: float | None = None
) -> AsyncIterator[Connections]:
    """Connect to NATS (and MongoDB) with bounded timeouts.

    Args:
        settings: where to connect.
        need_store: also connect to MongoDB (and fail fast if it does not answer).
        setup: create missing streams and KV buckets (existing ones are left as they are).
        deadline: event-loop time by which connecting must be done (a command's `--timeout`):
            each server's own timeout is cut to what is left, so the error still names the
            server that did not answer.

    Raises:
        BusUnavailable: NATS did not answer within `nats_connect_timeout_s` (or the deadline).
        StoreUnavailable: MongoDB did not answer within `mongo_timeout_s` (or the deadline).
    """
    nats_client = await connect_nats(
        settings, name="pulse-cli", timeout_s=time_left(settings.nats_connect_timeout_s, deadline)
    )
    mongo: AsyncMongoClient[Document] | None = None
    try:
        js = nats_client.jetstream(timeout=settings.nats_connect_timeout_s)
        if setup:
            try:
                await asyncio.wait_for(
                    ensure_streams_exist(js, settings), timeout=time_left(settings.nats_connect_timeout_s * 2, deadline)
                )
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                raise Unreachable(
                    f"JetStream at {settings.nats_url_redacted} did not answer; is JetStream enabled (nats-server -js)?"
                ) from None
        db: Any = None
        if need_store:
            left = time_left(settings.mongo_timeout_s, deadline)
            mongo, db = await connect_store(settings.model_copy(update={"mongo_timeout_s": left}))
        yield Connections(settings, nats_client, js, mongo, db)
    finally:
        if mongo is not None:
            await mongo.close()
        await nats_client.close()
