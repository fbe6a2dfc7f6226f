"""The Runs and Overview pages with many runs stored: correct order, complete pages, no banner.

100,000 runs, the size issue 17 names: they seed in about 10 s on the embedded store (its
256 MB page cache holds them), whose queries then scan (it uses no index for a sort): the
Overview takes about 7 s there, the Runs page about 1.4 s (bench/dashboard.py, which also
says which queries dominate).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bench.dashboard import seed
from shared.names import JOBS
from shared.store import Database
from tests.dashboard.support import TOKEN, running_dashboard

RUNS = 100_000
_ROW_RE = re.compile(r'<tr data-run-id="([^"]+)">')


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_pages_stay_correct_with_many_runs(make_settings: Any, db: Database, js: Any) -> None:
    await seed(db, 0, RUNS)
    # Generous read bound: the embedded store scans where MongoDB uses the indexes.
    settings = make_settings(dashboard_token=SecretStr(TOKEN), mongo_timeout_s=60.0)
    async with running_dashboard(settings) as running, httpx.AsyncClient(base_url=running.url, timeout=300) as http:
        overview = await http.get("/")
        assert overview.status_code == 200
        assert "banner error" not in overview.text
        for job in JOBS:
            assert f'data-job="{job}"' in overview.text

        first = await http.get("/runs")
        first_ids = _ROW_RE.findall(first.text)
        assert len(first_ids) == settings.dashboard_page_size
        older = re.search(r'href="([^"]+)" id="older"', first.text)
        assert older is not None
        second = await http.get(older.group(1).replace("&amp;", "&"))
        second_ids = _ROW_RE.findall(second.text)
        assert len(second_ids) == settings.dashboard_page_size
        assert not set(first_ids) & set(second_ids)
        # Newest first across both pages: the seeded start times, read back in order.
        starts = {
            doc["_id"]: doc["started_at"]
            async for doc in db["runs"].find({"_id": {"$in": first_ids + second_ids}}, {"started_at": 1})
        }
        ordered = [starts[run_id] for run_id in first_ids + second_ids]
        assert ordered == sorted(ordered, reverse=True)
        newest = await db["runs"].find_one({}, sort=[("started_at", -1)])
        assert newest is not None
        assert first_ids[0] == newest["_id"]

        failed = await http.get("/runs?job=whale_sync&status=failed")
        ids = _ROW_RE.findall(failed.text)
        assert ids
        assert all(run_id.startswith("whale_sync:") for run_id in ids)
        assert "banner error" not in failed.text
