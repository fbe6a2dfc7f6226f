"""What the ticker should do for one job right now: a pure function of schedule, state and time.

No I/O here, so the catch-up rules are unit-tested with plain values:

- no state yet (a schedule seen for the first time): fire the latest slot, once;
- the last claimed slot was never confirmed published and a newer slot is due: publish
  the claimed one first (its claimer died between claim and publish), then go on;
- the latest due slot is newer than the last claimed slot: fire it when it is the next
  slot; after downtime (slots in between never fired) the job's catch-up policy decides:
  `latest` fires the due slot only, `skip` settles it without a request, `all` fires the
  oldest missed slot first (the next plan fires the next one), at most `max_catch_up`
  of the newest; every slot it does not fire is returned in `missed`, to be recorded in
  the slot ledger once the claim is won;
- the latest due slot is the claimed one, claimed by this replica ahead of time and not
  yet published (`Ticker.prepare` claims the next slot shortly before it is due, so the
  compare-and-set is off the critical path): publish it now;
- the latest due slot is the claimed one but its publish was never confirmed, and the
  claim is older than `claim_grace_s`: publish it again (the claimer probably died
  between claim and publish; `Nats-Msg-Id` = `run_id` makes the repeat harmless);
- otherwise nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from shared.schedules import Schedule, slots_between
from shared.schemas import CatchUp, UtcDatetime

#: Most missed slots one gap records (newest kept): a day of a per-minute schedule. A
#: longer gap leaves its older slots unrecorded (the read model shows them as such), so
#: an outage of a week on a per-second schedule does not write 600,000 entries at once.
MAX_GAP_SLOTS = 1440
_EPSILON = timedelta(microseconds=1)


class SlotState(BaseModel):
    """The last slot claimed for a job: the JSON value under the job's key in `ticker`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    slot: UtcDatetime
    run_id: str
    published: bool = Field(description="True once the claimer's publish was acknowledged by JetStream")
    claimed_at: UtcDatetime
    claimed_by: str = Field(max_length=200)
    #: True when the slot was settled without a request (catch-up policy `skip`).
    missed: bool = False

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Action(StrEnum):
    IDLE = "idle"
    FIRE = "fire"  # claim the slot, then publish
    PUBLISH = "publish"  # our own claim, made ahead of the slot: publish
    REPUBLISH = "republish"  # someone's unconfirmed claim, past the grace: re-claim and publish again
    SKIP = "skip"  # catch-up policy skip: claim the slot as settled (published, missed), request nothing


class MissReason(StrEnum):
    """Why a slot never got a request (the `reason` of a `missed` ledger entry)."""

    TICKER_DOWN = "ticker_down"  # no ticker fired it at its time, and the catch-up policy did not fire it later
    PAUSED = "paused"  # the job was paused at the slot
    CATCH_UP_LIMIT = "catch_up_limit"  # catch-up policy all, but older than the newest catch_up_max_slots


@dataclass(frozen=True)
class Missed:
    """A slot that gets no request, and why."""

    slot: datetime
    reason: MissReason


@dataclass(frozen=True)
class CatchUpRule:
    """How a job treats the slots missed while no ticker ran."""

    #: skip, latest or all (`JobPolicy.catch_up`, or the runtime override).
    policy: CatchUp = "latest"
    #: Most slots `all` fires after one gap (the newest are kept): `catch_up_max_slots`.
    max_slots: int = 100
    #: Slots before it never fire nor count as missed by the ticker being down
    #: (`resumed_at`: they fell while the job was paused, or belong to an older schedule).
    fence: datetime | None = None


@dataclass(frozen=True)
class SlotPlan:
    """The action for one job, the slot it concerns (None when idle), and the slots it leaves missed."""

    action: Action
    slot: datetime | None = None
    catch_up: bool = False
    missed: tuple[Missed, ...] = ()


IDLE = SlotPlan(Action.IDLE)


