"""Schedules and slot arithmetic: the one grammar for when a job runs.

Forms (as written in settings, the `schedules` KV bucket and the CLI):

    every 30s | every 5m | every 2h | every 1d   fixed interval, slots aligned to the epoch
    cron */5 * * * * [ZONE]                      5-field cron expression (croniter)
    hourly at :15 [ZONE]                         every hour at minute 15
    daily at 02:00 [ZONE]                        every day at 02:00
    weekly on mon at 09:30 [ZONE]                every Monday at 09:30
    monthly on 1 at 00:00 [ZONE]                 day 1 of every month; months without the day are skipped

ZONE is an IANA time zone name (`Europe/Berlin`, `America/New_York`; zoneinfo), UTC when
left out; the cron and calendar forms are read on that zone's wall clock. Intervals take
no zone (they are elapsed time). Across daylight-saving changes every wall-clock time the
schedule names is one slot: a time in a skipped hour (spring forward) runs once at the
first valid instant after the gap (02:30 on a Berlin spring day runs at 03:00 CEST), and a
time in a repeated hour (fall back) runs once, at its first occurrence. Wall-clock times
that land on the same instant are one slot.

A *slot* is an instant, always kept in UTC. Every replica computes the same slots from
the same schedule, which is what makes `run_id`s deterministic: interval slots are whole
multiples of the interval since 1970-01-01T00:00:00Z (so `every 5m` fires at :00, :05,
... whatever the start-up time), cron slots are whole minutes.

This module also defines the runtime *override* of a job's schedule, as stored (JSON)
under the job's key in the `schedules` KV bucket, and how an override and the job's
policy combine into the `EffectiveSchedule` the ticker obeys and `pulse schedule list`
shows. The ticker and the CLI share it, so both read the same document the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.schemas import CatchUp, UtcDatetime, utcnow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
# croniter numbers the days of the week from 0 = Sunday.
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FULL_DAYS = {"sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6}
#: Longest interval accepted: a year. Longer "intervals" are calendar schedules (use cron).
MAX_INTERVAL_S = 366 * 86400

_EVERY_RE = re.compile(r"^every\s+(\d+)\s*([a-z]+)$")
_HOURLY_RE = re.compile(r"^hourly\s+at\s+:?(\d{1,2})$")
_DAILY_RE = re.compile(r"^daily\s+at\s+(\d{1,2}):(\d{2})$")
_WEEKLY_RE = re.compile(r"^weekly\s+on\s+(\S+)\s+at\s+(\d{1,2}):(\d{2})$")
_MONTHLY_RE = re.compile(r"^monthly\s+on\s+(\d{1,2})\s+at\s+(\d{1,2}):(\d{2})$")
#: How many whitespace-separated words each zone-taking form has before its optional zone.
_WORDS_BEFORE_ZONE = {"cron": 6, "hourly": 3, "daily": 3, "weekly": 5, "monthly": 5}
_ZONE_EXAMPLE = "an IANA name such as Europe/Berlin or America/New_York (UTC when left out)"

GRAMMAR = (
    "'every <n><s|m|h|d>', 'cron <5 fields> [ZONE]', 'hourly at :MM [ZONE]', 'daily at HH:MM [ZONE]', "
    "'weekly on <mon..sun> at HH:MM [ZONE]' or 'monthly on <1-31> at HH:MM [ZONE]' "
    "(ZONE: an IANA time zone such as Europe/Berlin; UTC by default)"
)

ScheduleKind = Literal["interval", "cron", "hourly", "daily", "weekly", "monthly"]


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("slot arithmetic needs timezone-aware datetimes")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class IntervalSchedule:
    """Every `seconds` seconds, slots at whole multiples of the interval since the epoch."""

    seconds: int
    text: str
    kind: ScheduleKind = "interval"

    def previous_slot(self, now: datetime) -> datetime:
        """The latest slot at or before `now`."""
        elapsed = (_utc(now) - _EPOCH) // timedelta(seconds=1)  # floor, also before the epoch
        return _EPOCH + timedelta(seconds=elapsed - elapsed % self.seconds)

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after `after`."""
        return self.previous_slot(after) + timedelta(seconds=self.seconds)


