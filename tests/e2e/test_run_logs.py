"""`pulse logs`: a run's lines (the job's own included) outlive its worker, and --follow streams them."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.e2e.conftest import ROOT, Spawn
from tests.helpers import wait_for
from tests.integration.test_cli_common import cli_env, invoke


async def _start_run(js: JetStreamContext, settings: Settings) -> str:
    run_id = new_run_id("stats", Trigger.MANUAL)
    request = JobRequest(run_id=run_id, job="stats", trigger=Trigger.MANUAL, scheduled_for=utcnow())
    await publish_request(js, settings.names, request)
    return run_id


async def _status(db: Database, run_id: str) -> str | None:
    doc = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1})
    return doc["status"] if doc else None


async def test_logs_of_a_run_are_read_after_its_worker_exited(
    settings: Settings, js: JetStreamContext, db: Database, spawn: Spawn
) -> None:
    worker = spawn("chatty")
    run_id = await _start_run(js, settings)
    await wait_for(lambda: _is(db, run_id, "completed"), timeout_s=60, what="the run to complete")
    worker.terminate()
    assert await asyncio.to_thread(worker.wait, 15) == 0

    text = await asyncio.to_thread(invoke, settings, "logs", run_id)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    step_one = next((line for line in lines if "step one done" in line), None)
    assert step_one is not None, text.output
    assert "attempt 1" in step_one
    assert "pages=1" in step_one
    assert "Z  INFO" in step_one  # time to the second, in UTC
    assert any("a library says hello" in line for line in lines)
    assert any("step two done" in line for line in lines)
    assert any(f"run {run_id} completed" in line for line in lines)

    as_json = await asyncio.to_thread(invoke, settings, "logs", run_id, "--json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {(r["job"], r["run_id"], r["attempt"]) for r in records} == {("stats", run_id, 1)}
    library = next(r for r in records if r["msg"] == "a library says hello")
    assert library["logger"] == "tests.chatty.library"
    assert next(r for r in records if r["msg"] == "step one done")["pages"] == 1


async def test_follow_shows_a_running_runs_lines_as_they_come(
    settings: Settings, js: JetStreamContext, db: Database, spawn: Spawn
) -> None:
    spawn("chatty", env={"CHATTY_WAIT": "1"})
    run_id = await _start_run(js, settings)
    await wait_for(lambda: _is(db, run_id, "running"), timeout_s=60, what="the run to start")
    follow = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from shared.cli.app import main; main()",
        "logs",
        run_id,
        "--follow",
        "--timeout",
        "90",
        cwd=ROOT,
        env={**os.environ, **cli_env(settings)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert follow.stdout is not None
        seen: list[str] = []
        while not any("step one done" in line for line in seen):
            seen.append((await asyncio.wait_for(follow.stdout.readline(), timeout=30)).decode())
        assert await _status(db, run_id) == "running"  # shown while the run still runs
        assert not any("step two done" in line for line in seen)

        await db["chatty_go"].insert_one({"_id": run_id})
        rest, _ = await asyncio.wait_for(follow.communicate(), timeout=60)
        assert follow.returncode == 0
        assert "step two done" in rest.decode()
        assert f"run {run_id} completed" in rest.decode()
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()


async def _is(db: Database, run_id: str, status: str) -> bool:
    return await _status(db, run_id) == status
