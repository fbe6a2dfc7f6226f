"""Run listings and single runs, as `pulse runs`/`pulse run` and the dashboard's Runs pages show them.

Listings are newest first by `started_at` (then `_id`), filtered by job, status,
trigger and a time range, and paged by a keyset cursor (the last row's `started_at` and
`_id`), so page 100 costs what page 1 costs; the `runs` indexes in `shared/store.py`
serve each filter. Runs that never started (`queued` cancel records) have no
`started_at` and appear on the first page only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.names import JOBS, Collections
from shared.readmodel.timetext import as_utc, iso, parse_time
from shared.runtime import get_run
from shared.schemas import RunRecord, RunStatus, Trigger
from shared.store import Database

__all__ = ["Cursor", "RunFilter", "RunsPage", "find_run", "list_runs"]

find_run = get_run

_SORT = [("started_at", -1), ("_id", -1)]


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list; every field None means "any"."""

    job: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before

    def __post_init__(self) -> None:
        if self.job is not None and self.job not in JOBS:
            raise ValueError(f"unknown job {self.job!r}: expected one of {', '.join(JOBS)}")
        if self.status is not None and self.status not in {s.value for s in RunStatus}:
            raise ValueError(f"unknown status {self.status!r}: expected one of {', '.join(s.value for s in RunStatus)}")
        if self.trigger is not None and self.trigger not in {t.value for t in Trigger}:
            raise ValueError(f"unknown trigger {self.trigger!r}: expected one of {', '.join(t.value for t in Trigger)}")

    def query(self) -> dict[str, Any]:
        """The MongoDB filter."""
        query: dict[str, Any] = {}
        if self.job is not None:
            query["job"] = self.job
        if self.status is not None:
            query["status"] = self.status
        if self.trigger is not None:
            query["trigger"] = self.trigger
        started: dict[str, datetime] = {}
        if self.since is not None:
            started["$gte"] = self.since
        if self.until is not None:
            started["$lt"] = self.until
        if started:
            query["started_at"] = started
        return query


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's start time and run id (exclusive)."""

    started_at: datetime
    run_id: str

    def encode(self) -> str:
        return f"{iso(self.started_at)}|{self.run_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse `encode`'s form; ValueError with a clear message otherwise."""
        stamp, sep, run_id = text.partition("|")
        if not sep or not run_id:
            raise ValueError(f"invalid page cursor {text!r}: follow the 'older' link instead of editing it")
        return cls(parse_time(stamp, option="cursor"), run_id)

    def query(self) -> dict[str, Any]:
        return {
            "$or": [
                {"started_at": {"$lt": self.started_at}},
                {"started_at": self.started_at, "_id": {"$lt": self.run_id}},
            ]
        }


@dataclass(frozen=True)
class RunsPage:
    """One page of runs, newest first, and the cursor of the next (older) page if any."""

    records: list[RunRecord]
    next_cursor: Cursor | None


async def list_runs(db: Database, flt: RunFilter, limit: int, after: Cursor | None = None) -> RunsPage:
    """Runs matching `flt`, newest first, at most `limit`, older than `after` when given."""
    query = flt.query()
    if after is not None:
        query = {"$and": [query, after.query()]} if query else after.query()
    cursor = db[Collections.RUNS].find(query).sort(_SORT).limit(limit + 1)
    records = [RunRecord.model_validate(doc) async for doc in cursor]
    more = len(records) > limit
    records = records[:limit]
    last = records[-1] if records else None
    started = as_utc(last.started_at) if last is not None else None
    next_cursor = Cursor(started, last.run_id) if more and last is not None and started is not None else None
    return RunsPage(records, next_cursor)
