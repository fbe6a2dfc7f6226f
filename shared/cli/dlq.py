"""Dead letters: `pulse dlq list | show | replay | purge`.

Dead letters are `DeadLetter` JSON messages on `dlq.<job>` in the DLQ stream, addressed
by their stream sequence. `replay` publishes the dead request again as a new run with
trigger `replay`; its run id, `<job>:replay:<seq>-<hash>`, is derived from the dead
letter, so replaying the same letter twice (a double Enter, two operators) starts one
run. A replayed letter is removed from the DLQ once JetStream has accepted the new
request (`--keep` leaves it); if the new run dies too, it leaves a new dead letter.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import click
import typer
from nats.js import JetStreamContext
from rich.table import Table

from shared.readmodel import deadletters
from shared.readmodel.deadletters import (
    SCAN_LIMIT,
    StoredLetter,
    delete_letter,
    purge_letters,
    read_letters,
    replay_letter,
    replay_refusal,
)
from shared.readmodel.deadletters import check_job as check_letters_job
from shared.readmodel.timetext import ago
from shared.schemas import JobRequest
from shared.settings import Settings

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    cli_settings,
    connect,
    console,
    err_console,
    fail,
    print_json,
    run_async,
)
from .jobs import parse_args
from .trail import ActorOpt, acting_as, audited

dlq_app = typer.Typer(
    help="Dead letters: requests that exhausted their attempts or could not be run.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
JobOpt = Annotated[str | None, typer.Option("--job", "-j", help="Only dead letters of this job.")]


def _check_job(job: str | None) -> str | None:
    try:
        return check_letters_job(job)
    except ValueError as exc:
        fail(str(exc))


async def read_letter(js: JetStreamContext, settings: Settings, seq: int) -> StoredLetter:
    """The dead letter at `seq`, or exit 1 saying it is not there."""
    try:
        return await deadletters.read_letter(js, settings.names, seq)
    except LookupError as exc:
        fail(f"{exc}; list them with: pulse dlq list", EXIT_FAILED)


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
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=SCAN_LIMIT, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Dead letters, oldest first, with their sequence numbers.

    Example: pulse dlq list --job market_sync
    """
    settings = cli_settings()
    _check_job(job)

    async def _run() -> None:
        async with connect(settings, need_store=False) as conns:
            letters = await read_letters(conns.js, settings.names, job, limit)
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


@dlq_app.command()
def replay(
    seq: Annotated[int | None, typer.Argument(help="Sequence number to replay.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter (of --job).")] = False,
    job: JobOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the dead letter in the DLQ after replaying.")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Change one arg before replaying: args.KEY=VALUE (repeatable).")
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option("--unset", help="Remove one arg before replaying: args.KEY (repeatable).")
    ] = None,
    edit: Annotated[bool, typer.Option("--edit", help="Edit the args as JSON in $EDITOR before replaying.")] = False,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Publish a dead request again as a new run (trigger `replay`) and print its run_id.

    A request that was refused as invalid is replayed only with edited args (--set,
    --unset or --edit); args are checked against the job's model before anything is
    published, and a refusal says why (exit 2).

    Example: pulse dlq replay 12 ;  pulse dlq replay 12 --unset args.bogus ;  pulse dlq replay --all --job whale_sync
    """
    settings = cli_settings()
    _check_job(job)
    if (seq is None) == (not all_):
        fail("give a sequence number or --all (with --job to narrow it), not both")
    if all_ and (set_ or unset or edit):
        fail("--set, --unset and --edit change one dead letter: give its sequence number instead of --all")

    who = acting_as(actor)

    async def _read_one(number: int) -> StoredLetter | None:
        async with connect(settings, need_store=False) as conns:
            try:
                return await deadletters.read_letter(conns.js, settings.names, number)
            except LookupError:
                return None  # the replay below says so (and records it in the audit trail)

    edited_args: dict[str, Any] | None = None
    stored_one = run_async(lambda: _read_one(seq)) if seq is not None else None
    if stored_one is not None:
        edited_args = edit_args(stored_one, set_ or [], unset or [], edit)
        refusal = replay_refusal(stored_one, edited_args)
        if refusal is not None:
            fail(f"dead letter #{seq} not replayed: {refusal}")

    action, target = ("dlq_replay", str(seq)) if seq is not None else ("dlq_replay_all", job or "all")
    params: dict[str, Any] = {"keep": keep} | ({"args": edited_args} if edited_args is not None else {})

    async def _run() -> int:
        async with connect(settings) as conns:
            try:
                async with audited(settings, conns.db, who, action, target, params) as trail:
                    if seq is not None:
                        letters = [await deadletters.read_letter(conns.js, settings.names, seq)]
                    else:
                        letters = await read_letters(conns.js, settings.names, job, SCAN_LIMIT)
                    results = [
                        await replay_letter(
                            conns.js,
                            conns.db,
                            settings.names,
                            stored,
                            keep=keep,
                            requested_by=who,
                            edited_args=edited_args,
                        )
                        for stored in letters
                    ]
                    trail.detail = _replay_note(results)
            except LookupError as exc:
                fail(f"{exc}; list them with: pulse dlq list", EXIT_FAILED)
        _report_replays(results, as_json=as_json)
        return EXIT_OK if all(r["replayed"] for r in results) else EXIT_FAILED

    raise typer.Exit(run_async(_run))


def _report_replays(results: list[dict[str, Any]], *, as_json: bool) -> None:
    """The new run ids on stdout (or the results as JSON), the story on stderr."""
    if as_json:
        print_json(results)
        return
    for result in results:
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


def _replay_note(results: list[dict[str, Any]]) -> str:
    """The audit trail's line of a replay: the new run ids, and what was left."""
    done = [f"#{r['seq']} as {r['run_id']}" for r in results if r["replayed"]]
    left = [f"#{r['seq']} ({r['reason']})" for r in results if not r["replayed"]]
    text = f"replayed {len(done)}: {', '.join(done)}" if done else "replayed none"
    return text + (f"; not replayed: {', '.join(left)}" if left else "")


