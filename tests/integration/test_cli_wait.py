"""`pulse trigger --wait` against a real worker: progress, exit 0 on completed, 1 otherwise, --timeout exactly."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from shared.errors import PermanentError
from shared.runtime import JobContext, Worker, job
from shared.settings import JobPolicy, RetryPolicy, Settings
from tests.helpers import register_args_model
from tests.integration.test_cli_common import invoke
from tests.proxy import silent_server

#: How long the slow job holds each page: several `--wait` polls (0.25 s apart) see each.
PAGE_S = 1.0


class Args(BaseModel):
    fail: bool = False
    pages: int = 0  # > 0: work slowly through this many pages, reporting each at a check point


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
        pages: int = ctx.args.pages  # type: ignore[attr-defined]
        for page in range(1, pages + 1):
            await ctx.checkpoint({"pages": page, "markets": page * 100})
            await asyncio.sleep(PAGE_S)  # the page's work
        return {"snapshots": 1} if not pages else {"pages": pages, "markets": pages * 100}

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


async def test_wait_on_a_pipe_prints_elapsed_time_and_the_jobs_progress_as_lines(
    settings: Settings, stats_worker: None
) -> None:
    # CliRunner's stderr is not a terminal: plain progress lines, no spinner.
    result = await asyncio.to_thread(
        invoke, settings, "trigger", "stats", "--arg", "pages=3", "--wait", "--timeout", "60"
    )
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stderr
    assert "\r" not in result.stderr
    progress = re.compile(r"(\d+\.\d)s  (stats:manual:\S+): running, attempt 1: pages=(\d) markets=(\d+)")
    seen = [match.groups() for line in result.stderr.splitlines() if (match := progress.fullmatch(line))]
    run_id = result.stdout.splitlines()[0]
    assert [(page, markets) for _, _, page, markets in seen] == [("1", "100"), ("2", "200"), ("3", "300")]
    assert {rid for _, rid, _, _ in seen} == {run_id}
    elapsed = [float(took) for took, _, _, _ in seen]
    assert elapsed == sorted(elapsed)
    assert elapsed[-1] - elapsed[0] >= PAGE_S
    last = result.stdout.strip().splitlines()[-1]
    pattern = rf"{re.escape(run_id)} ended completed in \d+(\.\d)?s after 1 attempt\(s\): pages=3 markets=300"
    assert re.fullmatch(pattern, last), last


async def test_wait_timeout_bounds_the_whole_wait(settings: Settings) -> None:
    started = time.monotonic()
    result = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--wait", "--timeout", "1")
    took = time.monotonic() - started
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "did not end within 1s" in errors[0]
    assert 1.0 <= took < 2.5


@pytest.mark.parametrize("server", ["NATS", "MongoDB"])
async def test_wait_timeout_bounds_connecting_to_a_server_that_never_answers(settings: Settings, server: str) -> None:
    async with silent_server() as port:
        # Each server's own connect timeout is far longer than --timeout: only --timeout can end it in time.
        hung = (
            {"PULSE_NATS_URL": f"nats://127.0.0.1:{port}", "PULSE_NATS_CONNECT_TIMEOUT_S": "30"}
            if server == "NATS"
            else {"PULSE_MONGO_URL": f"mongodb://127.0.0.1:{port}/", "PULSE_MONGO_TIMEOUT_S": "30"}
        )
        started = time.monotonic()
        result = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--wait", "--timeout", "2", **hung)
        took = time.monotonic() - started
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot reach {server} at" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0]
    assert 1.5 <= took < 3.5, took
