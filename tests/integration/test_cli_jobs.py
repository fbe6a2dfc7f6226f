"""`pulse trigger | status | watch | runs | run | cancel` against real NATS and FerretDB.

These tests run the CLI in-process (typer's runner, which calls `asyncio.run`), so they
are plain functions; set-up and checks talk to the servers in their own `asyncio.run`.
Run records are written here directly to give the read-only commands something to read.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import nats.js.errors
import pytest
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict
from typer.testing import Result

from shared.bus import connect_nats, ensure_topology
from shared.delayed import list_delayed
from shared.names import Collections
from shared.requests import MSG_ID_HEADER
from shared.schemas import JobRequest, RunEvent, RunStatus
from shared.settings import Settings
from shared.store import Database, make_client
from tests.helpers import register_args_model, wait_for
from tests.integration.test_cli_common import invoke

T = TypeVar("T")


def with_js(settings: Settings, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    async def _run() -> T:
        client = await connect_nats(settings, name="tests")
        try:
            js = client.jetstream()
            await ensure_topology(js, settings)
            return await work(js)
        finally:
            await client.close()

    return asyncio.run(_run())


def with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def _run() -> T:
        client = make_client(settings)
        try:
            return await work(client[settings.mongo_db])
        finally:
            await client.close()

    return asyncio.run(_run())


def insert_runs(settings: Settings, *docs: dict[str, Any]) -> None:
    async def _insert(db: Database) -> None:
        await db[Collections.RUNS].insert_many(list(docs))

    with_db(settings, _insert)


def run_doc(run_id: str, status: str, ended_ago_s: float | None, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    ended = None if ended_ago_s is None else now - timedelta(seconds=ended_ago_s)
    doc = {
        "_id": run_id,
        "job": run_id.split(":")[0],
        "trigger": "manual",
        "status": status,
        "requested_at": (ended or now) - timedelta(seconds=2),
        "started_at": (ended or now) - timedelta(seconds=1),
        "ended_at": ended,
        "attempt_count": 1,
        "attempts": [
            {
                "number": 1,
                "started_at": (ended or now) - timedelta(seconds=1),
                "ended_at": ended,
                "outcome": status,
                "error": extra.get("error"),
                "worker": "w1",
            }
        ],
    }
    doc.update(extra)
    return doc


#: JetStream's error code for "no message found" (a missing stream is 10059).
_NO_MESSAGE_FOUND = 10037


def queued_requests(settings: Settings, job: str) -> list[tuple[JobRequest, str | None]]:
    """Every request held on `jobs.<job>`, with its Nats-Msg-Id."""

    async def _read(js: JetStreamContext) -> list[tuple[JobRequest, str | None]]:
        found = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(
                    settings.names.jobs_stream, seq=seq, subject=settings.names.job_subject(job), next=True
                )
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code != _NO_MESSAGE_FOUND:  # e.g. the stream is missing: a failure
                    raise
                return found  # no message at or after `seq`: all read
            found.append((JobRequest.model_validate_json(msg.data or b""), (msg.headers or {}).get(MSG_ID_HEADER)))
            assert msg.seq is not None
            seq = msg.seq + 1

    return with_js(settings, _read)


def stdout_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- trigger -----------------------------------------------------------------------------


class LimitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int
    label: str


def test_trigger_publishes_a_manual_request_and_prints_its_run_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_args_model(monkeypatch, "stats", LimitArgs)
    result = invoke(settings, "trigger", "stats", "--arg", "limit=5", "--arg", "label=nightly run")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    assert run_id.startswith("stats:manual:")
    [(request, msg_id)] = queued_requests(settings, "stats")
    assert request.run_id == run_id == msg_id
    assert request.trigger == "manual"
    assert request.args == {"limit": 5, "label": "nightly run"}
    assert request.requested_by.startswith("pulse:")


def test_the_same_key_twice_starts_one_run(settings: Settings) -> None:
    first = stdout_json(invoke(settings, "trigger", "whale_sync", "--key", "backfill-7", "--json"))
    second = stdout_json(invoke(settings, "trigger", "whale_sync", "--key", "backfill-7", "--json"))
    assert first["run_id"] == second["run_id"] == "whale_sync:manual:backfill-7"
    assert first["duplicate"] is False
    assert second["duplicate"] is True
    assert len(queued_requests(settings, "whale_sync")) == 1


def test_a_key_of_a_finished_run_is_not_started_again_after_the_dedupe_window(settings: Settings) -> None:
    """Beyond JetStream's duplicate window the run record is what stops a second run."""
    run_id = "stats:manual:" + "k" + __import__("hashlib").sha256(b"report 2026/01").hexdigest()[:32]
    insert_runs(settings, run_doc(run_id, "completed", 30))
    result = stdout_json(invoke(settings, "trigger", "stats", "--key", "report 2026/01", "--json"))
    assert result == {"run_id": run_id, "job": "stats", "at": None, "duplicate": True, "status": "completed"}
    assert queued_requests(settings, "stats") == []


