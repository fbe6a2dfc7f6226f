"""Any NATS client can start a job: a request published by raw nats-py (no pulse, no shared code) runs.

This is the README's "Start a job from any NATS client" example, as a test: the JSON
below is exactly what the README shows, published on `jobs.<job>` with the JetStream
header `Nats-Msg-Id: <run_id>`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from shared.names import Collections
from shared.runtime import JobContext, Worker, job
from shared.settings import JobPolicy, RetryPolicy, Settings
from shared.store import Database
from tests.helpers import wait_for


@pytest.fixture
async def stats_worker(settings: Settings) -> AsyncIterator[list[str]]:
    """A worker running a `stats` job that records the run ids it saw."""
    seen: list[str] = []
    policy = JobPolicy(
        schedule="every 1m", retry=RetryPolicy(max_attempts=1), timeout_s=10, stale_after_s=3600, overlap="queue"
    )

    @job("stats", policy=policy)
    async def stats_job(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx.run_id)
        return {"from": ctx.request.requested_by}

    worker = Worker(settings, [stats_job])
    await worker.start()
    yield seen
    await worker.stop(timeout_s=5)


async def test_a_request_published_by_a_raw_nats_client_runs_once(
    settings: Settings, db: Database, stats_worker: list[str]
) -> None:
    run_id = "stats:manual:from-nats-cli-1"
    request = {
        "v": 1,
        "run_id": run_id,
        "job": "stats",
        "trigger": "manual",
        "scheduled_for": "2026-12-01T09:00:00Z",
        "requested_by": "ops@laptop",
        "args": {},
    }
    prefix = f"{settings.namespace}." if settings.namespace else ""
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        first = await js.publish(f"{prefix}jobs.stats", json.dumps(request).encode(), headers={"Nats-Msg-Id": run_id})
        again = await js.publish(f"{prefix}jobs.stats", json.dumps(request).encode(), headers={"Nats-Msg-Id": run_id})
    finally:
        await client.close()
    assert first.duplicate is None
    assert again.duplicate is True  # the same Nats-Msg-Id within the window is one request

    async def _completed() -> dict[str, Any] | None:
        return await db[Collections.RUNS].find_one({"_id": run_id, "status": "completed"})

    doc = await wait_for(_completed, timeout_s=20, what="the raw request's run to complete")
    assert doc["summary"] == {"from": "ops@laptop"}
    assert stats_worker == [run_id]
