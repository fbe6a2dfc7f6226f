"""Schedules as the ticker obeys them: defaults, runtime overrides, slots, delayed runs.

Overrides live in the `schedules` KV bucket (JSON `ScheduleOverride` per job), read and
written through `shared/overrides.py`. Every write here is a compare-and-set, so two
operators (CLI or dashboard) editing at once never lose a change. Upcoming slots are
computed from the effective schedule; what became of past slots is the slot ledger's
(`shared/readmodel/slots.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.delayed import list_delayed
from shared.errors import PulseError
from shared.names import JOBS
from shared.overrides import StoredOverride, resolve, write_override
from shared.overrides import read_override as read_stored_override
from shared.schedules import EffectiveSchedule, ScheduleOverride
from shared.schemas import CatchUp, utcnow
from shared.settings import Settings

#: Compare-and-set attempts before giving up on a bucket that keeps changing under us.
CAS_TRIES = 5


class ConcurrentChange(PulseError):
    """The override kept changing under a compare-and-set; the operator should try again."""


#: A job's stored override, its revision, and why it was unreadable (if it was).
OverrideEntry = StoredOverride


async def read_override(js: JetStreamContext, settings: Settings, job: str) -> OverrideEntry:
    """The job's override; absent when the bucket does not exist yet.

    A corrupt override is reported in `unreadable` and otherwise ignored, as the ticker
    ignores it (it keeps the default).
    """
    try:
        kv = await js.key_value(settings.names.schedules_bucket)
    except nats.js.errors.BucketNotFoundError:
        return OverrideEntry(None, None)
    return await read_stored_override(kv, job)


#: Turns the stored override (None: absent) into the one to store (None: delete it).
Change = Callable[[ScheduleOverride | None], ScheduleOverride | None]


async def change_override(
    js: JetStreamContext,
    settings: Settings,
    job: str,
    change: Change,
    on_unreadable: Callable[[str], None] | None = None,
) -> tuple[ScheduleOverride | None, EffectiveSchedule]:
    """Apply `change` to the job's override with compare-and-set retries; return the result.

    Raises:
        ConcurrentChange: the override changed under every one of `CAS_TRIES` attempts.
    """
    kv = await js.key_value(settings.names.schedules_bucket)
    for _ in range(CAS_TRIES):
        entry = await read_stored_override(kv, job)
        if entry.unreadable is not None and on_unreadable is not None:
            on_unreadable(entry.unreadable)
        new = change(entry.override)
        if new is None and entry.override is None and entry.unreadable is None:
            break  # nothing stored, nothing to delete
        if await write_override(kv, job, new, entry.revision):
            break
    else:
        raise ConcurrentChange(f"the schedule of {job} kept changing under this command; try again")
    return new, resolve(job, settings.jobs.for_job(job), new)


# -- the changes operators make (CLI and dashboard alike) --------------------------------


def set_schedule(text: str, who: str) -> Change:
    """Override the schedule with `text` (already parsed by the caller); a paused job stays paused.

    The change fires nothing by itself: it writes the `resumed_at` fence, so the ticker
    does not fire the new schedule's latest (past) slot the moment it sees the change;
    only slots after the change fire.
    """

    def change(current: ScheduleOverride | None) -> ScheduleOverride:
        base = current or ScheduleOverride()
        at = utcnow()
        return base.model_copy(update={"schedule": text, "resumed_at": at, "updated_at": at, "updated_by": who})

    return change


def set_catch_up(policy: CatchUp, who: str) -> Change:
    """Override the job's catch-up policy (what happens to slots missed while no ticker ran).

    Fires nothing and writes no fence: it applies to the next gap the ticker sees.
    """

    def change(current: ScheduleOverride | None) -> ScheduleOverride:
        base = current or ScheduleOverride()
        return base.model_copy(update={"catch_up": policy, "updated_at": utcnow(), "updated_by": who})

    return change


def pause(who: str) -> Change:
    """Stop the ticker from requesting the job."""

    def change(current: ScheduleOverride | None) -> ScheduleOverride:
        base = current or ScheduleOverride()
        return base.model_copy(update={"paused": True, "updated_at": utcnow(), "updated_by": who})

    return change


def resume(who: str) -> Change:
    """Fire again from the next slot; slots missed while paused never fire (the `resumed_at` fence)."""

    def change(current: ScheduleOverride | None) -> ScheduleOverride | None:
        if current is None or not current.paused:
            return current  # not paused: nothing to change
        now = utcnow()
        return current.model_copy(update={"paused": False, "resumed_at": now, "updated_at": now, "updated_by": who})

    return change


def reset(who: str) -> Change:
    """Back to the default schedule from settings, not paused."""

    def change(current: ScheduleOverride | None) -> ScheduleOverride | None:
        if current is None:
            return None
        if current.paused:
            # Keep a fence so that un-pausing through reset does not fire the skipped slots.
            now = utcnow()
            return ScheduleOverride(resumed_at=now, updated_at=now, updated_by=who)
        return None

    return change


# -- listing -------------------------------------------------------------------------


def iso_seconds(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


async def last_slot(kv: KeyValue, job: str) -> str | None:
    """The last slot the ticker fired for `job` (its `ticker` bucket entry), as ISO text."""
    try:
        entry = await kv.get(job)
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        slot = json.loads(entry.value or b"{}").get("slot")
    except ValueError:
        return None
    return str(slot).replace("+00:00", "Z") if slot else None


async def list_schedules(
    js: JetStreamContext, settings: Settings, on_unreadable: Callable[[str, str], None] | None = None
) -> list[dict[str, Any]]:
    """Every job's schedule: text, kind, source, default, paused, enabled, catch-up policy, next fire, last slot."""
    schedules = await js.key_value(settings.names.schedules_bucket)
    ticker = await js.key_value(settings.names.ticker_bucket)
    rows = []
    now = utcnow()
    for job in JOBS:
        entry = await read_stored_override(schedules, job)
        if entry.unreadable is not None and on_unreadable is not None:
            on_unreadable(job, entry.unreadable)
        eff = effective_for(settings, job, entry.override)
        policy = settings.jobs.for_job(job)
        rows.append(
            {
                "job": job,
                "schedule": eff.schedule.text,
                "kind": eff.schedule.kind,
                "schedule_source": eff.source,
                "default": policy.schedule,
                "paused": eff.paused,
                "enabled": eff.enabled,
                "catch_up": eff.catch_up,
                "next_fire": iso_seconds(eff.next_fire(now)),
                "last_slot": await last_slot(ticker, job),
            }
        )
    return rows


def effective_for(settings: Settings, job: str, override: ScheduleOverride | None) -> EffectiveSchedule:
    """The schedule the ticker obeys for `job` given its override."""
    return resolve(job, settings.jobs.for_job(job), override)


async def pending_runs(js: JetStreamContext, settings: Settings, job: str | None) -> list[dict[str, Any]]:
    """Delayed one-off runs not yet fired (of `job`, or all), earliest first."""
    entries = await list_delayed(js, settings.names, job)
    return [
        {
            "run_id": request.run_id,
            "job": request.job,
            "at": iso_seconds(at),
            "requested_by": request.requested_by,
            "requested_at": iso_seconds(request.requested_at),
            "args": request.args,
        }
        for request, at in entries
    ]


# -- slots ---------------------------------------------------------------------------


def upcoming_slots(eff: EffectiveSchedule, now: datetime, count: int) -> list[datetime]:
    """The next `count` slots that will fire (none while paused or disabled)."""
    slots: list[datetime] = []
    moment = eff.next_fire(now)
    while moment is not None and len(slots) < count:
        slots.append(moment)
        moment = eff.schedule.next_slot(moment)
    return slots
