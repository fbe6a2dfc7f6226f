"""The audit trail of operator actions: who did what, when, from where, and how it ended.

One document per action in the `audit` collection (DESIGN.md: "an audit trail of
operator actions (who, what, when, from CLI or dashboard)"). The dashboard records its
actions (`services/dashboard/actions.py`) and the `pulse` CLI its mutating commands
(`shared/cli/trail.py`), so the dashboard's audit view shows both. Refused actions are
recorded too, so a probe without the token leaves a trace. Details are bounded and
never hold a secret (callers pass the action's parameters, never credentials).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared.errors import bounded
from shared.names import Collections
from shared.schemas import utcnow
from shared.store import Database

Source = Literal["cli", "dashboard"]
Outcome = Literal["done", "refused", "failed"]

_ACTOR_RE = re.compile(r"^[A-Za-z0-9_.@\-]{1,40}$")


def check_actor(name: str) -> str:
    """An operator's name fit for the audit trail (dashboard sign-in, `pulse --actor`), or ValueError."""
    if not _ACTOR_RE.match(name):
        raise ValueError(f"the name {name[:60]!r} must be 1-40 letters, digits or . _ @ -")
    return name


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    at: datetime
    who: str
    source: str
    action: str
    target: str
    outcome: str
    detail: str


async def record_action(
    db: Database,
    *,
    who: str,
    source: Source,
    action: str,
    target: str,
    outcome: Outcome,
    detail: str = "",
    params: dict[str, Any] | None = None,
) -> None:
    """Append one action to the audit trail."""
    await db[Collections.AUDIT].insert_one(
        {
            "_id": uuid.uuid4().hex,
            "at": utcnow(),
            "who": who[:200],
            "source": source,
            "action": action[:64],
            "target": target[:256],
            "outcome": outcome,
            "detail": bounded(detail, 500),
            "params": {k: str(v)[:200] for k, v in (params or {}).items()},
        }
    )


async def recent_actions(db: Database, limit: int = 20) -> list[AuditEntry]:
    """The newest `limit` actions, newest first."""
    cursor = db[Collections.AUDIT].find({}).sort("at", -1).limit(limit)
    return [
        AuditEntry(
            doc["at"],
            doc.get("who", "?"),
            doc.get("source", "?"),
            doc.get("action", "?"),
            doc.get("target", ""),
            doc.get("outcome", "?"),
            doc.get("detail", ""),
        )
        async for doc in cursor
    ]
