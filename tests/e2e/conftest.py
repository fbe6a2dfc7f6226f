"""Fixtures of the end-to-end tests: worker processes started from `tests/e2e/workers/`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.conftest import settings_env

ROOT = Path(__file__).resolve().parents[2]
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Spawn]:
    """Factory of processes (python -m tests.e2e.workers.<module>, or a real `services.<name>`), killed at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def _spawn(
        module: str, *args: str, env: dict[str, str] | None = None, worker_settings: Settings | None = None
    ) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **settings_env(worker_settings or settings), **(env or {})}
        log = (tmp_path / f"{module}-{len(processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", module if module.startswith("services.") else f"tests.e2e.workers.{module}", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        processes.append(process)
        return process

    yield _spawn
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
