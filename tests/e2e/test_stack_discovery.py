"""A second process finds a running `pulse up` with no environment at all, and loses it when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import pulse_up

PULSE = [sys.executable, "-c", "from shared.cli.app import main; main()"]


def _bare_env() -> dict[str, str]:
    """This machine's environment without a single PULSE_* variable."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PULSE_")}
    env["COLUMNS"] = "200"
    return env


def _pulse(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PULSE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


async def test_a_second_shell_finds_the_stack_without_environment(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    env = _bare_env()
    stack_file = tmp_path / ".data" / "stack.json"
    async with pulse_up(
        ["--no-status", "--no-simulator", "--service", "ticker"], env=env, log=log, cwd=tmp_path
    ) as pid:
        record = json.loads(stack_file.read_text())
        assert record["pid"] == pid
        assert f"export PULSE_NATS_URL={record['nats_url']}" in log.read_text()

        status = await asyncio.to_thread(_pulse, tmp_path, env, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert {row["job"] for row in json.loads(status.stdout)} >= {"market_sync", "whale_sync"}

        exported = await asyncio.to_thread(_pulse, tmp_path, env, "env")
        assert exported.returncode == 0, exported.stderr
        elsewhere = tmp_path / "elsewhere"  # no stack file here: only the exported variables lead to the stack
        elsewhere.mkdir()
        shell = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", 'eval "$1"; shift; exec "$@"', "_", exported.stdout, *PULSE, "runs", "--json"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        assert isinstance(json.loads(shell.stdout), list)
    assert not stack_file.exists()
    gone = await asyncio.to_thread(_pulse, tmp_path, env, "env")
    assert gone.returncode == 2
