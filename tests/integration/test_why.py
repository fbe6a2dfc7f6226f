"""`pulse why`: every blocker produced for real (a real ticker, worker, bucket, store) and then named.

Each test sets the situation up the way it happens in production: the ticker fires a
slot (`Ticker.tick`), a worker runs it, a handler blocks, fails, or takes tokens; the
answer is read through `shared.readmodel.why.explain`, the function `pulse why` calls
(and through the CLI where its settings come from the environment).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from services.ticker import Ticker
from shared.names import JOBS, Collections
from shared.readmodel.why import Sources, Why, explain
from shared.requests import publish_request
from shared.runtime import JobContext, Worker, job
from shared.runtime._job import JobSpec
from shared.schedules import parse_schedule
from shared.schemas import utcnow
from shared.settings import RateLimit, Settings
from shared.store import Database
from tests.helpers import wait_for
from tests.integration.test_cli_common import invoke
from tests.integration.test_cli_jobs import stdout_json
from tests.integration.test_runtime_support import request_for, wait_value

JOB = "whale_sync"
Handler = Callable[[JobContext], Awaitable[Any]]


def why_settings(make_settings: Callable[..., Settings], **policy: Any) -> Settings:
    """Only whale_sync is scheduled (hourly unless told), with slow retries (30 s apart)."""
    jobs: dict[str, Any] = {name: {"enabled": False} for name in JOBS if name != JOB}
    jobs[JOB] = {"schedule": "every 1h", "retry": {"max_attempts": 3, "initial_backoff_s": 30, "jitter": 0}, **policy}
    extra = {"rate_limits": {"polymarket_data": RateLimit(rate=1, period_s=60, burst=1)}}
    return make_settings(jobs=jobs, **extra)


class Stack:
    """A worker and a ticker for one test; `why()` asks what blocks the job."""

    def __init__(self, settings: Settings, js: JetStreamContext, db: Database) -> None:
        self.settings, self.js, self.db = settings, js, db
        self.workers: list[Worker] = []
        self.ticker: Ticker | None = None
        self.last_run_id = ""

    async def worker(self, handler: Handler) -> Worker:
        spec: JobSpec = job(JOB)(handler)
        worker = Worker(self.settings, [spec])
        await worker.start()
        self.workers.append(worker)
        return worker

    async def tick(self) -> str:
        """Let the ticker fire the job's latest slot once (as at start-up); return its run id."""
        if self.ticker is None:
            self.ticker = Ticker(self.settings, self.js, replica="why-test")
            await self.ticker.start()
        fired = await self.ticker.tick()
        assert [f.job for f in fired] == [JOB], fired
        return fired[0].run_id

    async def running_run(self) -> asyncio.Event:
        """A worker whose handler blocks, and the ticker's slot running in it; set the event to end it."""
        release = asyncio.Event()

        async def slow(ctx: JobContext) -> None:
            await release.wait()

        await self.worker(slow)
        self.last_run_id = await self.tick()
        await self.status(self.last_run_id, "running")
        return release

    async def why(self, **options: Any) -> Why:
        return await explain(Sources(self.js, self.db, self.settings), JOB, utcnow(), **options)

    async def kinds(self, **options: Any) -> list[str]:
        return [b.kind for b in (await self.why(**options)).blockers]

    async def status(self, run_id: str, *wanted: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            doc = await self.db[Collections.RUNS].find_one({"_id": run_id})
            return doc if doc is not None and doc.get("status") in wanted else None

        return await wait_value(probe, timeout_s=20, what=f"{run_id} to be {' or '.join(wanted)}")

    async def close(self) -> None:
        for worker in self.workers:
            await worker.stop(timeout_s=5)
        if self.ticker is not None:
            await self.ticker.stop()


@pytest.fixture
async def stack_for(js: JetStreamContext, db: Database) -> AsyncIterator[Callable[[Settings], Stack]]:
    stacks: list[Stack] = []

    def _make(settings: Settings) -> Stack:
        stacks.append(Stack(settings, js, db))
        return stacks[-1]

    yield _make
    for stack in stacks:
        await stack.close()


async def quick(ctx: JobContext) -> dict[str, int]:
    return {"ok": 1}


async def test_an_idle_job_whose_slot_ran_is_only_waiting_for_its_next_slot(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    settings = why_settings(make_settings)
    stack = stack_for(settings)
    await stack.worker(quick)
    await stack.status(await stack.tick(), "completed")

    answer = await stack.why()
    assert [b.kind for b in answer.blockers] == ["not_due"]
    next_slot = parse_schedule("every 1h").next_slot(utcnow())
    assert answer.blockers[0].until == next_slot
    assert answer.doing == "idle"


async def test_a_running_run_with_nothing_behind_it_means_nothing_blocks_the_job(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    stack = stack_for(why_settings(make_settings))
    release = await stack.running_run()
    run_id = stack.last_run_id
    try:
        answer = await stack.why()
        assert answer.blockers == []
        assert answer.doing.startswith(f"running: {run_id}")
    finally:
        release.set()
    await stack.status(run_id, "completed")


async def test_a_run_still_running_blocks_the_request_behind_it(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    settings = why_settings(make_settings)
    stack = stack_for(settings)
    release = await stack.running_run()
    run_id = stack.last_run_id
    await publish_request(stack.js, settings.names, request_for(JOB))
    try:
        blockers = (await stack.why()).blockers
        assert [b.kind for b in blockers] == ["overlap"]
        assert run_id in blockers[0].detail
        assert "1 request(s) wait behind it" in blockers[0].detail
        assert blockers[0].action.endswith(f"pulse cancel {run_id}")
    finally:
        release.set()


async def test_an_empty_rate_limit_bucket_says_when_a_token_is_back(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    async def spend(ctx: JobContext) -> None:
        await ctx.acquire("polymarket_data")

    settings = why_settings(make_settings, rate_limit_bucket="polymarket_data")
    stack = stack_for(settings)
    await stack.worker(spend)
    await stack.status(await stack.tick(), "completed")

    [blocker] = [b for b in (await stack.why()).blockers if b.kind == "rate_limited"]
    assert "polymarket_data is empty" in blocker.detail
    assert blocker.until is not None
    assert timedelta(seconds=50) < blocker.until - utcnow() <= timedelta(seconds=60)


async def test_a_spent_upstream_quota_says_until_when(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    """The run that spends the last request of the day leaves the quota blocker, with its reset."""

    async def spend(ctx: JobContext) -> None:
        await ctx.acquire("polymarket_data")

    jobs: dict[str, Any] = {name: {"enabled": False} for name in JOBS if name != JOB}
    jobs[JOB] = {"schedule": "every 1h", "upstreams": ["polymarket_data"]}
    settings = make_settings(
        jobs=jobs, quotas={"polymarket_data": {"requests": 1, "period": "day", "resets_at": "00:00"}}
    )
    stack = stack_for(settings)
    assert "quota_exhausted" not in await stack.kinds()
    await stack.worker(spend)
    await stack.status(await stack.tick(), "completed")

    [blocker] = [b for b in (await stack.why()).blockers if b.kind == "quota_exhausted"]
    assert "polymarket_data" in blocker.detail
    assert blocker.until is not None
    assert blocker.until > utcnow()
    assert (blocker.until.hour, blocker.until.minute) == (0, 0)  # the next daily reset
    assert "PULSE_QUOTAS" in blocker.action


async def test_no_worker_bound_to_the_consumer_with_a_request_waiting(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    settings = why_settings(make_settings)
    stack = stack_for(settings)
    worker = await stack.worker(quick)
    await stack.status(await stack.tick(), "completed")
    assert "no_worker" not in await stack.kinds()  # a bound, idle worker keeps a pull request waiting
    await worker.stop(timeout_s=5)
    stack.workers.remove(worker)
    await publish_request(stack.js, settings.names, request_for(JOB))

    async def unbound() -> list[str]:
        kinds = await stack.kinds()
        return kinds if "no_worker" in kinds else []

    assert await wait_for(unbound, timeout_s=10, what="the consumer to show no pull request") == ["no_worker"]
    blocker = (await stack.why()).blockers[0]
    assert "1 request(s) wait" in blocker.detail
    assert "python -m services.whale_sync" in blocker.action


async def test_a_failing_run_waits_for_its_redelivery_at_the_time_it_names(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    async def broken(ctx: JobContext) -> None:
        raise RuntimeError("upstream said 503")

    stack = stack_for(why_settings(make_settings))
    await stack.worker(broken)
    run_id = await stack.tick()
    record = await stack.status(run_id, "retrying")

    [blocker] = (await stack.why()).blockers
    assert blocker.kind == "pending_redelivery"
    assert f"{run_id} failed attempt 1" in blocker.detail
    assert "upstream said 503" in blocker.detail
    assert blocker.until is not None
    assert abs((blocker.until - record["next_attempt_at"].replace(tzinfo=blocker.until.tzinfo)).total_seconds()) < 1
    assert timedelta(seconds=20) < blocker.until - utcnow() <= timedelta(seconds=30)


async def test_dead_lettered_runs_are_named_with_the_replay_command(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    async def broken(ctx: JobContext) -> None:
        raise RuntimeError("schema changed upstream")

    settings = why_settings(make_settings, retry={"max_attempts": 1})
    stack = stack_for(settings)
    await stack.worker(broken)
    run_id = await stack.tick()
    await stack.status(run_id, "failed")

    async def lettered() -> list[str]:
        kinds = await stack.kinds()
        return kinds if "dead_lettered" in kinds else []

    assert await wait_for(lettered, timeout_s=10, what="the dead letter to be counted") == ["dead_lettered"]
    blocker = (await stack.why()).blockers[0]
    assert f"newest {run_id}: RuntimeError: schema changed upstream" in blocker.detail
    assert blocker.action.endswith(f"pulse dlq replay --all --job {JOB}")


async def test_a_stopped_ticker_is_named_once_a_slot_is_past_its_grace(
    make_settings: Callable[..., Settings], stack_for: Callable[[Settings], Stack]
) -> None:
    stack = stack_for(why_settings(make_settings, schedule="every 1s"))
    await stack.worker(quick)
    await stack.tick()
    assert stack.ticker is not None
    await stack.ticker.stop()  # the ticker is down from here on
    stack.ticker = None

    async def stalled() -> list[str]:
        kinds = await stack.kinds(ticker_grace_s=1.0)
        return kinds if "ticker_stalled" in kinds else []

    assert await wait_for(stalled, timeout_s=10, what="the ticker to be named stalled") == ["ticker_stalled"]
    blocker = (await stack.why(ticker_grace_s=1.0)).blockers[0]
    assert "the ticker has not claimed the slot of" in blocker.detail
    assert "python -m services.ticker" in blocker.action


def test_pulse_why_names_a_paused_job_and_how_to_resume_it(settings: Settings) -> None:
    assert invoke(settings, "schedule", "pause", JOB).exit_code == 0
    answer = stdout_json(invoke(settings, "why", JOB, "--json"))
    assert answer["job"] == JOB
    assert answer["blocked"] is True
    [paused] = [b for b in answer["blockers"] if b["kind"] == "paused"]
    assert paused["action"] == f"pulse schedule resume {JOB}"
    text = invoke(settings, "why", JOB)
    assert text.exit_code == 0
    assert f"{JOB}: blocked" in text.stdout
    assert f"do: pulse schedule resume {JOB}" in text.stdout

    assert invoke(settings, "schedule", "resume", JOB).exit_code == 0
    kinds = [b["kind"] for b in stdout_json(invoke(settings, "why", JOB, "--json"))["blockers"]]
    assert "paused" not in kinds


def test_pulse_why_refuses_an_unknown_job(settings: Settings) -> None:
    result = invoke(settings, "why", "nosuchjob")
    assert result.exit_code == 2
    assert "unknown job 'nosuchjob'" in result.stderr
