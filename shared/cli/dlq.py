"""Dead letters: `pulse dlq list | show | replay | purge`.

Dead letters are `DeadLetter` JSON messages on `dlq.<job>` in the DLQ stream, addressed
by their stream sequence. `replay` publishes the dead request again as a new run with
trigger `replay`; its run id, `<job>:replay:<seq>-<hash>`, is derived from the dead
letter, so replaying the same letter twice (a double Enter, two operators) starts one
run. A replayed letter is removed from the DLQ once JetStream has accepted the new
request (`--keep` leaves it); if the new run dies too, it leaves a new dead letter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

import nats.js.errors
import typer
from nats.js import JetStreamContext
from pydantic import ValidationError
from rich.table import Table

from shared.names import JOBS, Collections
from shared.requests import publish_request
from shared.schemas import DeadLetter, JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Connections,
    ago,
    cli_settings,
    connect,
    console,
    err_console,
    fail,
    operator,
    print_json,
    run_async,
)

dlq_app = typer.Typer(
    help="Dead letters: requests that exhausted their attempts or could not be run.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
JobOpt = Annotated[str | None, typer.Option("--job", "-j", help="Only dead letters of this job.")]
#: Dead letters read at most by one command (the stream keeps 30 days; this bounds a listing).
_SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class StoredLetter:
    """A dead letter with its DLQ stream sequence (its address for show/replay/purge)."""

    seq: int
    letter: DeadLetter | None
    raw: bytes

    def as_json(self) -> dict[str, Any]:
        if self.letter is None:
            return {"seq": self.seq, "unreadable": self.raw.decode(errors="replace")[:2000]}
        return {"seq": self.seq, **self.letter.model_dump(mode="json")}


def _check_job(job: str | None) -> str | None:
    if job is not None and job not in JOBS:
        fail(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    return job


def _decode(seq: int, data: bytes) -> StoredLetter:
    try:
        return StoredLetter(seq, DeadLetter.model_validate_json(data), data)
    except ValidationError:
        return StoredLetter(seq, None, data)


async def read_letters(js: JetStreamContext, settings: Settings, job: str | None, limit: int) -> list[StoredLetter]:
    """Dead letters (of `job`, or all), oldest first, at most `limit`."""
    names = settings.names
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


async def read_letter(js: JetStreamContext, settings: Settings, seq: int) -> StoredLetter:
    """The dead letter at `seq`, or exit 1 saying it is not there."""
    try:
        message = await js.get_msg(settings.names.dlq_stream, seq=seq)
    except nats.js.errors.NotFoundError:
        fail(f"no dead letter #{seq} (purged, expired or never there); list them with: pulse dlq list", EXIT_FAILED)
    return _decode(seq, message.data or b"")


def replay_run_id(stored: StoredLetter) -> str:
    """The run id of a replay: the same dead letter always gives the same id."""
    assert stored.letter is not None
    digest = hashlib.sha256(stored.raw).hexdigest()[:12]
    return new_run_id(stored.letter.job, Trigger.REPLAY, f"{stored.seq}-{digest}")


# -- list / show ----------------------------------------------------------------------------


def _letters_table(letters: list[StoredLetter]) -> Table:
    table = Table(header_style="bold")
    for column in ("seq", "job", "run_id", "reason", "attempts", "dead", "error"):
        table.add_column(column, overflow="fold")
    for stored in letters:
        letter = stored.letter
        if letter is None:
            table.add_row(str(stored.seq), "?", "-", "unreadable", "-", "-", stored.raw[:60].decode(errors="replace"))
            continue
        error = letter.error.splitlines()[0] if letter.error else ""
        table.add_row(
            str(stored.seq),
            letter.job,
            letter.run_id or "-",
            letter.reason,
            str(letter.attempts),
            ago(letter.dead_at),
            error[:80],
        )
    return table


@dlq_app.command("list")
def list_(
    job: JobOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=_SCAN_LIMIT, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Dead letters, oldest first, with their sequence numbers.

    Example: pulse dlq list --job market_sync
    """
    settings = cli_settings()
    _check_job(job)

    async def _run() -> None:
        async with connect(settings, need_store=False) as conns:
            letters = await read_letters(conns.js, settings, job, limit)
        if as_json:
            print_json([stored.as_json() for stored in letters])
        elif not letters:
            err_console.print("no dead letters")
        else:
            console.print(_letters_table(letters))

    run_async(_run)


