"""Upstream quotas: reserve each request from the period's budget, atomically, across processes.

One `budgets` document per upstream and quota period (`shared.budgets.budget_id`) holds
`spent`. A reservation is one conditional update, `{_id, spent <= limit - n}` with
`$inc: {spent: n}`: the filter and the increment are one atomic step on MongoDB and on
the embedded store (single-document atomicity), so however many workers race, `spent`
never passes the limit. A missing document is created first (an upsert of zeros; a
racing creator's duplicate key is harmless). A new period is a new document, so nothing
has to be reset. FerretDB 1.24 is not atomic per document and may overspend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared.budgets import budget_id, current_period
from shared.errors import QuotaExhausted
from shared.names import Collections
from shared.schemas import utcnow
from shared.settings import Quota
from shared.store import Database


class Budgets:
    """Reserves upstream requests from their quotas (a no-op for an upstream without one).

    Args:
        db: the store.
        quotas: upstream → quota (settings.quotas).
        clock: the current UTC time (tests move it across a reset).
    """

    def __init__(self, db: Database, quotas: dict[str, Quota], clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._quotas = quotas
        self._clock = clock

    def __repr__(self) -> str:
        return f"Budgets(upstreams={sorted(self._quotas)})"

    def now(self) -> datetime:
        return self._clock()

    async def reserve(self, upstream: str, requests: int = 1) -> None:
        """Spend `requests` of `upstream`'s quota for this period, or raise.

        Raises:
            QuotaExhausted: fewer than `requests` are left; nothing was spent.
        """
        quota = self._quotas.get(upstream)
        if quota is None:
            return
        now = self._clock()
        period = current_period(quota, now)
        key = budget_id(upstream, period)
        budgets = self._db[Collections.BUDGETS]
        spend = {"$inc": {"spent": requests}, "$set": {"limit": quota.requests, "updated_at": now}}
        flt = {"_id": key, "spent": {"$lte": quota.requests - requests}}
        doc = await budgets.find_one_and_update(flt, spend, return_document=ReturnDocument.AFTER)
        if doc is not None:
            return
        current = await budgets.find_one({"_id": key})
        if current is None:
            # A duplicate key: another process created it first; the conditional update decides.
            with contextlib.suppress(DuplicateKeyError):
                await budgets.insert_one(
                    {
                        "_id": key,
                        "upstream": upstream,
                        "period_start": period.start,
                        "resets_at": period.resets_at,
                        "limit": quota.requests,
                        "spent": 0,
                        "updated_at": now,
                    }
                )
            if await budgets.find_one_and_update(flt, spend, return_document=ReturnDocument.AFTER) is not None:
                return
            current = await budgets.find_one({"_id": key})
        spent = int((current or {}).get("spent", 0))
        raise QuotaExhausted(upstream, spent, quota.requests, period.resets_at)

    async def exhausted(self, upstreams: Iterable[str]) -> QuotaExhausted | None:
        """The first of `upstreams` whose quota is spent for this period (one read each), else None."""
        now = self._clock()
        for upstream in upstreams:
            quota = self._quotas.get(upstream)
            if quota is None:
                continue
            period = current_period(quota, now)
            doc = await self._db[Collections.BUDGETS].find_one({"_id": budget_id(upstream, period)}, {"spent": 1})
            spent = int(doc.get("spent", 0)) if doc else 0
            if spent >= quota.requests:
                return QuotaExhausted(upstream, spent, quota.requests, period.resets_at)
        return None
