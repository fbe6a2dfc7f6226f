"""Alerts not delivered yet: each alert sink's backlog, read from its delivery consumer on EVENTS.

A sink's consumer (`alert_delivery_<sink>`, shared/alerting.py) acknowledges an alert
only once the sink accepted it, so what the consumer has not acknowledged is exactly
what that sink has not received: `pulse alerts` and `pulse status` show it. A sink that
was never configured has no consumer and no row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from shared.names import ALERT_SINKS, Names
from shared.readmodel.timetext import iso
from shared.schemas import Alert


@dataclass(frozen=True)
class SinkBacklog:
    """One sink's alerts raised but not accepted yet (the one being sent now included)."""

    sink: str
    undelivered: int
    oldest_raised_at: datetime | None  # when the oldest of them was raised (None: nothing waits)

    def text(self) -> str:
        """`webhook 3 (oldest raised 2026-12-01T09:00:00Z)`."""
        oldest = f" (oldest raised {iso(self.oldest_raised_at)})" if self.oldest_raised_at else ""
        return f"{self.sink} {self.undelivered}{oldest}"


async def alert_backlog(js: JetStreamContext, names: Names) -> list[SinkBacklog]:
    """The backlog of every sink that has a delivery consumer, in `ALERT_SINKS` order."""
    backlog: list[SinkBacklog] = []
    for sink in ALERT_SINKS:
        try:
            info = await js.consumer_info(names.events_stream, names.alert_delivery_consumer(sink))
        except nats.js.errors.NotFoundError:
            continue  # never configured
        undelivered = (info.num_pending or 0) + (info.num_ack_pending or 0)
        oldest = None
        if undelivered:
            floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
            oldest = await _raised_at_after(js, names, floor)
        backlog.append(SinkBacklog(sink, undelivered, oldest))
    return backlog


async def _raised_at_after(js: JetStreamContext, names: Names, seq: int) -> datetime | None:
    """When the first alert after stream sequence `seq` was raised (None: gone or unreadable)."""
    with contextlib.suppress(nats.js.errors.NotFoundError, ValidationError, TypeError):
        raw = await js.get_msg(names.events_stream, seq=seq + 1, subject=names.alerts_wildcard(), next=True)
        return Alert.model_validate_json(raw.data or b"").raised_at
    return None


def backlog_line(backlog: list[SinkBacklog]) -> str | None:
    """One line naming the sinks with alerts still to deliver (None: every sink is up to date)."""
    waiting = [sink for sink in backlog if sink.undelivered]
    if not waiting:
        return None
    return (
        "alerts not delivered yet: "
        + "; ".join(sink.text() for sink in waiting)
        + ". They are sent again, in order, until the receiver accepts them (docs/alerts.md)"
    )
