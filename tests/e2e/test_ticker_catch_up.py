"""Catch-up policies and the slot ledger with real ticker processes: two replicas stopped across slots, restarted.

Every slot from the first request to the last settled one must have exactly one ledger
entry; the entries marked requested must be exactly the requests in JOBS (each once);
and the outage must show as the policy promises:

    latest   requested…  missed×(n-1)  requested(catch-up)  requested…
    skip     requested…  missed×n                           requested…
    all      requested…  requested(catch-up)×n              requested…

Requests outside the outage may be catch-ups too: the first slot ever (a new schedule
fires its latest slot), and a slot claimed ahead by a replica stopped before publishing
it, which the restarted replicas publish first.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.names import Collections
from shared.schemas import scheduled_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.e2e.test_ticker import bare_js, slots_of, start_ticker, ticker_env
from tests.helpers import wait_for
from tests.integration.test_ticker import read_requests

__all__ = ["bare_js", "start_ticker"]  # fixtures, used here by name

JOB = "whale_sync"
SECOND = timedelta(seconds=1)
#: What each policy leaves in the ledger, one letter per slot: R requested, C requested as
#: a catch-up, M missed (ticker_down).
SHAPES = {"latest": r"[RC]+M{2,}C[RC]+", "skip": r"[RC]+M{3,}[RC]+", "all": r"[RC]+C{3,}[RC]+"}


@pytest.mark.parametrize("policy", ["latest", "skip", "all"])
async def test_two_replicas_stopped_across_slots_catch_up_as_the_policy_says(
    settings: Settings, bare_js: JetStreamContext, db: Database, start_ticker: Any, policy: str
) -> None:
    env = ticker_env(settings, {JOB: "every 1s"})
    env[f"PULSE_JOBS__{JOB.upper()}__CATCH_UP"] = policy
    env[f"PULSE_JOBS__{JOB.upper()}__OVERLAP"] = "queue"  # catch-up all is refused with overlap=skip
    replicas = [start_ticker(env, "a"), start_ticker(env, "b")]
    for replica in replicas:
        await replica.wait_serving()  # from then on SIGTERM stops it cleanly

    async def three_slots() -> bool:
        return len(await slots_of(bare_js, settings, JOB)) >= 3

    await wait_for(three_slots, timeout_s=60, what="three slots before the stop")
    assert [replica.stop() for replica in replicas] == [0, 0]
    stopped_at = utcnow()
    last_before = (await slots_of(bare_js, settings, JOB))[-1]

    async def four_slots_passed() -> bool:  # no ticker runs: time is all there is to wait for
        return utcnow() >= stopped_at + 4 * SECOND

    await wait_for(four_slots_passed, timeout_s=10, what="four slots of downtime")
    replicas = [start_ticker(env, "a2"), start_ticker(env, "b2")]
    for replica in replicas:
        await replica.wait_serving()

    async def ticking_again() -> bool:
        after = [slot for slot in await slots_of(bare_js, settings, JOB) if slot > last_before]
        return len(after) >= 8 if policy == "all" else len(after) >= 4

    await wait_for(ticking_again, timeout_s=60, what="on-time slots after the restart")
    assert [replica.stop() for replica in replicas] == [0, 0]  # SIGTERM: each writes its queued entries

    requests = await read_requests(bare_js, settings, JOB)
    run_ids = [request.run_id for request in requests]
    assert len(run_ids) == len(set(run_ids)), "a slot was requested twice"
    entries = {doc["_id"]: doc async for doc in db[Collections.SLOTS].find({"job": JOB})}
    assert {i for i, e in entries.items() if e["state"] == "requested"} == set(run_ids)

    first, last = min(e["slot"] for e in entries.values()), max(e["slot"] for e in entries.values())
    slots = _every_second(first, last)
    missing = [slot for slot in slots if scheduled_run_id(JOB, slot) not in entries]
    assert missing == [], "a slot has no ledger entry"
    shape = "".join(_letter(entries[scheduled_run_id(JOB, slot)]) for slot in slots)
    assert re.fullmatch(SHAPES[policy], shape), shape
    missed = [e for e in entries.values() if e["state"] == "missed"]
    assert {(e["reason"], e["catch_up_policy"]) for e in missed} <= {("ticker_down", policy)}
    assert all(e["slot"] > last_before for e in missed)


def _every_second(first: datetime, last: datetime) -> list[datetime]:
    return [first + n * SECOND for n in range(int((last - first).total_seconds()) + 1)]


def _letter(entry: dict[str, Any]) -> str:
    if entry["state"] == "missed":
        return "M"
    return "C" if entry.get("catch_up") else "R"
