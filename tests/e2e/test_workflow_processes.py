"""Workflow worker processes: killed between two steps, and a sleep across a restart of every process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from shared.bus import connect_nats, ensure_topology
from shared.localstack import start_nats
from shared.requests import publish_request
from shared.runtime import read_steps
from shared.schemas import utcnow
from shared.settings import Settings
from shared.store import Database
from tests.e2e.conftest import Spawn
from tests.e2e.test_worker_processes import manual, run_record
from tests.helpers import wait_for
from tests.integration.test_runtime_support import wait_value


async def test_workflow_killed_between_step_two_and_three_resumes_without_repeating_steps(
    settings: Settings, js: JetStreamContext, db: Database, spawn: Spawn
) -> None:
    first = spawn("workflow")
    request = manual("wf_probe")
    await publish_request(js, settings.names, request)

    async def _between_two_and_three() -> bool:
        steps = await read_steps(db, request.run_id)
        return [(s.name, s.status.value) for s in steps] == [("one", "completed"), ("two", "completed")]

    await wait_for(_between_two_and_three, timeout_s=60, what="steps one and two to be recorded")
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 10)
    await db["workflow_go"].insert_one({"_id": request.run_id})
    second = spawn("workflow")

    async def _completed() -> dict[str, Any] | None:
        doc = await run_record(db, request.run_id)
        return doc if doc and doc["status"] == "completed" else None

    doc = await wait_value(_completed, timeout_s=60, what="the redelivered run to complete")
    assert doc["summary"] == {"result": 3, "pid": second.pid}
    assert [a["outcome"] for a in doc["attempts"]] == ["lost", "succeeded"]
    effects = await db["workflow_effects"].find({"run_id": request.run_id}).to_list(None)
    assert sorted((e["step"], e["pid"]) for e in effects) == sorted(
        [("one", first.pid), ("two", first.pid), ("three", second.pid)]
    )
    steps = await read_steps(db, request.run_id)
    assert [(s.name, s.status.value, s.tries) for s in steps] == [
        ("one", "completed", 1),
        ("two", "completed", 1),
        ("three", "completed", 1),
    ]


async def test_a_sleep_survives_a_restart_of_nats_server_and_of_the_worker(
    make_settings: Callable[..., Settings], db: Database, spawn: Spawn, tmp_path: Path
) -> None:
    nats_server, port = start_nats(tmp_path / "own")
    try:
        settings = make_settings(nats_url=f"nats://127.0.0.1:{port}")
        worker = spawn("workflow", worker_settings=settings)
        client = await connect_nats(settings, name="tests")
        await ensure_topology(client.jetstream(), settings, jobs=())
        request = manual("wf_sleeper")
        await publish_request(client.jetstream(), settings.names, request)

        async def _sleeping() -> dict[str, Any] | None:
            doc = await run_record(db, request.run_id)
            return doc if doc and doc["status"] == "sleeping" else None

        sleeping = await wait_value(_sleeping, timeout_s=60, what="the run to sleep")
        wake_at = sleeping["wake_at"]

        async def _not_held() -> bool:  # acked: no delivery of the run is pending on any worker
            info = await client.jetstream().consumer_info(settings.names.jobs_stream, "wf_sleeper")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await wait_for(_not_held, timeout_s=10, what="the sleeping run's request to be settled")
        await client.close()
        assert utcnow() < wake_at, "the restart must happen while the run sleeps"

        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
        nats_server.terminate()
        nats_server.wait(timeout=10)
        nats_server, _ = start_nats(tmp_path / "own", port)
        second = spawn("workflow", worker_settings=settings)

        async def _completed() -> dict[str, Any] | None:
            doc = await run_record(db, request.run_id)
            return doc if doc and doc["status"] == "completed" else None

        doc = await wait_value(_completed, timeout_s=60, what="the run to wake and complete")
        assert doc["summary"] == {"pid": second.pid}
        effects = {e["step"]: e for e in await db["workflow_effects"].find({"run_id": request.run_id}).to_list(None)}
        assert sorted(effects) == ["after", "before"]  # one each: nothing ran twice
        assert effects["before"]["pid"] == worker.pid
        assert effects["after"]["at"] >= wake_at, "the run resumed before its wake-up time"
    finally:
        nats_server.terminate()
        nats_server.wait(timeout=10)
