"""Completion hooks: the follow-up job requests a completed run starts, exactly once (`on_complete`).

A job's policy names the jobs to request when one of its runs completes
(`PULSE_JOBS__<JOB>__ON_COMPLETE='["stats"]'`). Each follow-up is a `chain` request
whose `run_id` is derived from the completed run (`<job>:chain:<hash of run id>`) and
published with that id as `Nats-Msg-Id`, so:

- a redelivery of the completed run's request (it is acked without running, and its
  announcements are sent again) publishes the same follow-up, which JetStream drops
  within the duplicate window;
- past that window, the follow-up's own run record makes its worker ack it without
  running it again.

The follow-up carries no args; it names the run that started it in `requested_by`
(`chain:<run id>`) and inherits its `scheduled_for`.
"""

from __future__ import annotations

import hashlib

from nats.js import JetStreamContext

from shared.names import Names
from shared.requests import publish_request
from shared.schemas import JobRequest, RunRecord, RunStatus, Trigger, new_run_id, utcnow


def chained_request(record: RunRecord, job: str) -> JobRequest:
    """The follow-up request of `job` after the completed run `record` (deterministic id)."""
    unique = hashlib.sha256(record.run_id.encode()).hexdigest()[:32]
    return JobRequest(
        run_id=new_run_id(job, Trigger.CHAIN, unique),
        job=job,
        trigger=Trigger.CHAIN,
        scheduled_for=record.scheduled_for or utcnow(),
        requested_by=f"chain:{record.run_id}"[:200],
    )


async def publish_follow_ups(js: JetStreamContext, names: Names, record: RunRecord, jobs: tuple[str, ...]) -> None:
    """Request each job of `jobs` after `record`, if it completed (each publish deduplicated)."""
    if record.status is not RunStatus.COMPLETED:
        return
    for job in jobs:
        await publish_request(js, names, chained_request(record, job))