def edit_args(stored: StoredLetter, set_: list[str], unset: list[str], use_editor: bool) -> dict[str, Any] | None:
    """The letter's args after --set / --unset / --edit (None when none was given)."""
    if not (set_ or unset or use_editor):
        return None
    letter = stored.letter
    if letter is None or letter.request is None:
        fail(f"dead letter #{stored.seq} holds no readable request to edit; inspect it: pulse dlq show {stored.seq}")
    args = dict(letter.request.args)
    for pair in unset:
        key = pair.removeprefix("args.")
        if not pair.startswith("args.") or key not in args:
            fail(f"--unset {pair!r}: expected args.KEY naming one of the request's args ({', '.join(args) or 'none'})")
        del args[key]
    args.update(parse_args(set_, option="--set", prefix="args."))
    if use_editor:
        text = click.edit(json.dumps(args, indent=2, sort_keys=True) + "\n", extension=".json")
        if text is None:
            fail("--edit: the args were not changed (or not saved); nothing was replayed")
        try:
            args = json.loads(text)
        except ValueError as exc:
            fail(f"--edit: the edited args are not JSON ({exc}); nothing was replayed")
        if not isinstance(args, dict):
            fail("--edit: the edited args must be a JSON object; nothing was replayed")
    return args


# -- purge ---------------------------------------------------------------------------------------


@dlq_app.command()
def purge(
    seq: Annotated[int | None, typer.Argument(help="Delete only this dead letter.", show_default=False)] = None,
    job: JobOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
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

    who = acting_as(actor)
    action, target = ("dlq_purge", str(seq)) if seq is not None else ("dlq_purge_all", job or "all")

    async def _run() -> int:
        async with connect(settings, need_store=False) as conns:
            try:
                async with audited(settings, None, who, action, target) as note:
                    if seq is not None:
                        await deadletters.read_letter(conns.js, settings.names, seq)  # LookupError when it is not there
                        deleted = 1 if await delete_letter(conns.js, settings.names, seq) else 0
                    else:
                        deleted = await purge_letters(conns.js, settings.names, job)
                    note.detail = f"deleted {deleted} dead letter(s)"
            except LookupError as exc:
                fail(f"{exc}; list them with: pulse dlq list", EXIT_FAILED)
        if as_json:
            print_json({"deleted": deleted})
        else:
            console.print(f"deleted {deleted} dead letter(s)")
        return EXIT_OK

    raise typer.Exit(run_async(_run))


def register(app: typer.Typer) -> None:
    """Add the `dlq` command group to `app`."""
    app.add_typer(dlq_app, name="dlq")
