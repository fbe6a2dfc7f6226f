"""The Runs listing's keyset pages, against the real store: every run on exactly one page, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.names import Collections
from shared.readmodel.runs import Cursor, RunFilter, list_runs
from shared.store import Database

_SECOND = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)


def _run(run_id: str, started_at: datetime | None) -> dict[str, object]:
    doc: dict[str, object] = {"_id": run_id, "job": "stats", "trigger": "manual", "status": "completed"}
    if started_at is not None:
        doc["started_at"] = started_at
    return doc


async def _all_pages(db: Database, size: int) -> list[str]:
    seen: list[str] = []
    after: Cursor | None = None
    for _ in range(50):  # more pages than runs: a cursor that never ends fails the test
        page = await list_runs(db, RunFilter(), size, after)
        seen += [record.run_id for record in page.records]
        if page.next_cursor is None:
            return seen
        # Through its text form, as the dashboard's 'older' link carries it.
        after = Cursor.decode(page.next_cursor.encode())
    raise AssertionError(f"paging did not end: {seen}")


@pytest.mark.parametrize("size", [1, 2, 3])
async def test_runs_within_one_second_each_appear_on_exactly_one_page(db: Database, size: int) -> None:
    # Milliseconds apart within one second, plus one a second earlier and a tie on started_at.
    starts = {
        "stats:manual:a": _SECOND + timedelta(milliseconds=900),
        "stats:manual:b": _SECOND + timedelta(milliseconds=650),
        "stats:manual:c": _SECOND + timedelta(milliseconds=650),
        "stats:manual:d": _SECOND + timedelta(milliseconds=120),
        "stats:manual:e": _SECOND + timedelta(milliseconds=1),
        "stats:manual:f": _SECOND - timedelta(milliseconds=1),
    }
    await db[Collections.RUNS].insert_many([_run(run_id, started) for run_id, started in starts.items()])
    newest_first = sorted(starts, key=lambda run_id: (starts[run_id], run_id), reverse=True)
    assert await _all_pages(db, size) == newest_first


@pytest.mark.parametrize("size", [1, 2, 3])
async def test_runs_that_never_started_come_last_on_some_page(db: Database, size: int) -> None:
    runs = [
        _run("stats:manual:started1", _SECOND + timedelta(milliseconds=500)),
        _run("stats:manual:started2", _SECOND),
        _run("stats:manual:queued1", None),
        _run("stats:manual:queued2", None),
        _run("stats:manual:queued3", None),
    ]
    await db[Collections.RUNS].insert_many(runs)
    assert await _all_pages(db, size) == [
        "stats:manual:started1",
        "stats:manual:started2",
        "stats:manual:queued3",
        "stats:manual:queued2",
        "stats:manual:queued1",
    ]
