"""Upstream quota periods and forecasts: pure arithmetic, no I/O.

A `Quota` (settings) allows `requests` per day or per month, each period starting at
`resets_at` (UTC; a month's on day 1). The store keeps one budget document per upstream
and period (`budget_id`); the runtime reserves from it (`shared/runtime/_budgets.py`)
and the read model shows it (`shared/readmodel/budgets.py`), both with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.settings import Quota


@dataclass(frozen=True)
class Period:
    """One quota period: `[start, resets_at)`."""

    start: datetime
    resets_at: datetime


def _at(day: datetime, quota: Quota) -> datetime:
    return day.replace(hour=quota.resets_at.hour, minute=quota.resets_at.minute, second=0, microsecond=0)


def _add_month(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1, day=1)


def current_period(quota: Quota, now: datetime) -> Period:
    """The period of `quota` that holds `now` (a timezone-aware time)."""
    now = now.astimezone(UTC)
    if quota.period == "day":
        start = _at(now, quota)
        if start > now:
            start -= timedelta(days=1)
        return Period(start, start + timedelta(days=1))
    start = _at(now.replace(day=1), quota)
    if start > now:
        start = _add_month(start, -1)
    return Period(start, _add_month(start, 1))


def budget_id(upstream: str, period: Period) -> str:
    """The `_id` of the budget document of `upstream` in `period`."""
    return f"{upstream}:{period.start.strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class Forecast:
    """Where spending at the period's average pace so far leads by the reset."""

    #: Requests spent by the reset if the pace holds (at least `spent`).
    at_reset: int
    #: When the quota runs out at that pace, if before the reset; None otherwise.
    runs_out_at: datetime | None


def forecast(spent: int, limit: int, period: Period, now: datetime) -> Forecast:
    """Project `spent` (requests so far in `period`) to the reset at the average pace so far.

    The pace is the period's mean (spent / time elapsed), not the last hour's: a quota
    is a period's sum, and the mean needs no history. At the very start of a period
    (nothing elapsed) nothing is projected beyond what is spent.
    """
    if spent >= limit:
        return Forecast(spent, min(now, period.resets_at))
    elapsed = (now - period.start).total_seconds()
    remaining = max(0.0, (period.resets_at - now).total_seconds())
    if elapsed <= 0 or spent <= 0:
        return Forecast(spent, None)
    pace = spent / elapsed
    at_reset = spent + int(pace * remaining)
    if at_reset < limit:
        return Forecast(at_reset, None)
    return Forecast(at_reset, now + timedelta(seconds=(limit - spent) / pace))
