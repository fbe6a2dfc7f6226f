"""Per-run log lines: shipped from the workers to the LOGS stream, read back by `pulse logs`.

Why a JetStream stream (and not the store): log lines are an append-only, time-ordered
flow that nobody updates; a LIMITS stream keeps them for `PULSE_LOGS_MAX_AGE_DAYS` within
`PULSE_LOGS_MAX_BYTES` (oldest first out) with no cleanup job, and `pulse logs --follow`
reads new lines as they arrive with an ordered consumer instead of polling a collection.
The lines of `job` go to `logs.<job>`; the run id travels in the body and the
`Pulse-Run-Id` header, never as a subject token (run ids contain `.`). A reader starts at
the run's start time (`DeliverPolicy.BY_START_TIME`), so it reads that job's lines since
then, not the whole history.

Shipping never holds up a run: `RunLogShipper.emit` only appends the formatted line to a
bounded in-memory buffer (lines past it are dropped and counted), and a background task
publishes the buffer with core NATS publishes (no acknowledgement awaited) on a connection
of its own: the worker's connection is closed by the broker's stop before the last lines
of a draining attempt could go out, and a burst of lines never queues ahead of acks. Volume is
bounded per run attempt (`PULSE_LOG_LINES_PER_RUN`, then one marker line) and per line
(`PULSE_LOG_LINE_MAX_CHARS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, deque
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NatsClient

from shared.bus import connect_nats
from shared.logs import JsonFormatter, RunContextFilter, SecretFilter, secret_values
from shared.names import Names
from shared.settings import Settings

RUN_ID_HEADER = "Pulse-Run-Id"
#: Lines waiting to be published at most; past it new lines are dropped (never block a run).
_BUFFER_LINES = 10_000
#: Runs whose line counts are remembered (oldest forgotten first).
_TRACKED_RUNS = 1_000
_FLUSH_EVERY_S = 0.2


class RunLogShipper(logging.Handler):
    """A logging handler that sends every line carrying a `run_id` to `logs.<job>`.

    Install it with `start()` (on the running event loop) and remove it with `stop()`,
    which publishes what is still buffered.
    """

    def __init__(self, settings: Settings, *, name: str) -> None:
        super().__init__(level=settings.log_level)
        self._settings = settings
        self._names: Names = settings.names
        self._name = name
        self._nats: NatsClient | None = None
        self._line_cap = settings.log_lines_per_run
        self._max_chars = settings.log_line_max_chars
        self._formatter = JsonFormatter()
        self._buffer: deque[tuple[str, str, bytes]] = deque()
        self._counts: OrderedDict[tuple[str, object], int] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.addFilter(RunContextFilter())
        self.addFilter(SecretFilter(secret_values(settings)))

    def __repr__(self) -> str:
        return f"<RunLogShipper buffered={len(self._buffer)} dropped={self.dropped}>"

    # -- logging side (any thread, never blocks) -----------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        run_id, job = getattr(record, "run_id", None), getattr(record, "job", None)
        if not isinstance(run_id, str) or not isinstance(job, str):
            return
        try:
            key = (run_id, getattr(record, "attempt", None))
            count = self._counts.pop(key, 0) + 1
            self._counts[key] = count
            while len(self._counts) > _TRACKED_RUNS:
                self._counts.popitem(last=False)
            if count > self._line_cap + 1:
                self.dropped += 1
                return
            line = json.loads(self._formatter.format(record))
            if count == self._line_cap + 1:
                line.update(level="WARNING", msg=f"log cap of {self._line_cap} lines reached; later lines are dropped")
                line.pop("exc", None)
            msg = str(line.get("msg", ""))
            if len(msg) > self._max_chars:
                line["msg"] = msg[: self._max_chars] + f"… ({len(msg) - self._max_chars} more characters)"
            if "exc" in line:
                line["exc"] = str(line["exc"])[-self._max_chars :]
            if len(self._buffer) >= _BUFFER_LINES:
                self.dropped += 1
                return
            self._buffer.append((job, run_id, json.dumps(line, default=str, ensure_ascii=False).encode()))
        except Exception:  # a log line must never break the code that logs it
            self.dropped += 1

    # -- publishing side (the event loop) --------------------------------------------------

    async def start(self) -> None:
        """Connect (bounded), attach to the root logger and start publishing in the background.

        Raises:
            BusUnavailable: NATS did not answer within the connect timeout.
        """
        self._nats = await connect_nats(self._settings, name=self._name)
        logging.getLogger().addHandler(self)
        self._task = asyncio.create_task(self._publish_loop(), name="run-log-shipper")

    async def stop(self) -> None:
        """Detach, publish what is buffered (bounded), and close the connection."""
        logging.getLogger().removeHandler(self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush_now(), timeout=2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nats.close(), timeout=2.0)  # close() flushes what was written
            self._nats = None

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            await self.flush_now()

    async def flush_now(self) -> None:
        """Publish every buffered line (core NATS: written to the connection, no ack awaited)."""
        while self._buffer and self._nats is not None:
            job, run_id, data = self._buffer.popleft()
            try:
                await self._nats.publish(self._names.log_subject(job), data, headers={RUN_ID_HEADER: run_id})
            except Exception:  # NATS away or its buffer full: the line is lost, the run goes on
                self.dropped += 1


def parse_line(data: bytes) -> dict[str, Any] | None:
    """One stored log line as a dict, or None when it is not one of ours."""
    try:
        line = json.loads(data)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def line_time(line: dict[str, Any]) -> datetime | None:
    """The `ts` of a stored line."""
    try:
        return datetime.fromisoformat(str(line.get("ts", "")).replace("Z", "+00:00"))
    except ValueError:
        return None