def _first_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The one UTC instant a naive wall-clock time of `zone` stands for, as a slot.

    An ambiguous time (the repeated hour) is its first occurrence (fold=0); a time that
    does not exist (the skipped hour) is the first valid instant after the gap, found
    between the two readings PEP 495 gives it (the offsets before and after the gap).
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first  # exists (once, or first of two)
    # In a gap the fold=0 reading uses the earlier offset, so it lies after the gap's
    # start and the fold=1 reading before it; halve the interval down to the second.
    before, after = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    before, after = min(before, after), max(before, after)
    while after - before > timedelta(seconds=1):
        middle = before + (after - before) / 2
        if middle.astimezone(zone).utcoffset() == before.astimezone(zone).utcoffset():
            before = middle
        else:
            after = middle
    return after.replace(microsecond=0)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time of `moment` in `zone`, to the whole minute."""
    return _utc(moment).astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron expression on the wall clock of `zone` (minute resolution).

    croniter walks naive wall-clock times, and `_first_instant` maps each to its UTC
    slot; that mapping never decreases, so slots come out in order and wall times that
    share an instant (an hourly schedule's 02:00 and 03:00 on a spring-forward day)
    are one slot.
    """

    expression: str
    text: str
    kind: ScheduleKind = "cron"
    zone: str = "UTC"

    @property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    def previous_slot(self, now: datetime) -> datetime:
        """The latest slot at or before `now`."""
        now, zone = _utc(now), self._zone
        # In a repeated hour's second pass the wall clock reads less than the first
        # occurrences it has already passed (whose slots are due): look back from the
        # wall time that far ahead. Elsewhere the shift is zero; a skipped hour's slot
        # (the gap's end) has a wall time before the clock's, so it is found too.
        shift = now - now.astimezone(zone).replace(fold=0).astimezone(UTC)
        start = _wall(now + shift, zone) + timedelta(minutes=1)
        candidates = croniter(self.expression, start)
        while True:
            wall: datetime = candidates.get_prev(datetime)
            slot = _first_instant(wall, zone)
            if slot <= now:
                return slot

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after `after`."""
        after, zone = _utc(after), self._zone
        # Every later slot has a later wall time (a real instant's wall time is never
        # inside a gap); in a repeated hour's second pass the first candidates map to
        # first occurrences already passed and are walked over.
        candidates = croniter(self.expression, _wall(after, zone))
        while True:
            wall: datetime = candidates.get_next(datetime)
            slot = _first_instant(wall, zone)
            if slot > after:
                return slot


Schedule = IntervalSchedule | CronSchedule


def slots_between(schedule: Schedule, after: datetime, until: datetime, *, limit: int) -> list[datetime]:
    """The slots in (`after`, `until`], oldest first; at most the newest `limit` of them."""
    slots: list[datetime] = []
    moment = schedule.previous_slot(until)
    while moment > after and len(slots) < limit:
        slots.append(moment)
        moment = schedule.previous_slot(moment - timedelta(microseconds=1))
    slots.reverse()
    return slots


def _invalid(text: str, why: str) -> ValueError:
    return ValueError(f"invalid schedule {text!r}: {why}")


def _check(value: int, low: int, high: int, what: str, text: str) -> int:
    if not low <= value <= high:
        raise _invalid(text, f"{what} must be {low}..{high}, got {value}")
    return value


def _zone_name(name: str, text: str) -> str:
    """The IANA zone `name` as zoneinfo knows it, or a ValueError naming it."""
    if name.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _invalid(text, f"unknown time zone {name!r}; use {_ZONE_EXAMPLE}") from None
    return name


#: Name and number of values of each cron field, in order.
_CRON_FIELDS = (("minute", 60), ("hour", 24), ("day-of-month", 31), ("month", 12), ("day-of-week", 7))


def _check_cron_steps(fields: list[str], text: str) -> None:
    """Refuse steps longer than their field (`*/61` minutes), which croniter accepts as 'once'."""
    for (name, span), field_text in zip(_CRON_FIELDS, fields, strict=True):
        for part in field_text.split(","):
            _, slash, step = part.partition("/")
            if slash and step.isdigit() and not 1 <= int(step) <= span:
                raise _invalid(text, f"the {name} field has step {step}; steps of the {name} field must be 1..{span}")


def _cron(expression: str, text: str, kind: ScheduleKind = "cron", zone: str = "UTC") -> CronSchedule:
    fields = expression.split()
    if len(fields) != 5:
        raise _invalid(
            text, f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    _check_cron_steps(fields, text)
    try:
        # get_next finds impossible dates (Feb 30) as well as bad fields.
        croniter(expression, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise _invalid(text, "the cron expression never matches a real date") from None
    except (CroniterError, ValueError, KeyError) as exc:
        raise _invalid(text, f"bad cron expression ({exc})") from None
    return CronSchedule(expression=" ".join(fields), text=text, kind=kind, zone=zone)


def _weekday(name: str, text: str) -> int:
    day = _DAYS.get(name, _FULL_DAYS.get(name))
    if day is None and name.isdigit():
        raise _invalid(text, f"a weekly schedule takes a day of the week (mon..sun), not a day of the month ({name})")
    if day is None:
        raise _invalid(text, f"the day must be one of mon, tue, wed, thu, fri, sat, sun, got {name!r}")
    return day


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule, or raise ValueError saying what is wrong and what is expected.

    Args:
        text: one of the forms in the module docstring, case and spacing free.

    Raises:
        ValueError: the text is not a schedule; the message names the fault.
    """
    words = text.split()
    zone = "UTC"
    # Zone names are case-sensitive (Europe/Berlin), so the zone is taken off the
    # words as written before the rest is lower-cased.
    if words and words[0].lower() in _WORDS_BEFORE_ZONE and len(words) == _WORDS_BEFORE_ZONE[words[0].lower()] + 1:
        zone = _zone_name(words.pop(), text)
    normalized = " ".join(words).lower()
    if normalized.startswith("cron "):
        return _cron(normalized.removeprefix("cron "), text, zone=zone)
    if match := _EVERY_RE.match(normalized):
        unit = _UNITS.get(match.group(2))
        if unit is None:
            raise _invalid(text, f"unknown unit {match.group(2)!r}; use s, m, h or d")
        seconds = int(match.group(1)) * unit
        if seconds < 1:
            raise _invalid(text, "the interval must be at least 1s")
        if seconds > MAX_INTERVAL_S:
            raise _invalid(text, "the interval must be at most 366d; use a cron schedule for longer periods")
        return IntervalSchedule(seconds=seconds, text=text)
    if match := _HOURLY_RE.match(normalized):
        minute = _check(int(match.group(1)), 0, 59, "the minute", text)
        return _cron(f"{minute} * * * *", text, "hourly", zone)
    if match := _DAILY_RE.match(normalized):
        hour = _check(int(match.group(1)), 0, 23, "the hour", text)
        minute = _check(int(match.group(2)), 0, 59, "the minute", text)
        return _cron(f"{minute} {hour} * * *", text, "daily", zone)
    if match := _WEEKLY_RE.match(normalized):
        day = _weekday(match.group(1), text)
        hour = _check(int(match.group(2)), 0, 23, "the hour", text)
        minute = _check(int(match.group(3)), 0, 59, "the minute", text)
        return _cron(f"{minute} {hour} * * {day}", text, "weekly", zone)
    if match := _MONTHLY_RE.match(normalized):
        day = _check(int(match.group(1)), 1, 31, "the day of the month", text)
        hour = _check(int(match.group(2)), 0, 23, "the hour", text)
        minute = _check(int(match.group(3)), 0, 59, "the minute", text)
        return _cron(f"{minute} {hour} {day} * *", text, "monthly", zone)
    raise _invalid(text, f"expected {GRAMMAR}")


