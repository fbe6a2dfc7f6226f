"""Test helpers: bounded waiting on a condition, whether a process is still alive, property-test sizes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

from shared import jobargs

T = TypeVar("T")

#: Property tests run their full number of examples in CI (CI=true), a tenth locally.
FULL_PROPERTY_RUNS = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def examples(full: int) -> int:
    """The number of property-test examples: `full` in CI, a tenth (at least 10) locally."""
    return full if FULL_PROPERTY_RUNS else max(10, full // 10)


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"
) -> T:
    """Await `probe()` until it returns a truthy value; return it, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last value: {last!r})")


def process_alive(pid: int) -> bool:
    """True while process `pid` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and not stat.read_text().split(") ", 1)[-1].startswith("Z")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate `process`, killing it if it is still there after `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@asynccontextmanager
async def pulse_up(args: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None) -> AsyncIterator[int]:
    """Run `pulse up ARGS` as a process until it reports ready; yield its pid.

    On leaving, send SIGTERM and check it exits 0; kill it if anything failed first.
    """
    command = [sys.executable, "-c", "from shared.cli.app import main; main()", "up", *args]
    with log.open("wb") as out:
        up = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        async def _ready() -> bool:
            text = await asyncio.to_thread(log.read_text)
            if up.poll() is not None:
                raise AssertionError(f"pulse up exited {up.returncode}:\n{text}")
            return "marketpulse is up" in text

        await wait_for(_ready, timeout_s=90, interval_s=0.2, what="pulse up to report ready")
        yield up.pid
        up.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(up.wait, 30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def register_args_model(monkeypatch: pytest.MonkeyPatch, job: str, model: type[BaseModel]) -> None:
    """Give `job` an args model for this test (today's jobs take none), as the CLI and workers see it."""
    monkeypatch.setattr(jobargs, "ARGS_MODELS", {**jobargs.ARGS_MODELS, job: model})
