"""The runner's pure steps: parsing a request and the guard before a run."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import BaseModel

from shared.runtime import job
from shared.runtime._retry import OutcomeKind
from shared.runtime._runner import Invalid, Parsed, guard, parse_request
from shared.schemas import JobRequest, Trigger, new_run_id, scheduled_run_id, utcnow
from shared.settings import JobPolicy, RetryPolicy


class Pages(BaseModel):
    model_config = {"extra": "forbid"}
    pages: int


POLICY = JobPolicy(schedule="every 1m", retry=RetryPolicy(max_attempts=3), stale_after_s=60, overlap="skip")


@job("pager", args=Pages, policy=POLICY)
async def pager(ctx: object) -> None:
    return None


def request(**overrides: object) -> JobRequest:
    values: dict[str, object] = {
        "run_id": new_run_id("pager", Trigger.MANUAL),
        "job": "pager",
        "trigger": Trigger.MANUAL,
        "scheduled_for": utcnow(),
        "args": {"pages": 2},
    }
    values.update(overrides)
    return JobRequest(**values)


def test_a_valid_request_parses_with_its_args() -> None:
    parsed = parse_request(request().to_bytes(), pager)
    assert isinstance(parsed, Parsed)
    assert parsed.args == Pages(pages=2)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"v": 2, "run_id": "pager:manual:1"}', "schema version 2 is not supported"),
        (b'{"v": 1, "run_id": "pager:manual:1", "job": "pager"}', "trigger: Field required"),
    ],
)
def test_malformed_payloads_are_invalid_with_a_clear_error(payload: bytes, expected: str) -> None:
    parsed = parse_request(payload, pager)
    assert isinstance(parsed, Invalid)
    assert expected in parsed.error


def test_another_jobs_request_is_an_unknown_job() -> None:
    other = request(job="other", run_id=new_run_id("other", Trigger.MANUAL))
    parsed = parse_request(other.to_bytes(), pager)
    assert isinstance(parsed, Invalid)
    assert "unknown job 'other'" in parsed.error
    assert parsed.run_id == other.run_id


def test_bad_args_name_the_field_and_what_the_job_takes() -> None:
    data = json.loads(request().to_bytes())
    data["args"] = {"pages": "many", "extra": 1}
    parsed = parse_request(json.dumps(data).encode(), pager)
    assert isinstance(parsed, Invalid)
    assert "pages" in parsed.error
    assert "unknown argument 'extra' (pager takes pages)" in parsed.error
    assert "Pages" not in parsed.error  # the model's class name is ours, not the operator's


def test_guard_skips_a_scheduled_request_whose_next_slot_passed() -> None:
    slot = (utcnow() - timedelta(minutes=3)).replace(second=0, microsecond=0)
    stale = request(trigger=Trigger.SCHEDULE, scheduled_for=slot, run_id=scheduled_run_id("pager", slot))
    outcome = guard(POLICY, stale, first=True)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == (OutcomeKind.SKIPPED, "overlap")
    assert guard(POLICY, stale, first=False) is None, "a retry of a started run is never skipped"
    assert guard(POLICY.model_copy(update={"overlap": "queue"}), stale, first=True) is None


def test_guard_never_skips_manual_requests() -> None:
    assert guard(POLICY, request(scheduled_for=utcnow() - timedelta(hours=1)), first=True) is None
