"""The promise of the fault suite, checked from the outside after a run.

Every request that was published (by a ticker, a test or `pulse`) must end in exactly
one terminal run record, or in a dead letter; every failed run must have its dead letter
and an alert for its job; no side effect may be doubled (two successful attempts of one
run, two terminal events or two dead letters of one run); and nothing may stay in JOBS.

The audit reads only what the system exposes: the `runs` collection, the EVENTS and DLQ
streams and the JOBS stream's state. Used by tests/faults and bench/soak.py.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from shared.names import Collections
from shared.schemas import TERMINAL_STATUSES, Alert, DeadLetter
from shared.settings import Settings
from shared.store import Database

TERMINAL = {status.value for status in TERMINAL_STATUSES}


@dataclass
class StoredMessage:
    subject: str
    data: bytes


@dataclass
class Audit:
    """What became of every request; `problems()` is empty when the promise held."""

    requested: set[str]
    records: dict[str, dict[str, Any]]
    dead_letters: list[DeadLetter]
    unreadable_letters: int
    alerts: list[Alert]
    terminal_events: Counter[str]
    queued: int
    #: Failed runs whose dead letter `pulse dlq replay` took out of the DLQ (run id → replay's run id).
    replayed: dict[str, str] = field(default_factory=dict)
    not_terminal: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    unalerted: list[str] = field(default_factory=list)
    undead: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        lettered = Counter(letter.run_id for letter in self.dead_letters if letter.run_id)
        for run_id in sorted(self.requested):
            record = self.records.get(run_id)
            if record is None:
                if not lettered[run_id]:
                    self.lost.append(run_id)
            elif record["status"] not in TERMINAL:
                self.not_terminal.append(f"{run_id} ({record['status']})")
        for run_id, record in sorted(self.records.items()):
            succeeded = sum(1 for a in record.get("attempts", []) if a.get("outcome") == "succeeded")
            if succeeded > 1 or self.terminal_events[run_id] > 1 or lettered[run_id] > 1:
                self.doubled.append(
                    f"{run_id}: {succeeded} successful attempts, {self.terminal_events[run_id]} terminal events, "
                    f"{lettered[run_id]} dead letters"
                )
            if record["status"] == "failed":
                if not lettered[run_id] and run_id not in self.replayed:
                    self.undead.append(run_id)
                if not self._alerted(record):
                    self.unalerted.append(run_id)

    def _alerted(self, record: dict[str, Any]) -> bool:
        """Some alert of the run's job covers it: raised for a streak that began by its end."""
        ended = record.get("ended_at")
        return any(
            alert.job == record["job"] and (not isinstance(ended, datetime) or alert.since <= _aware(ended))
            for alert in self.alerts
        )

    @property
    def terminal(self) -> int:
        return sum(1 for run_id in self.requested if self.records.get(run_id, {}).get("status") in TERMINAL)

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} requests lost (no record, no dead letter): {self.lost[:10]}")
        if self.not_terminal:
            out.append(f"{len(self.not_terminal)} runs not terminal: {self.not_terminal[:10]}")
        if self.doubled:
            out.append(f"{len(self.doubled)} runs doubled: {self.doubled[:10]}")
        if self.undead:
            out.append(f"{len(self.undead)} failed runs without a dead letter: {self.undead[:10]}")
        if self.unalerted:
            out.append(f"{len(self.unalerted)} failed runs without an alert: {self.unalerted[:10]}")
        if self.queued:
            out.append(f"{self.queued} messages still in JOBS")
        return out

    def summary(self) -> str:
        statuses = Counter(str(self.records.get(r, {}).get("status", "none")) for r in self.requested)
        return (
            f"requested {len(self.requested)}, terminal {self.terminal}, lost {len(self.lost)}, "
            f"doubled {len(self.doubled)}, dead letters {len(self.dead_letters)}, alerts {len(self.alerts)}, "
            f"still in JOBS {self.queued}; statuses {dict(sorted(statuses.items()))}"
        )


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def stored_messages(js: JetStreamContext, stream: str) -> list[StoredMessage]:
    """Every message now in `stream`, by sequence, without a consumer."""
    info = await js.stream_info(stream)
    out: list[StoredMessage] = []
    if not info.state.messages:
        return out
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        try:
            message = await js.get_msg(stream, seq, direct=True)
        except nats.js.errors.NotFoundError:
            continue
        out.append(StoredMessage(message.subject or "", message.data or b""))
    return out


async def dead_letters(js: JetStreamContext, settings: Settings) -> tuple[list[DeadLetter], int]:
    """The dead letters in DLQ, and how many could not be read as one."""
    letters: list[DeadLetter] = []
    unreadable = 0
    for message in await stored_messages(js, settings.names.dlq_stream):
        try:
            letters.append(DeadLetter.model_validate_json(message.data))
        except ValueError:
            unreadable += 1
    return letters, unreadable


async def queued(js: JetStreamContext, settings: Settings) -> int:
    """Messages still in JOBS (a work queue: settled requests leave it)."""
    return int((await js.stream_info(settings.names.jobs_stream)).state.messages)


async def run_audit(
    js: JetStreamContext, db: Database, settings: Settings, requested: set[str], replayed: dict[str, str] | None = None
) -> Audit:
    """Audit every request in `requested` plus every run the database knows of."""
    names = settings.names
    records = {doc["_id"]: doc async for doc in db[Collections.RUNS].find({})}
    letters, unreadable = await dead_letters(js, settings)
    alerts: list[Alert] = []
    events: Counter[str] = Counter()
    alert_prefix = names.alert_subject("x")[: -len("x")]
    for message in await stored_messages(js, names.events_stream):
        if message.subject.startswith(alert_prefix):
            alerts.append(Alert.model_validate_json(message.data))
            continue
        event = json.loads(message.data)
        if event.get("status") in TERMINAL:
            events[str(event["run_id"])] += 1
    everything = requested | set(records) | {letter.run_id for letter in letters if letter.run_id}
    return Audit(
        requested=everything,
        records=records,
        dead_letters=letters,
        unreadable_letters=unreadable,
        alerts=alerts,
        terminal_events=events,
        queued=await queued(js, settings),
        replayed=replayed or {},
    )


async def settled(
    js: JetStreamContext, db: Database, settings: Settings, requested: set[str], replayed: dict[str, str] | None = None
) -> Audit | None:
    """The audit once every request has ended and JOBS is empty, else None (for wait_for)."""
    audit = await run_audit(js, db, settings, requested, replayed)
    return audit if not (audit.lost or audit.not_terminal or audit.queued) else None
