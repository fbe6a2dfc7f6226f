"""Requests on a subject no job serves (`jobs.nosuchjob`): dead-lettered with the reason, counted.

JOBS takes `jobs.>`, so a request published on an unknown job's subject is stored, and no
consumer ever takes it: it would stay there, unseen. The stream cannot refuse it without
listing every job's subject, which would also refuse a job whose worker is deployed
before the stream is updated; and a catch-all consumer is impossible on a work-queue
stream (consumer filters may not overlap). So the janitor's watchdog pass looks for
subjects that hold messages but have no consumer and name no known job, and moves each
message older than a grace period (six ack waits) to the DLQ (reason `invalid`, the raw payload kept),
deleting it from JOBS. The grace leaves time for a new job's worker to create its
consumer. Each removal is counted in `pulse_unserved_requests_total`; when two janitors
race, the delete decides who counts it, and the dead letter is deduplicated by sequence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import nats.js.errors
from nats.js import JetStreamContext

from shared.names import JOBS, Names
from shared.runtime._context import JobContext
from shared.runtime._events import publish_dead_letter
from shared.runtime._metrics import RuntimeMetrics
from shared.runtime._runner import dead_letter
from shared.schemas import utcnow

#: Unserved requests younger than this many ack waits (60 s by default) are left alone:
#: a new job's worker may still be starting.
UNSERVED_AFTER_ACK_WAITS = 6


async def unserved_subjects(js: JetStreamContext, names: Names) -> list[str]:
    """Subjects of JOBS that hold requests, have no consumer, and name no known job."""
    wildcard = names.jobs_stream_subjects[0]
    info = await js.stream_info(names.jobs_stream, subjects_filter=wildcard)
    held = info.state.subjects or {}
    served: set[str] = set()
    for consumer in await js.consumers_info(names.jobs_stream):
        served.add(consumer.config.filter_subject or "")
        served.update(consumer.config.filter_subjects or [])
    known = {names.job_subject(job) for job in JOBS}
    return sorted(subject for subject, count in held.items() if count and subject not in served | known)


async def dead_letter_unserved(
    js: JetStreamContext,
    names: Names,
    metrics: RuntimeMetrics | None = None,
    *,
    older_than_s: float,
    now: datetime | None = None,
) -> int:
    """Move every unserved request older than `older_than_s` to the DLQ; return how many."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
    moved = 0
    prefix = names.jobs_stream_subjects[0].removesuffix(">")  # "<namespace>jobs."
    for subject in await unserved_subjects(js, names):
        job = subject.removeprefix(prefix)
        seq = 1
        while True:
            try:
                msg = await js.get_msg(names.jobs_stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            assert msg.seq is not None
            seq = msg.seq + 1
            stored_at = msg.time.replace(tzinfo=UTC) if msg.time and msg.time.tzinfo is None else msg.time
            if stored_at is not None and stored_at > cutoff:
                break  # younger ones follow: leave them for the next pass
            error = (
                f"no worker serves job {job!r} (requests on {subject!r} are never consumed); "
                f"known jobs: {', '.join(JOBS)}. Publish on the subject of a known job."
            )
            letter = dead_letter(job, None, None, error, 0, "invalid", raw=msg.data or b"")
            await publish_dead_letter(js, names, letter, f"dlq:unserved:{msg.seq}")
            try:
                await js.delete_msg(names.jobs_stream, msg.seq)
            except nats.js.errors.NotFoundError:
                continue  # another janitor removed it first: it counted it
            moved += 1
            if metrics is not None:
                metrics.unserved.inc()
    return moved


async def dead_letter_unserved_requests(ctx: JobContext) -> int:
    """The janitor's pass over unserved subjects (see the module); returns the requests moved."""
    grace_s = UNSERVED_AFTER_ACK_WAITS * ctx.settings.ack_wait_s
    return await dead_letter_unserved(ctx.js, ctx.settings.names, ctx.metrics, older_than_s=grace_s)
