"""Shared helpers and fixtures of the runtime integration tests (no tests of its own).

Named `test_runtime_*` to stay inside the runtime's test files; other runtime test
modules import from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from nats.js import JetStreamContext

from shared.names import Collections
from shared.runtime import Worker
from shared.runtime._job import JobSpec
from shared.schemas import TERMINAL_STATUSES, JobRequest, Trigger, new_run_id, utcnow
from shared.settings import JobPolicy, RetryPolicy, Settings
from shared.store import Database
from tests.helpers import wait_for

T = TypeVar("T")


def policy(**overrides: Any) -> JobPolicy:
    """A test policy: fast retries without jitter, queue overlap (overridable)."""
    values: dict[str, Any] = {
        "schedule": "every 1m",
        "retry": RetryPolicy(max_attempts=3, initial_backoff_s=0.4, base=2, jitter=0),
        "timeout_s": 10,
        "stale_after_s": 3600,
        "overlap": "queue",
    }
    values.update(overrides)
    return JobPolicy(**values)


def request_for(name: str, **overrides: Any) -> JobRequest:
    """A manual request of job `name` (fields overridable)."""
    values: dict[str, Any] = {
        "run_id": new_run_id(name, Trigger.MANUAL),
        "job": name,
        "trigger": Trigger.MANUAL,
        "scheduled_for": utcnow(),
        "requested_by": "tests",
    }
    values.update(overrides)
    return JobRequest(**values)


async def stored_count(js: JetStreamContext, subject: str, stream: str) -> int:
    """How many messages `stream` holds on `subject` (a wildcard sums its subjects)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def collect(
    js: JetStreamContext, subject: str, stream: str, expected: int, *, timeout_s: float = 10.0
) -> list[bytes]:
    """Every message stored on `subject`, once at least `expected` are there.

    Waits for the count, not for a quiet period: the caller asserts on what comes back,
    so a message too many shows up as a failed assertion.
    """

    async def enough() -> bool:
        return await stored_count(js, subject, stream) >= expected

    await wait_for(enough, timeout_s=timeout_s, what=f"{expected} messages on {subject}")
    count = await stored_count(js, subject, stream)
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        return [(await sub.next_msg(timeout=timeout_s)).data for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def terminal_run(db: Database, run_id: str) -> dict[str, Any] | None:
    """The run record once it is terminal, else None (a probe for wait_for)."""
    doc = await db[Collections.RUNS].find_one({"_id": run_id})
    return doc if doc and doc["status"] in {s.value for s in TERMINAL_STATUSES} else None


WorkerFactory = Callable[..., Any]


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[WorkerFactory]:
    """Factory of started in-process workers, stopped at the end of the test."""
    workers: list[Worker] = []

    async def _start(specs: list[JobSpec], worker_settings: Settings | None = None) -> Worker:
        worker = Worker(worker_settings or settings, specs)
        await worker.start()
        workers.append(worker)
        return worker

    yield _start
    for worker in workers:
        await worker.stop(timeout_s=5)


async def wait_value(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """`wait_for` for probes that return a value or None; returns the (non-None) value."""
    value = await wait_for(probe, timeout_s=timeout_s, what=what)
    assert value is not None
    return value
