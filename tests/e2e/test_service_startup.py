"""Every service process fails to start with one clear line and exit 2, and stops cleanly.

Start-up against a nats-server without JetStream, an unreachable NATS, and a busy HTTP
port; SIGTERM while NATS is unreachable (a worker service and the ticker).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.localstack import find_nats_server, free_port, start_nats
from shared.settings import Settings
from tests.conftest import settings_env
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["market_sync", "whale_sync", "stats", "janitor", "ticker"]
Launch = Callable[..., tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def launch(settings: Settings, tmp_path: Path) -> Iterator[Launch]:
    """Factory of service processes (python -m services.<name>); stderr goes to a file."""
    processes: list[subprocess.Popen[bytes]] = []

    def _launch(service: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{service}-{len(processes)}.log"
        with log.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=ROOT,
                env={**os.environ, **settings_env(settings), **env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        processes.append(process)
        return process, log

    yield _launch
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def nats_without_jetstream() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert time.monotonic() < deadline, f"nats-server did not listen on {port}"
            assert process.poll() is None, "nats-server exited"
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in _lines(log) if line.startswith("{")]


@pytest.mark.parametrize("service", SERVICES)
async def test_start_up_failures_are_one_line_and_exit_2(
    service: str, launch: Launch, nats_without_jetstream: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        started = {
            "no jetstream": launch(service, PULSE_NATS_URL=nats_without_jetstream),
            "unreachable": launch(
                service, PULSE_NATS_URL=f"nats://127.0.0.1:{free_port()}", PULSE_NATS_CONNECT_TIMEOUT_S="1"
            ),
            "busy port": launch(service, PULSE_HTTP_PORT=str(busy.getsockname()[1])),
        }
        codes = {case: await asyncio.to_thread(p.wait, 60) for case, (p, _) in started.items()}
    assert codes == dict.fromkeys(started, 2)
    expected = {"no jetstream": "JetStream", "unreachable": "PULSE_NATS_URL", "busy port": "PULSE_HTTP_PORT"}
    for case, (_, log) in started.items():
        failures = [e for e in _events(log) if e.get("event") == "service.failed"]
        assert len(failures) == 1, (case, _lines(log))
        assert expected[case] in str(failures[0]["msg"]), (case, failures)
        assert not [line for line in _lines(log) if "Traceback" in line], (case, _lines(log))


@pytest.mark.parametrize("service", ["stats", "ticker"])
async def test_sigterm_while_nats_is_unreachable_exits_0_with_one_line(
    service: str, launch: Launch, tmp_path: Path
) -> None:
    nats, port = start_nats(tmp_path / "own-nats")
    http_port = free_port()
    try:
        process, log = launch(service, PULSE_NATS_URL=f"nats://127.0.0.1:{port}", PULSE_HTTP_PORT=str(http_port))
        url = f"http://127.0.0.1:{http_port}/readyz"

        async def readiness() -> int:
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(url)).status_code
            except httpx.HTTPError:
                return 0

        async def ready() -> bool:
            return await readiness() == 200

        async def not_ready() -> bool:
            return await readiness() == 503

        await wait_for(ready, timeout_s=60, what=f"{service} to be ready")
        nats.kill()
        nats.wait()
        await wait_for(not_ready, timeout_s=30, what=f"{service} to notice NATS is gone")
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        if nats.poll() is None:
            nats.kill()
            nats.wait()
    assert code == 0, _lines(log)
    assert not [line for line in _lines(log) if "Traceback" in line], _lines(log)
    incomplete = [e for e in _events(log) if e.get("event") == "service.stop_incomplete"]
    assert len(incomplete) == 1, _lines(log)
    assert not [line for line in _lines(log) if not line.startswith("{")], _lines(log)


async def test_the_dashboard_serves_while_nats_is_down_and_stops_on_sigterm(launch: Launch) -> None:
    """It starts through `run_app` like every service, but without NATS: /readyz says why it is not ready."""
    port = free_port()
    process, log = launch(
        "dashboard",
        PULSE_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        PULSE_NATS_CONNECT_TIMEOUT_S="1",
        PULSE_DASHBOARD_PORT=str(port),
        PULSE_DASHBOARD_HOST="127.0.0.1",
    )

    async def readiness() -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return await client.get(f"http://127.0.0.1:{port}/readyz")
        except httpx.TransportError:
            return None

    answer = await wait_for(readiness, timeout_s=30, what="the dashboard to answer /readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unready", "checks": {"nats": False, "mongo": True}}
    async with httpx.AsyncClient(timeout=10) as client:
        overview = await client.get(f"http://127.0.0.1:{port}/")
    assert overview.status_code == 200
    assert "NATS is unreachable" in overview.text
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert not [line for line in _lines(log) if "Traceback" in line], _lines(log)


async def test_the_dashboard_on_a_busy_port_exits_2_naming_its_port_setting(launch: Launch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        process, log = launch(
            "dashboard", PULSE_DASHBOARD_HOST="127.0.0.1", PULSE_DASHBOARD_PORT=str(busy.getsockname()[1])
        )
        assert await asyncio.to_thread(process.wait, 60) == 2
    failures = [e for e in _events(log) if e.get("event") == "service.failed"]
    assert len(failures) == 1, _lines(log)
    assert "PULSE_DASHBOARD_PORT" in str(failures[0]["msg"])
