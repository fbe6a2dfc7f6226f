"""Schedules and slot arithmetic: the one grammar for when a job runs (all UTC).

Forms (as written in settings, the `schedules` KV bucket and the CLI):

    every 30s | every 5m | every 2h | every 1d   fixed interval, slots aligned to the epoch
    cron */5 * * * *                             5-field cron expression (croniter)
    hourly at :15                                every hour at minute 15
    daily at 02:00                               every day at 02:00
    weekly on mon at 09:30                       every Monday at 09:30
    monthly on 1 at 00:00                        day 1 of every month; months without the day are skipped

A *slot* is an instant the schedule names. Every replica computes the same slots from
the same schedule, which is what makes `run_id`s deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 0}

_EVERY_RE = re.compile(r"^every\s+(\d+)\s*([smhd])$")
_HOURLY_RE = re.compile(r"^hourly\s+at\s+:(\d{1,2})$")
_DAILY_RE = re.compile(r"^daily\s+at\s+(\d{1,2}):(\d{2})$")
_WEEKLY_RE = re.compile(r"^weekly\s+on\s+(\w+)\s+at\s+(\d{1,2}):(\d{2})$")
_MONTHLY_RE = re.compile(r"^monthly\s+on\s+(\d{1,2})\s+at\s+(\d{1,2}):(\d{2})$")

GRAMMAR = (
    "'every <n><s|m|h|d>', 'cron <5 fields>', 'hourly at :MM', 'daily at HH:MM', "
    "'weekly on <mon..sun> at HH:MM' or 'monthly on <1-31> at HH:MM'"
)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("slot arithmetic needs timezone-aware datetimes")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class IntervalSchedule:
    """Every `seconds` seconds, slots at whole multiples of the interval since the epoch."""

    seconds: int
    text: str

    def previous_slot(self, now: datetime) -> datetime:
        elapsed = int((_utc(now) - _EPOCH).total_seconds())
        return _EPOCH + timedelta(seconds=elapsed - elapsed % self.seconds)

    def next_slot(self, after: datetime) -> datetime:
        return self.previous_slot(after) + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron expression evaluated in UTC."""

    expression: str
    text: str

    def previous_slot(self, now: datetime) -> datetime:
        now = _utc(now)
        # croniter's get_prev is strict (< now); a slot exactly at `now` is current.
        if croniter.match(self.expression, now) and now.second == 0 and now.microsecond == 0:
            return now
        prev: datetime = croniter(self.expression, now).get_prev(datetime)
        return prev.astimezone(UTC)

    def next_slot(self, after: datetime) -> datetime:
        nxt: datetime = croniter(self.expression, _utc(after)).get_next(datetime)
        return nxt.astimezone(UTC)


Schedule = IntervalSchedule | CronSchedule


def _check(value: int, low: int, high: int, what: str, text: str) -> int:
    if not low <= value <= high:
        raise ValueError(f"invalid schedule {text!r}: {what} must be {low}..{high}, got {value}")
    return value


def _cron(expression: str, text: str) -> CronSchedule:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"invalid schedule {text!r}: a cron expression has 5 fields, got {len(fields)}")
    try:
        croniter(expression, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid schedule {text!r}: bad cron expression ({exc})") from None
    return CronSchedule(expression=" ".join(fields), text=text)


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule, or raise ValueError saying what is wrong and what is expected."""
    normalized = " ".join(text.strip().lower().split())
    if normalized.startswith("cron "):
        return _cron(normalized.removeprefix("cron "), text)
    if match := _EVERY_RE.match(normalized):
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds < 1:
            raise ValueError(f"invalid schedule {text!r}: the interval must be at least 1s")
        return IntervalSchedule(seconds=seconds, text=text)
    if match := _HOURLY_RE.match(normalized):
        minute = _check(int(match.group(1)), 0, 59, "the minute", text)
        return CronSchedule(expression=f"{minute} * * * *", text=text)
    if match := _DAILY_RE.match(normalized):
        hour = _check(int(match.group(1)), 0, 23, "the hour", text)
        minute = _check(int(match.group(2)), 0, 59, "the minute", text)
        return CronSchedule(expression=f"{minute} {hour} * * *", text=text)
    if match := _WEEKLY_RE.match(normalized):
        day_name = match.group(1)[:3]
        if match.group(1) not in _DAYS and not any(full.startswith(match.group(1)) for full in (
            "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")):
            raise ValueError(f"invalid schedule {text!r}: the day must be one of mon, tue, wed, thu, fri, sat, sun")
        hour = _check(int(match.group(2)), 0, 23, "the hour", text)
        minute = _check(int(match.group(3)), 0, 59, "the minute", text)
        return CronSchedule(expression=f"{minute} {hour} * * {_DAYS[day_name]}", text=text)
    if match := _MONTHLY_RE.match(normalized):
        day = _check(int(match.group(1)), 1, 31, "the day of the month", text)
        hour = _check(int(match.group(2)), 0, 23, "the hour", text)
        minute = _check(int(match.group(3)), 0, 59, "the minute", text)
        return CronSchedule(expression=f"{minute} {hour} {day} * *", text=text)
    raise ValueError(f"invalid schedule {text!r}: expected {GRAMMAR}")
