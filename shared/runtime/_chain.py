"""Completion hooks: the follow-up job requests a completed run starts, exactly once (`on_complete`).

A job's policy names the jobs to request when one of its runs completes
(`PULSE_JOBS__<JOB>__ON_COMPLETE='["stats"]'`, or `'["stats@hour"]'` for once per hour;
the grammar and the follow-up requests are `shared/chains.py`). Each follow-up is a
`chain` request whose `run_id` is derived from what it follows and published with that
id as `Nats-Msg-Id`, so:

- a redelivery of the completed run's request (it is acked without running, and its
  announcements are sent again) publishes the same follow-up, which JetStream drops
  within the duplicate window;
- past that window, the follow-up's own run record makes its worker ack it without
  running it again.

The follow-up carries no args; it names the run that started it in `requested_by`
(`chain:<run id>`).
"""

from __future__ import annotations

from nats.js import JetStreamContext

from shared.chains import follow_up_request, parse_follow_up
from shared.names import Names
from shared.requests import publish_request
from shared.schemas import RunRecord, RunStatus


async def publish_follow_ups(
    js: JetStreamContext, names: Names, record: RunRecord, follow_ups: tuple[str, ...]
) -> None:
    """Request each follow-up of `follow_ups` after `record`, if it completed (each publish deduplicated)."""
    if record.status is not RunStatus.COMPLETED:
        return
    for text in follow_ups:
        await publish_request(js, names, follow_up_request(record, parse_follow_up(text)))
