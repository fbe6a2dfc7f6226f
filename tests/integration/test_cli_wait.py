"""`pulse trigger --wait` against a real worker: exit 0 on completed, 1 otherwise."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from shared.errors import PermanentError
from shared.runtime import JobContext, Worker, job
from shared.settings import JobPolicy, RetryPolicy, Settings
from tests.helpers import register_args_model
from tests.integration.test_cli_common import invoke


class Args(BaseModel):
    fail: bool = False


@pytest.fixture
async def stats_worker(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """A worker whose `stats` job succeeds unless asked to fail (`--arg fail=true`)."""
    register_args_model(monkeypatch, "stats", Args)
    fast = JobPolicy(
        schedule="every 1m",
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.2, jitter=0),
        timeout_s=10,
        stale_after_s=3600,
        overlap="queue",
    )

    @job("stats", policy=fast, args=Args)
    async def stats_job(ctx: JobContext) -> dict[str, Any]:
        await ctx.checkpoint({"step": "aggregate"})
        if ctx.args.fail:  # type: ignore[attr-defined]
            raise PermanentError("asked to fail")
        return {"snapshots": 1}

    worker = Worker(settings, [stats_job])
    await worker.start()
    yield
    await worker.stop(timeout_s=5)


async def test_wait_exits_0_when_the_run_completes(settings: Settings, stats_worker: None) -> None:
    result = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--wait", "--timeout", "30", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "completed"
    assert record["summary"] == {"snapshots": 1}


async def test_wait_ends_with_duration_and_the_summary_as_key_values(settings: Settings, stats_worker: None) -> None:
    result = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--wait", "--timeout", "30")
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    pattern = r"stats:manual:\S+ ended completed in \d+(\.\d)?s after 1 attempt\(s\): snapshots=1"
    assert re.fullmatch(pattern, last), last


async def test_wait_gives_up_after_its_timeout_without_a_worker(settings: Settings) -> None:
    result = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--wait", "--timeout", "1")
    assert result.exit_code == 1
    assert "did not end within 1s" in result.stderr
