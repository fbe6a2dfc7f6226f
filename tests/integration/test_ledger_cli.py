"""`pulse slots` and `pulse schedule set --catch-up` against real NATS, the real store and a ticker on a fake clock.

The fake clock starts ten minutes ago, so the slots the ticker records lie inside the
CLI's `--last` window, which ends at the real now.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from shared.names import JOBS, Collections
from shared.schedules import ScheduleOverride
from shared.schemas import scheduled_run_id, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.integration.test_ledger import MakeTickers, make_tickers, requested_ids, stop_all, tick_all
from tests.integration.test_ticker import FakeClock, settings_with
from tests.integration.test_ticker_cli import pulse

__all__ = ["make_tickers"]  # the fixture, used here by name

JOB = "whale_sync"


def minute_slots(start: datetime, count: int) -> list[datetime]:
    return [start + timedelta(minutes=n) for n in range(count)]


async def outage(make_tickers: MakeTickers, settings: Settings, *, minutes_ago: int = 10) -> list[datetime]:
    """Fire the slot `minutes_ago` minutes ago, stop for five minutes, restart once; the six slots involved."""
    first_slot = (utcnow() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    clock = FakeClock(first_slot + timedelta(seconds=0.5))
    tickers = await make_tickers(settings, clock, "one")
    await tick_all(tickers)
    await stop_all(tickers)
    clock.advance(minutes=5)
    await tick_all(await make_tickers(settings, clock, "one"))
    return minute_slots(first_slot, 6)


async def test_slots_draws_the_strip_and_lists_the_gaps_with_their_reasons(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    slots = await outage(make_tickers, settings)
    ids = [scheduled_run_id(JOB, slot) for slot in slots]
    assert await requested_ids(js, settings) == [ids[0], ids[5]]
    # What the workers made of the two requests.
    await db[Collections.RUNS].insert_many(
        [
            {"_id": ids[0], "job": JOB, "trigger": "schedule", "status": "completed"},
            {"_id": ids[5], "job": JOB, "trigger": "schedule", "status": "failed"},
        ]
    )

    result = await pulse(settings, "slots", JOB, "--last", "15m", "--json")
    assert result.exit_code == 0, result.output
    (view,) = json.loads(result.output)
    states = {s["run_id"]: (s["state"], s["reason"]) for s in view["slots"]}
    assert [states[i] for i in ids] == [
        ("completed", None),
        *[("missed", "ticker_down")] * 4,
        ("failed", None),
    ]
    # Later slots: no ticker ran since (or the youngest is still due to be recorded).
    later = [s["state"] for s in view["slots"] if s["slot"] > ids[5].split(":", 1)[1]]
    assert later
    assert set(later) <= {"unrecorded", "expected"}
    # Before the first slot and after the last one no ticker ran: unrecorded gaps around it.
    assert [gap["reason"] for gap in view["gaps"]] == ["unrecorded", "ticker_down", "unrecorded"]
    assert view["gaps"][1] == {
        "first": ids[1].split(":", 1)[1],
        "last": ids[4].split(":", 1)[1],
        "slots": 4,
        "reason": "ticker_down",
        "catch_up_policy": "latest",
        "because": "no ticker ran at the slot; the catch-up policy did not fire it later (catch-up policy latest)",
    }
    assert view["strip"].count("●!!!!✗") == 1
    assert (view["job"], view["schedule"], view["catch_up"]) == (JOB, "every 1m", "latest")

    text = await pulse(settings, "slots", JOB, "--last", "15m")
    assert text.exit_code == 0, text.output
    assert "●!!!!✗" in text.output
    assert f"{ids[1].split(':', 1)[1]} .. {ids[4].split(':', 1)[1]}  4 slots: no ticker ran" in text.output
    assert "legend: ● completed" in text.output

    every_job = await pulse(settings, "slots", "--last", "15m", "--json")
    assert every_job.exit_code == 0, every_job.output
    assert [view["job"] for view in json.loads(every_job.output)] == list(JOBS)  # every job, in JOBS' order


async def test_catch_up_set_at_runtime_is_obeyed_by_the_ticker(
    make_settings: Any, js: JetStreamContext, db: Database, make_tickers: MakeTickers
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    result = await pulse(settings, "schedule", "set", JOB, "--catch-up", "skip")
    assert result.exit_code == 0, result.output
    assert "catch-up policy set" in result.output
    assert "catch-up skip" in result.output
    kv = await js.key_value(settings.names.schedules_bucket)
    stored = ScheduleOverride.from_bytes((await kv.get(JOB)).value or b"")
    assert (stored.catch_up, stored.schedule, stored.resumed_at) == ("skip", None, None)  # no fence, no new schedule
    listed = json.loads((await pulse(settings, "schedule", "list", "--json")).output)
    assert next(row for row in listed if row["job"] == JOB)["catch_up"] == "skip"

    slots = await outage(make_tickers, settings)
    ids = [scheduled_run_id(JOB, slot) for slot in slots]
    assert await requested_ids(js, settings) == [ids[0]]  # nothing fired for the outage
    entries = {doc["_id"]: doc async for doc in db[Collections.SLOTS].find({})}
    assert sorted(entries) == ids
    assert {(entries[i]["state"], entries[i]["reason"], entries[i]["catch_up_policy"]) for i in ids[1:]} == {
        ("missed", "ticker_down", "skip")
    }


async def test_bad_catch_up_and_window_values_are_refused_with_one_line(
    make_settings: Any, js: JetStreamContext
) -> None:
    settings = settings_with(make_settings, {JOB: "every 1m"})
    for args, message in [
        (("schedule", "set", JOB, "--catch-up", "sometimes"), "--catch-up must be one of skip, latest, all"),
        (("schedule", "set", JOB), "give exactly one of --every, --cron or --spec (with or without --catch-up)"),
        (("slots", JOB, "--last", "soon"), "--last"),
        (("slots", "nojob"), "unknown job 'nojob'"),
    ]:
        result = await pulse(settings, *args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.output)
        assert message in lines[0]
    kv = await js.key_value(settings.names.schedules_bucket)
    with pytest.raises(nats.js.errors.NoKeysError):  # nothing was written
        await kv.keys()