def plan_slot(
    schedule: Schedule,
    due: datetime | None,
    state: SlotState | None,
    now: datetime,
    *,
    claim_grace_s: float,
    replica: str | None = None,
    catch_up: CatchUpRule = CatchUpRule(),
) -> SlotPlan:
    """Decide what to do for one job.

    Args:
        schedule: the job's effective schedule (to tell a catch-up from an on-time slot).
        due: the latest slot that may fire now (None: paused, disabled, or fenced).
        state: the job's last claimed slot, None if it never fired.
        now: the current time (UTC).
        claim_grace_s: how long an unconfirmed claim is left to its claimer before
            another replica (or a restarted ticker) publishes it again.
        replica: this replica's name: its own unconfirmed claim is published at once.
        catch_up: the job's catch-up policy, its bound and its fence.
    """
    if due is None:
        return IDLE
    if state is not None and state.slot < due and not state.published:
        # A claimed slot whose publish was never confirmed, and a newer slot is due: the
        # claimer died (or is far behind). Publish the claimed slot before moving on, or it
        # would be overwritten by the newer claim and never requested. Its grace is over
        # whatever `claim_grace_s` says: a whole slot has passed since. A repeat is harmless
        # (`Nats-Msg-Id` = `run_id`); a request that arrives late is judged by the runtime.
        if replica is not None and state.claimed_by == replica:
            return SlotPlan(Action.PUBLISH, state.slot, catch_up=True)
        return SlotPlan(Action.REPUBLISH, state.slot, catch_up=True)
    if state is None:
        return SlotPlan(Action.FIRE, due, catch_up=True)
    if state.slot < due:
        return _plan_next(schedule, due, state, catch_up)
    if state.slot != due or state.published:
        return IDLE
    if replica is not None and state.claimed_by == replica:
        # Claimed before the slot: on time. Claimed after it: an earlier run of this
        # replica died between claim and publish.
        return SlotPlan(Action.PUBLISH, due, catch_up=state.claimed_at > due)
    if now - state.claimed_at >= timedelta(seconds=claim_grace_s):
        return SlotPlan(Action.REPUBLISH, due, catch_up=True)
    return IDLE


def _plan_next(schedule: Schedule, due: datetime, state: SlotState, rule: CatchUpRule) -> SlotPlan:
    """The due slot is newer than the last settled one: fire it, or apply the catch-up policy to the gap."""
    gap = gap_slots(schedule, state.slot, due, rule.fence)
    if not gap:
        # No slot fell in between (or only fenced ones): on time, or late without a gap.
        return SlotPlan(Action.FIRE, due, catch_up=is_catch_up(schedule, due, state))
    if rule.policy == "skip":
        # The due slot fell while no ticker ran too (a later one is due already when the
        # ticker looks): settle it without a request, so the next slot fires as usual.
        return SlotPlan(Action.SKIP, due, catch_up=True, missed=_missed([*gap, due], MissReason.TICKER_DOWN))
    if rule.policy == "all":
        pending = [*gap, due]
        kept, dropped = pending[-rule.max_slots :], pending[: -rule.max_slots]
        return SlotPlan(Action.FIRE, kept[0], catch_up=True, missed=_missed(dropped, MissReason.CATCH_UP_LIMIT))
    return SlotPlan(Action.FIRE, due, catch_up=True, missed=_missed(gap, MissReason.TICKER_DOWN))


def _missed(slots: list[datetime], reason: MissReason) -> tuple[Missed, ...]:
    return tuple(Missed(slot, reason) for slot in slots)


def gap_slots(schedule: Schedule, after: datetime, before: datetime, fence: datetime | None) -> list[datetime]:
    """The slots strictly between `after` and `before`, not before `fence`, oldest first.

    At most the newest `MAX_GAP_SLOTS` (see there).
    """
    if fence is not None:
        after = max(after, fence - _EPSILON)
    return slots_between(schedule, after, before - _EPSILON, limit=MAX_GAP_SLOTS)


def is_catch_up(schedule: Schedule, slot: datetime, state: SlotState | None) -> bool:
    """True when `slot` is fired after a gap: the slot before it never fired (or nothing did)."""
    if state is None:
        return True
    before = schedule.previous_slot(slot - _EPSILON)
    return state.slot < before
