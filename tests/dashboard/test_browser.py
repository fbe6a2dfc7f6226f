"""The dashboard in a real headless Chromium, with real workers, NATS and MongoDB-compatible store.

Screenshots of every page are written to a temporary folder (its path is printed; set
PULSE_DASHBOARD_SCREENSHOTS to choose it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from nats.js import JetStreamContext
from playwright.async_api import Browser, Page, expect

from services.stats.__main__ import stats_job
from shared.errors import PermanentError
from shared.names import JOBS, Collections
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import JobPolicy, RetryPolicy, Settings
from shared.store import Database
from tests.dashboard.browser import chromium, sign_in
from tests.dashboard.support import TOKEN, Running
from tests.dashboard.workflow import SIGNAL, approval_flow, start_waiting_run
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(240)
WAIT_MS = 20_000
QUICK = JobPolicy(
    schedule="every 1h",
    retry=RetryPolicy(max_attempts=1, initial_backoff_s=0.1, jitter=0),
    timeout_s=30,
    stale_after_s=7200,
    overlap="queue",
)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("PULSE_DASHBOARD_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("dashboard-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    tab = await context.new_page()
    tab.set_default_timeout(WAIT_MS)
    yield tab
    await context.close()


def manual(job_name: str) -> JobRequest:
    return JobRequest(
        run_id=new_run_id(job_name, Trigger.MANUAL), job=job_name, trigger=Trigger.MANUAL, scheduled_for=utcnow()
    )


async def run_status(db: Database, run_id: str) -> str | None:
    doc = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1})
    return doc["status"] if doc else None


async def test_overview_loads_with_every_job(dashboard: Running, page: Page, screenshots: Path) -> None:
    await page.goto(dashboard.url + "/")
    rows = page.locator("#jobs-table tbody tr")
    await expect(rows).to_have_count(len(JOBS))
    for job_name in JOBS:
        await expect(page.locator(f'#jobs-table tr[data-job="{job_name}"]')).to_be_visible()
    await expect(page.locator(".banner.error")).to_have_count(0)
    await page.screenshot(path=screenshots / "overview.png", full_page=True)


async def test_a_completed_run_appears_on_the_open_runs_page_without_a_reload(
    dashboard: Running, page: Page, js: JetStreamContext, dash_settings: Settings, start_worker: Any, screenshots: Path
) -> None:
    @job("market_sync", policy=QUICK)
    async def quick(ctx: JobContext) -> dict[str, Any]:
        return {"markets": 7}

    await start_worker([quick])
    await page.goto(dashboard.url + "/runs")
    await expect(page.locator("#live-state")).to_have_text("live")
    await page.evaluate("window.loadedOnce = 'yes'")  # gone if the page reloads
    request = manual("market_sync")
    await publish_request(js, dash_settings.names, request)
    row = page.locator(f'#runs-body tr[data-run-id="{request.run_id}"]')
    await expect(row).to_contain_text("completed")
    await expect(row).to_contain_text('{"markets": 7}')
    assert await page.evaluate("window.loadedOnce") == "yes"
    await page.screenshot(path=screenshots / "runs.png", full_page=True)


async def test_trigger_from_schedules_starts_a_run_that_completes(
    dashboard: Running, page: Page, db: Database, start_worker: Any, screenshots: Path
) -> None:
    # stats waits for the first market sync (services/stats/__main__.py): one has completed.
    now = utcnow()
    await db[Collections.RUNS].insert_one(
        {"_id": "market_sync:manual:first", "job": "market_sync", "trigger": "manual", "status": "completed",
         "started_at": now, "ended_at": now}
    )  # fmt: skip
    await start_worker([stats_job])
    await sign_in(page, dashboard.url, TOKEN)
    await page.screenshot(path=screenshots / "schedules.png", full_page=True)
    await page.locator('#schedules-table tr[data-job="stats"] form.trigger button').click()
    flash = page.locator("#flash")
    await expect(flash).to_contain_text("stats started as stats:manual:")
    run_id = (await flash.inner_text()).rsplit(" ", 1)[-1]
    await wait_for(lambda: _is(db, run_id, "completed"), timeout_s=30, what="the triggered run to complete")
    await page.goto(dashboard.url + "/runs/" + quote(run_id, safe=""))
    await expect(page.locator("#run-status")).to_contain_text("completed")
    await page.screenshot(path=screenshots / "run.png", full_page=True)
    audit = await db[Collections.AUDIT].find_one({"action": "trigger", "outcome": "done"})
    assert audit is not None
    assert audit["who"].startswith("dashboard:browser@")


async def _is(db: Database, run_id: str, status: str) -> bool:
    return await run_status(db, run_id) == status


async def test_a_market_titled_with_a_script_tag_renders_as_text(
    dashboard: Running, page: Page, db: Database, screenshots: Path
) -> None:
    """Upstream text reaches the page escaped: the title shows as text and nothing runs."""
    title = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">Will it rain?'
    now = utcnow()
    # A snapshot as the stats job writes it (stats.take_snapshot), top markets included.
    for hours_ago, active in ((2, 40), (1, 42), (0, 45)):
        await db[Collections.MARKET_STATS].insert_one(
            {"_id": f"slot-{hours_ago}", "computed_at": now - timedelta(hours=hours_ago), "total_markets": 50,
             "active_markets": active, "volume_24h": 1000.0 * active, "whale_trades_1h": 3,
             "whale_notional_1h": 25_000.0 + hours_ago,
             "top_markets": [{"market": "polymarket:evil", "question": title, "volume_24h": 1e6, "yes_price": 0.5}]}
        )  # fmt: skip
    await page.goto(dashboard.url + "/stats")
    cell = page.locator("#top-markets td.question").first
    await expect(cell).to_have_text(title)
    assert await page.evaluate("window.injected === undefined")
    assert await page.locator("#top-markets script, #top-markets img").count() == 0
    await expect(page.locator("svg.chart polyline")).to_have_count(3)
    await page.screenshot(path=screenshots / "stats.png", full_page=True)


async def test_cancel_from_the_run_page(
    dashboard: Running, page: Page, db: Database, js: JetStreamContext, dash_settings: Settings, start_worker: Any,
    screenshots: Path,
) -> None:  # fmt: skip
    @job("whale_sync", policy=QUICK)
    async def long_sync(ctx: JobContext) -> None:
        for step in range(600):
            await ctx.checkpoint({"step": step})
            await asyncio.sleep(0.05)

    await start_worker([long_sync])
    request = manual("whale_sync")
    await publish_request(js, dash_settings.names, request)
    await wait_for(lambda: _is(db, request.run_id, "running"), timeout_s=15, what="the run to start")
    await sign_in(page, dashboard.url, TOKEN)
    await page.goto(dashboard.url + "/runs/" + quote(request.run_id, safe=""))
    await expect(page.locator("#run-status")).to_contain_text("running")
    await page.click("#cancel")
    await wait_for(lambda: _is(db, request.run_id, "canceled"), timeout_s=15, what="the run to end canceled")
    # The open page hears the run end (SSE) and shows its final state.
    await expect(page.locator("#run-status")).to_contain_text("canceled")
    await page.screenshot(path=screenshots / "run-canceled.png", full_page=True)


async def test_replay_from_the_dead_letters_page(
    dashboard: Running, page: Page, db: Database, js: JetStreamContext, dash_settings: Settings, start_worker: Any,
    screenshots: Path,
) -> None:  # fmt: skip
    broken = {"now": True}

    @job("cleanup", policy=QUICK)
    async def flaky_cleanup(ctx: JobContext) -> dict[str, Any]:
        if broken["now"]:
            raise PermanentError("the <archive> table is missing")
        return {"deleted": 0}

    await start_worker([flaky_cleanup])
    request = manual("cleanup")
    await publish_request(js, dash_settings.names, request)
    await wait_for(lambda: _is(db, request.run_id, "failed"), timeout_s=15, what="the run to fail")
    await sign_in(page, dashboard.url, TOKEN)
    await page.goto(dashboard.url + "/dlq")
    letter = page.locator("#letters tbody tr").first
    await expect(letter).to_contain_text("the <archive> table is missing")
    await page.screenshot(path=screenshots / "dlq.png", full_page=True)
    broken["now"] = False
    await letter.locator("button.replay").click()
    flash = page.locator("#flash")
    await expect(flash).to_contain_text("replayed as cleanup:replay:")
    replay_id = (await flash.inner_text()).rsplit(" ", 1)[-1]
    await wait_for(lambda: _is(db, replay_id, "completed"), timeout_s=20, what="the replayed run to complete")
    await expect(page.locator("#no-letters")).to_be_visible()


async def test_pause_then_resume_from_the_schedules_page(dashboard: Running, page: Page, screenshots: Path) -> None:
    await sign_in(page, dashboard.url, TOKEN)
    # Two scheduled jobs (stats is chained after market_sync, not scheduled: it shows "disabled").
    for job_name in ("cleanup", "watchdog"):
        await page.check(f'#schedules-table tr[data-job="{job_name}"] input[name=jobs]')
    await page.click("#bulk-pause")
    await expect(page.locator("#flash")).to_contain_text("paused: cleanup, watchdog")
    for job_name in ("cleanup", "watchdog"):
        await expect(page.locator(f'#schedules-table tr[data-job="{job_name}"] td.state')).to_have_text("paused")
    await expect(page.locator('#schedules-table tr[data-job="whale_sync"] td.state')).to_have_text("active")
    await page.screenshot(path=screenshots / "schedules-paused.png", full_page=True)
    for job_name in ("cleanup", "watchdog"):
        await page.check(f'#schedules-table tr[data-job="{job_name}"] input[name=jobs]')
    await page.click("#bulk-resume")
    await expect(page.locator("#flash")).to_contain_text("resumed: cleanup, watchdog")
    for job_name in ("cleanup", "watchdog"):
        await expect(page.locator(f'#schedules-table tr[data-job="{job_name}"] td.state')).to_have_text("active")


async def test_actions_without_the_token_are_refused(dashboard: Running, page: Page, db: Database) -> None:
    await page.goto(dashboard.url + "/schedules")
    await expect(page.locator("#bulk-pause")).to_have_count(0)  # no action is offered
    await expect(page.locator("form.trigger")).to_have_count(0)
    # A hand-made form (as another site could post) is refused by the server.
    await page.evaluate(
        """() => { const f = document.createElement('form'); f.method = 'post'; f.action = '/schedules/bulk';
        for (const [k, v] of [['action', 'pause'], ['jobs', 'stats'], ['csrf', 'guess']]) {
          const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }
        document.body.appendChild(f); f.submit(); }"""
    )
    await expect(page.locator("#error-message")).to_have_text("sign in with the operator token first")
    refused = await db[Collections.AUDIT].find_one({"action": "schedule_pause"})
    assert refused is not None
    assert refused["outcome"] == "refused"


async def test_step_timeline_and_signal_form_on_the_run_page(
    dashboard: Running, page: Page, db: Database, js: JetStreamContext, dash_settings: Settings, start_worker: Any,
    screenshots: Path,
) -> None:  # fmt: skip
    await start_worker([approval_flow])
    run_id = await start_waiting_run(js, db, dash_settings)
    await sign_in(page, dashboard.url, TOKEN)
    await page.goto(dashboard.url + "/runs/" + quote(run_id, safe=""))
    steps = page.locator("#steps tbody tr")
    await expect(steps).to_have_count(2)
    await expect(steps.nth(0)).to_contain_text("prepare")
    await expect(steps.nth(0)).to_contain_text("completed")
    await expect(steps.nth(1)).to_contain_text("waiting")
    await expect(page.locator("#steps svg.step-bar rect.bar")).to_have_count(2)
    await expect(page.locator("#signal-form input[name=name]")).to_have_value(SIGNAL)
    await page.screenshot(path=screenshots / "run-waiting.png", full_page=True)
    await page.fill("#signal-form textarea[name=payload]", '{"approved": true}')
    await page.click("#signal")
    # No check of the one-shot message: the run may end, and the page reload, before it is read.
    await wait_for(lambda: _is(db, run_id, "completed"), timeout_s=20, what="the signaled run to complete")
    # The open page hears the run end (SSE) and shows its final state and steps.
    await expect(page.locator("#run-status")).to_contain_text("completed")
    await expect(steps.nth(1)).to_contain_text("completed")
    await expect(page.locator("#signal-form")).to_have_count(0)
    await page.screenshot(path=screenshots / "run-workflow.png", full_page=True)
