"""Issue 15's facts on the dashboard, set up for real and read through the shared read model.

The job page (`/jobs/<job>`: status, freshness left, chains, why it is not running, slot
strip and gaps), the Budgets page, the overview's freshness budget and the Schedules
page's recent slots, each against real NATS, the real store and (for the ledger) a real
ticker on a fake clock.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from shared.names import Collections
from shared.readmodel import schedules
from shared.runtime._budgets import Budgets
from shared.schemas import scheduled_run_id
from shared.store import Database
from tests.dashboard.support import running_dashboard
from tests.integration.test_cli_jobs import run_doc
from tests.integration.test_ledger import MakeTickers, make_tickers
from tests.integration.test_ledger_cli import outage
from tests.integration.test_ticker import settings_with

__all__ = ["make_tickers"]  # the fixture, used here by name

JOB = "whale_sync"
QUOTAS = {
    "polymarket_gamma": {"requests": 1000, "period": "day", "resets_at": "00:00"},
    "polymarket_data": {"requests": 10, "period": "month", "resets_at": "00:00"},
}


def part(html: str, pattern: str) -> str:
    """The unescaped text of the first match of `pattern` (an element with its content) in `html`."""
    found = re.search(pattern, html, re.DOTALL)
    assert found is not None, f"{pattern!r} not on the page: {html[:400]}"
    return unescape(found.group(0))


def row(html: str, attribute: str, value: str) -> str:
    """The table row carrying `attribute="value"`."""
    return part(html, rf'<tr {attribute}="{re.escape(value)}">.*?</tr>')


def text_of(html: str) -> str:
    """`html` without its tags, spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


