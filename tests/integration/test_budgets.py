"""Upstream quotas and shared 429 holds through real workers (real NATS, the real store, the simulator)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from services.janitor.cleanup import Retention, clean_up
from services.market_sync.__main__ import market_sync
from shared.budgets import budget_id, current_period
from shared.errors import QuotaExhausted
from shared.names import Collections
from shared.providers.simprocess import simulator_process
from shared.readmodel.budgets import quota_exhausted
from shared.requests import publish_request
from shared.runtime import JobContext, Worker, job
from shared.runtime._budgets import Budgets
from shared.runtime._ratelimit import RateLimiter
from shared.settings import Quota, RetryPolicy, Settings, load_settings
from shared.store import Database, make_client
from tests.helpers import wait_for
from tests.integration.test_runtime_support import WorkerFactory, policy, request_for, terminal_run, wait_value
from tests.integration.test_runtime_support import start_worker as start_worker

UPSTREAM = "polymarket_gamma"
CALLS_PER_RUN = 2


class FakeClock:
    """A UTC clock the test moves; the budgets read it, everything else keeps real time."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _quota_settings(make_settings: Callable[..., Settings], requests: int) -> Settings:
    return make_settings(quotas={UPSTREAM: {"requests": requests, "period": "day", "resets_at": "00:00"}})


def _calling_job(calls: int = CALLS_PER_RUN, **overrides: Any) -> Any:
    @job("quota_user", policy=policy(upstreams=(UPSTREAM,), **overrides))
    async def quota_user(ctx: JobContext) -> dict[str, int]:
        for _ in range(calls):
            await ctx.acquire(UPSTREAM)
        return {"calls": calls}

    return quota_user


