"""Which job follows which: the grammar of `on_complete` and the follow-up requests it makes.

A job's policy names its follow-ups (`on_complete`), each as text:

    stats          request `stats` after every completed run of the job
    stats@hour     request `stats` once per hour: after the first completed run whose
                   slot (`scheduled_for`) falls in that hour, for the hour's slot (HH:00)

A follow-up's `run_id` is derived from what it follows, so every publish of the same
follow-up carries the same `Nats-Msg-Id` (JetStream drops the repeats within its
duplicate window; past it, the follow-up's run record makes its worker ack it without
running): `<job>:chain:<hash of the completed run id>`, or for `@hour`
`<job>:chain:<hash of "<completed job>@<hour>">`, so that all the runs of one hour
request one follow-up between them. The runtime publishes them (`runtime/_chain.py`);
`pulse status` shows them (`shared/readmodel/status.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from shared.names import check_job_name
from shared.schemas import JobRequest, RunRecord, Trigger, new_run_id, utcnow

if TYPE_CHECKING:  # settings validates `on_complete` with this module's parser
    from shared.settings import Settings

#: The grains a follow-up can be limited to (after `@`).
GRAINS: tuple[str, ...] = ("hour",)


@dataclass(frozen=True)
class FollowUp:
    """One `on_complete` entry: the job to request, and at most once per what (None: every run)."""

    job: str
    per: Literal["hour"] | None = None

    def __str__(self) -> str:
        return self.job if self.per is None else f"{self.job}@{self.per}"


def parse_follow_up(text: str) -> FollowUp:
    """Parse `job` or `job@hour`.

    Raises:
        ValueError: naming what is wrong and the accepted forms.
    """
    job, _, per = text.partition("@")
    check_job_name(job)
    if not _:
        return FollowUp(job)
    if per != "hour":
        raise ValueError(f"follow-up {text!r}: after '@' only {', '.join(GRAINS)} is accepted (e.g. 'stats@hour')")
    return FollowUp(job, "hour")


def hour_of(when: datetime) -> datetime:
    """The start of the UTC hour holding `when`."""
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def keyed_request(
    job: str, key: str, *, scheduled_for: datetime, after_run_id: str, args: dict[str, Any] | None = None
) -> JobRequest:
    """A `chain` request of `job` whose run id is derived from `key`: the same key, the same run.

    Every request one run makes of another job goes through here (follow-ups, and
    whale_sync's market refreshes), so its repeats are dropped as duplicates.
    """
    return JobRequest(
        run_id=new_run_id(job, Trigger.CHAIN, hashlib.sha256(key.encode()).hexdigest()[:32]),
        job=job,
        trigger=Trigger.CHAIN,
        scheduled_for=scheduled_for,
        requested_by=f"chain:{after_run_id}"[:200],
        args=args or {},
    )


def follow_up_request(record: RunRecord, follow_up: FollowUp) -> JobRequest:
    """The request of `follow_up` after the completed run `record` (its id is deterministic)."""
    slot = record.scheduled_for or utcnow()
    if follow_up.per == "hour":
        slot = hour_of(slot)
        key = f"{record.job}@{slot.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    else:
        key = record.run_id
    return keyed_request(follow_up.job, key, scheduled_for=slot, after_run_id=record.run_id)


@dataclass(frozen=True)
class Chain:
    """One link of the configured chains: `after` completing requests `follow_up`."""

    after: str
    follow_up: FollowUp


def configured_chains(settings: Settings) -> list[Chain]:
    """Every `on_complete` link of every job in settings, in the jobs' order."""
    return [Chain(job, parse_follow_up(text)) for job, policy in settings.jobs.items() for text in policy.on_complete]
