"""`pulse stats`: the latest market stats snapshot and, with `--last`, its trend.

    pulse stats                 the latest snapshot as a table
    pulse stats --last 24h      ... plus sparklines of the snapshots of the last 24 hours
    pulse stats --json          the same data as JSON (for scripts)

Only MongoDB is needed (snapshots are documents written by the stats job), so the
command does not connect to NATS: it works while the bus is down.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import typer
from rich.table import Table

from shared.cli.common import EXIT_UNREACHABLE, cli_settings, console, fail, print_json, run_async
from shared.readmodel.stats import latest_snapshot, trend
from shared.readmodel.timetext import MAX_DURATION, iso
from shared.settings import Settings
from shared.store import Document, connect_store

#: Characters of a sparkline, lowest to highest.
SPARK_CHARS = "▁▂▃▄▅▆▇█"
_PERIOD_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
#: Fields of a trend point (top markets are left out: the trend needs only the totals).
TREND_FIELDS = ("computed_at", "total_markets", "active_markets", "volume_24h", "whale_trades_1h")


def parse_period(text: str) -> timedelta:
    """Parse a period such as `90m`, `24h`, `7d` or `2w`.

    Raises:
        ValueError: with a message saying what is accepted.
    """
    match = _PERIOD_RE.match(text)
    seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()] if match else 0.0
    if not 0 < seconds <= MAX_DURATION.total_seconds():
        raise ValueError(
            f"invalid period {text!r}: use a positive number (at most 100 years) and a unit m, h, d or w, "
            "e.g. 24h or 7d"
        )
    return timedelta(seconds=seconds)


def sparkline(values: list[float]) -> str:
    """A one-line chart of `values`, one character each, scaled between their min and max."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK_CHARS[len(SPARK_CHARS) // 2] * len(values)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((value - low) / (high - low) * top)] for value in values)


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


async def load_snapshots(settings: Settings, period: timedelta | None) -> tuple[Document | None, list[Document]]:
    """The latest snapshot and, when `period` is given, the snapshots of that period, oldest first."""
    client, db = await connect_store(settings)
    try:
        latest = await latest_snapshot(db)
        points = await trend(db, period, TREND_FIELDS) if period is not None else []
        return latest, points
    finally:
        await client.close()


def _latest_table(latest: Document) -> Table:
    table = Table(title=f"market stats · slot {latest.get('_id')}", show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    computed = latest.get("computed_at")
    table.add_row("computed at", computed.isoformat(timespec="seconds") if isinstance(computed, datetime) else "—")
    table.add_row("markets", _number(latest.get("total_markets")))
    table.add_row("active markets", _number(latest.get("active_markets")))
    table.add_row("markets with a yes price", _number(latest.get("priced_markets")))
    table.add_row("volume, total", _number(latest.get("volume_total"), 2))
    table.add_row("volume, 24 h", _number(latest.get("volume_24h"), 2))
    table.add_row("average yes price", _number(latest.get("avg_yes_price"), 4))
    table.add_row("volume-weighted yes price", _number(latest.get("vw_yes_price"), 4))
    table.add_row("whale trades, last hour", _number(latest.get("whale_trades_1h")))
    table.add_row("whale notional, last hour", _number(latest.get("whale_notional_1h"), 2))
    return table


def _top_table(top: list[Document]) -> Table:
    table = Table(title="top markets by 24 h volume", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("market")
    table.add_column("question", overflow="ellipsis", max_width=60)
    table.add_column("volume 24 h", justify="right")
    table.add_column("yes", justify="right")
    for rank, market in enumerate(top, start=1):
        table.add_row(
            str(rank),
            str(market.get("market")),
            str(market.get("question") or ""),
            _number(market.get("volume_24h"), 2),
            _number(market.get("yes_price"), 3),
        )
    return table


def _trend_table(trend: list[Document], last: str) -> Table:
    table = Table(title=f"trend over the last {last} ({len(trend)} snapshots, oldest → newest)", title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("chart")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    table.add_column("now", justify="right")
    for label, field, digits in (
        ("active markets", "active_markets", 0),
        ("volume, 24 h", "volume_24h", 0),
        ("whale trades, 1 h", "whale_trades_1h", 0),
    ):
        values = [float(point.get(field) or 0) for point in trend]
        table.add_row(
            label,
            sparkline(values),
            _number(min(values), digits),
            _number(max(values), digits),
            _number(values[-1], digits),
        )
    return table


def _json_ready(document: Document | None) -> Any:
    if document is None:
        return None
    return {key: iso(value) if isinstance(value, datetime) else value for key, value in document.items()}


def register(app: typer.Typer) -> None:
    """Add `pulse stats` to `app`."""

    @app.command("stats")
    def stats_command(
        json_output: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
        last: str | None = typer.Option(None, "--last", help="also show the trend over this period: 90m, 24h, 7d"),
    ) -> None:
        """Show the latest market stats snapshot (and, with --last, a trend chart)."""
        period: timedelta | None = None
        if last is not None:
            try:
                period = parse_period(last)
            except ValueError as exc:
                fail(f"--last: {exc}", EXIT_UNREACHABLE)
        settings = cli_settings()
        latest, trend = run_async(lambda: load_snapshots(settings, period))
        if json_output:
            print_json({"latest": _json_ready(latest), "trend": [_json_ready(p) for p in trend]})
            return
        if latest is None:
            console.print("no stats snapshot yet: the stats job runs hourly; start one now with `pulse trigger stats`")
            return
        console.print(_latest_table(latest))
        top = latest.get("top_markets") or []
        if top:
            console.print(_top_table(top))
        if last is not None:
            if trend:
                console.print(_trend_table(trend, last))
            else:
                console.print(f"no snapshots in the last {last}")
