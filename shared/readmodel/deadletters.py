"""Dead letters: `DeadLetter` JSON messages on `dlq.<job>` in the DLQ stream, addressed by stream sequence.

`replay_letter` publishes the dead request again as a new run with trigger `replay`;
its run id, `<job>:replay:<seq>-<hash>`, is derived from the dead letter, so replaying
the same letter twice (a double click, two operators) starts one run. A replayed letter
is removed from the DLQ once JetStream has accepted the new request (unless `keep`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from shared.jobargs import check_args
from shared.names import JOBS, Collections, Names
from shared.readmodel.timetext import plain_times
from shared.requests import publish_request
from shared.schemas import DeadLetter, JobRequest, Trigger, new_run_id, utcnow
from shared.store import Database

#: Dead letters read at most by one listing (the stream keeps 30 days; this bounds a scan).
SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class StoredLetter:
    """A dead letter with its DLQ stream sequence (its address for show/replay/purge)."""

    seq: int
    letter: DeadLetter | None
    raw: bytes

    def as_json(self) -> dict[str, Any]:
        if self.letter is None:
            return {"seq": self.seq, "unreadable": self.raw.decode(errors="replace")[:2000]}
        data = plain_times({"seq": self.seq, **self.letter.model_dump()})
        assert isinstance(data, dict)
        plain: dict[str, Any] = json.loads(json.dumps(data, default=str))  # the nested request as plain JSON
        return plain


def check_job(job: str | None) -> str | None:
    """`job` if known (or None); ValueError listing the jobs otherwise."""
    if job is not None and job not in JOBS:
        raise ValueError(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    return job


def _decode(seq: int, data: bytes) -> StoredLetter:
    try:
        return StoredLetter(seq, DeadLetter.model_validate_json(data), data)
    except ValidationError:
        return StoredLetter(seq, None, data)


async def read_letters(js: JetStreamContext, names: Names, job: str | None, limit: int) -> list[StoredLetter]:
    """Dead letters (of `job`, or all), oldest first, at most `limit`."""
    subject = names.dlq_subject(job) if job else names.dlq_wildcard()
    letters: list[StoredLetter] = []
    seq = 1
    while len(letters) < limit:
        try:
            message = await js.get_msg(names.dlq_stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        if message.seq is None:
            break
        letters.append(_decode(message.seq, message.data or b""))
        seq = message.seq + 1
    return letters


async def count_letters(js: JetStreamContext, names: Names) -> int:
    """How many dead letters the DLQ holds (all jobs)."""
    info = await js.stream_info(names.dlq_stream)
    return int(info.state.messages)


async def count_by_job(js: JetStreamContext, names: Names) -> dict[str, int]:
    """Dead letters held per job (from the stream's per-subject counts; no message is read)."""
    info = await js.stream_info(names.dlq_stream, subjects_filter=names.dlq_wildcard())
    counts: dict[str, int] = {}
    for subject, count in (info.state.subjects or {}).items():
        counts[subject.rsplit(".", 1)[-1]] = int(count)
    return counts


async def read_letter(js: JetStreamContext, names: Names, seq: int) -> StoredLetter:
    """The dead letter at `seq`.

    Raises:
        LookupError: no message at `seq` (purged, expired or never there).
    """
    try:
        message = await js.get_msg(names.dlq_stream, seq=seq)
    except nats.js.errors.NotFoundError:
        raise LookupError(f"no dead letter #{seq} (purged, expired or never there)") from None
    return _decode(seq, message.data or b"")


def replay_run_id(stored: StoredLetter, edited_args: dict[str, Any] | None = None) -> str:
    """The run id of a replay: the same dead letter (with the same edits) always gives the same id."""
    assert stored.letter is not None
    content = stored.raw if edited_args is None else stored.raw + json.dumps(edited_args, sort_keys=True).encode()
    digest = hashlib.sha256(content).hexdigest()[:12]
    return new_run_id(stored.letter.job, Trigger.REPLAY, f"{stored.seq}-{digest}")


def replay_refusal(stored: StoredLetter, edited_args: dict[str, Any] | None = None) -> str | None:
    """Why this letter must not be replayed as it is (None: it may).

    A request refused as invalid would fail the same way again: it is replayed only with
    edited args, and any args (edited or not) are checked against the job's model first.
    """
    letter = stored.letter
    if letter is None or letter.request is None:
        return "the dead request could not be parsed, so it cannot run; inspect it with dlq show, then purge it"
    fix = f"fix the args with: pulse dlq replay {stored.seq} --set args.KEY=VALUE | --unset args.KEY | --edit"
    if edited_args is None and letter.reason == "invalid":
        first_line = letter.error.splitlines()[0][:300] if letter.error else "no reason recorded"
        return f"it was refused as invalid ({first_line}); replaying it unchanged fails again: {fix}"
    problem = check_args(letter.job, letter.request.args if edited_args is None else edited_args)
    if problem is not None:
        return f"its args are invalid for {letter.job}: {problem}; {fix}"
    return None


async def replay_letter(
    js: JetStreamContext,
    db: Database,
    names: Names,
    stored: StoredLetter,
    *,
    keep: bool,
    requested_by: str,
    edited_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the dead request again as a new run (with `edited_args`, if given); remove the letter unless `keep`.

    Returns what happened, as plain data: `replayed`, `run_id`, `duplicate`, `removed`,
    `edited`, or `replayed: False` with the `reason` when the request cannot (or must not) run.
    """
    refusal = replay_refusal(stored, edited_args)
    letter = stored.letter
    if refusal is not None or letter is None or letter.request is None:
        return {"seq": stored.seq, "replayed": False, "reason": refusal}
    run_id = replay_run_id(stored, edited_args)
    existing = await db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1})
    duplicate = existing is not None
    if not duplicate:
        request = JobRequest(
            run_id=run_id,
            job=letter.job,
            trigger=Trigger.REPLAY,
            scheduled_for=utcnow(),
            requested_by=requested_by,
            args=letter.request.args if edited_args is None else edited_args,
        )
        ack = await publish_request(js, names, request)
        duplicate = bool(ack.duplicate)
    if not keep:
        await delete_letter(js, names, stored.seq)
    return {
        "seq": stored.seq,
        "replayed": True,
        "run_id": run_id,
        "job": letter.job,
        "original_run_id": letter.run_id,
        "duplicate": duplicate,
        "removed": not keep,
        "edited": edited_args is not None,
    }


async def delete_letter(js: JetStreamContext, names: Names, seq: int) -> bool:
    """Delete the dead letter at `seq`; False when it was already gone."""
    try:
        return bool(await js.delete_msg(names.dlq_stream, seq))
    except nats.js.errors.NotFoundError:
        return False  # already gone: purged concurrently
    except nats.js.errors.APIError as exc:
        if "no message" in str(exc).lower() or "not found" in str(exc).lower():
            return False
        raise


async def purge_letters(js: JetStreamContext, names: Names, job: str | None) -> int:
    """Delete every dead letter (of `job`, or all); return how many went."""
    before = await js.stream_info(names.dlq_stream)
    subject = names.dlq_subject(job) if job else None
    await js.purge_stream(names.dlq_stream, subject=subject)
    after = await js.stream_info(names.dlq_stream)
    return int(before.state.messages - after.state.messages)
