"""A workflow job for the dashboard's tests: one step, then a wait for the signal `approval`."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import JobPolicy, RetryPolicy, Settings
from shared.store import Database
from tests.helpers import wait_for

JOB = "wf_dash"
SIGNAL = "approval"
POLICY = JobPolicy(
    schedule="every 1h",
    retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0),
    timeout_s=30,
    stale_after_s=7200,
)


async def _prepare() -> dict[str, int]:
    return {"markets": 3}


@job(JOB, policy=POLICY)
async def approval_flow(ctx: JobContext) -> dict[str, Any]:
    prepared = await ctx.step.run("prepare", _prepare)
    approval = await ctx.step.wait_for_event(SIGNAL, timeout=None)
    return {"prepared": prepared, "approval": approval}


async def start_waiting_run(js: JetStreamContext, db: Database, settings: Settings) -> str:
    """Publish a run of the workflow and wait until it waits for its signal; return its run id."""
    request = JobRequest(
        run_id=new_run_id(JOB, Trigger.MANUAL), job=JOB, trigger=Trigger.MANUAL, scheduled_for=utcnow()
    )
    await publish_request(js, settings.names, request)

    async def waiting() -> bool:
        doc = await db[Collections.RUNS].find_one({"_id": request.run_id}, {"status": 1})
        return doc is not None and doc["status"] == "waiting"

    await wait_for(waiting, timeout_s=20, what="the workflow run to wait for its signal")
    return request.run_id
