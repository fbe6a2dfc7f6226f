"""Upstream budgets as operators see them: spend against quota, and the forecast to the reset.

`pulse budgets`, `pulse status` and (through `quota_exhausted`) `pulse why` read these;
nothing here writes. The runtime reserves from the same documents
(`shared/runtime/_budgets.py`), with the same period arithmetic (`shared/budgets.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

from shared.budgets import budget_id, current_period, forecast
from shared.names import Collections
from shared.readmodel.timetext import plain_times
from shared.runtime import Budgets
from shared.schemas import utcnow
from shared.settings import Settings
from shared.store import Database


@dataclass(frozen=True)
class BudgetView:
    """One upstream's quota in its current period."""

    upstream: str
    period: str  # "day" or "month"
    quota: int
    spent: int
    remaining: int
    period_start: datetime
    resets_at: datetime
    #: Requests spent by the reset if the period's pace so far holds.
    forecast_at_reset: int
    #: When that pace empties the quota, if before the reset.
    runs_out_at: datetime | None
    #: Jobs that call this upstream (their policy's `upstreams`).
    jobs: tuple[str, ...]

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0


async def read_budgets(db: Database, settings: Settings, now: datetime | None = None) -> list[BudgetView]:
    """Every upstream with a quota (PULSE_QUOTAS), in name order, with its spend this period."""
    now = now or utcnow()
    views = []
    for upstream, quota in sorted(settings.quotas.items()):
        period = current_period(quota, now)
        doc = await db[Collections.BUDGETS].find_one({"_id": budget_id(upstream, period)}, {"spent": 1})
        spent = int(doc.get("spent", 0)) if doc else 0
        ahead = forecast(spent, quota.requests, period, now)
        jobs = tuple(job for job, policy in settings.jobs.items() if upstream in policy.upstreams)
        views.append(
            BudgetView(
                upstream=upstream,
                period=quota.period,
                quota=quota.requests,
                spent=spent,
                remaining=max(0, quota.requests - spent),
                period_start=period.start,
                resets_at=period.resets_at,
                forecast_at_reset=ahead.at_reset,
                runs_out_at=ahead.runs_out_at,
                jobs=jobs,
            )
        )
    return views


def budgets_json(views: list[BudgetView]) -> list[dict[str, Any]]:
    """`--json` form of the budgets (times as ISO-8601 UTC strings)."""
    return [cast(dict[str, Any], plain_times({**asdict(view), "exhausted": view.exhausted})) for view in views]


@dataclass(frozen=True)
class QuotaBlock:
    """A job held back by a spent upstream quota, and until when."""

    job: str
    upstream: str
    spent: int
    quota: int
    until: datetime
    #: One line for operators: what is spent, until when, and what to do.
    detail: str


async def quota_exhausted(db: Database, settings: Settings, job: str, now: datetime | None = None) -> QuotaBlock | None:
    """Is the quota of an upstream `job` calls spent for this period, and until when? None: not blocked.

    The same check the runtime makes before it starts a run of `job` (one read per
    upstream with a quota). Raises KeyError for an unknown job.
    """
    policy = settings.jobs.for_job(job)
    spent = await Budgets(db, dict(settings.quotas), clock=lambda: now or utcnow()).exhausted(policy.upstreams)
    if spent is None:
        return None
    return QuotaBlock(job, spent.upstream, spent.spent, spent.limit, spent.resets_at, str(spent))
