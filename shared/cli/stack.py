"""The record of a running `pulse up`, so other shells find the local stack by themselves.

`pulse up` starts its servers on free ports; it writes where they are to one small JSON
file (`PULSE_STACK_FILE`, `.data/stack.json` by default) and removes it when it stops
cleanly. Every other `pulse` command reads the file when no `PULSE_NATS_URL` /
`PULSE_MONGO_URL` is set (`common.cli_settings`). The file carries the pid of `pulse up`,
so a file left by a killed stack is recognised as stale and ignored.

The file is written atomically (a temporary file, then `os.replace`) with mode 0600: a
reader never sees half a file, and a MongoDB URI with credentials stays the user's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

#: The settings a stack record provides, as environment variables, in `pulse env` order.
STACK_ENV = ("PULSE_NATS_URL", "PULSE_MONGO_URL", "PULSE_MONGO_DB", "PULSE_NAMESPACE")


class StackRecord(BaseModel):
    """Where a running `pulse up` put its servers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    pid: int
    host: str
    started_at: datetime
    nats_url: str
    mongo_url: str
    mongo_db: str
    namespace: str
    data_dir: str

    def env(self) -> dict[str, str]:
        """The PULSE_* variables that point a process at this stack."""
        return dict(zip(STACK_ENV, (self.nats_url, self.mongo_url, self.mongo_db, self.namespace), strict=True))

    def export_lines(self) -> list[str]:
        """`export NAME=value` lines for a POSIX shell (`eval "$(pulse env)"`)."""
        return [f"export {name}={shlex.quote(value)}" for name, value in self.env().items()]


def new_record(*, nats_url: str, mongo_url: str, mongo_db: str, namespace: str, data_dir: Path) -> StackRecord:
    """A record of this process's stack."""
    return StackRecord(
        pid=os.getpid(),
        host=socket.gethostname(),
        started_at=datetime.now(UTC).replace(microsecond=0),
        nats_url=nats_url,
        mongo_url=mongo_url,
        mongo_db=mongo_db,
        namespace=namespace,
        data_dir=str(data_dir.resolve()),
    )


def write_stack(path: Path, record: StackRecord) -> None:
    """Write `record` to `path` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".stack-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(record.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stack(path: Path, pid: int | None = None) -> None:
    """Remove the record at `path` if it is this process's (or `pid`'s); leave another stack's alone."""
    record = read_stack(path)
    if record is not None and record.pid == (pid or os.getpid()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_stack(path: Path) -> StackRecord | None:
    """The record at `path` as written, or None when there is none (or it is unreadable)."""
    try:
        return StackRecord.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        return None


def is_live(record: StackRecord) -> bool:
    """Whether the `pulse up` that wrote `record` still runs (on this host)."""
    if record.host != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    # A killed `pulse up` not yet reaped by its parent is a zombie: gone for our purpose.
    with contextlib.suppress(OSError):
        return not Path(f"/proc/{record.pid}/stat").read_text().split(") ", 1)[-1].startswith("Z")
    return True


def live_stack(path: Path) -> StackRecord | None:
    """The record at `path` if its `pulse up` is still running, else None (a stale file is ignored)."""
    record = read_stack(path)
    return record if record is not None and is_live(record) else None
