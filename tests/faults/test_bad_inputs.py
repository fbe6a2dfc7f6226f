"""Bad requests from any NATS client: each is dead-lettered once, none blocks the job, none stays in JOBS."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from shared.names import Names
from shared.requests import MSG_ID_HEADER, publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.faults.audit import dead_letters, queued
from tests.faults.conftest import StartSim, record_recovery, settle_and_audit, start_serving, wait_completed, with_jobs
from tests.faults.system import System
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(180)
JOB = "whale_sync"


def request_json(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "run_id": new_run_id(JOB, Trigger.MANUAL),
        "job": JOB,
        "trigger": "manual",
        "scheduled_for": utcnow().isoformat(),
        "requested_by": "faults",
    }
    body.update(changes)
    return body


def bad_inputs(names: Names) -> list[tuple[str, str, bytes]]:
    """(what, subject, payload) of each bad request; every payload differs in its first bytes."""
    subject = names.job_subject(JOB)
    odd_ids = ["", "a" * 300, "../../etc/passwd", "white space", "ünïcödé", "$where", "run\nid", "x:y:" + "z" * 250]
    stats = JobRequest(run_id=new_run_id("stats", Trigger.MANUAL), job="stats", trigger=Trigger.MANUAL,
                       scheduled_for=utcnow())  # fmt: skip
    wrong_types = {"v": 1, "run_id": 12345, "job": [JOB], "trigger": 7, "scheduled_for": "yesterday", "args": "none"}
    cases: list[tuple[str, str, bytes]] = [
        ("not JSON", subject, b"{this is not json " + new_run_id(JOB, Trigger.MANUAL).encode()),
        ("a JSON list", subject, json.dumps([JOB, new_run_id(JOB, Trigger.MANUAL)]).encode()),
        ("wrong types", subject, json.dumps(wrong_types).encode()),
        ("unknown schema version", subject, json.dumps(request_json(v=99)).encode()),
        ("a 900 KB field", subject, json.dumps(request_json(requested_by="x" * 900_000)).encode()),
        ("wrong job", subject, stats.to_bytes()),
        ("oversized args", subject, json.dumps(request_json(args={"blob": "x" * 10_000})).encode()),
        ("150 unknown args keys", subject, json.dumps(request_json(args={f"k{i}": i for i in range(150)})).encode()),
    ]
    cases += [(f"odd run id {odd!r:.20}", subject, json.dumps(request_json(run_id=odd)).encode()) for odd in odd_ids]
    return cases


async def test_bad_inputs_are_each_dead_lettered_once_and_block_nothing(
    settings: Settings, js: JetStreamContext, db: Database, system: System, simulator: StartSim
) -> None:
    sim = simulator(markets=50, frozen=False)
    # The janitor's watchdog pass is what dead-letters requests on an unknown job's subject.
    schedules = {JOB: "every 1h", "watchdog": "every 2s"}
    env = with_jobs(schedules, PULSE_POLYMARKET_GAMMA_URL=sim.url, PULSE_POLYMARKET_DATA_URL=sim.url)
    env[f"PULSE_JOBS__{JOB.upper()}__ENABLED"] = "false"  # only what this test publishes
    await start_serving(system, [(JOB, env), ("janitor", env), ("ticker", env)])

    cases = bad_inputs(settings.names)
    for index, (_, subject, payload) in enumerate(cases):
        await js.publish(subject, payload, stream=settings.names.jobs_stream, headers={MSG_ID_HEADER: f"bad-{index}"})
    unknown = request_json(job="nosuchjob", run_id=new_run_id("nosuchjob", Trigger.MANUAL))
    unknown_payload = json.dumps(unknown).encode()
    try:
        await js.publish(settings.names.job_subject("nosuchjob"), unknown_payload, stream=settings.names.jobs_stream,
                         headers={MSG_ID_HEADER: unknown["run_id"]})  # fmt: skip
        refused = False
    except (nats.js.errors.Error, nats.errors.NoRespondersError):
        refused = True  # refused at the stream: nothing can pile up
    good = JobRequest(run_id=new_run_id(JOB, Trigger.MANUAL), job=JOB, trigger=Trigger.MANUAL, scheduled_for=utcnow())
    published = time.monotonic()
    await publish_request(js, settings.names, good)

    await wait_completed(db, JOB, 1, timeout_s=60)
    behind_s = time.monotonic() - published
    record_recovery("bad inputs", "good request behind them completed", behind_s)

    # An odd run id may still be a valid one: then it runs like any request.
    valid = {json.loads(payload)["run_id"] for _, _, payload in cases if _valid(payload)}
    expected = [(what, payload.decode(errors="replace")) for what, _, payload in cases if not _valid(payload)]
    if not refused:
        expected.append(("unknown job subject", unknown_payload.decode()))

    async def all_dead_lettered() -> bool:
        letters, _ = await dead_letters(js, settings)
        return len(letters) >= len(expected) and not await queued(js, settings)

    with contextlib.suppress(AssertionError):  # on a time-out, the assertions below say which
        # An unserved request is left alone for six ack waits (a new job's worker may be starting).
        await wait_for(all_dead_lettered, timeout_s=6 * settings.ack_wait_s + 20, interval_s=0.5,
                       what="every bad request dead-lettered")  # fmt: skip
    letters, unreadable = await dead_letters(js, settings)
    assert unreadable == 0
    matches = {what: [letter for letter in letters if letter.raw and text.startswith(letter.raw)]
               for what, text in expected}  # fmt: skip
    assert {what: len(found) for what, found in matches.items() if len(found) != 1} == {}, (
        "each bad request must have exactly one dead letter"
    )
    assert all(found[0].reason == "invalid" for found in matches.values())
    assert all(len(found[0].error) <= 2000 and found[0].error for found in matches.values())
    assert await queued(js, settings) == 0, "a bad request stays in JOBS"
    await settle_and_audit(system, js, db, settings, {good.run_id, *valid})
    # Rejecting is immediate: bad requests ahead of a good one must not hold it up for redeliveries.
    assert behind_s < 2 * settings.ack_wait_s, f"the good request waited {behind_s:.1f} s behind bad ones"


def _valid(payload: bytes) -> bool:
    try:
        return JobRequest.model_validate_json(payload).job == JOB
    except ValueError:
        return False
