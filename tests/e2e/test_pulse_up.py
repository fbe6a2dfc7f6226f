"""`pulse up` as a real process: children become ready, a job runs, SIGTERM stops all, no orphans."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx

from shared.settings import Settings
from tests.conftest import settings_env
from tests.helpers import process_alive, pulse_up
from tests.integration.test_cli_common import invoke

SERVICES = ("ticker", "market_sync", "whale_sync")


async def test_pulse_up_runs_the_system_and_stops_cleanly_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    args = ["--no-status", "--data-dir", str(tmp_path / "data")]
    for service in SERVICES:
        args += ["--service", service]
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200", "PULSE_STACK_FILE": str(tmp_path / "stack.json")}
    async with pulse_up(args, env=env, log=log):
        pids = [int(pid) for pid in re.findall(r"ready \w+ \(port \d+, pid (\d+)\)", log.read_text())]
        assert len(pids) == len(SERVICES) + 2  # and the simulator and the dashboard
        dashboard_url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", log.read_text())
        assert dashboard_url is not None, log.read_text()
        async with httpx.AsyncClient() as http:
            overview = await http.get(dashboard_url.group(1))
        assert overview.status_code == 200
        assert "whale_sync" in overview.text

        result = await asyncio.to_thread(invoke, settings, "trigger", "whale_sync", "--wait", "--timeout", "60")
        assert result.exit_code == 0, result.output + log.read_text()[-3000:]
    text = log.read_text()
    assert "stopped" in text
    assert [pid for pid in pids if process_alive(pid)] == []