async def get(url: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        answer = await http.get(path)
    assert "banner error" not in answer.text  # both servers are up
    return answer


async def test_pages_render_with_no_data(make_settings: Any, js: JetStreamContext, db: Database) -> None:
    async with running_dashboard(make_settings()) as dash:
        budgets = await get(dash.url, "/budgets")
        assert budgets.status_code == 200
        assert "No upstream has a quota: set PULSE_QUOTAS" in budgets.text
        page = await get(dash.url, f"/jobs/{JOB}")
        assert page.status_code == 200
        assert 'id="blockers"' in page.text  # nothing ever ran: no worker is bound, at least
        assert "no_worker" in row(page.text, "data-blocker", "no_worker")
        assert "never" in part(page.text, r'<section class="panel" id="job-status">.*?</section>')
        overview = await get(dash.url, "/")
        assert f'href="/jobs/{JOB}"' in overview.text
        assert "freshness left" in overview.text


async def test_bad_job_page_requests_get_one_clear_line(make_settings: Any, js: JetStreamContext) -> None:
    async with running_dashboard(make_settings()) as dash:
        unknown = await get(dash.url, "/jobs/nope")
        assert unknown.status_code == 404
        assert "unknown job 'nope': expected one of market_sync" in unescape(unknown.text)
        for last, message in (
            ("soon", "last 'soon' is not a duration"),
            ("30d", "at most 7d"),
            ("inf", "last 'inf' is out of range"),
            ("99999999d", "last '99999999d' is out of range"),
        ):
            answer = await get(dash.url, f"/jobs/{JOB}?last={last}")
            assert answer.status_code == 400
            assert message in unescape(answer.text)


async def test_job_page_draws_the_slot_strip_and_the_gaps_with_reasons(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    # Seven minutes ago, so that the Schedules page's last six slots hold some of the outage.
    slots = await outage(make_tickers, settings, minutes_ago=7)
    ids = [scheduled_run_id(JOB, slot) for slot in slots]
    await db[Collections.RUNS].insert_many(
        [
            {"_id": ids[0], "job": JOB, "trigger": "schedule", "status": "completed"},
            {"_id": ids[5], "job": JOB, "trigger": "schedule", "status": "failed"},
        ]
    )
    async with running_dashboard(settings) as dash:
        page = (await get(dash.url, f"/jobs/{JOB}?last=15m")).text
        strip = part(page, r'<div class="strip" id="strip">.*?</div>\s*</div>')
        states = dict(re.findall(r'title="(\S+) (\w+)', strip))
        assert [states[slot_id.split(":", 1)[1]] for slot_id in ids] == [
            "completed",
            *["missed"] * 4,
            "failed",
        ]
        gap = row(page, "data-reason", "ticker_down")
        cells = re.findall(r"<td>(.*?)</td>", gap)
        assert cells == [
            ids[1].split(":", 1)[1],
            ids[4].split(":", 1)[1],
            "4",
            "no ticker ran at the slot; the catch-up policy did not fire it later (catch-up policy latest)",
        ]
        # The ticker stopped claiming after the last slot it fired, and no worker ever ran.
        stalled = text_of(row(page, "data-blocker", "ticker_stalled"))
        assert "the ticker has not claimed the slot of" in stalled
        assert "check the ticker (python -m services.ticker" in stalled
        assert "start its service: python -m services.whale_sync" in row(page, "data-blocker", "no_worker")

        # The Schedules page's recent slots come from the same ledger.
        listing = (await get(dash.url, "/schedules")).text
        recent = part(listing, rf'<section class="slots" data-job="{JOB}">.*?</section>')
        assert re.search(rf'<li data-state="failed">{re.escape(ids[5].split(":", 1)[1])} <a href="/runs/', recent)
        assert re.search(
            rf'<li data-state="missed">{re.escape(ids[4].split(":", 1)[1])} .*?missed.*?\(ticker_down\)', recent
        )


async def test_budgets_page_and_why_show_a_spent_quota(make_settings: Any, js: JetStreamContext, db: Database) -> None:
    settings = make_settings(quotas=QUOTAS)
    budgets = Budgets(db, dict(settings.quotas))
    for _ in range(10):
        await budgets.reserve("polymarket_data")
    await budgets.reserve("polymarket_gamma")
    async with running_dashboard(settings) as dash:
        page = (await get(dash.url, "/budgets")).text
        data = text_of(row(page, "data-upstream", "polymarket_data"))
        assert "10 / 10 per month" in data
        assert "spent: runs deferred until the reset" in data
        assert "whale_sync" in data
        gamma = text_of(row(page, "data-upstream", "polymarket_gamma"))
        assert "1 / 1,000 per day" in gamma
        assert "999" in gamma
        assert "market_sync" in gamma
        assert 'href="/budgets"' in page  # in the navigation

        why = text_of(row((await get(dash.url, f"/jobs/{JOB}")).text, "data-blocker", "quota_exhausted"))
        assert "polymarket_data" in why
        assert "wait for the reset at" in why
        assert "see `pulse budgets`" in why
        assert 'data-blocker="quota_exhausted"' not in (await get(dash.url, "/jobs/market_sync")).text


async def test_a_paused_job_its_freshness_left_and_its_chains(
    make_settings: Any, js: JetStreamContext, db: Database
) -> None:
    settings = make_settings()
    await schedules.change_override(js, settings, JOB, schedules.pause("tester"))
    await db[Collections.RUNS].insert_many(
        [
            run_doc(f"{JOB}:manual:a", "completed", 60),  # target 3 min: about 2 min left
            run_doc("market_sync:manual:a", "completed", 1200),  # target 10 min: missed by 10
        ]
    )
    async with running_dashboard(settings) as dash:
        overview = (await get(dash.url, "/")).text
        whale = row(overview, "data-job", JOB)
        assert re.search(r'<td class="left-ok"[^>]*>1m\d\ds of 3m00s</td>', whale)  # 180 s less 60 s (and a little)
        assert re.search(
            r'<td class="left-missed"[^>]*>missed by 10m\d\ds</td>', row(overview, "data-job", "market_sync")
        )
        assert re.search(r'<td class="left-none"[^>]*>-</td>', row(overview, "data-job", "cleanup"))

        page = (await get(dash.url, f"/jobs/{JOB}")).text
        assert "paused" in part(page, r'<td id="job-state">.*?</td>')
        paused = text_of(row(page, "data-blocker", "paused"))
        assert "paused by tester" in paused
        assert "pulse schedule resume whale_sync" in paused
        assert re.search(r'id="freshness-left">1m\d\ds of 3m00s<', page)

        stats = text_of(
            part((await get(dash.url, "/jobs/stats")).text, r'<section class="panel" id="job-chains">.*?</section>')
        )
        assert "chained after market_sync, once per hour" in stats
        market = (await get(dash.url, "/jobs/market_sync")).text
        chains = text_of(part(market, r'<section class="panel" id="job-chains">.*?</section>'))
        assert "chains to stats, once per hour" in chains
        assert "no job requests it" in chains
        assert 'id="freshness-left">missed by 10m' in market


@pytest.mark.parametrize("path", ["/jobs/stats", "/budgets"])
async def test_new_pages_keep_the_content_security_policy(make_settings: Any, js: JetStreamContext, path: str) -> None:
    async with running_dashboard(make_settings(quotas=QUOTAS)) as dash:
        answer = await get(dash.url, path)
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert "style=" not in answer.text
    assert "<script>" not in answer.text