# -- runtime overrides (the `schedules` KV bucket) ------------------------------------


class ScheduleOverride(BaseModel):
    """A job's runtime schedule override: the JSON value under its key in `schedules`.

    `schedule` None keeps the policy's default schedule (an override may only pause).
    `catch_up` None keeps the policy's catch-up policy (`pulse schedule set --catch-up`).
    `resumed_at` is a fence: slots before it never fire. A resume sets it, so resuming a
    paused job does not fire the slots it skipped while paused; a schedule change sets it
    too, so a new schedule does not fire its latest past slot at once (the next slot fires
    as usual).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schedule: str | None = None
    paused: bool = False
    resumed_at: UtcDatetime | None = None
    catch_up: CatchUp | None = None
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    updated_by: str = Field("unknown", max_length=200)

    @field_validator("schedule")
    @classmethod
    def _schedule_is_valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_schedule(value)
        return value

    def to_bytes(self) -> bytes:
        """The stored JSON form."""
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScheduleOverride:
        """Parse a stored value, or raise ValueError naming the fault."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"invalid schedule override ({problems})") from None


@dataclass(frozen=True)
class EffectiveSchedule:
    """What the ticker obeys for one job: the policy default combined with any override."""

    job: str
    schedule: Schedule
    source: Literal["default", "override"]
    paused: bool
    enabled: bool
    resumed_at: datetime | None = None
    #: What happens to slots missed while no ticker ran (`JobPolicy.catch_up`).
    catch_up: CatchUp = "latest"

    @property
    def active(self) -> bool:
        """True when the ticker requests this job on its slots."""
        return self.enabled and not self.paused

    def due_slot(self, now: datetime) -> datetime | None:
        """The latest slot at or before `now` that may fire, or None when none may."""
        if not self.active:
            return None
        slot = self.schedule.previous_slot(now)
        if self.resumed_at is not None and slot < self.resumed_at:
            return None
        return slot

    def next_fire(self, now: datetime) -> datetime | None:
        """When this job next fires after `now` (None when disabled or paused)."""
        if not self.active:
            return None
        slot = self.schedule.next_slot(now)
        if self.resumed_at is not None and slot < self.resumed_at:
            slot = self.schedule.next_slot(self.resumed_at - timedelta(microseconds=1))
        return slot


def effective_schedule(
    job: str, default: str, *, enabled: bool, override: ScheduleOverride | None, catch_up: CatchUp = "latest"
) -> EffectiveSchedule:
    """Combine a job's default schedule and catch-up policy (from its policy) with its runtime override."""
    text = override.schedule if override is not None and override.schedule is not None else default
    return EffectiveSchedule(
        job=job,
        schedule=parse_schedule(text),
        source="override" if override is not None and override.schedule is not None else "default",
        paused=override.paused if override is not None else False,
        enabled=enabled,
        resumed_at=override.resumed_at if override is not None else None,
        catch_up=override.catch_up if override is not None and override.catch_up is not None else catch_up,
    )
