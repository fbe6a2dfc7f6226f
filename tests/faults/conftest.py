"""Fixtures of the fault suite: servers this suite may stop, and the services as processes.

The suite starts its own nats-server and embedded store once (`stack`), on fixed ports,
and points the root `servers` fixture at them, so `make_settings`, `js` and `db` work as
everywhere else: each test still has its own namespace and database. Scenarios that stop
a server start it again before they end. Every test here carries the `faults` marker;
the recovery times they measure are printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from shared.names import Collections
from shared.providers.simprocess import RunningSimulator, simulator_process
from shared.settings import Settings
from shared.store import Database
from tests.conftest import Servers, settings_env
from tests.faults.audit import Audit, run_audit, settled
from tests.faults.system import Proc, ServerStack, System, job_env
from tests.helpers import wait_for

HERE = Path(__file__).resolve().parent
#: (scenario, what recovered, seconds), printed at the end of the session.
RECOVERIES: list[tuple[str, str, float]] = []
#: Tight policies so a scenario sees several runs, retries and dead letters in seconds.
FAST_POLICY: dict[str, object] = {
    "retry__max_attempts": 3,
    "retry__initial_backoff_s": 0.5,
    "retry__jitter": 0,
    "alert_after_failures": 1,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECOVERIES:
        terminalreporter.section("fault suite: recovery times")
        for scenario, what, seconds in RECOVERIES:
            terminalreporter.write_line(f"{scenario:<40} {what:<45} {seconds:7.1f} s")


def record_recovery(scenario: str, what: str, seconds: float) -> None:
    RECOVERIES.append((scenario, what, seconds))
    print(f"recovery {scenario}: {what} in {seconds:.1f} s")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerStack]:
    servers = ServerStack(tmp_path_factory.mktemp("fault-servers")).start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def servers(stack: ServerStack) -> Servers:
    return Servers(stack.nats_url, stack.mongo_url, "fault-suite")


@pytest.fixture
def restore_servers(stack: ServerStack) -> Iterator[ServerStack]:
    """The stack, started again after the test whatever happened in it."""
    yield stack
    if stack.nats is None or stack.nats.poll() is not None:
        stack.start_nats()
    if stack.store is None or stack.store.poll() is not None:
        stack.start_store()


@pytest.fixture
def system(settings: Settings, tmp_path: Path) -> Iterator[System]:
    """The test's processes (its namespace and database); all stopped at the end."""
    env = {**settings_env(settings), "PULSE_LOG_JSON": "true", "PULSE_HTTP_ATTEMPTS": "1", "PULSE_HTTP_TIMEOUT_S": "3"}
    running = System(env, tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()


StartSim = Callable[..., RunningSimulator]


@pytest.fixture
def simulator() -> Iterator[StartSim]:
    """Factory of simulator processes (`pulse simulate`), stopped at the end."""
    stack: list[Any] = []

    def _start(**options: Any) -> RunningSimulator:
        manager = simulator_process(**options)
        stack.append(manager)
        return manager.__enter__()

    yield _start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


def with_jobs(schedules: Mapping[str, str], **extra: str) -> dict[str, str]:
    """Extra environment of services: `schedules` on FAST_POLICY, plus `extra`."""
    return {**job_env(schedules, **FAST_POLICY), **extra}


async def start_serving(system: System, services: list[tuple[str, dict[str, str]]]) -> list[Proc]:
    """Start the services together and wait until each is connected and consuming (or ticking)."""
    procs = [system.start(name, env=env) for name, env in services]

    async def all_serving() -> bool:
        for proc in procs:
            assert proc.alive(), f"{proc.name} exited: {proc.log.read_text(errors='replace')[-2000:]}"
        return all(proc.started() for proc in procs)

    await wait_for(all_serving, timeout_s=60, interval_s=0.2, what="the services to start")
    return procs


async def completed_runs(db: Database, job: str, after: datetime | None = None) -> list[dict[str, Any]]:
    query: dict[str, Any] = {"job": job, "status": "completed"}
    if after is not None:
        query["ended_at"] = {"$gt": after}
    return await db[Collections.RUNS].find(query).sort("ended_at", 1).to_list(None)


async def wait_completed(db: Database, job: str, count: int, *, after: datetime | None = None,
                         timeout_s: float = 60) -> list[dict[str, Any]]:  # fmt: skip
    async def enough() -> list[dict[str, Any]] | None:
        runs = await completed_runs(db, job, after)
        return runs if len(runs) >= count else None

    result: list[dict[str, Any]] = await wait_for(
        enough, timeout_s=timeout_s, interval_s=0.25, what=f"{count} completed runs of {job}"
    )
    return result


def stop_tickers(system: System) -> None:
    """No new requests from here on (SIGTERM: a publish in progress finishes)."""
    for proc in system.running("ticker"):
        assert proc.stop() == 0, proc.log.read_text(errors="replace")[-2000:]


async def settle_and_audit(
    system: System, js: JetStreamContext, db: Database, settings: Settings, published: Iterable[str] = (),
    *, replayed: dict[str, str] | None = None, timeout_s: float = 30,
) -> Audit:  # fmt: skip
    """Stop the tickers, wait for every request to end, and check the promise."""
    stop_tickers(system)
    requested = set(system.fired()) | set(published) | set((replayed or {}).values())
    with contextlib.suppress(AssertionError):  # on a time-out, the audit below says what is missing
        await wait_for(lambda: settled(js, db, settings, requested, replayed), timeout_s=timeout_s, interval_s=0.5,
                       what="every request to end")  # fmt: skip
    audit = await run_audit(js, db, settings, requested, replayed)
    print(audit.summary())
    assert audit.problems() == [], audit.summary()
    return audit


async def set_faults(sim: RunningSimulator, faults: dict[str, dict[str, float]]) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(f"{sim.url}/_sim/faults", json=faults)
        response.raise_for_status()


async def hold(seconds: float, what: str) -> None:
    """Let `seconds` of wall-clock time pass: a fault's duration is the point here."""
    deadline = time.monotonic() + seconds

    async def passed() -> bool:
        return time.monotonic() >= deadline

    await wait_for(passed, timeout_s=seconds + 5, interval_s=0.2, what=what)
