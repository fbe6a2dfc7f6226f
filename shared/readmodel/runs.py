"""Run listings and single runs, as `pulse runs`/`pulse run` and the dashboard's Runs pages show them.

Listings are newest first by `started_at` (then `_id`), filtered by job, status,
trigger and a time range, and paged by a keyset cursor (the last row's `started_at` and
`_id`), so page 100 costs what page 1 costs; the `runs` indexes in `shared/store.py`
serve each filter. Runs that never started (`queued` cancel records) have no
`started_at`: they come last, after the oldest run that started, and a time range
(`since`/`until`) leaves them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.names import JOBS, Collections
from shared.readmodel.timetext import as_utc, parse_time
from shared.runtime import get_run
from shared.schemas import RunRecord, RunStatus, Trigger
from shared.store import Database

__all__ = ["Cursor", "RunFilter", "RunsPage", "find_run", "list_runs"]

find_run = get_run

_SORT = [("started_at", -1), ("_id", -1)]
_STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_STAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
#: A cursor's time when the page's last run never started.
_NOT_STARTED = "-"


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
    """Where a page ends: the last row's start time (None: it never started) and run id (exclusive).

    The time is encoded to the microsecond: `started_at` is stored to the millisecond, and a
    cursor cut to the second would skip the runs that started earlier in that second.
    """

    started_at: datetime | None
    run_id: str

    def encode(self) -> str:
        stamp = _NOT_STARTED if self.started_at is None else self.started_at.astimezone(UTC).strftime(_STAMP_FORMAT)
        return f"{stamp}|{self.run_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse `encode`'s form; ValueError with a clear message otherwise (also for the
        whole-second cursors of earlier versions, which could skip runs)."""
        stamp, sep, run_id = text.partition("|")
        if not sep or not run_id or not (stamp == _NOT_STARTED or _STAMP_RE.fullmatch(stamp)):
            raise ValueError(
                f"invalid page cursor {text!r}: follow the 'older' link instead of editing it, "
                "or start again from the first page"
            )
        return cls(None if stamp == _NOT_STARTED else parse_time(stamp, option="cursor"), run_id)

    def query(self) -> dict[str, Any]:
        # Runs without `started_at` sort last (a missing field is the lowest value), and no
        # `$lt` ever matches a missing field: name them explicitly or they are unreachable.
        if self.started_at is None:
            return {"started_at": None, "_id": {"$lt": self.run_id}}
        return {
            "$or": [
                {"started_at": {"$lt": self.started_at}},
                {"started_at": self.started_at, "_id": {"$lt": self.run_id}},
                {"started_at": None},
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
    next_cursor = Cursor(as_utc(last.started_at), last.run_id) if more and last is not None else None
    return RunsPage(records, next_cursor)
