"""Charts as inline SVG, rendered on the server (no JavaScript, no external asset).

Every label goes through `html.escape`; the numbers are formatted here, so the SVG
text holds nothing that came from upstream unescaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup


def _fmt(value: float) -> str:
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if abs(value) >= 10_000:
        return f"{value / 1_000:.0f}k"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24, label: str = "") -> Markup:
    """A small line of `values` (oldest first), scaled between their min and max."""
    title = html.escape(label)
    if len(values) < 2:
        return Markup(
            f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="{title}">'
            f'<title>{title}</title><line x1="0" y1="{height / 2}" x2="{width}" y2="{height / 2}" class="empty"/></svg>'
        )
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="{title}">'
        f'<title>{title}</title><polyline points="{points}"/></svg>'
    )


def line_chart(points: Sequence[tuple[datetime, float]], *, title: str, width: int = 640, height: int = 200) -> Markup:
    """A time series with axes: min/max on the left, first/last time below."""
    safe_title = html.escape(title)
    pad_left, pad_bottom, pad_top = 56, 22, 8
    plot_w, plot_h = width - pad_left - 8, height - pad_bottom - pad_top
    head = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{safe_title}"><title>{safe_title}</title>'
    )
    if not points:
        return Markup(
            f'{head}<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">no snapshots yet</text>'
            "</svg>"
        )
    values = [v for _, v in points]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 1, high + 1
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    t_span = (t1 - t0) or 1.0

    def xy(moment: datetime, value: float) -> str:
        x = pad_left + (moment.timestamp() - t0) / t_span * plot_w
        y = pad_top + (1 - (value - low) / (high - low)) * plot_h
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    dots = "".join(
        f'<circle cx="{xy(t, v).split(",")[0]}" cy="{xy(t, v).split(",")[1]}" r="2"><title>'
        f"{html.escape(t.strftime('%Y-%m-%d %H:%M'))} UTC: {html.escape(_fmt(v))}</title></circle>"
        for t, v in points[-200:]
    )
    axis_y = pad_top + plot_h
    return Markup(
        f"{head}"
        f'<line class="axis" x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{axis_y}"/>'
        f'<line class="axis" x1="{pad_left}" y1="{axis_y}" x2="{width - 8}" y2="{axis_y}"/>'
        f'<text x="{pad_left - 4}" y="{pad_top + 10}" text-anchor="end">{html.escape(_fmt(high))}</text>'
        f'<text x="{pad_left - 4}" y="{axis_y}" text-anchor="end">{html.escape(_fmt(low))}</text>'
        f'<text x="{pad_left}" y="{height - 4}">{html.escape(points[0][0].strftime("%m-%d %H:%M"))}</text>'
        f'<text x="{width - 8}" y="{height - 4}" text-anchor="end">'
        f"{html.escape(points[-1][0].strftime('%m-%d %H:%M'))} UTC</text>"
        f'<polyline points="{line}"/>{dots}</svg>'
    )


def step_bar(start: float, end: float, *, status: str, label: str, width: int = 240, height: int = 14) -> Markup:
    """One step's place in its run, as a bar: `start` and `end` are fractions (0..1) of the run's span."""
    left = max(0.0, min(1.0, start)) * width
    right = max(0.0, min(1.0, end)) * width
    bar = max(right - left, 2.0)  # an instant step stays visible
    title = html.escape(label)
    return Markup(
        f'<svg class="step-bar" width="{width}" height="{height}" role="img" aria-label="{title}">'
        f'<title>{title}</title><rect class="track" x="0" y="0" width="{width}" height="{height}"/>'
        f'<rect class="bar b-{html.escape(status)}" x="{left:.1f}" y="2" width="{bar:.1f}" '
        f'height="{height - 4}"/></svg>'
    )