@dlq_app.command()
def show(
    seq: Annotated[int, typer.Argument(help="Sequence number, as shown by dlq list.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """One dead letter in full: the request, the error, the attempts.

    Example: pulse dlq show 12
    """
    settings = cli_settings()

    async def _run() -> None:
        async with connect(settings, need_store=False) as conns:
            stored = await read_letter(conns.js, settings, seq)
        if as_json:
            print_json(stored.as_json())
            return
        data = stored.as_json()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for key in ("seq", "job", "run_id", "reason", "attempts", "dead_at", "error", "unreadable"):
            if data.get(key) is not None:
                grid.add_row(key, str(data[key]))
        if data.get("request"):
            grid.add_row("request", JobRequest.model_validate(data["request"]).model_dump_json(indent=2))
        console.print(grid)

    run_async(_run)


# -- replay ------------------------------------------------------------------------------------


async def _replay_one(conns: Connections, stored: StoredLetter, keep: bool) -> dict[str, Any]:
    letter = stored.letter
    if letter is None or letter.request is None:
        return {
            "seq": stored.seq,
            "replayed": False,
            "reason": "the dead request could not be parsed, so it cannot run; inspect it with dlq show, then purge it",
        }
    run_id = replay_run_id(stored)
    existing = await conns.db[Collections.RUNS].find_one({"_id": run_id}, {"status": 1})
    duplicate = existing is not None
    if not duplicate:
        request = JobRequest(
            run_id=run_id,
            job=letter.job,
            trigger=Trigger.REPLAY,
            scheduled_for=utcnow(),
            requested_by=operator(),
            args=letter.request.args,
        )
        ack = await publish_request(conns.js, conns.settings.names, request)
        duplicate = bool(ack.duplicate)
    if not keep:
        await _delete(conns.js, conns.settings, stored.seq)
    return {
        "seq": stored.seq,
        "replayed": True,
        "run_id": run_id,
        "job": letter.job,
        "original_run_id": letter.run_id,
        "duplicate": duplicate,
        "removed": not keep,
    }


async def _delete(js: JetStreamContext, settings: Settings, seq: int) -> bool:
    try:
        return bool(await js.delete_msg(settings.names.dlq_stream, seq))
    except nats.js.errors.NotFoundError:
        return False  # already gone: purged concurrently
    except nats.js.errors.APIError as exc:
        if "no message" in str(exc).lower() or "not found" in str(exc).lower():
            return False
        raise


@dlq_app.command()
def replay(
    seq: Annotated[int | None, typer.Argument(help="Sequence number to replay.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter (of --job).")] = False,
    job: JobOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the dead letter in the DLQ after replaying.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish a dead request again as a new run (trigger `replay`) and print its run_id.

    Example: pulse dlq replay 12 ;  pulse dlq replay --all --job whale_sync
    """
    settings = cli_settings()
    _check_job(job)
    if (seq is None) == (not all_):
        fail("give a sequence number or --all (with --job to narrow it), not both")

    async def _run() -> int:
        async with connect(settings) as conns:
            if seq is not None:
                letters = [await read_letter(conns.js, settings, seq)]
            else:
                letters = await read_letters(conns.js, settings, job, _SCAN_LIMIT)
            results = [await _replay_one(conns, stored, keep) for stored in letters]
        if as_json:
            print_json(results)
        for result in results if not as_json else []:
            if result["replayed"]:
                console.print(result["run_id"], highlight=False, markup=False)
                note = " (already replayed: not started again)" if result["duplicate"] else ""
                err_console.print(
                    f"dead letter #{result['seq']} replayed as {result['run_id']}{note}", highlight=False, markup=False
                )
            else:
                err_console.print(
                    f"dead letter #{result['seq']} not replayed: {result['reason']}", highlight=False, markup=False
                )
        if not results:
            err_console.print("no dead letters to replay")
        return EXIT_OK if all(r["replayed"] for r in results) else EXIT_FAILED

    raise typer.Exit(run_async(_run))


# -- purge ---------------------------------------------------------------------------------------


@dlq_app.command()
def purge(
    seq: Annotated[int | None, typer.Argument(help="Delete only this dead letter.", show_default=False)] = None,
    job: JobOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters: one by sequence, all of a job, or all. Asks first unless --yes.

    Example: pulse dlq purge 12 --yes ;  pulse dlq purge --job stats
    """
    settings = cli_settings()
    _check_job(job)
    if seq is not None and job is not None:
        fail("give a sequence number or --job, not both")
    what = f"dead letter #{seq}" if seq is not None else f"every dead letter{f' of {job}' if job else ''}"
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        err_console.print("nothing deleted")
        raise typer.Exit(EXIT_FAILED)

    async def _run() -> int:
        async with connect(settings, need_store=False) as conns:
            names = settings.names
            if seq is not None:
                await read_letter(conns.js, settings, seq)  # exits 1 when it is not there
                deleted = 1 if await _delete(conns.js, settings, seq) else 0
            else:
                before = await conns.js.stream_info(names.dlq_stream)
                subject = names.dlq_subject(job) if job else None
                await conns.js.purge_stream(names.dlq_stream, subject=subject)
                after = await conns.js.stream_info(names.dlq_stream)
                deleted = before.state.messages - after.state.messages
        if as_json:
            print_json({"deleted": deleted})
        else:
            console.print(f"deleted {deleted} dead letter(s)")
        return EXIT_OK

    raise typer.Exit(run_async(_run))


def register(app: typer.Typer) -> None:
    """Add the `dlq` command group to `app`."""
    app.add_typer(dlq_app, name="dlq")
