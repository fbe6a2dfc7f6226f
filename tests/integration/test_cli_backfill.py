"""`pulse backfill` against real NATS and the embedded store.

Run records are written directly to stand for slots that already ran; requests are read
back from JOBS without consuming them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.names import Collections
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, scheduled_run_id
from shared.settings import Settings
from shared.store import Database
from tests.integration.test_cli_common import invoke
from tests.integration.test_cli_jobs import insert_runs, queued_requests, run_doc, stdout_json, with_db, with_js
from tests.integration.test_cli_refusals import assert_refused

JOB = "whale_sync"  # every 1m by default
#: The job's bucket: 100 tokens per 10 s, burst 10; at 4 calls a run, 2 at once then one every 0.4 s.
PACED = {
    "PULSE_JOBS__WHALE_SYNC__RATE_LIMIT_BUCKET": "polymarket_data",
    "PULSE_JOBS__WHALE_SYNC__CALLS_PER_RUN": "4",
}


def window() -> tuple[datetime, datetime]:
    """Ten whole-minute slots, all in the past."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    return end - timedelta(minutes=10), end


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def backfill(settings: Settings, start: datetime, end: datetime, *extra: str) -> Any:
    return stdout_json(
        invoke(settings, "backfill", JOB, "--from", iso(start), "--to", iso(end), "--json", *extra, **PACED)
    )


def test_backfill_requests_only_the_slots_that_never_ran_and_a_repeat_requests_nothing(settings: Settings) -> None:
    start, end = window()
    slots = [start + timedelta(minutes=i) for i in range(10)]
    ran = [slots[0], slots[3], slots[7]]
    insert_runs(
        settings,
        *(
            run_doc(scheduled_run_id(JOB, s), status, 30, trigger="schedule")
            for s, status in zip(ran, ("completed", "failed", "skipped"), strict=True)
        ),
    )
    queued = JobRequest(
        run_id=scheduled_run_id(JOB, slots[5]), job=JOB, trigger=Trigger.SCHEDULE, scheduled_for=slots[5]
    )
    with_js(settings, lambda js: publish_request(js, settings.names, queued))

    dry = backfill(settings, start, end, "--dry-run")
    assert (dry["total"], dry["already"], dry["to_request"], dry["calls"]) == (10, 4, 6, 24)
    new, ran_, queued_ = "to_request", "ran", "queued"
    assert [e["state"] for e in dry["slots"]] == [ran_, new, new, ran_, new, queued_, new, ran_, new, new]
    assert dry["slots"][3]["status"] == "failed"
    assert dry["pacing"] == {"at_once": 2, "interval_s": 0.4, "duration_s": pytest.approx(1.6)}
    assert [request.run_id for request, _ in queued_requests(settings, JOB)] == [queued.run_id], "the dry run published"

    started = time.monotonic()
    real = backfill(settings, start, end)
    took = time.monotonic() - started
    assert real["requested"] == dry["to_request"] == 6
    assert real["duplicates"] == 0
    assert [e["run_id"] for e in real["slots"] if e["state"] == "requested"] == [
        e["run_id"] for e in dry["slots"] if e["state"] == "to_request"
    ]
    assert took >= 1.6, f"6 requests at 2 at once then one per 0.4 s took only {took:.2f}s"
    held = queued_requests(settings, JOB)
    backfilled = {request.run_id: (request, msg_id) for request, msg_id in held if request.trigger is Trigger.BACKFILL}
    expected = {scheduled_run_id(JOB, s) for s in slots if s not in ran and s != slots[5]}
    assert set(backfilled) == expected
    for run_id, (request, msg_id) in backfilled.items():
        assert msg_id == run_id
        assert scheduled_run_id(JOB, request.scheduled_for) == run_id

    again = backfill(settings, start, end)
    assert (again["already"], again["requested"], again["duplicates"]) == (10, 0, 0)
    assert len(queued_requests(settings, JOB)) == 7

    async def _audit(db: Database) -> list[dict[str, Any]]:
        return await db[Collections.AUDIT].find({"action": "backfill"}).sort("at", 1).to_list(None)

    entries = with_db(settings, _audit)
    assert [(e["target"], e["outcome"], e["source"]) for e in entries] == [(JOB, "done", "cli")] * 2
    assert entries[0]["detail"].startswith("6 of 10 slots requested")
    assert entries[1]["detail"].startswith("0 of 10 slots requested")


def test_the_dry_run_text_lists_each_slot_and_prices_the_run(settings: Settings) -> None:
    start, end = window()
    insert_runs(settings, run_doc(scheduled_run_id(JOB, start), "completed", 30, trigger="schedule"))
    result = invoke(settings, "backfill", JOB, "--from", iso(start), "--to", iso(end), "--dry-run", **PACED)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "dry run: nothing is requested" in lines[0]
    assert f"{scheduled_run_id(JOB, start)}  already ran (completed): not requested again" in result.stdout
    assert result.stdout.count("would be requested") == 9
    assert lines[-1].startswith("10 slots, 1 already ran or queued, 9 to request; about 36 provider calls")
    assert "bucket polymarket_data (100 per 10s, burst 10)" in lines[-1]
    assert queued_requests(settings, JOB) == []


@pytest.mark.parametrize(
    ("args", "env", "phrases"),
    [
        (["--from", "2026-12-01T09:00:00Z", "--to", "2026-12-01T08:00:00Z"], {}, ["is not before --to"]),
        (["--from", "yesterday"], {}, ["--from", "yesterday"]),
        (["--from", "26h"], {}, ["more than 1500 slots", "split it"]),
        (["--from", "3d"], {}, ["past the run retention", "PULSE_RUNS_RETENTION_DAYS=2"]),
        (["--from", "1h", "--to", "2099-01-01T00:00:00Z"], {}, ["in the future", "--to now or earlier"]),
        (["--from", "1h"], {"PULSE_JOBS__WHALE_SYNC__ENABLED": "false"}, ["is disabled", "pulse trigger whale_sync"]),
        (["--from", "90s", "--to", "89s"], {"PULSE_JOBS__WHALE_SYNC__SCHEDULE": "daily at 02:00"}, ["no slot of"]),
    ],
    ids=["backwards", "unparseable", "too-many-slots", "past-retention", "future", "disabled", "no-slot"],
)
def test_bad_input_exits_2_with_one_line_and_requests_nothing(
    settings: Settings, args: list[str], env: dict[str, str], phrases: list[str]
) -> None:
    assert_refused(invoke(settings, "backfill", JOB, *args, **env), *phrases)
    assert queued_requests(settings, JOB) == []


def test_an_unknown_job_exits_2(settings: Settings) -> None:
    assert_refused(invoke(settings, "backfill", "nosuchjob", "--from", "1h"), "unknown job 'nosuchjob'")