async def _run_doc(db: Database, run_id: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await db[Collections.RUNS].find_one({"_id": run_id})
    return doc


async def test_the_run_that_would_exceed_the_quota_is_deferred_and_goes_ahead_in_the_next_period(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    settings = _quota_settings(make_settings, requests=3)
    worker: Worker = await start_worker([_calling_job()], settings)
    # One second before the reset: the deferral's nak delay (until the reset) is one second.
    clock = FakeClock(datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC))
    worker.runtime.budgets = Budgets(worker.db, dict(settings.quotas), clock=clock)

    first, second = request_for("quota_user"), request_for("quota_user")
    await publish_request(js, settings.names, first)
    done = await wait_value(lambda: terminal_run(db, first.run_id), timeout_s=15, what="the first run")
    assert (done["status"], done["provider_calls"]) == ("completed", {UPSTREAM: 2})

    await publish_request(js, settings.names, second)

    async def deferred() -> dict[str, Any] | None:
        doc = await _run_doc(db, second.run_id)
        return doc if doc and doc["status"] == "deferred" else None

    doc = await wait_value(deferred, timeout_s=15, what="the second run to be deferred")
    reset = datetime(2026, 12, 3, tzinfo=UTC)
    assert doc["reason"] == "quota_exhausted"
    assert f"the quota of upstream '{UPSTREAM}' is spent (3 of 3 requests this period)" in doc["error"]
    assert "deferred until it resets at 2026-12-03T00:00:00Z" in doc["error"]
    assert doc["next_attempt_at"].replace(tzinfo=UTC) == reset
    assert doc["attempt_count"] == 0  # waiting for a quota spends no attempt
    assert doc["provider_calls"] == {UPSTREAM: 1}  # the call that fitted; the one that would exceed was refused
    day = budget_id(UPSTREAM, current_period(Quota(requests=3), clock.now))
    spent_doc = await db[Collections.BUDGETS].find_one({"_id": day})
    assert spent_doc is not None
    assert spent_doc["spent"] == 3
    block = await quota_exhausted(db, settings, "market_sync", now=clock.now)
    assert block is not None
    assert (block.upstream, block.spent, block.quota, block.until) == (UPSTREAM, 3, 3, reset)

    clock.now = reset + timedelta(seconds=1)  # the next period
    done = await wait_value(lambda: terminal_run(db, second.run_id), timeout_s=20, what="the deferred run to go")
    assert done["status"] == "completed"
    assert done["provider_calls"] == {UPSTREAM: 3}  # 1 refused period + 2 in the next
    assert [attempt["outcome"] for attempt in done["attempts"]] == ["deferred", "succeeded"]
    next_id = budget_id(UPSTREAM, current_period(Quota(requests=3), clock.now))
    next_day = await db[Collections.BUDGETS].find_one({"_id": next_id})
    assert next_day is not None
    assert next_day["spent"] == 2
    assert await quota_exhausted(db, settings, "market_sync", now=clock.now) is None


async def test_a_run_is_deferred_before_it_starts_while_the_quota_is_spent(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    settings = _quota_settings(make_settings, requests=2)
    worker: Worker = await start_worker([_calling_job()], settings)
    clock = FakeClock(datetime(2026, 12, 2, 12, 0, tzinfo=UTC))
    worker.runtime.budgets = Budgets(worker.db, dict(settings.quotas), clock=clock)
    spender = request_for("quota_user")
    await publish_request(js, settings.names, spender)
    await wait_value(lambda: terminal_run(db, spender.run_id), timeout_s=15, what="the run spending the quota")
    held = request_for("quota_user")
    await publish_request(js, settings.names, held)

    async def deferred() -> dict[str, Any] | None:
        doc = await _run_doc(db, held.run_id)
        return doc if doc and doc["status"] == "deferred" else None

    doc = await wait_value(deferred, timeout_s=15, what="the run to be deferred")
    # Refused before its start: no attempt, no provider call, the reason and the time it may go.
    assert (doc["attempt_count"], doc.get("attempts", []), doc.get("provider_calls", {})) == (0, [], {})
    assert doc["reason"] == "quota_exhausted"
    assert doc["next_attempt_at"].replace(tzinfo=UTC) == datetime(2026, 12, 3, tzinfo=UTC)
    assert worker.metrics.runs_deferred.labels(job="quota_user")._value.get() >= 1


@pytest.mark.atomic_store
async def test_racing_reservations_from_two_clients_never_overspend(settings: Settings, db: Database) -> None:
    quotas = {UPSTREAM: Quota(requests=50)}
    other_client = make_client(settings)
    try:
        budgets = [Budgets(db, quotas), Budgets(other_client[settings.mongo_db], quotas)]

        async def reserve(budget: Budgets) -> bool:
            try:
                await budget.reserve(UPSTREAM)
            except QuotaExhausted:
                return False
            return True

        outcomes = await asyncio.gather(*(reserve(budgets[i % 2]) for i in range(80)))
    finally:
        await other_client.close()
    assert outcomes.count(True) == 50
    doc = await db[Collections.BUDGETS].find_one({"upstream": UPSTREAM})
    assert doc is not None
    assert doc["spent"] == 50


@pytest.mark.atomic_store
async def test_two_workers_racing_for_one_quota_never_overspend(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    settings = _quota_settings(make_settings, requests=20)
    spec = _calling_job(calls=3, overlap="parallel", concurrency=4, retry=RetryPolicy(max_attempts=1))
    for _ in range(2):  # two replicas, each with its own NATS and store connections
        await start_worker([spec], settings)
    requests = [request_for("quota_user") for _ in range(10)]
    for request in requests:
        await publish_request(js, settings.names, request)

    async def spent_and_settled() -> bool:
        # Deferred runs keep their in-flight slots, so requests behind them may never be
        # delivered here: wait for the quota to be spent and no attempt to be running.
        budget = await db[Collections.BUDGETS].find_one({"upstream": UPSTREAM})
        running = await db[Collections.RUNS].count_documents({"job": "quota_user", "status": "running"})
        return bool(budget and budget["spent"] == 20 and running == 0)

    await wait_for(spent_and_settled, timeout_s=30, what="the quota to be spent and every attempt to end")
    docs = [await _run_doc(db, r.run_id) for r in requests]
    spent_by_runs = sum(sum((d or {}).get("provider_calls", {}).values()) for d in docs)
    budget = await db[Collections.BUDGETS].find_one({"upstream": UPSTREAM})
    assert budget is not None
    assert budget["spent"] == spent_by_runs == 20  # every request counted once, none past the quota
    assert {d["status"] for d in docs if d} <= {"completed", "deferred"}
    completed = sum(1 for d in docs if d and d["status"] == "completed")
    assert 1 <= completed <= 6  # 3 calls each: at most 6 runs fit in 20


async def test_a_429_with_retry_after_holds_the_shared_bucket_for_every_process(
    make_settings: Any, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    with simulator_process(markets=10, faults=["markets:429=1.0"], extra=["--retry-after-s", "30"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, http_attempts=1)
        await start_worker([market_sync], settings)
        request = request_for("market_sync")
        before = time.time()
        await publish_request(js, settings.names, request)

        async def retrying() -> dict[str, Any] | None:
            doc = await _run_doc(db, request.run_id)
            return doc if doc and doc["status"] in ("retrying", "failed") else None

        doc = await wait_value(retrying, timeout_s=20, what="the market sync to meet the 429")
    assert "HTTP 429" in doc["error"]
    # Another process's limiter over the same KV bucket sees the hold: no token for ~30 s.
    other = RateLimiter(await js.key_value(settings.names.ratelimit_bucket), dict(settings.rate_limits))
    held_until = await other.held_until(UPSTREAM)
    assert held_until is not None
    assert before + 29 <= held_until <= time.time() + 30
    assert await other.try_take(UPSTREAM) > 25
    assert await other.try_take("polymarket_data") == 0.0  # other upstreams are not held


async def test_cleanup_deletes_budgets_of_periods_that_ended_past_the_failed_runs_retention(db: Database) -> None:
    now = datetime(2026, 12, 20, 12, 0, tzinfo=UTC)
    retention = Retention.from_settings(load_settings())  # failed runs: 7 days
    # Spends 9, 7 and 0 days ago: the first period reset 8.5 days ago (gone), the second
    # 6.5 days ago (kept, inside the 7 days), today's has not reset yet (kept).
    for days_ago in (9, 7, 0):
        moment = now - timedelta(days=days_ago, hours=1)
        await Budgets(db, {UPSTREAM: Quota(requests=5)}, clock=lambda at=moment: at).reserve(UPSTREAM)
    counts = await clean_up(db, retention=retention, now=now, batch_size=10)
    assert counts["budgets"] == 1
    remaining = sorted([doc["_id"] async for doc in db[Collections.BUDGETS].find({}, {"_id": 1})])
    assert remaining == [f"{UPSTREAM}:2026-12-13T00:00:00Z", f"{UPSTREAM}:2026-12-20T00:00:00Z"]