def test_trigger_in_holds_a_delayed_run_that_cancel_removes(settings: Settings) -> None:
    result = stdout_json(invoke(settings, "trigger", "cleanup", "--in", "1h", "--json"))
    run_id = result["run_id"]
    assert run_id.startswith("cleanup:delayed:")
    at = datetime.fromisoformat(result["at"])
    assert timedelta(minutes=59) < at - datetime.now(UTC) <= timedelta(hours=1)
    pending = with_js(settings, lambda js: list_delayed(js, settings.names, "cleanup"))
    assert [request.run_id for request, _ in pending] == [run_id]

    cancel = stdout_json(invoke(settings, "cancel", run_id, "--json"))
    assert cancel["delayed_request_removed"] is True
    assert with_js(settings, lambda js: list_delayed(js, settings.names, "cleanup")) == []
    doc = with_db(settings, lambda db: db[Collections.RUNS].find_one({"_id": run_id}))
    assert doc is not None  # who canceled it, and when, outlive the removed request
    assert (doc["status"], doc["reason"]) == ("canceled", "canceled before it fired")
    assert doc["canceled_by"].startswith("pulse:")
    assert doc["cancel_requested_at"] is not None
    shown = invoke(settings, "run", run_id)
    assert "cancel requested by pulse:" in " ".join(shown.stdout.split())


def test_cancel_of_a_queued_run_records_the_request(settings: Settings) -> None:
    run_id = invoke(settings, "trigger", "stats").stdout.strip()
    result = stdout_json(invoke(settings, "cancel", run_id, "--json"))
    assert result["status"] == "queued"
    doc = with_db(settings, lambda db: db[Collections.RUNS].find_one({"_id": run_id}))
    assert doc is not None
    assert doc["cancel_requested"] is True
    assert doc["canceled_by"].startswith("pulse:")


def test_cancel_refuses_unknown_and_finished_runs(settings: Settings) -> None:
    unknown = invoke(settings, "cancel", "stats:manual:typo")
    assert unknown.exit_code == 1
    assert "no run 'stats:manual:typo' is queued, delayed or recorded" in " ".join(unknown.stderr.split())
    assert with_db(settings, lambda db: db[Collections.RUNS].count_documents({})) == 0

    insert_runs(settings, run_doc("stats:manual:done", "completed", 5))
    finished = invoke(settings, "cancel", "stats:manual:done")
    assert finished.exit_code == 1
    assert "already ended completed" in finished.stderr


# -- status ------------------------------------------------------------------------------


def test_status_reports_schedule_freshness_failures_and_queue(settings: Settings) -> None:
    insert_runs(
        settings,
        run_doc("stats:manual:a", "completed", 600),
        run_doc("stats:manual:b", "failed", 300, error="boom"),
        run_doc("stats:manual:c", "timed_out", 100),
        run_doc("whale_sync:manual:a", "completed", 3600),
    )

    async def _pause_market_sync(js: JetStreamContext) -> None:
        kv = await js.key_value(settings.names.schedules_bucket)
        await kv.put("market_sync", json.dumps({"schedule": "every 30s", "paused": True}).encode())

    with_js(settings, _pause_market_sync)
    invoke(settings, "trigger", "stats")

    rows = {row["job"]: row for row in stdout_json(invoke(settings, "status", "--json"))}
    assert set(rows) == {"market_sync", "whale_sync", "stats", "cleanup", "watchdog", "market_refresh"}
    stats = rows["stats"]
    assert stats["last_run_id"] == "stats:manual:c"
    assert stats["last_status"] == "timed_out"
    assert stats["consecutive_failures"] == 2
    assert stats["fresh"] is True
    assert stats["waiting"] == 1
    assert stats["in_flight"] == 0
    assert stats["schedule"] == "hourly at :00"
    assert stats["next_fire"] is None  # not scheduled: chained after market_sync
    assert stats["chained_after"] == ["market_sync, once per hour"]
    assert datetime.fromisoformat(rows["cleanup"]["next_fire"]).hour == 2
    assert rows["whale_sync"]["fresh"] is False
    assert "stale" in rows["whale_sync"]["alerts"]
    market = rows["market_sync"]
    assert (market["schedule"], market["schedule_source"], market["paused"]) == ("every 30s", "override", True)
    assert market["next_fire"] is None
    assert rows["cleanup"]["last_run_id"] is None
    assert rows["cleanup"]["fresh"] is None
    assert (rows["stats"]["freshness"], rows["whale_sync"]["freshness"]) == ("fresh", "stale")
    # Never run and never served: its first window has not even started, so not stale.
    assert (rows["cleanup"]["freshness"], rows["cleanup"]["alerts"]) == ("pending", [])

    text = invoke(settings, "status")
    assert text.exit_code == 0
    assert "pending" in text.stdout
    assert "paused" in text.stdout
    assert "timed_out" in text.stdout


