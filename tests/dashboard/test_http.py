"""HTTP-level tests of the dashboard against real NATS and a real MongoDB-compatible store.

Every page answers with 0 runs; every action needs a signed-in operator and the form's
CSRF token, and bad input gets a 4xx with one clear line.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from shared.cli.jobs import ended_text
from shared.names import Collections
from shared.readmodel.schedules import read_override
from shared.schemas import DeadLetter, JobRequest, RunRecord, RunStatus, Trigger, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.dashboard.support import csrf_of, sign_in

PAGES = [
    "/",
    "/runs",
    "/schedules",
    "/jobs/whale_sync",
    "/jobs/stats",
    "/budgets",
    "/dlq",
    "/stats",
    "/audit",
    "/login",
]


def error_line(html: str) -> str:
    found = re.search(r'id="error-message">([^<]*)<', html)
    assert found is not None, html[:500]
    return unescape(found.group(1))


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_answers_with_no_runs(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.get(path)
    assert answer.status_code == 200
    assert "banner error" not in answer.text  # both servers are up
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")


async def test_health_routes_are_the_runtimes_with_real_checks(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"nats": True, "mongo": True}}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'pulse_dashboard_server_up{server="nats"} 1.0' in metrics.text
    assert "pulse_dashboard_live_streams 0.0" in metrics.text


async def test_overview_lists_every_job(client: httpx.AsyncClient) -> None:
    from shared.names import JOBS

    html = (await client.get("/")).text
    for job in JOBS:
        assert f'data-job="{job}"' in html
    assert "after market_sync, once per hour" in html  # stats is chained, not scheduled
    assert "after whale_sync, on request" in html


async def test_unknown_pages_and_runs_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).status_code == 404
    answer = await client.get("/runs/stats:manual:missing")
    assert answer.status_code == 404
    assert "no run 'stats:manual:missing' is recorded" in error_line(answer.text)


async def test_the_run_page_says_how_often_the_store_or_nats_interrupted_the_run(
    client: httpx.AsyncClient, db: Database
) -> None:
    record = RunRecord(
        _id="stats:manual:bumpy", job="stats", trigger=Trigger.MANUAL, status=RunStatus.COMPLETED, attempt_count=1
    )
    calm = record.model_copy(update={"run_id": "stats:manual:calm"})
    for run in (record.model_copy(update={"interruptions": 3}), calm):
        await db[Collections.RUNS].insert_one(run.model_dump(by_alias=True))
    bumpy = (await client.get("/runs/stats:manual:bumpy")).text
    assert "3 times by the store or NATS (run again without counting an attempt)" in bumpy
    assert "by the store or NATS" not in (await client.get("/runs/stats:manual:calm")).text
    ended = ended_text(record.model_copy(update={"interruptions": 3}))
    assert ended.endswith("after 1 attempt(s) (3 more interrupted by the store or NATS, not counted)")


@pytest.mark.parametrize("seq", ["%C2%B2", "x", "0"])  # "²" passes isdigit() but not int()
async def test_a_dead_letter_number_that_is_not_ascii_digits_is_400(client: httpx.AsyncClient, seq: str) -> None:
    answer = await client.get(f"/dlq/{seq}")
    assert answer.status_code == 400
    assert "is not a dead letter number" in error_line(answer.text)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("job=nope", "unknown job 'nope'"),
        ("status=done", "unknown status 'done'"),
        ("trigger=cron", "unknown trigger 'cron'"),
        ("since=yesterday", "since 'yesterday' is not a time"),
        ("until=2026-01-01T00:00:00", "has no timezone"),
        ("after=garbage", "invalid page cursor"),
        ("after=2026-12-01T09:00:00Z|stats:manual:x", "start again from the first page"),
        ("since=99999999d", "since '99999999d' is out of range"),
        ("since=inf", "since 'inf' is not a time"),
    ],
)
async def test_bad_run_filters_say_what_is_wrong(client: httpx.AsyncClient, query: str, message: str) -> None:
    answer = await client.get(f"/runs?{query}")
    assert answer.status_code == 400
    assert message in error_line(answer.text)


# -- every action: token and CSRF required ------------------------------------------------

ACTIONS = [
    ("/runs/stats:manual:x/cancel", {}),
    ("/runs/stats:manual:x/rerun", {}),
    ("/runs/stats:manual:x/signal", {"name": "go"}),
    ("/schedules/stats/set", {"schedule": "every 5m"}),
    ("/schedules/stats/reset", {}),
    ("/schedules/stats/trigger", {}),
    ("/schedules/bulk", {"action": "pause", "jobs": "stats"}),
    ("/dlq/1/replay", {}),
    ("/dlq/1/purge", {}),
    ("/dlq/replay-all", {}),
    ("/dlq/purge-all", {}),
    ("/logout", {}),
]


@pytest.mark.parametrize(("path", "form"), ACTIONS)
async def test_every_action_needs_a_session(
    client: httpx.AsyncClient, db: Database, path: str, form: dict[str, str]
) -> None:
    answer = await client.post(path, data=form)
    assert answer.status_code == 403
    assert "sign in with the operator token first" in error_line(answer.text)
    refused = await db[Collections.AUDIT].find_one({"outcome": "refused"})
    assert refused is not None
    assert refused["who"].startswith("dashboard:anonymous@")


@pytest.mark.parametrize(("path", "form"), ACTIONS)
async def test_every_action_needs_the_csrf_token(client: httpx.AsyncClient, path: str, form: dict[str, str]) -> None:
    await sign_in(client)
    for csrf in (None, "0" * 64):
        data = dict(form) if csrf is None else {**form, "csrf": csrf}
        answer = await client.post(path, data=data)
        assert answer.status_code == 403
        assert "CSRF token" in error_line(answer.text)


async def test_a_wrong_token_does_not_sign_in(client: httpx.AsyncClient) -> None:
    answer = await client.post("/login", data={"token": "not-the-token-at-all", "name": "eve"})
    assert answer.status_code == 403
    assert error_line(answer.text) == "wrong operator token"
    assert "pulse_session" not in answer.headers.get("set-cookie", "")


async def test_without_a_configured_token_the_dashboard_is_read_only(make_settings: Any, js: JetStreamContext) -> None:
    from tests.dashboard.support import running_dashboard

    async with running_dashboard(make_settings()) as running, httpx.AsyncClient(base_url=running.url) as http:
        assert "read-only" in (await http.get("/")).text
        answer = await http.post("/login", data={"token": "anything-at-all-here", "name": "x"})
        assert answer.status_code == 403
        assert "read-only" in error_line(answer.text)
        answer = await http.post("/schedules/stats/trigger", data={"csrf": "x"})
        assert answer.status_code == 403


# -- bad input, with a session ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "form", "status", "message"),
    [
        ("/runs/stats:manual:nothing/cancel", {}, 404, "no run 'stats:manual:nothing' is queued, delayed or recorded"),
        ("/runs/nope:manual:x/cancel", {}, 404, "a run id starts with its job"),
        ("/runs/stats:manual:nothing/rerun", {}, 404, "nothing to re-run"),
        ("/runs/stats:manual:nothing/signal", {"name": "go"}, 404, "nothing to signal"),
        ("/runs/stats:manual:nothing/signal", {"name": ""}, 400, "give the signal's name"),
        ("/runs/stats:manual:nothing/signal", {"name": "go", "payload": "[1,"}, 400, "the payload is not JSON"),
        ("/runs/Bad-Id/signal", {"name": "go"}, 404, "is not a run id"),
        ("/schedules/stats/set", {"schedule": "every blue moon"}, 400, "every blue moon"),
        ("/schedules/stats/set", {"schedule": ""}, 400, "give a schedule"),
        ("/schedules/nope/set", {"schedule": "every 5m"}, 404, "unknown job 'nope'"),
        ("/schedules/stats/trigger", {"at": "tomorrow"}, 400, "at 'tomorrow' is not a time"),
        ("/schedules/stats/trigger", {"at": "2020-01-01T00:00:00Z"}, 400, "is in the past"),
        ("/schedules/stats/trigger", {"at": "2099-01-01T00:00:00"}, 400, "has no timezone"),
        ("/schedules/stats/trigger", {"args": "{not json"}, 400, "is not JSON"),
        ("/schedules/stats/trigger", {"args": "[1]"}, 400, "must be a JSON object"),
        ("/schedules/bulk", {"action": "pause"}, 400, "select at least one job"),
        ("/schedules/bulk", {"action": "explode", "jobs": "stats"}, 400, "choose pause or resume"),
        ("/schedules/bulk", {"action": "pause", "jobs": "nope"}, 404, "unknown job 'nope'"),
        ("/dlq/abc/replay", {}, 400, "is not a dead letter number"),
        ("/dlq/999/replay", {}, 404, "no dead letter #999"),
        ("/dlq/999/purge", {}, 404, "no dead letter #999"),
        ("/dlq/purge-all", {"job": "nope"}, 400, "unknown job 'nope'"),
    ],
)
async def test_bad_input_gets_one_clear_line(
    client: httpx.AsyncClient, path: str, form: dict[str, str], status: int, message: str
) -> None:
    csrf = await sign_in(client)
    answer = await client.post(path, data={**form, "csrf": csrf})
    assert answer.status_code == status, answer.text[:400]
    assert message in error_line(answer.text)


# -- actions that work ---------------------------------------------------------------------------


async def test_pause_and_resume_several_jobs_at_once(
    client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings
) -> None:
    csrf = await sign_in(client)
    answer = await client.post("/schedules/bulk", data={"action": "pause", "jobs": ["stats", "cleanup"], "csrf": csrf})
    assert answer.status_code == 303
    for job in ("stats", "cleanup"):
        entry = await read_override(js, dash_settings, job)
        assert entry.override is not None
        assert entry.override.paused
        assert entry.override.updated_by.startswith("dashboard:tester@")
    assert (await read_override(js, dash_settings, "whale_sync")).override is None
    page = (await client.get("/schedules")).text
    assert "paused: stats, cleanup" in page  # the flash message
    await client.post("/schedules/bulk", data={"action": "resume", "jobs": ["stats", "cleanup"], "csrf": csrf})
    for job in ("stats", "cleanup"):
        assert not (await read_override(js, dash_settings, job)).override.paused  # type: ignore[union-attr]
    actions = [doc["action"] async for doc in db[Collections.AUDIT].find({"outcome": "done"}).sort("at", 1)]
    assert actions == ["sign_in", "schedule_pause", "schedule_resume"]


async def test_set_and_reset_a_schedule(
    client: httpx.AsyncClient, js: JetStreamContext, dash_settings: Settings
) -> None:
    csrf = await sign_in(client)
    assert (await client.post("/schedules/stats/set", data={"schedule": "every 30s", "csrf": csrf})).status_code == 303
    entry = await read_override(js, dash_settings, "stats")
    assert entry.override is not None
    assert entry.override.schedule == "every 30s"
    assert (await client.post("/schedules/stats/reset", data={"csrf": csrf})).status_code == 303
    assert (await read_override(js, dash_settings, "stats")).override is None


async def test_trigger_later_and_cancel_the_delayed_run(
    client: httpx.AsyncClient, js: JetStreamContext, dash_settings: Settings
) -> None:
    from shared.delayed import list_delayed

    csrf = await sign_in(client)
    answer = await client.post(
        "/schedules/stats/trigger", data={"at": "2099-01-01T00:00:00Z", "args": "{}", "csrf": csrf}
    )
    assert answer.status_code == 303
    pending = await list_delayed(js, dash_settings.names, "stats")
    assert len(pending) == 1
    run_id = pending[0][0].run_id
    assert run_id in (await client.get("/schedules")).text
    answer = await client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf})
    assert answer.status_code == 303
    assert await list_delayed(js, dash_settings.names, "stats") == []


async def test_replay_and_purge_dead_letters(
    client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings
) -> None:
    names = dash_settings.names
    request = JobRequest(
        run_id="stats:manual:dead1", job="stats", trigger=Trigger.MANUAL, scheduled_for=utcnow(), args={}
    )  # stats takes no args: a letter with args it refuses would not be replayed (shared/jobargs.py)
    seqs = []
    for run_id in ("stats:manual:dead1", "stats:manual:dead2"):
        letter = DeadLetter(
            job="stats", run_id=run_id, request=request, error="<b>boom</b>", attempts=3, reason="exhausted"
        )
        seqs.append(
            (
                await js.publish(names.dlq_subject("stats"), letter.model_dump_json().encode(), stream=names.dlq_stream)
            ).seq
        )
    html = (await client.get("/dlq")).text
    assert "&lt;b&gt;boom&lt;/b&gt;" in html
    assert "<b>boom</b>" not in html
    csrf = await sign_in(client)
    assert (await client.post(f"/dlq/{seqs[0]}/replay", data={"csrf": csrf})).status_code == 303
    replays = await db[Collections.AUDIT].find_one({"action": "dlq_replay", "outcome": "done"})
    assert replays is not None
    assert "replayed as stats:replay:" in replays["detail"]
    info = await js.stream_info(names.jobs_stream)
    assert info.state.messages == 1  # the replayed request waits for its worker
    assert (await client.post("/dlq/purge-all", data={"job": "stats", "csrf": csrf})).status_code == 303
    assert (await js.stream_info(names.dlq_stream)).state.messages == 0


async def test_a_form_that_is_not_urlencoded_is_refused(client: httpx.AsyncClient) -> None:
    await sign_in(client)
    answer = await client.post(
        "/schedules/stats/trigger", content=b'{"a":1}', headers={"content-type": "application/json"}
    )
    assert answer.status_code == 415


def test_csrf_helper_reads_forms() -> None:
    assert csrf_of('<input type="hidden" name="csrf" value="abc123">') == "abc123"
