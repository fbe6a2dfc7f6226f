"""The Run page of a workflow: its step timeline, and the signal form of a run that waits (HTTP level)."""

from __future__ import annotations

import re
from html import unescape
from typing import Any
from urllib.parse import quote

import httpx
from nats.js import JetStreamContext

from shared.names import Collections
from shared.settings import Settings
from shared.store import Database
from tests.dashboard.support import sign_in
from tests.dashboard.test_http import error_line
from tests.dashboard.workflow import SIGNAL, approval_flow, start_waiting_run
from tests.helpers import wait_for


def step_rows(html: str) -> list[tuple[str, str]]:
    """(step name, status) of each row of the page's step timeline."""
    table = re.search(r'<table class="grid" id="steps">(.*?)</table>', html, re.S)
    assert table is not None, "no step timeline on the page"
    rows = re.findall(r'<tr data-step="([^"]+)">.*?class="status s-(\w+)"', table.group(1), re.S)
    return [(unescape(name), status) for name, status in rows]


async def test_a_waiting_workflow_shows_its_steps_and_resumes_by_the_signal_form(
    client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings, start_worker: Any
) -> None:
    await start_worker([approval_flow])
    run_id = await start_waiting_run(js, db, dash_settings)
    url = "/runs/" + quote(run_id, safe="")

    page = (await client.get(url)).text
    assert step_rows(page) == [("prepare", "completed"), (SIGNAL, "waiting")]
    assert page.count('<svg class="step-bar"') == 2  # one timeline bar per step
    assert "waiting for signal" in page
    assert 'id="signal-form"' not in page  # not signed in: no form

    csrf = await sign_in(client)
    page = (await client.get(url)).text
    assert f'name="name" value="{SIGNAL}"' in page  # the form names the awaited signal

    wrong = await client.post(url + "/signal", data={"csrf": csrf, "name": "stop"})
    assert wrong.status_code == 409
    assert f"is not waiting for signal 'stop' (it is waiting for '{SIGNAL}')" in error_line(wrong.text)
    bad = await client.post(url + "/signal", data={"csrf": csrf, "name": SIGNAL, "payload": "{oops"})
    assert bad.status_code == 400
    assert "the payload is not JSON" in error_line(bad.text)

    sent = await client.post(url + "/signal", data={"csrf": csrf, "name": SIGNAL, "payload": '{"by": "web"}'})
    assert sent.status_code == 303
    assert sent.headers["location"] == url

    async def completed() -> dict[str, Any] | None:
        doc = await db[Collections.RUNS].find_one({"_id": run_id})
        return doc if doc is not None and doc["status"] == "completed" else None

    doc = await wait_for(completed, timeout_s=20, what="the signaled run to complete")
    assert doc["summary"] == {"prepared": {"markets": 3}, "approval": {"by": "web"}}
    page = (await client.get(url)).text
    assert step_rows(page) == [("prepare", "completed"), (SIGNAL, "completed")]
    assert 'id="signal-form"' not in page

    trail = await db[Collections.AUDIT].find({"action": "signal"}).sort("at", 1).to_list(None)
    assert [(e["outcome"], e["target"], e["source"]) for e in trail] == [
        ("failed", run_id, "dashboard"),
        ("failed", run_id, "dashboard"),
        ("done", run_id, "dashboard"),
    ]
    assert trail[-1]["who"].startswith("dashboard:tester@")
    assert trail[-1]["params"] == {"name": SIGNAL, "payload": '{"by": "web"}'}


async def test_a_run_without_steps_shows_no_step_timeline(client: httpx.AsyncClient, db: Database) -> None:
    from shared.schemas import utcnow

    await db[Collections.RUNS].insert_one(
        {"_id": "stats:manual:plain", "job": "stats", "trigger": "manual", "status": "completed",
         "scheduled_for": utcnow(), "started_at": utcnow(), "ended_at": utcnow(), "attempts": []}
    )  # fmt: skip
    page = await client.get("/runs/stats:manual:plain")
    assert page.status_code == 200
    assert 'id="steps"' not in page.text
