"""What the ticker should do for one job right now: a pure function of schedule, state and time.

No I/O here, so the catch-up rules are unit-tested with plain values:

- no state yet (a schedule seen for the first time): fire the latest slot, once;
- the last claimed slot was never confirmed published and a newer slot is due: publish
  the claimed one first (its claimer died between claim and publish), then go on;
- the latest due slot is newer than the last claimed slot: fire it (after downtime this
  is the latest missed slot only; the ones before it are skipped on purpose);
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

from shared.schedules import Schedule
from shared.schemas import UtcDatetime


class SlotState(BaseModel):
    """The last slot claimed for a job: the JSON value under the job's key in `ticker`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    slot: UtcDatetime
    run_id: str
    published: bool = Field(description="True once the claimer's publish was acknowledged by JetStream")
    claimed_at: UtcDatetime
    claimed_by: str = Field(max_length=200)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Action(StrEnum):
    IDLE = "idle"
    FIRE = "fire"  # claim the slot, then publish
    PUBLISH = "publish"  # our own claim, made ahead of the slot: publish
    REPUBLISH = "republish"  # someone's unconfirmed claim, past the grace: re-claim and publish again


@dataclass(frozen=True)
class SlotPlan:
    """The action for one job, and the slot it concerns (None when idle)."""

    action: Action
    slot: datetime | None = None
    catch_up: bool = False


IDLE = SlotPlan(Action.IDLE)


def plan_slot(
    schedule: Schedule,
    due: datetime | None,
    state: SlotState | None,
    now: datetime,
    *,
    claim_grace_s: float,
    replica: str | None = None,
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
    if state is None or state.slot < due:
        return SlotPlan(Action.FIRE, due, catch_up=is_catch_up(schedule, due, state))
    if state.slot != due or state.published:
        return IDLE
    if replica is not None and state.claimed_by == replica:
        # Claimed before the slot: on time. Claimed after it: an earlier run of this
        # replica died between claim and publish.
        return SlotPlan(Action.PUBLISH, due, catch_up=state.claimed_at > due)
    if now - state.claimed_at >= timedelta(seconds=claim_grace_s):
        return SlotPlan(Action.REPUBLISH, due, catch_up=True)
    return IDLE


def is_catch_up(schedule: Schedule, slot: datetime, state: SlotState | None) -> bool:
    """True when `slot` is fired after a gap: the slot before it never fired (or nothing did)."""
    if state is None:
        return True
    before = schedule.previous_slot(slot - timedelta(microseconds=1))
    return state.slot < before
