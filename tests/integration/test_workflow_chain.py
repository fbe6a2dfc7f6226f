"""`on_complete` follow-up requests through a real worker: once, under redelivery and duplicates."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.settings import Settings
from shared.store import Database
from tests.integration import test_runtime_support as support
from tests.integration.test_runtime_support import WorkerFactory, policy, request_for, terminal_run
from tests.integration.test_runtime_support import start_worker as start_worker


async def test_a_completed_run_requests_its_follow_up_once_under_duplicates_and_redelivery(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    started: list[str] = []

    @job("chain_sync", policy=policy(on_complete=("chain_stats",)))
    async def chain_sync(ctx: JobContext) -> dict[str, Any]:
        started.append(ctx.run_id)
        if ctx.request.args:
            raise RuntimeError("never")
        return {"synced": 1}

    @job("chain_stats", policy=policy())
    async def chain_stats(ctx: JobContext) -> dict[str, Any]:
        started.append(ctx.run_id)
        return {"after": ctx.request.requested_by}

    @job("chain_failing", policy=policy(on_complete=("chain_stats",), retry={"max_attempts": 1}))
    async def chain_failing(ctx: JobContext) -> None:
        raise RuntimeError("no follow-up for a failed run")

    worker = await start_worker([chain_sync, chain_stats, chain_failing])
    request = request_for("chain_sync")
    await publish_request(js, settings.names, request)
    await publish_request(js, settings.names, request)  # a duplicate request: dropped by its Nats-Msg-Id
    await support.wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="the sync to finish")
    # The same request again past deduplication (as a redelivery after a crash before the ack
    # would be): acked without running, and its follow-up is published again, deduplicated.
    await publish_request(js, settings.names, request, msg_id=f"{request.run_id}:again")
    failing = request_for("chain_failing")
    await publish_request(js, settings.names, failing)
    await support.wait_value(lambda: terminal_run(db, failing.run_id), timeout_s=20, what="the failing run")

    async def follow_up() -> dict[str, Any] | None:
        return await db[Collections.RUNS].find_one({"job": "chain_stats", "status": "completed"})

    stats = await support.wait_value(follow_up, timeout_s=20, what="the follow-up to complete")
    await worker.run_until_idle(timeout_s=20)
    assert stats["trigger"] == "chain"
    assert stats["summary"] == {"after": f"chain:{request.run_id}"}
    assert stats["scheduled_for"] == request.scheduled_for.replace(
        microsecond=request.scheduled_for.microsecond // 1000 * 1000
    )
    assert await db[Collections.RUNS].count_documents({"job": "chain_stats"}) == 1
    assert started == [request.run_id, stats["_id"]]
    # Every message JOBS ever took: the sync, its republish, the failing run, ONE follow-up.
    info = await js.stream_info(settings.names.jobs_stream)
    assert info.state.last_seq == 4
