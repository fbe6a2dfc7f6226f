"""The slot ledger as operators see it: every slot of a job in a window, and what became of it.

Each slot's state comes from three facts, read once per job (two queries):

- the run record of the slot's run id (`runs`), when there is one: its status decides
  (completed; failed or timed out = failed; skipped with the run's reason; canceled;
  any other status = requested, still under way) — the run record is the one truth about
  a run, so the ledger never copies it;
- else the ledger entry (`slots`, written by the ticker): requested (no run record yet:
  queued), or missed with its reason (`ticker_down`, `paused`, `catch_up_limit`);
- else nothing: `expected` for a slot younger than `SETTLE_S` (the ticker is recording
  it), `unrecorded` for an older one (no ticker saw it: it is down now, or the slot
  predates the ledger or its retention).

The slots are those of the job's schedule now (none while the job is disabled), plus any
ledger entry in the window (slots of an earlier schedule). `pulse slots` and the dashboard
(a job's page, the Schedules page's recent slots) read this module, so both show the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.names import Collections
from shared.readmodel.timetext import iso
from shared.schedules import EffectiveSchedule, slots_between
from shared.schemas import RunStatus, scheduled_run_id
from shared.store import Database

#: Most slots shown per job (the newest): two days of a per-minute schedule.
MAX_SLOTS = 2880
#: A slot this young without a ledger entry is still being fired and recorded.
SETTLE_S = 5.0
_EPSILON = timedelta(microseconds=1)

#: The states a slot can be in, and the mark `pulse slots` draws for each.
MARKS: dict[str, str] = {
    "completed": "●",
    "requested": "○",
    "failed": "✗",
    "skipped": "s",
    "canceled": "c",
    "missed": "!",
    "unrecorded": "?",
    "expected": ".",
}
LEGEND = "● completed  ○ requested/running  ✗ failed  s skipped  c canceled  ! missed  ? unrecorded  . expected"

#: Why a slot was missed, in words (ledger reasons, and the read model's own).
REASONS: dict[str, str] = {
    "ticker_down": "no ticker ran at the slot; the catch-up policy did not fire it later",
    "paused": "the job was paused",
    "catch_up_limit": "older than the newest catch_up_max_slots slots that catch-up policy all fires",
    "unrecorded": "no ledger entry: no ticker has seen this slot (down now?), or it predates the ledger",
}

_RUN_STATES: dict[str, str] = {
    RunStatus.COMPLETED.value: "completed",
    RunStatus.FAILED.value: "failed",
    RunStatus.TIMED_OUT.value: "failed",
    RunStatus.SKIPPED.value: "skipped",
    RunStatus.CANCELED.value: "canceled",
}


@dataclass(frozen=True)
class SlotView:
    """One slot: its state, why (missed or skipped), and its run's status when there is a run."""

    slot: datetime
    run_id: str
    state: str
    reason: str | None = None
    run_status: str | None = None
    #: The catch-up policy in force when a missed slot was recorded.
    catch_up_policy: str | None = None


@dataclass(frozen=True)
class Gap:
    """Consecutive slots that got no run, for one reason."""

    first: datetime
    last: datetime
    count: int
    reason: str
    catch_up_policy: str | None

    @property
    def because(self) -> str:
        """The reason in words."""
        words = REASONS.get(self.reason, self.reason)
        return f"{words} (catch-up policy {self.catch_up_policy})" if self.catch_up_policy else words


@dataclass(frozen=True)
class JobSlots:
    """A job's slots in a window, oldest first."""

    job: str
    schedule: str
    catch_up: str
    paused: bool
    enabled: bool
    since: datetime
    until: datetime
    slots: list[SlotView] = field(default_factory=list)
    #: True when the window held more than `MAX_SLOTS` slots (only the newest are shown).
    truncated: bool = False

    @property
    def strip(self) -> str:
        """One mark per slot, oldest first."""
        return "".join(MARKS.get(view.state, "?") for view in self.slots)

    @property
    def counts(self) -> dict[str, int]:
        """Slots per state (states with none left out)."""
        counts: dict[str, int] = {}
        for view in self.slots:
            counts[view.state] = counts.get(view.state, 0) + 1
        return counts

    @property
    def gaps(self) -> list[Gap]:
        """Runs of consecutive missed or unrecorded slots, grouped by reason, oldest first."""
        gaps: list[Gap] = []
        current: list[SlotView] = []
        for view in [*self.slots, None]:
            joins = view is not None and view.state in ("missed", "unrecorded")
            if current and (not joins or _gap_key(current[-1]) != _gap_key(view)):
                first = current[0]
                gaps.append(Gap(first.slot, current[-1].slot, len(current), first.reason or "", first.catch_up_policy))
                current = []
            if joins and view is not None:
                current.append(view)
        return gaps


