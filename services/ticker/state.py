"""The `ticker` KV bucket: the last claimed slot per job, written only by compare-and-set.

A claim is `kv.create` (no state yet) or `kv.update(last=revision)`: of several replicas
racing for the same slot with the same revision, exactly one write succeeds, and the
others learn (from the conflict) that the slot is taken.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError

from services.ticker.slots import SlotState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    """A job's state as read, with the revision a compare-and-set must name."""

    state: SlotState | None
    revision: int | None


class SlotStore:
    """Reads and compare-and-sets `SlotState` values in the `ticker` bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def read(self, job: str) -> Stored:
        """The job's current state; `state` None when the key is absent, deleted or unreadable."""
        try:
            entry = await self._kv.get(job)
        except nats.js.errors.KeyNotFoundError:  # also KeyDeletedError
            return Stored(None, None)
        if entry.value is None:
            return Stored(None, entry.revision)
        try:
            return Stored(SlotState.model_validate_json(entry.value), entry.revision)
        except ValidationError:
            # A value we cannot read is treated as "never fired" (the job fires its latest
            # slot once) and overwritten by the next claim, instead of blocking the job forever.
            log.warning("ticker.state_unreadable", extra={"job": job})
            return Stored(None, entry.revision)

    async def write(self, job: str, state: SlotState, last: int | None) -> int | None:
        """Compare-and-set `state` over revision `last` (None: key must be absent).

        Returns:
            The new revision, or None when another writer got there first.
        """
        try:
            if last is None:
                revision: int = await self._kv.create(job, state.to_bytes())
            else:
                revision = await self._kv.update(job, state.to_bytes(), last=last)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return None
        except nats.js.errors.BadRequestError as exc:
            # Older servers report a CAS conflict as a plain 400 "wrong last sequence".
            if "wrong last sequence" in str(exc).lower():
                return None
            raise
        return revision
