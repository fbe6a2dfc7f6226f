"""`pulse dlq list | show | replay | purge` against real NATS (and a real worker for replay)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict

from shared.errors import PermanentError
from shared.names import Collections
from shared.runtime import JobContext, Worker, job
from shared.schemas import DeadLetter, JobRequest, Trigger, utcnow
from shared.settings import JobPolicy, RetryPolicy, Settings
from shared.store import Database
from tests.helpers import register_args_model, wait_for
from tests.integration.test_cli_common import invoke
from tests.integration.test_cli_jobs import queued_requests, stdout_json, with_js


def letter(job: str, run_id: str, *, error: str = "boom", args: dict[str, Any] | None = None) -> DeadLetter:
    request = JobRequest(run_id=run_id, job=job, trigger=Trigger.MANUAL, scheduled_for=utcnow(), args=args or {})
    return DeadLetter(job=job, run_id=run_id, request=request, error=error, attempts=4, reason="exhausted")


def publish_letters(settings: Settings, *payloads: tuple[str, bytes]) -> list[int]:
    async def _publish(js: JetStreamContext) -> list[int]:
        seqs = []
        for job_name, data in payloads:
            ack = await js.publish(settings.names.dlq_subject(job_name), data, stream=settings.names.dlq_stream)
            seqs.append(ack.seq)
        return seqs

    return with_js(settings, _publish)


def test_list_and_show_dead_letters(settings: Settings) -> None:
    seqs = publish_letters(
        settings,
        ("stats", letter("stats", "stats:manual:a", error="stats exploded").model_dump_json().encode()),
        ("whale_sync", letter("whale_sync", "whale_sync:manual:b").model_dump_json().encode()),
        ("stats", b"not json at all"),
    )
    everything = stdout_json(invoke(settings, "dlq", "list", "--json"))
    assert [item["seq"] for item in everything] == seqs
    assert everything[0]["run_id"] == "stats:manual:a"
    assert everything[2] == {"seq": seqs[2], "unreadable": "not json at all"}
    only_stats = stdout_json(invoke(settings, "dlq", "list", "--job", "stats", "--json"))
    assert [item["seq"] for item in only_stats] == [seqs[0], seqs[2]]
    table = invoke(settings, "dlq", "list")
    assert "stats exploded" in table.stdout

    shown = stdout_json(invoke(settings, "dlq", "show", str(seqs[0]), "--json"))
    assert shown["error"] == "stats exploded"
    assert shown["request"]["run_id"] == "stats:manual:a"
    assert "stats exploded" in invoke(settings, "dlq", "show", str(seqs[0])).stdout
    missing = invoke(settings, "dlq", "show", "999")
    assert missing.exit_code == 1
    assert "no dead letter #999" in missing.stderr


def test_purge_asks_first_and_deletes_one_or_all(settings: Settings) -> None:
    seqs = publish_letters(
        settings,
        *[("stats", letter("stats", f"stats:manual:{i}").model_dump_json().encode()) for i in range(3)],
        ("cleanup", letter("cleanup", "cleanup:manual:z").model_dump_json().encode()),
    )
    declined = invoke(settings, "dlq", "purge", str(seqs[0]), input="n\n")
    assert declined.exit_code == 1
    assert len(stdout_json(invoke(settings, "dlq", "list", "--json"))) == 4

    assert stdout_json(invoke(settings, "dlq", "purge", str(seqs[0]), "--yes", "--json")) == {"deleted": 1}
    assert stdout_json(invoke(settings, "dlq", "purge", "--job", "stats", "--yes", "--json")) == {"deleted": 2}
    remaining = stdout_json(invoke(settings, "dlq", "list", "--json"))
    assert [item["job"] for item in remaining] == ["cleanup"]
    confirmed = invoke(settings, "dlq", "purge", input="y\n")
    assert confirmed.exit_code == 0
    assert stdout_json(invoke(settings, "dlq", "list", "--json")) == []


class DayArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    day: str


def test_replay_publishes_a_new_replay_run_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    register_args_model(monkeypatch, "stats", DayArgs)
    [seq] = publish_letters(
        settings, ("stats", letter("stats", "stats:manual:orig", args={"day": "2026-01-01"}).model_dump_json().encode())
    )
    first = stdout_json(invoke(settings, "dlq", "replay", str(seq), "--keep", "--json"))
    second = stdout_json(invoke(settings, "dlq", "replay", str(seq), "--json"))
    assert first[0]["run_id"] == second[0]["run_id"]
    assert first[0]["run_id"].startswith("stats:replay:")
    assert (first[0]["duplicate"], second[0]["duplicate"]) == (False, True)
    [(request, _)] = queued_requests(settings, "stats")
    assert request.trigger == Trigger.REPLAY
    assert request.args == {"day": "2026-01-01"}
    assert stdout_json(invoke(settings, "dlq", "list", "--json")) == []  # removed after the second replay


def test_an_unparseable_dead_letter_is_not_replayed(settings: Settings) -> None:
    [seq] = publish_letters(settings, ("stats", json.dumps({"v": 1, "job": "stats"}).encode()))
    result = invoke(settings, "dlq", "replay", str(seq))
    assert result.exit_code == 2  # refused up front, like every replay that could only fail
    assert "cannot run" in result.stderr
    assert queued_requests(settings, "stats") == []


# -- with a real worker ----------------------------------------------------------------------


@pytest.fixture
async def flaky_stats(settings: Settings) -> AsyncIterator[dict[str, bool]]:
    """A worker running a `stats` job that fails permanently while `state["broken"]`."""
    state = {"broken": True}
    fast = JobPolicy(
        schedule="every 1m",
        retry=RetryPolicy(max_attempts=1, initial_backoff_s=0.1, jitter=0),
        timeout_s=10,
        stale_after_s=3600,
        overlap="queue",
    )

    @job("stats", policy=fast)
    async def stats_job(ctx: JobContext) -> dict[str, Any]:
        if state["broken"]:
            raise PermanentError("upstream table is missing")
        return {"rows": 3}

    worker = Worker(settings, [stats_job])
    await worker.start()
    yield state
    await worker.stop(timeout_s=5)


async def test_replayed_dead_letter_completes_once_the_fault_is_gone(
    settings: Settings, db: Database, flaky_stats: dict[str, bool]
) -> None:
    failed = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--wait", "--timeout", "30")
    assert failed.exit_code == 1, failed.output
    letters = await wait_for(
        lambda: asyncio.to_thread(lambda: stdout_json(invoke(settings, "dlq", "list", "--json"))),
        timeout_s=15,
        what="the dead letter",
    )
    assert "upstream table is missing" in letters[0]["error"]
    assert letters[0]["reason"] == "permanent"

    flaky_stats["broken"] = False
    replayed = stdout_json(await asyncio.to_thread(invoke, settings, "dlq", "replay", str(letters[0]["seq"]), "--json"))
    run_id = replayed[0]["run_id"]
    assert run_id.startswith("stats:replay:")

    async def _completed() -> dict[str, Any] | None:
        return await db[Collections.RUNS].find_one({"_id": run_id, "status": "completed"})

    doc = await wait_for(_completed, timeout_s=20, what="the replayed run to complete")
    assert doc["trigger"] == "replay"
    assert doc["summary"] == {"rows": 3}
