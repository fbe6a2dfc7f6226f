"""The catch-up policies and the slot ledger's read model, as pure functions (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from services.ticker.ledger import SlotLedger
from services.ticker.slots import (
    MAX_GAP_SLOTS,
    Action,
    CatchUpRule,
    Missed,
    MissReason,
    SlotState,
    gap_slots,
    plan_slot,
)
from shared.names import Collections
from shared.readmodel.slots import JobSlots, SlotView, _view
from shared.schedules import ScheduleOverride, effective_schedule, parse_schedule
from shared.schemas import scheduled_run_id
from shared.settings import JobPolicy, load_settings

EVERY_MIN = parse_schedule("every 1m")
NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)


def minute(n: int) -> datetime:
    return NOON + timedelta(minutes=n)


def settled(slot: datetime) -> SlotState:
    return SlotState(slot=slot, run_id=scheduled_run_id("stats", slot), published=True, claimed_at=slot, claimed_by="r")


def plan_after_downtime(policy: str, *, max_slots: int = 100, fence: datetime | None = None) -> tuple[object, ...]:
    """Last settled 12:00, now 12:07:30 (slots 12:01..12:07 passed with no ticker)."""
    plan = plan_slot(
        EVERY_MIN,
        minute(7),
        settled(NOON),
        minute(7) + timedelta(seconds=30),
        claim_grace_s=2,
        catch_up=CatchUpRule(policy, max_slots, fence),  # type: ignore[arg-type]
    )
    return plan.action, plan.slot, plan.catch_up, plan.missed


def down(*minutes: int, reason: MissReason = MissReason.TICKER_DOWN) -> tuple[Missed, ...]:
    return tuple(Missed(minute(n), reason) for n in minutes)


def test_latest_fires_the_newest_missed_slot_and_records_the_others_missed() -> None:
    assert plan_after_downtime("latest") == (Action.FIRE, minute(7), True, down(1, 2, 3, 4, 5, 6))


def test_skip_settles_the_due_slot_without_a_request_and_records_every_slot_missed() -> None:
    assert plan_after_downtime("skip") == (Action.SKIP, minute(7), True, down(1, 2, 3, 4, 5, 6, 7))


def test_all_fires_the_oldest_missed_slot_first() -> None:
    assert plan_after_downtime("all") == (Action.FIRE, minute(1), True, ())


def test_all_keeps_the_newest_slots_within_its_bound_and_records_the_older_ones() -> None:
    assert plan_after_downtime("all", max_slots=3) == (
        Action.FIRE,
        minute(5),
        True,
        down(1, 2, 3, 4, reason=MissReason.CATCH_UP_LIMIT),
    )


def test_all_goes_on_from_the_slot_it_fired_until_the_due_one() -> None:
    fired: list[datetime] = []
    state = settled(NOON)
    now = minute(7) + timedelta(seconds=30)
    while True:
        plan = plan_slot(EVERY_MIN, minute(7), state, now, claim_grace_s=2, catch_up=CatchUpRule("all"))
        if plan.action is Action.IDLE:
            break
        assert plan.action is Action.FIRE
        assert plan.slot is not None
        assert plan.missed == ()
        fired.append(plan.slot)
        state = settled(plan.slot)
    assert fired == [minute(n) for n in range(1, 8)]


@pytest.mark.parametrize("policy", ["skip", "latest", "all"])
def test_every_policy_fires_the_next_slot_on_time_when_there_is_no_gap(policy: str) -> None:
    plan = plan_slot(
        EVERY_MIN,
        minute(1),
        settled(NOON),
        minute(1),
        claim_grace_s=2,
        catch_up=CatchUpRule(policy),  # type: ignore[arg-type]
    )
    assert (plan.action, plan.slot, plan.catch_up, plan.missed) == (Action.FIRE, minute(1), False, ())


@pytest.mark.parametrize("policy", ["skip", "latest", "all"])
def test_a_job_seen_for_the_first_time_fires_its_latest_slot_whatever_the_policy(policy: str) -> None:
    plan = plan_slot(EVERY_MIN, minute(7), None, minute(7), claim_grace_s=2, catch_up=CatchUpRule(policy))  # type: ignore[arg-type]
    assert (plan.action, plan.slot, plan.missed) == (Action.FIRE, minute(7), ())


def test_slots_before_the_resume_fence_are_not_counted_as_missed_by_the_ticker() -> None:
    # Resumed at 12:05:10: 12:01..12:05 fell while paused (recorded `paused` as they passed).
    assert plan_after_downtime("latest", fence=minute(5) + timedelta(seconds=10)) == (
        Action.FIRE,
        minute(7),
        True,
        down(6),
    )
    assert plan_after_downtime("all", fence=minute(6)) == (Action.FIRE, minute(6), True, ())


def test_an_unconfirmed_claim_is_published_before_any_catch_up() -> None:
    claimed = SlotState(slot=NOON, run_id="x", published=False, claimed_at=NOON, claimed_by="dead")
    plan = plan_slot(EVERY_MIN, minute(7), claimed, minute(7), claim_grace_s=2, catch_up=CatchUpRule("skip"))
    assert (plan.action, plan.slot, plan.missed) == (Action.REPUBLISH, NOON, ())


def test_a_long_gap_records_only_its_newest_slots() -> None:
    every_second = parse_schedule("every 1s")
    gap = gap_slots(every_second, NOON, NOON + timedelta(days=7), None)
    assert len(gap) == MAX_GAP_SLOTS
    assert gap[-1] == NOON + timedelta(days=7, seconds=-1)
    assert gap == sorted(gap)


def test_catch_up_policy_comes_from_the_policy_unless_overridden() -> None:
    default = effective_schedule("stats", "every 1m", enabled=True, override=None, catch_up="all")
    assert default.catch_up == "all"
    override = ScheduleOverride(catch_up="skip")
    assert effective_schedule("stats", "every 1m", enabled=True, override=override, catch_up="all").catch_up == "skip"
    paused_only = ScheduleOverride(paused=True)
    assert effective_schedule("stats", "every 1m", enabled=True, override=paused_only).catch_up == "latest"


def test_catch_up_settings_are_checked() -> None:
    assert JobPolicy(schedule="every 1m", stale_after_s=60).catch_up == "latest"
    with pytest.raises(ValueError, match="catch_up"):
        JobPolicy(schedule="every 1m", stale_after_s=60, catch_up="some")  # type: ignore[arg-type]
    # `all` with overlap=skip would fire slots the runtime then skips as late: refused.
    with pytest.raises(ValueError, match="needs overlap='queue' or 'parallel'"):
        JobPolicy(schedule="every 1m", stale_after_s=60, catch_up="all")
    assert JobPolicy(schedule="every 1m", stale_after_s=60, catch_up="all", overlap="queue").catch_up == "all"
    assert load_settings(catch_up_max_slots=5).catch_up_max_slots == 5
    with pytest.raises(ValueError, match="PULSE_CATCH_UP_MAX_SLOTS"):
        load_settings(catch_up_max_slots=0)


# -- the read model ---------------------------------------------------------------------


def test_a_slot_takes_its_run_status_first_then_the_ledger_entry() -> None:
    slot, now = NOON, NOON + timedelta(minutes=5)
    rid = scheduled_run_id("stats", slot)
    missed = {"state": "missed", "reason": "ticker_down", "catch_up_policy": "latest"}
    assert _view(rid, slot, {"status": "completed"}, missed, now).state == "completed"
    assert _view(rid, slot, {"status": "timed_out"}, None, now).state == "failed"
    assert _view(rid, slot, {"status": "skipped", "reason": "overlap"}, None, now).reason == "overlap"
    running = _view(rid, slot, {"status": "retrying"}, {"state": "requested"}, now)
    assert (running.state, running.run_status) == ("requested", "retrying")
    assert _view(rid, slot, None, {"state": "requested"}, now).state == "requested"
    assert (_view(rid, slot, None, missed, now).state, _view(rid, slot, None, missed, now).reason) == (
        "missed",
        "ticker_down",
    )
    assert _view(rid, slot, None, None, now).state == "unrecorded"
    assert _view(rid, slot, None, None, slot + timedelta(seconds=1)).state == "expected"


def test_gaps_group_consecutive_unrun_slots_by_reason() -> None:
    def view(n: int, state: str, reason: str | None = None) -> SlotView:
        return SlotView(
            minute(n), scheduled_run_id("stats", minute(n)), state, reason, None, "latest" if reason else None
        )

    slots = [
        view(0, "completed"),
        view(1, "missed", "ticker_down"),
        view(2, "missed", "ticker_down"),
        view(3, "missed", "paused"),
        view(4, "completed"),
        view(5, "missed", "ticker_down"),
        view(6, "failed"),
    ]
    job = JobSlots("stats", "every 1m", "latest", False, True, NOON, minute(6), slots)
    assert job.strip == "●!!!●!✗"
    assert job.counts == {"completed": 2, "missed": 4, "failed": 1}
    assert [(g.first, g.last, g.count, g.reason) for g in job.gaps] == [
        (minute(1), minute(2), 2, "ticker_down"),
        (minute(3), minute(3), 1, "paused"),
        (minute(5), minute(5), 1, "ticker_down"),
    ]
    assert "catch-up policy latest" in job.gaps[0].because


# -- the ledger writer (a fake collection: what it does with the store's answers) --------


class _Collection:
    """Answers the first bulk write with a duplicate key on its first operation (a racing replica)."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    async def bulk_write(self, operations: list[Any], ordered: bool) -> None:
        self.calls.append(list(operations))
        if len(self.calls) == 1:
            raise BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}]})


async def test_an_upsert_that_lost_an_insert_race_is_applied_again() -> None:
    collection = _Collection()
    ledger = SlotLedger({Collections.SLOTS: collection}, replica="one", batch_size=10)  # type: ignore[arg-type]
    ledger.start()
    ledger.requested("stats", minute(1), at=minute(1), catch_up=False)
    ledger.missed("stats", down(2), at=minute(3), policy="latest")
    assert await ledger.flush(timeout_s=5)
    await ledger.stop()

    first, again = collection.calls
    assert len(first) == 2
    assert again == [first[0]]  # only the operation that lost the race, now an update of the winner's entry
    assert (ledger.written, ledger.pending, ledger.write_errors) == (2, 0, 0)
