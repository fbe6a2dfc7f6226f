"""Worker processes under faults: SIGKILL mid-run, two replicas of one job, a shared rate limit."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from shared.names import Collections
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, scheduled_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.e2e.conftest import Spawn
from tests.helpers import wait_for
from tests.integration.test_runtime_support import wait_value


def manual(job: str) -> JobRequest:
    return JobRequest(
        run_id=new_run_id(job, Trigger.MANUAL),
        job=job,
        trigger=Trigger.MANUAL,
        scheduled_for=utcnow(),
        requested_by="tests",
    )


async def run_record(db: Database, run_id: str) -> dict[str, Any] | None:
    return await db[Collections.RUNS].find_one({"_id": run_id})


async def test_worker_killed_mid_run_is_redelivered_to_another_and_completes_once(
    settings: Settings, js: JetStreamContext, db: Database, spawn: Spawn
) -> None:
    env = {"PROBE_SLEEP_S": "2.5"}
    workers = [spawn("probe", env=env), spawn("probe", env=env)]
    request = manual("probe")
    await publish_request(js, settings.names, request)

    async def _running_worker() -> int | None:
        doc = await run_record(db, request.run_id)
        started = await db["probe_starts"].count_documents({"run_id": request.run_id})
        if doc and doc["status"] == "running" and started:
            return int(doc["worker"].rsplit(":", 1)[1])
        return None

    pid = await wait_for(_running_worker, timeout_s=60, what="a worker to start the run")
    victim = next(p for p in workers if p.pid == pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)

    async def _completed() -> dict[str, Any] | None:
        doc = await run_record(db, request.run_id)
        return doc if doc and doc["status"] == "completed" else None

    doc = await wait_value(_completed, timeout_s=60, what="the redelivered run to complete")
    survivor = next(p for p in workers if p.pid != pid)
    assert doc["summary"] == {"pid": survivor.pid}
    assert doc["attempt_count"] == 2
    assert [a["outcome"] for a in doc["attempts"]] == ["lost", "succeeded"]
    assert await db["probe_starts"].count_documents({"run_id": request.run_id}) == 2
    assert await db["probe_results"].count_documents({}) == 1
    events = await _stored(js, settings.names.run_events_wildcard("probe"), settings.names.events_stream)
    assert len(events) == 1


async def _stored(js: JetStreamContext, subject: str, stream: str) -> list[bytes]:
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    out: list[bytes] = []
    try:
        while True:
            try:
                out.append((await sub.next_msg(timeout=0.5)).data)
            except TimeoutError:
                return out
    finally:
        await sub.unsubscribe()


async def test_two_worker_processes_never_overlap_and_stale_scheduled_requests_are_skipped(
    settings: Settings, js: JetStreamContext, db: Database, spawn: Spawn
) -> None:
    spawn("probe", env={"PROBE_SLEEP_S": "0.15"})
    spawn("probe", env={"PROBE_SLEEP_S": "0.15"})
    requests = [manual("probe") for _ in range(8)]
    old_slots = [(utcnow() - timedelta(minutes=m)).replace(second=0, microsecond=0) for m in (5, 6)]
    stale = [
        JobRequest(run_id=scheduled_run_id("probe", slot), job="probe", trigger=Trigger.SCHEDULE, scheduled_for=slot)
        for slot in old_slots
    ]
    for request in [*requests[:4], *stale, *requests[4:]]:
        await publish_request(js, settings.names, request)

    async def _all_done() -> list[dict[str, Any]] | None:
        docs = await db[Collections.RUNS].find({"job": "probe"}).to_list(None)
        finished = [d for d in docs if d["status"] in ("completed", "skipped")]
        return docs if len(finished) == len(requests) + len(stale) else None

    docs = await wait_value(_all_done, timeout_s=90, what="every run to finish")
    by_id = {d["_id"]: d for d in docs}
    assert all(by_id[r.run_id]["status"] == "completed" for r in requests)
    assert all((by_id[r.run_id]["status"], by_id[r.run_id]["reason"]) == ("skipped", "overlap") for r in stale)
    intervals = sorted((a["started_at"], a["ended_at"]) for d in docs for a in d.get("attempts", []))
    assert len(intervals) == len(requests)
    for (_, end), (next_start, _) in itertools.pairwise(intervals):
        assert end <= next_start, "two runs of one job overlapped"
    pids = {d["summary"]["pid"] for d in docs if d["status"] == "completed"}
    assert len(pids) >= 1  # which replica runs what is up to JetStream; both may


async def test_two_processes_sharing_a_bucket_stay_within_rate_times_time_plus_burst(
    make_settings: Callable[..., Settings], js: JetStreamContext, spawn: Spawn, settings: Settings
) -> None:
    seconds, rate, burst = 5.0, 10.0, 3
    limits = json.dumps({"shared10": {"rate": rate, "period_s": 1, "burst": burst}})
    takers = [spawn("ratelimit_taker", "shared10", str(seconds), env={"PULSE_RATE_LIMITS": limits}) for _ in range(2)]
    outputs = []
    for taker in takers:
        stdout, _ = await asyncio.to_thread(taker.communicate, timeout=60)
        assert taker.returncode == 0
        outputs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    total = sum(o["count"] for o in outputs)
    window = max(o["end"] for o in outputs) - min(o["start"] for o in outputs)
    assert total <= rate * window + burst, (total, window)
    assert all(o["count"] > 0 for o in outputs)
    assert total >= rate * seconds * 0.6, f"the limiter starved the takers: {outputs}"


async def test_sigterm_lets_the_running_attempt_finish_and_exits_zero_with_json_logs(
    settings: Settings, js: JetStreamContext, db: Database, spawn: Spawn, tmp_path: Path
) -> None:
    worker = spawn("probe", env={"PROBE_SLEEP_S": "1.0"})
    request = manual("probe")
    await publish_request(js, settings.names, request)

    async def _running() -> bool:
        doc = await run_record(db, request.run_id)
        return bool(doc and doc["status"] == "running")

    await wait_for(_running, timeout_s=60, what="the run to start")
    worker.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker.wait, 30)
    assert code == 0
    doc = await run_record(db, request.run_id)
    assert doc is not None
    assert doc["status"] == "completed", "the attempt in progress finishes before the process exits"
    lines = [json.loads(line) for line in _log_lines(tmp_path, "probe-*.log") if line.startswith("{")]
    completed = [line for line in lines if line.get("event") == "run.completed"]
    assert [(c["job"], c["run_id"]) for c in completed] == [("probe", request.run_id)]


def _log_lines(folder: Path, pattern: str) -> list[str]:
    return [line for log in sorted(folder.glob(pattern)) for line in log.read_text().splitlines()]


async def test_unreachable_nats_and_a_busy_port_exit_2_with_one_clear_line(
    make_settings: Callable[..., Settings], spawn: Spawn, tmp_path: Path
) -> None:
    from shared.localstack import free_port

    unreachable = make_settings(nats_url=f"nats://127.0.0.1:{free_port()}", nats_connect_timeout_s=1.0)
    no_nats = spawn("probe", worker_settings=unreachable)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        no_port = spawn("probe", env={"PULSE_HTTP_PORT": str(busy.getsockname()[1])})
        for process in (no_nats, no_port):
            await asyncio.to_thread(process.communicate, timeout=30)  # communicate closes the pipe
    assert [no_nats.returncode, no_port.returncode] == [2, 2]
    failures = [
        json.loads(line)
        for line in _log_lines(tmp_path, "probe-*.log")
        if line.startswith("{") and '"service.failed"' in line
    ]
    messages = [f["msg"] for f in failures]
    assert len(messages) == 2, messages
    nats_line = next(m for m in messages if "cannot reach NATS" in m)
    port_line = next(m for m in messages if "cannot serve HTTP" in m)
    assert "PULSE_NATS_URL" in nats_line
    assert "PULSE_HTTP_PORT" in port_line
    tracebacks = [line for line in _log_lines(tmp_path, "probe-*.log") if line.startswith("Traceback")]
    assert tracebacks == []
