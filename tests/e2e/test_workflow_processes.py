"""A workflow worker process killed between two steps: the redelivered run skips the steps it did."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from nats.js import JetStreamContext

from shared.requests import publish_request
from shared.runtime import read_steps
from shared.settings import Settings
from shared.store import Database
from tests.e2e.test_worker_processes import Spawn, manual, run_record
from tests.e2e.test_worker_processes import spawn as spawn
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
