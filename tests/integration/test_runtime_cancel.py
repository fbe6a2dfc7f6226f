"""Cancels racing the writes of running attempts, through a real worker on the default store.

A cancel must never be lost, whatever other write to the run overlaps it: check points
writing progress, heartbeats, the claim of the attempt. The core-NATS hint is not sent
here on purpose: the record alone must stop the run.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.requests import publish_request
from shared.runtime import JobContext, job, request_cancel
from shared.settings import Settings
from shared.store import Database
from tests.integration.test_runtime_support import (
    WorkerFactory,
    policy,
    request_for,
    terminal_run,
    wait_value,
)
from tests.integration.test_runtime_support import start_worker as start_worker

#: Trials of the race; several run at once, so the check points of one overlap the cancel of another.
TRIALS = 60
AT_ONCE = 6
#: A run whose cancel is lost loops this long, then completes (and fails the test).
MAX_STEPS = 3000


# FerretDB 1.24 keeps every cancel too (they live in `cancels`), but a heartbeat's whole-document
# write-back there can undo the run's terminal status, which this test also asserts.
@pytest.mark.atomic_store
async def test_every_cancel_racing_frequent_check_points_ends_the_run_canceled(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Each run writes progress every few milliseconds while it is canceled at a random moment
    (before its claim, during it, or while it loops): every run must end `canceled`."""
    running: dict[str, asyncio.Event] = {}

    @job("racing", policy=policy(overlap="parallel", concurrency=AT_ONCE, timeout_s=60))
    async def racing(ctx: JobContext) -> dict[str, Any]:
        running.setdefault(ctx.run_id, asyncio.Event()).set()
        for step in range(MAX_STEPS):
            await ctx.checkpoint({"step": step})
            await asyncio.sleep(0.002)
        return {"steps": MAX_STEPS}

    await start_worker([racing])
    rng = random.Random(18)
    slots = asyncio.Semaphore(AT_ONCE)

    async def trial(number: int) -> dict[str, Any]:
        async with slots:
            request = request_for("racing")
            await publish_request(js, settings.names, request)
            if number % 3:  # two in three: cancel while it loops; else at a random moment around its claim
                started = running.setdefault(request.run_id, asyncio.Event())
                await asyncio.wait_for(started.wait(), timeout=10)
                await asyncio.sleep(rng.uniform(0, 0.05))
            else:
                await asyncio.sleep(rng.uniform(0, 0.02))
            record = await request_cancel(db, request.run_id, "racing")
            assert record.cancel_requested, record
            return await wait_value(
                lambda: terminal_run(db, request.run_id),
                timeout_s=20,
                what=f"run {request.run_id} to end after its cancel",
            )

    ends = await asyncio.gather(*(trial(number) for number in range(TRIALS)))
    statuses = [end["status"] for end in ends]
    lost = [end["_id"] for end in ends if end["status"] != "canceled"]
    assert lost == [], f"{len(lost)} of {TRIALS} cancels were lost: {statuses}"
