"""Workflow steps through a real worker: the journal, resume, per-step retries, limits, order, parallel steps."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from pydantic import BaseModel

from shared.requests import publish_request
from shared.runtime import JobContext, job, read_steps
from shared.settings import RetryPolicy, Settings
from shared.store import Database
from tests.integration.test_runtime_support import WorkerFactory, policy, request_for, terminal_run, wait_value
from tests.integration.test_runtime_support import start_worker as start_worker

EFFECTS = "workflow_effects"


async def _effect(db: Database, run_id: str, step: str, value: Any = None) -> Any:
    """A step's side effect, counted in the database: one document per execution."""
    await db[EFFECTS].insert_one({"run_id": run_id, "step": step, "at": time.monotonic()})
    return value


async def _effects(db: Database, run_id: str) -> dict[str, int]:
    docs = await db[EFFECTS].find({"run_id": run_id}).to_list(None)
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc["step"]] = counts.get(doc["step"], 0) + 1
    return counts


async def _finish(
    js: JetStreamContext, db: Database, settings: Settings, name: str, timeout_s: float = 20
) -> dict[str, Any]:
    request = request_for(name)
    await publish_request(js, settings.names, request)
    return await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=timeout_s, what=f"{name} to finish")


async def test_a_retried_attempt_gets_recorded_results_and_runs_only_the_unfinished_step(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("wf_resume", policy=policy())
    async def wf_resume(ctx: JobContext) -> dict[str, Any]:
        first = await ctx.step.run("first", _effect, ctx.db, ctx.run_id, "first", {"n": 1})
        second = await ctx.step.run("second", _effect, ctx.db, ctx.run_id, "second", first["n"] + 1)

        async def third() -> int:
            await _effect(ctx.db, ctx.run_id, "third")
            if ctx.attempt == 1:
                raise RuntimeError("third fails on the first attempt")
            return int(second) + 1

        return {"third": await ctx.step.run("third", third, retry=False)}

    await start_worker([wf_resume])
    doc = await _finish(js, db, settings, "wf_resume")
    assert doc["status"] == "completed"
    assert doc["attempt_count"] == 2
    assert doc["summary"] == {"third": 3}
    assert await _effects(db, doc["_id"]) == {"first": 1, "second": 1, "third": 2}
    steps = await read_steps(db, doc["_id"])
    assert [(s.name, s.status.value, s.tries, s.index) for s in steps] == [
        ("first", "completed", 1, 0),
        ("second", "completed", 1, 1),
        ("third", "completed", 2, 2),
    ]
    assert steps[0].result_json == '{"n":1}'
    assert steps[0].result_bytes == len('{"n":1}')
    assert all(s.duration_ms is not None for s in steps)
    assert {s.run_ended_at for s in steps} == {doc["ended_at"]}  # the janitor's retention counts from here


async def test_a_step_is_retried_inside_the_attempt_with_the_default_policy(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    """Default: given up after the 4th failure, waits from 250 ms doubling (jitter 10 %)."""
    tries: list[float] = []

    async def flaky() -> str:
        tries.append(time.monotonic())
        if len(tries) < 4:
            raise RuntimeError(f"failure {len(tries)}")
        return "ok"

    @job("wf_default_retry", policy=policy())
    async def wf_default_retry(ctx: JobContext) -> dict[str, Any]:
        return {"value": await ctx.step.run("flaky", flaky)}

    await start_worker([wf_default_retry])
    doc = await _finish(js, db, settings, "wf_default_retry")
    assert (doc["status"], doc["attempt_count"], doc["summary"]) == ("completed", 1, {"value": "ok"})
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(gaps) == 3
    for gap, nominal in zip(gaps, (0.25, 0.5, 1.0), strict=True):
        assert nominal * 0.9 <= gap <= nominal * 1.1 + 1.0, gaps
    (step,) = await read_steps(db, doc["_id"])
    assert (step.status.value, step.tries) == ("completed", 4)


async def test_per_step_retry_override_and_retry_false_fail_the_attempt_through_the_job_retry(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    calls = {"override": 0, "single": 0}

    async def fails_first(key: str, failures: int) -> str:
        calls[key] += 1
        if calls[key] <= failures:
            raise RuntimeError(f"{key} broke")
        return key

    @job("wf_override", policy=policy())
    async def wf_override(ctx: JobContext) -> dict[str, Any]:
        fast = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=0)
        first = await ctx.step.run("override", fails_first, "override", 2, retry=fast)
        second = await ctx.step.run("single", fails_first, "single", 1, retry=False)
        return {"steps": [first, second]}

    await start_worker([wf_override])
    doc = await _finish(js, db, settings, "wf_override")
    assert (doc["status"], doc["attempt_count"]) == ("completed", 2)
    assert doc["summary"] == {"steps": ["override", "single"]}
    assert doc["attempts"][0]["error"] == "StepFailed: step 'single' failed after 1 try: RuntimeError: single broke"
    assert calls == {"override": 3, "single": 2}
    steps = await read_steps(db, doc["_id"])
    assert [(s.name, s.status.value, s.tries) for s in steps] == [
        ("override", "completed", 3),
        ("single", "completed", 2),
    ]


async def test_retry_false_runs_a_step_once_per_attempt_until_the_run_fails(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    calls: list[int] = []

    async def broken(attempt: int) -> None:
        calls.append(attempt)
        raise RuntimeError("broken")

    @job("wf_no_retry", policy=policy())
    async def wf_no_retry(ctx: JobContext) -> dict[str, Any]:
        await ctx.step.run("broken", broken, ctx.attempt, retry=False)
        return {}

    await start_worker([wf_no_retry])
    doc = await _finish(js, db, settings, "wf_no_retry")
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "exhausted", 3)
    assert calls == [1, 2, 3]
    (step,) = await read_steps(db, doc["_id"])
    assert (step.status.value, step.tries, step.error) == ("failed", 3, "RuntimeError: broken")


async def test_changed_step_order_on_resume_fails_at_once_naming_the_step(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("wf_order", policy=policy())
    async def wf_order(ctx: JobContext) -> dict[str, Any]:
        names = ["fetch", "write"] if ctx.attempt == 1 else ["write", "fetch"]  # "the code changed"
        await ctx.step.run(names[0], _effect, ctx.db, ctx.run_id, names[0])
        if ctx.attempt == 1:
            raise RuntimeError("crash after the first step")
        await ctx.step.run(names[1], _effect, ctx.db, ctx.run_id, names[1])
        return {}

    await start_worker([wf_order])
    doc = await _finish(js, db, settings, "wf_order")
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "permanent", 2)
    assert doc["error"].startswith("StepOrderChanged: step 'write' was asked for as step 1, but the journal of run")
    assert "holds 'fetch' there" in doc["error"]
    assert await _effects(db, doc["_id"]) == {"fetch": 1}


async def test_a_step_name_used_twice_fails_the_run_at_once(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    @job("wf_duplicate", policy=policy())
    async def wf_duplicate(ctx: JobContext) -> dict[str, Any]:
        for _ in range(2):
            await ctx.step.run("page", _effect, ctx.db, ctx.run_id, "page")
        return {}

    await start_worker([wf_duplicate])
    doc = await _finish(js, db, settings, "wf_duplicate")
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "permanent", 1)
    assert doc["error"] == (
        f"DuplicateStep: step 'page' is used twice in run {doc['_id']}: give each step of a workflow its own name"
    )
    assert await _effects(db, doc["_id"]) == {"page": 1}


async def test_results_over_the_run_limit_fail_the_run_with_a_clear_error(
    make_settings: Callable[..., Settings], js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    settings = make_settings(step_results_max_bytes=100)

    async def blob(size: int) -> str:
        return "x" * size

    @job("wf_big", policy=policy())
    async def wf_big(ctx: JobContext) -> dict[str, Any]:
        await ctx.step.run("small", blob, 60)  # 62 bytes of JSON
        await ctx.step.run("too_much", blob, 60)
        return {}

    await start_worker([wf_big], settings)
    doc = await _finish(js, db, settings, "wf_big")
    assert (doc["status"], doc["reason"], doc["attempt_count"]) == ("failed", "permanent", 1)
    assert doc["error"] == (
        f"StepResultTooLarge: step 'too_much' returned 62 bytes of JSON; the steps of run {doc['_id']} may "
        "record 100 bytes in all (62 used). Store big data in the database and return its id, or raise "
        "PULSE_STEP_RESULTS_MAX_BYTES."
    )
    steps = await read_steps(db, doc["_id"])
    assert [(s.name, s.status.value, s.result_bytes) for s in steps] == [
        ("small", "completed", 62),
        ("too_much", "failed", 0),
    ]


class Quote(BaseModel):
    market: str
    price: float


async def test_a_pydantic_result_is_returned_as_the_model_on_the_first_attempt_and_on_resume(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    seen: list[Quote] = []

    async def quote() -> Quote:
        return Quote(market="m1", price=0.25)

    @job("wf_model", policy=policy())
    async def wf_model(ctx: JobContext) -> dict[str, Any]:
        value = await ctx.step.run("quote", quote, returns=Quote)
        seen.append(value)
        if ctx.attempt == 1:
            raise RuntimeError("fail after the step")
        return value.model_dump()

    await start_worker([wf_model])
    doc = await _finish(js, db, settings, "wf_model")
    assert (doc["status"], doc["summary"]) == ("completed", {"market": "m1", "price": 0.25})
    assert seen == [Quote(market="m1", price=0.25)] * 2


async def test_parallel_steps_overlap_in_their_recorded_timings(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    async def slow(name: str) -> str:
        await asyncio.sleep(0.3)
        return name

    @job("wf_overlap", policy=policy())
    async def wf_overlap(ctx: JobContext) -> dict[str, Any]:
        names = ["a", "b", "c"]
        return {"results": await ctx.step.all(*(ctx.step.run(n, slow, n) for n in names))}

    await start_worker([wf_overlap])
    doc = await _finish(js, db, settings, "wf_overlap")
    assert (doc["status"], doc["summary"]) == ("completed", {"results": ["a", "b", "c"]})
    steps = await read_steps(db, doc["_id"])
    assert [(s.name, s.index, s.status.value) for s in steps] == [
        ("a", 0, "completed"),
        ("b", 1, "completed"),
        ("c", 2, "completed"),
    ]
    for one, other in itertools.combinations(steps, 2):
        assert None not in (one.started_at, one.ended_at, other.started_at, other.ended_at)
        assert one.started_at < other.ended_at, (one, other)  # type: ignore[operator]
        assert other.started_at < one.ended_at, (one, other)  # type: ignore[operator]


async def test_one_failing_parallel_step_fails_the_group_after_the_others_settle(
    settings: Settings, js: JetStreamContext, db: Database, start_worker: WorkerFactory
) -> None:
    async def slow(ctx: JobContext, name: str, fail: bool) -> str:
        await _effect(ctx.db, ctx.run_id, name)
        await asyncio.sleep(0 if fail else 0.3)  # the failure comes first; the other step still finishes
        if fail:
            raise RuntimeError(f"{name} failed")
        return name

    @job("wf_group_fail", policy=policy())
    async def wf_group_fail(ctx: JobContext) -> dict[str, Any]:
        results = await ctx.step.all(
            ctx.step.run("prices", slow, ctx, "prices", False),
            ctx.step.run("trades", slow, ctx, "trades", ctx.attempt == 1, retry=False),
        )
        return {"results": results}

    await start_worker([wf_group_fail])
    doc = await _finish(js, db, settings, "wf_group_fail")
    assert (doc["status"], doc["attempt_count"]) == ("completed", 2)
    assert doc["summary"] == {"results": ["prices", "trades"]}
    assert doc["attempts"][0]["error"] == "StepFailed: step 'trades' failed after 1 try: RuntimeError: trades failed"
    # prices finished and was recorded in attempt 1 although trades had failed: not run again.
    assert await _effects(db, doc["_id"]) == {"prices": 1, "trades": 2}
    steps = await read_steps(db, doc["_id"])
    assert [(s.name, s.status.value, s.tries) for s in steps] == [
        ("prices", "completed", 1),
        ("trades", "completed", 2),
    ]
