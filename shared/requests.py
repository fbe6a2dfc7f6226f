"""Publishing job requests: the one way a request enters `JOBS`.

Used by the ticker (scheduled slots), the CLI (manual, delayed, replay) and anything
else that starts a job. The `Nats-Msg-Id` header is the `run_id`, so JetStream drops a
second publish of the same run within the duplicate window.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck

from shared.names import Names
from shared.schemas import JobRequest

MSG_ID_HEADER = "Nats-Msg-Id"


async def publish_request(
    js: JetStreamContext, names: Names, request: JobRequest, *, timeout_s: float = 5.0, msg_id: str | None = None
) -> PubAck:
    """Publish `request` on `jobs.<job>`; returns the PubAck (`.duplicate` is True for a repeat).

    `msg_id` replaces the `run_id` as `Nats-Msg-Id` where one run's request is published
    again on purpose (a workflow resumed by a signal).
    """
    ack: PubAck = await js.publish(
        names.job_subject(request.job),
        request.to_bytes(),
        timeout=timeout_s,
        stream=names.jobs_stream,
        headers={MSG_ID_HEADER: msg_id or request.run_id},
    )
    return ack
