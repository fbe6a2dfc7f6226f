"""Durations and times as operators type them ('90s', '1h30m', '2026-12-01T09:00:00Z').

Each parser raises ValueError with a message that names the option and says what to
type instead; the CLI turns it into exit 2, the dashboard into a 400 with that line.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: Longest duration accepted (100 years): now plus or minus it is always a valid datetime,
#: and no operator means more.
MAX_DURATION = timedelta(days=36_500)


def parse_duration(text: str, *, option: str) -> timedelta:
    """Parse '90s', '5m', '1h30m', '2d' or a bare number of seconds, at most `MAX_DURATION` either way.

    Raises:
        ValueError: `text` is not a duration, is not finite, or is longer than `MAX_DURATION`.
    """
    cleaned = text.strip().lower().replace(" ", "")
    try:
        seconds = float(cleaned)
    except ValueError:
        matches = list(_DURATION_RE.finditer(cleaned))
        if not matches or "".join(m.group(0) for m in matches) != cleaned:
            raise ValueError(f"{option} {text!r} is not a duration: use e.g. 90s, 5m, 1h30m or 2d") from None
        seconds = sum(float(m.group(1)) * _DURATION_UNITS_S[m.group(2)] for m in matches)
    # float() takes 'inf' and 'nan', and timedelta overflows (OverflowError, not ValueError) past ~2.7M years.
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION.total_seconds():
        raise ValueError(f"{option} {text!r} is out of range: give a finite duration of at most 36500d (100 years)")
    return timedelta(seconds=seconds)


def parse_time(text: str, *, option: str) -> datetime:
    """Parse an ISO-8601 time with a timezone ('2026-12-01T09:00:00Z'), as UTC.

    Raises:
        ValueError: not a time, or a time without a timezone.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{option} {text!r} is not a time: use ISO 8601 with a timezone, e.g. 2026-12-01T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{option} {text!r} has no timezone: add one, e.g. {text}Z for UTC")
    return moment.astimezone(UTC)


def parse_since(text: str, *, option: str = "--since") -> datetime:
    """A start time given as a duration back from now ('2h') or an ISO-8601 time.

    Raises:
        ValueError: neither a duration nor a time.
    """
    if _DURATION_RE.search(text) and not any(c in text for c in "T-:"):
        return datetime.now(UTC) - parse_duration(text, option=option)
    return parse_time(text, option=option)


def as_utc(moment: datetime | None) -> datetime | None:
    """Stored datetimes come back aware (tz_aware client); normalize defensively anyway."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    """The one time format operators see (CLI tables, `--json`, the dashboard): UTC to the second
    with a `Z`, e.g. `2026-12-01T09:00:00Z` (None stays None)."""
    moment = as_utc(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'3m ago' / 'in 5s' / '-' for a datetime relative to now."""
    moment = as_utc(moment)
    if moment is None:
        return "-"
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = human_seconds(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def human_seconds(seconds: float) -> str:
    """12s, 4m05s, 3h20m, 2d04h."""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def key_values(data: dict[str, object]) -> str:
    """A summary or progress dict as `key=value` text (nested dicts as `key.sub=value`)."""
    parts: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            parts += [f"{key}.{item}" for item in key_values(value).split(" ") if item]
        elif isinstance(value, list):
            parts.append(f"{key}={','.join(str(v) for v in value)}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def plain_times(data: object) -> object:
    """`data` with every datetime (at any depth) as `iso` text: the one time format of `--json`."""
    if isinstance(data, datetime):
        return iso(data)
    if isinstance(data, dict):
        return {key: plain_times(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [plain_times(value) for value in data]
    return data
