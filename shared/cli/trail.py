"""The CLI's side of the audit trail: every mutating `pulse` command records who did what.

    trigger, cancel, signal, dlq replay | purge, schedule set | pause | resume | reset |
    cancel-pending

each record one entry in the `audit` collection (`shared.audit.record_action`, source
`cli`), the trail the dashboard's actions write to, so its `/audit` page shows both. The
actor is `pulse:<name>@<host>`, where the name is `--actor` or the login name from the
environment (`getpass.getuser`: LOGNAME, USER, ...); the same string is the run's
`requested_by`.

    async with audited(settings, conns.db, who, "cancel", run_id) as note:
        done = await cancel_run(...)
        note.detail = f"{run_id} canceled"

An action that raises is recorded `failed` (with the error's one line) and the error goes
on. The entry is written after the action: the audit trail never blocks an operator. If
MongoDB cannot take it (down, or a NATS-only command while the store is away), the
command still does its work and says on stderr that the entry is missing.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from shared.audit import Outcome, check_actor, record_action
from shared.errors import PulseError
from shared.settings import Settings
from shared.store import Database, connect_store

from .common import err_console, fail

ActorOpt = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Your name in the audit trail and the run's requested_by (default: your login name).",
        show_default=False,
    ),
]


def acting_as(actor: str | None = None) -> str:
    """Who is asking, `pulse:<actor or login name>@<host>`; exit 2 for a name unfit for the trail."""
    if actor is None:
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):
            actor = "unknown"
    else:
        try:
            check_actor(actor)
        except ValueError as exc:
            fail(f"--actor: {exc}")
    return f"pulse:{actor}@{socket.gethostname()}"[:200]


@dataclass
class Note:
    """What the action did, in one line, for the trail (set by the command inside `audited`)."""

    detail: str = ""


@asynccontextmanager
async def audited(
    settings: Settings,
    db: Database | None,
    who: str,
    action: str,
    target: str,
    params: dict[str, Any] | None = None,
) -> AsyncIterator[Note]:
    """Record the action of the block: `done` with `note.detail`, or `failed` with the error.

    Args:
        settings: where the store is, when `db` is None (a command that needed only NATS).
        db: the command's open database, if it has one.
        who: `acting_as(...)`.
        action: the dashboard's name of the same action (`trigger`, `cancel`, `schedule_pause`, ...).
        target: what it acted on (a job, a run id, a dead letter number).
        params: the action's inputs (never credentials).
    """
    note = Note()
    try:
        yield note
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            await _write(settings, db, who, action, target, "failed", _failure(exc, note), params)
        raise
    await _write(settings, db, who, action, target, "done", note.detail, params)


def _failure(exc: BaseException, note: Note) -> str:
    if isinstance(exc, PulseError | LookupError):
        return str(exc)
    if isinstance(exc, typer.Exit):
        return note.detail or f"refused (exit {exc.exit_code})"
    return type(exc).__name__  # a foreign error's text may quote a URL with credentials


async def _write(
    settings: Settings,
    db: Database | None,
    who: str,
    action: str,
    target: str,
    outcome: Outcome,
    detail: str,
    params: dict[str, Any] | None,
) -> None:
    async def write(into: Database) -> None:
        await record_action(into, who=who, source="cli", action=action, target=target, outcome=outcome,
                            detail=detail, params=params)  # fmt: skip

    try:
        if db is not None:
            await write(db)
            return
        mongo, own = await connect_store(settings)
        try:
            await write(own)
        finally:
            await mongo.close()
    except Exception as exc:  # the action is done: say the entry is missing, never fail the command for it
        err_console.print(
            f"warning: {action} of {target} is not in the audit trail: MongoDB did not take it "
            f"({type(exc).__name__}); check PULSE_MONGO_URL",
            highlight=False,
            markup=False,
        )
