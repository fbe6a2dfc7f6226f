"""`pulse budgets` and the budget and freshness parts of `pulse status`, against real servers.

Spend is reserved through the runtime's own path (`Budgets.reserve`), then the CLI reads it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from typer.testing import Result

from shared.budgets import current_period
from shared.runtime._budgets import Budgets
from shared.settings import Settings
from shared.store import Database
from tests.integration.test_cli_common import invoke
from tests.integration.test_cli_jobs import insert_runs, run_doc, stdout_json, with_db

QUOTAS = {
    "polymarket_gamma": {"requests": 1000, "period": "day", "resets_at": "00:00"},
    "polymarket_data": {"requests": 10, "period": "month", "resets_at": "00:00"},
}


def _with_quotas(make_settings: Any) -> tuple[Settings, dict[str, str]]:
    return make_settings(quotas=QUOTAS), {"PULSE_QUOTAS": json.dumps(QUOTAS)}


def _shows(result: Result, *texts: str) -> None:
    """The command succeeded and its output holds every one of `texts`."""
    assert result.exit_code == 0, result.output
    missing = [text for text in texts if text not in result.output]
    assert missing == [], result.output


def _spend(settings: Settings, upstream: str, requests: int) -> None:
    async def _reserve(db: Database) -> None:
        budgets = Budgets(db, dict(settings.quotas))
        for _ in range(requests):
            await budgets.reserve(upstream)

    with_db(settings, _reserve)


def test_budgets_json_shows_spend_quota_reset_and_forecast_per_upstream(make_settings: Any) -> None:
    settings, env = _with_quotas(make_settings)
    _spend(settings, "polymarket_gamma", 25)
    _spend(settings, "polymarket_data", 10)
    rows = {row["upstream"]: row for row in stdout_json(invoke(settings, "budgets", "--json", **env))}
    assert set(rows) == {"polymarket_gamma", "polymarket_data"}
    gamma, data = rows["polymarket_gamma"], rows["polymarket_data"]
    now = datetime.now(UTC)
    day = current_period(settings.quotas["polymarket_gamma"], now)
    assert (gamma["quota"], gamma["spent"], gamma["remaining"], gamma["exhausted"]) == (1000, 25, 975, False)
    assert (gamma["period"], gamma["jobs"]) == ("day", ["market_sync", "market_refresh"])
    assert datetime.fromisoformat(gamma["resets_at"]) == day.resets_at
    assert datetime.fromisoformat(gamma["period_start"]) == day.start
    assert gamma["forecast_at_reset"] >= 25
    month = current_period(settings.quotas["polymarket_data"], now)
    assert (data["spent"], data["remaining"], data["exhausted"], data["jobs"]) == (
        10,
        0,
        True,
        ["whale_sync", "market_refresh"],
    )
    assert datetime.fromisoformat(data["resets_at"]) == month.resets_at
    assert data["forecast_at_reset"] == 10
    assert data["runs_out_at"] is not None


def test_budgets_table_marks_a_spent_quota_and_says_when_none_is_set(make_settings: Any) -> None:
    settings, env = _with_quotas(make_settings)
    _spend(settings, "polymarket_data", 10)
    _shows(
        invoke(settings, "budgets", **env),
        "10 / 10 per month",
        "spent: runs deferred",
        "0 / 1,000 per day",
        "whale_sync",
    )
    _shows(invoke(make_settings(), "budgets"), "no upstream has a quota: set PULSE_QUOTAS")
    assert stdout_json(invoke(make_settings(), "budgets", "--json")) == []


def test_status_shows_freshness_left_and_the_budgets(make_settings: Any) -> None:
    settings, env = _with_quotas(make_settings)
    insert_runs(settings, run_doc("whale_sync:manual:a", "completed", 60), run_doc("stats:manual:a", "completed", 60))
    _spend(settings, "polymarket_gamma", 3)
    rows = {row["job"]: row for row in stdout_json(invoke(settings, "status", "--json", **env))}
    whale = rows["whale_sync"]
    assert whale["freshness_target_s"] == 180
    assert 100 <= whale["freshness_budget_s"] <= 120  # 180 s target, success 60 s ago (and a little)
    assert rows["cleanup"]["freshness_target_s"] is None
    _shows(invoke(settings, "status", **env), "freshness left", "of 3m00s", "upstream budgets", "3 / 1,000 per day")


def test_status_shows_a_missed_freshness_target(make_settings: Any) -> None:
    settings = make_settings()
    insert_runs(settings, run_doc("whale_sync:manual:a", "completed", 600))
    _shows(invoke(settings, "status"), "missed by 7m")
    whale = {row["job"]: row for row in stdout_json(invoke(settings, "status", "--json"))}["whale_sync"]
    assert whale["freshness_budget_s"] < -timedelta(minutes=6).total_seconds()
