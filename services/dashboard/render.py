"""Templates (Jinja2, escaping everything by default) and the filters pages use."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.readmodel.status import freshness_left
from shared.readmodel.timetext import ago, as_utc, human_seconds, iso
from shared.schemas import AttemptRecord, RunRecord

TEMPLATES = Path(__file__).parent / "templates"


def run_url(run_id: str) -> str:
    """The Run page of `run_id` (run ids hold ':' and '.', never '/'; quoted anyway)."""
    return "/runs/" + quote(run_id, safe="")


def duration(record: RunRecord) -> str:
    start, end = as_utc(record.started_at), as_utc(record.ended_at)
    if start is None:
        return "-"
    return human_seconds(((end or datetime.now(UTC)) - start).total_seconds()) + ("" if end else "…")


def attempt_took(attempt: AttemptRecord) -> str:
    start, end = as_utc(attempt.started_at), as_utc(attempt.ended_at)
    return human_seconds((end - start).total_seconds()) if start and end else "…"


def brief(record: RunRecord) -> str:
    text = record.error or record.reason or (json.dumps(record.summary, default=str) if record.summary else "")
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 120 else line[:119] + "…"


def _ago(moment: datetime | None, now: datetime | None = None) -> str:
    return ago(moment, now)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _seconds_or_dash(value: float | None) -> str:
    return "-" if value is None else human_seconds(value)


def format_number(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:,.{digits}f}"


def _first_line(text: str | None) -> str:
    return (text or "").splitlines()[0][:160] if text else ""


def _bytes_text(raw: bytes) -> str:
    return raw.decode(errors="replace")


def environment() -> Environment:
    """The template environment: autoescape on for every template, undefined names are errors."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        run_url=run_url,
        duration=duration,
        attempt_took=attempt_took,
        brief=brief,
        ago=_ago,
        iso=lambda moment: iso(as_utc(moment)) or "-",
        seconds=human_seconds,
        seconds_or_dash=_seconds_or_dash,
        percent=_percent,
        number=format_number,
        first_line=_first_line,
        bytes_text=_bytes_text,
        freshness_left=freshness_left,
    )
    return env
