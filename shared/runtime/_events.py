"""Publishing run outcomes, dead letters and alerts (the only code that does).

Every publish carries a `Nats-Msg-Id`, so a repeat within the stream's duplicate window
(a worker that crashed between recording and acking, then redelivery) is dropped by
JetStream: one RunEvent per run and terminal status, one dead letter per run.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from shared.errors import bounded
from shared.names import Names
from shared.requests import MSG_ID_HEADER
from shared.schemas import Alert, DeadLetter, RunEvent, RunRecord, utcnow

_PUBLISH_TIMEOUT_S = 5.0


def run_event(record: RunRecord) -> RunEvent:
    """The RunEvent of a terminal run record."""
    return RunEvent(
        run_id=record.run_id,
        job=record.job,
        status=record.status,
        trigger=record.trigger,
        attempts=record.attempt_count,
        started_at=record.started_at,
        ended_at=record.ended_at or utcnow(),
        duration_ms=record.duration_ms,
        error=bounded(record.error) if record.error else None,
        summary=record.summary,
    )


async def publish_run_event(js: JetStreamContext, names: Names, record: RunRecord) -> None:
    """Publish the RunEvent of `record` on `events.runs.<job>.<status>`.

    `Nats-Msg-Id: <run_id>:<status>` suppresses duplicates within the duplicate window.
    """
    event = run_event(record)
    await js.publish(
        names.run_event_subject(record.job, record.status.value),
        event.model_dump_json().encode(),
        timeout=_PUBLISH_TIMEOUT_S,
        stream=names.events_stream,
        headers={MSG_ID_HEADER: f"{record.run_id}:{record.status.value}"},
    )


async def publish_dead_letter(js: JetStreamContext, names: Names, letter: DeadLetter, msg_id: str) -> None:
    """Publish a dead letter on `dlq.<job>`; `msg_id` makes a repeat a no-op."""
    await js.publish(
        names.dlq_subject(letter.job),
        letter.model_dump_json().encode(),
        timeout=_PUBLISH_TIMEOUT_S,
        stream=names.dlq_stream,
        headers={MSG_ID_HEADER: msg_id},
    )


async def publish_alert(js: JetStreamContext, names: Names, alert: Alert, *, msg_id: str | None = None) -> None:
    """Publish an alert on `events.alerts.<job>`.

    Args:
        js: JetStream.
        names: resource names.
        alert: the alert.
        msg_id: de-duplication key; by default job, kind and `since`, so the same
            condition raised twice (two replicas) is one alert.
    """
    key = msg_id or f"alert:{alert.job}:{alert.kind.value}:{alert.since.isoformat()}"
    await js.publish(
        names.alert_subject(alert.job),
        alert.model_dump_json().encode(),
        timeout=_PUBLISH_TIMEOUT_S,
        stream=names.events_stream,
        headers={MSG_ID_HEADER: key},
    )


async def publish_cancel_hint(nc: NatsClient, names: Names, job: str, run_id: str) -> None:
    """Tell running workers of `job` at once that `run_id` was canceled (core NATS, best effort).

    Call it after `records.request_cancel`: its `cancels` entry is the truth (a worker that
    misses the hint sees it at its next heartbeat); the hint only makes the cancel immediate.
    """
    await nc.publish(names.cancel_subject(job), run_id.encode())