# -- runs / run --------------------------------------------------------------------------


def test_runs_filters_by_job_status_and_time(settings: Settings) -> None:
    insert_runs(
        settings,
        run_doc("stats:manual:old", "completed", 3 * 86400),
        run_doc("stats:manual:new", "failed", 60, error="provider said no"),
        run_doc("stats:manual:newer", "completed", 30),
        run_doc("whale_sync:manual:x", "completed", 10),
    )
    everything = stdout_json(invoke(settings, "runs", "--json"))
    assert [r["run_id"] for r in everything] == [
        "whale_sync:manual:x",
        "stats:manual:newer",
        "stats:manual:new",
        "stats:manual:old",
    ]
    stats_recent = stdout_json(invoke(settings, "runs", "--job", "stats", "--since", "1d", "--json"))
    assert [r["run_id"] for r in stats_recent] == ["stats:manual:newer", "stats:manual:new"]
    failed = stdout_json(invoke(settings, "runs", "--status", "failed", "--json"))
    assert [r["run_id"] for r in failed] == ["stats:manual:new"]
    assert len(stdout_json(invoke(settings, "runs", "--limit", "2", "--json"))) == 2
    table = invoke(settings, "runs", "--job", "stats")
    assert "stats:manual:new" in table.stdout
    assert "provider said no" in table.stdout


def test_run_shows_attempt_history_errors_and_summary(settings: Settings) -> None:
    insert_runs(settings, run_doc("market_sync:manual:r1", "completed", 5, summary={"upserted": 120}))
    data = stdout_json(invoke(settings, "run", "market_sync:manual:r1", "--json"))
    assert data["run_id"] == "market_sync:manual:r1"
    assert data["status"] == "completed"
    assert data["summary"] == {"upserted": 120}
    assert data["attempts"][0]["worker"] == "w1"
    text = invoke(settings, "run", "market_sync:manual:r1")
    assert "attempts" in text.stdout
    assert "upserted" in text.stdout

    missing = invoke(settings, "run", "market_sync:manual:nope")
    assert missing.exit_code == 1
    assert "no run 'market_sync:manual:nope'" in missing.stderr


# -- watch -------------------------------------------------------------------------------


def test_watch_once_renders_the_status_view(settings: Settings) -> None:
    result = invoke(settings, "watch", "--once", "--job", "stats")
    assert result.exit_code == 0, result.output
    assert "stats" in result.stdout
    assert "whale_sync" not in result.stdout


def test_watch_shows_run_events_as_they_arrive(settings: Settings) -> None:
    outcome: dict[str, Result] = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("r", invoke(settings, "watch", "--for", "3", "--interval", "0.5"))
    )
    thread.start()
    event = RunEvent(
        run_id="stats:manual:evt1",
        job="stats",
        status=RunStatus.COMPLETED,
        attempts=1,
        ended_at=datetime.now(UTC),
        duration_ms=1234,
    )

    async def _publish_until_done(js: JetStreamContext) -> None:
        async def _probe() -> bool:
            await js.publish(settings.names.run_event_subject("stats", "completed"), event.model_dump_json().encode())
            return not thread.is_alive()

        await wait_for(_probe, timeout_s=20, interval_s=0.3, what="watch --for 3 to end")

    with_js(settings, _publish_until_done)
    thread.join(timeout=5)
    result = outcome["r"]
    assert result.exit_code == 0, result.output
    assert "stats:manual:evt1" in result.stdout


def test_a_job_without_success_is_pending_until_its_first_window_passes(settings: Settings) -> None:
    """A failed first run inside the window is `pending`; past the window it is `never_succeeded`."""
    insert_runs(settings, run_doc("whale_sync:manual:x", "failed", 30, error="boom"))
    served = datetime.now(UTC) - timedelta(seconds=30)

    async def _first_served(db: Any, at: datetime) -> None:
        await db[Collections.JOB_STATE].update_one(
            {"_id": "runtime:whale_sync"}, {"$set": {"first_seen_at": at}}, upsert=True
        )

    with_db(settings, lambda db: _first_served(db, served))
    row = next(r for r in stdout_json(invoke(settings, "status", "--json")) if r["job"] == "whale_sync")
    assert (row["freshness"], row["alerts"]) == ("pending", [])  # whale_sync's window is 5 minutes

    with_db(settings, lambda db: _first_served(db, datetime.now(UTC) - timedelta(hours=1)))
    row = next(r for r in stdout_json(invoke(settings, "status", "--json")) if r["job"] == "whale_sync")
    assert row["freshness"] == "never_succeeded"
    assert "never succeeded" in row["alerts"]
