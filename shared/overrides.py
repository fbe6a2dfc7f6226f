"""Schedule overrides: the one module that reads, resolves, writes and watches them.

An operator's runtime change of a job's schedule (`pulse schedule set|pause|resume|reset`)
is a `ScheduleOverride` stored as JSON under the job's key in the `schedules` KV bucket.
The ticker obeys it (watching the bucket), the runtime judges overlap by it, and the CLI
shows and edits it; all of them go through here, so they agree on what a missing,
deleted or unreadable value means: no override, the policy's schedule applies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.names import Names
from shared.schedules import EffectiveSchedule, ScheduleOverride, effective_schedule
from shared.settings import JobPolicy


@dataclass(frozen=True)
class StoredOverride:
    """A job's override as stored, with what a compare-and-set write needs."""

    override: ScheduleOverride | None
    #: The revision to write against (a delete's tombstone has one too); None when never written.
    revision: int | None
    #: Why the stored value could not be read (it then counts as no override).
    unreadable: str | None = None


@dataclass(frozen=True)
class OverrideChange:
    """One change seen by `watch_overrides`: the job's override now (None: none)."""

    job: str
    override: ScheduleOverride | None
    #: Set when the new value is unreadable: keep obeying what was obeyed before.
    unreadable: str | None = None


def parse_entry(entry: KeyValue.Entry) -> tuple[ScheduleOverride | None, str | None]:
    """The override held by a KV entry, and why it is unreadable if it is."""
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        return None, None
    try:
        return ScheduleOverride.from_bytes(entry.value), None
    except ValueError as exc:
        return None, str(exc)


def resolve(job: str, policy: JobPolicy, override: ScheduleOverride | None) -> EffectiveSchedule:
    """The schedule `job` follows: its policy's, changed by `override`."""
    return effective_schedule(job, policy.schedule, enabled=policy.enabled, override=override, catch_up=policy.catch_up)


async def read_override(kv: KeyValue, job: str) -> StoredOverride:
    """The job's stored override and its revision."""
    try:
        entry = await kv.get(job)
    except nats.js.errors.KeyDeletedError as exc:  # a tombstone: the next write names its revision
        return StoredOverride(None, exc.entry.revision if exc.entry is not None else None)
    except nats.js.errors.KeyNotFoundError:
        return StoredOverride(None, None)
    override, unreadable = parse_entry(entry)
    return StoredOverride(override, entry.revision, unreadable)


async def write_override(kv: KeyValue, job: str, value: ScheduleOverride | None, last: int | None) -> bool:
    """Compare-and-set the job's override (None deletes it); False on a concurrent change."""
    try:
        if value is None:
            await kv.delete(job, last=last)
        elif last is None:
            await kv.create(job, value.to_bytes())
        else:
            await kv.update(job, value.to_bytes(), last=last)
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
        return False
    return True


async def current_override(js: JetStreamContext, names: Names, job: str) -> ScheduleOverride | None:
    """The job's override now; None when there is none, the bucket is missing, or it is unreadable."""
    try:
        kv = await js.key_value(names.schedules_bucket)
    except nats.js.errors.BucketNotFoundError:
        return None
    return (await read_override(kv, job)).override


async def current_schedule(js: JetStreamContext, names: Names, job: str, policy: JobPolicy) -> EffectiveSchedule:
    """The schedule the ticker follows for `job` now: the override if any, else the policy's."""
    return resolve(job, policy, await current_override(js, names, job))


class OverrideWatch:
    """Every job's override, then each change as it happens (the ticker's view).

    Example:
        watch = await OverrideWatch.open(js, names, timeout_s=10)
        initial = watch.initial          # job -> OverrideChange, as stored now
        async for change in watch.changes():
            ...
        await watch.stop()
    """

    def __init__(self, watcher: KeyValue.KeyWatcher, initial: dict[str, OverrideChange]) -> None:
        self._watcher = watcher
        self.initial = initial

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names, *, timeout_s: float) -> OverrideWatch:
        """Watch the bucket; read every current value first (within `timeout_s` per entry)."""
        bucket = await js.key_value(names.schedules_bucket)
        watcher = await bucket.watchall()
        initial: dict[str, OverrideChange] = {}
        # The watcher yields current values, then None, then live changes.
        while (entry := await watcher.updates(timeout=timeout_s)) is not None:  # type: ignore[no-untyped-call]
            initial[entry.key] = _change_of(entry)
        return cls(watcher, initial)

    async def changes(self) -> AsyncIterator[OverrideChange]:
        """Each change after the initial values, as it happens."""
        async for entry in self._watcher:
            if entry is not None:
                yield _change_of(entry)

    async def stop(self) -> None:
        await self._watcher.stop()  # type: ignore[no-untyped-call]


def _change_of(entry: KeyValue.Entry) -> OverrideChange:
    override, unreadable = parse_entry(entry)
    return OverrideChange(entry.key, override, unreadable)