def _gap_key(view: SlotView | None) -> tuple[str | None, str | None]:
    return (None, None) if view is None else (view.reason, view.catch_up_policy)


async def read_job_slots(
    db: Database, eff: EffectiveSchedule, *, since: datetime, until: datetime, now: datetime
) -> JobSlots:
    """The slots of `eff.job` in (`since`, `until`], each with its state (see the module docstring)."""
    job = eff.job
    expected = slots_between(eff.schedule, since, until, limit=MAX_SLOTS + 1) if eff.enabled else []
    truncated = len(expected) > MAX_SLOTS
    expected = expected[-MAX_SLOTS:]
    entries = {
        doc["_id"]: doc
        async for doc in db[Collections.SLOTS]
        .find({"job": job, "slot": {"$gt": since, "$lte": until}})
        .sort("slot", -1)
        .limit(MAX_SLOTS)
    }
    slot_of = {scheduled_run_id(job, slot): slot for slot in expected}
    for run_id, doc in entries.items():
        slot_of.setdefault(run_id, doc["slot"])
    runs = {
        doc["_id"]: doc
        async for doc in db[Collections.RUNS].find({"_id": {"$in": list(slot_of)}}, {"status": 1, "reason": 1})
    }
    ordered = sorted(slot_of.items(), key=lambda item: item[1])[-MAX_SLOTS:]
    views = [_view(run_id, slot, runs.get(run_id), entries.get(run_id), now) for run_id, slot in ordered]
    return JobSlots(
        job=job,
        schedule=eff.schedule.text,
        catch_up=eff.catch_up,
        paused=eff.paused,
        enabled=eff.enabled,
        since=since,
        until=until,
        slots=views,
        truncated=truncated,
    )


async def recent_job_slots(db: Database, eff: EffectiveSchedule, now: datetime, count: int) -> list[SlotView]:
    """The schedule's last `count` slots up to `now`, newest first, each with its state (as `read_job_slots`).

    The window reaches back to the slot before the `count`th, so no more slots are read
    than are shown (plus any ledger entry of an earlier schedule inside that window).
    """
    since = eff.schedule.previous_slot(now)
    for _ in range(count):
        since = eff.schedule.previous_slot(since - _EPSILON)
    view = await read_job_slots(db, eff, since=since, until=now, now=now)
    return view.slots[::-1][:count]


def _view(
    run_id: str, slot: datetime, run: dict[str, Any] | None, entry: dict[str, Any] | None, now: datetime
) -> SlotView:
    if run is not None:
        status = str(run.get("status"))
        state = _RUN_STATES.get(status, "requested")
        reason = run.get("reason") if state == "skipped" else None
        return SlotView(slot, run_id, state, reason=reason, run_status=status)
    if entry is not None and entry.get("state") == "missed":
        return SlotView(
            slot, run_id, "missed", reason=entry.get("reason"), catch_up_policy=entry.get("catch_up_policy")
        )
    if entry is not None:
        return SlotView(slot, run_id, "requested")
    if now - slot < timedelta(seconds=SETTLE_S):
        return SlotView(slot, run_id, "expected")
    return SlotView(slot, run_id, "unrecorded", reason="unrecorded")


def as_json(view: JobSlots) -> dict[str, Any]:
    """The `pulse slots --json` form of one job (docs/cli-json.md)."""
    return {
        "job": view.job,
        "schedule": view.schedule,
        "catch_up": view.catch_up,
        "paused": view.paused,
        "enabled": view.enabled,
        "since": iso(view.since),
        "until": iso(view.until),
        "truncated": view.truncated,
        "strip": view.strip,
        "counts": view.counts,
        "slots": [
            {
                "slot": iso(s.slot),
                "run_id": s.run_id,
                "state": s.state,
                "reason": s.reason,
                "run_status": s.run_status,
                "catch_up_policy": s.catch_up_policy,
            }
            for s in view.slots
        ],
        "gaps": [
            {
                "first": iso(g.first),
                "last": iso(g.last),
                "slots": g.count,
                "reason": g.reason,
                "catch_up_policy": g.catch_up_policy,
                "because": g.because,
            }
            for g in view.gaps
        ],
    }
