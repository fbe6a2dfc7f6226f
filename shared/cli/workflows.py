"""Workflows in the CLI: `pulse signal`, and the step timeline `pulse run` shows.

The timeline comes from the journal's read model (`shared.runtime.read_steps`); the
signal goes through `shared.runtime.deliver_signal`, the same function a worker
runs for a signal published on NATS, so both paths behave alike (and the CLI needs no
worker running).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from shared.errors import SignalRejected
from shared.names import check_job_name
from shared.runtime import deliver_signal
from shared.schemas import StepRecord

from .common import EXIT_FAILED, EXIT_OK, cli_settings, connect, console, fail, print_json, run_async
from .trail import ActorOpt, acting_as, audited

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


# -- the step timeline (pulse run) ----------------------------------------------------


def steps_table(steps: list[StepRecord]) -> Table:
    """A workflow run's steps, in the order it asked for them."""
    table = Table(title="steps", title_justify="left", header_style="bold")
    for column in ("#", "step", "status", "tries", "duration", "result", "wakes / error"):
        table.add_column(column, overflow="fold")
    for step in steps:
        duration = f"{step.duration_ms / 1000:.2f}s" if step.duration_ms is not None else "…"
        note = step.error or ""
        if step.status.value in ("sleeping", "waiting") and step.wake_at is not None:
            note = f"until {step.wake_at.isoformat().replace('+00:00', 'Z')}"
        elif step.timed_out:
            note = "timed out (no signal)"
        table.add_row(
            str(step.index + 1),
            step.name,
            step.status.value,
            str(step.tries),
            duration,
            f"{step.result_bytes} B",
            note,
        )
    return table


def steps_json(steps: list[StepRecord]) -> list[dict[str, Any]]:
    """`--json` form of the step timeline (results left out: sizes only)."""
    return [
        {
            **json.loads(step.model_dump_json(by_alias=False, exclude={"id", "run_id", "result_json"})),
            "duration_ms": step.duration_ms,
        }
        for step in steps
    ]


# -- pulse signal ---------------------------------------------------------------------


def signal(
    run_id: Annotated[str, typer.Argument(help="The waiting run.", show_default=False)],
    name: Annotated[str, typer.Argument(help="The signal: the name of the step that waits.", show_default=False)],
    payload: Annotated[str | None, typer.Argument(help="JSON the step returns (default null).")] = None,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Signal a waiting workflow run; it resumes with the JSON payload.

    Example: pulse signal market_refresh:manual:5d1c... approval '{"ok": true}'
    """
    settings = cli_settings()
    who = acting_as(actor)
    try:  # any job may be a workflow: the run's record decides, checked by deliver_signal
        check_job_name(run_id.split(":", 1)[0])
    except ValueError as exc:
        fail(f"{run_id!r} is not a run id ({exc}); copy it from: pulse runs --status waiting")
    try:
        value = json.loads(payload) if payload is not None else None
    except json.JSONDecodeError as exc:
        fail(f"the payload is not JSON ({exc.msg} at character {exc.pos}); quote it, e.g. '{{\"ok\": true}}'")

    async def _run() -> int:
        async with connect(settings) as conns:
            try:
                async with audited(
                    settings, conns.db, who, "signal", run_id, {"name": name, "payload": payload}
                ) as note:
                    await deliver_signal(conns.db, conns.js, settings.names, run_id, name, value,
                                         max_bytes=settings.step_results_max_bytes)  # fmt: skip
                    note.detail = f"{run_id}: signal {name} delivered; the run resumes"
            except SignalRejected as exc:
                fail(str(exc), EXIT_FAILED)
        if as_json:
            print_json({"run_id": run_id, "signal": name, "delivered": True})
        else:
            console.print(f"{run_id}: signal {name} delivered; the run resumes", highlight=False)
        return EXIT_OK

    raise typer.Exit(run_async(_run))


def register(app: typer.Typer) -> None:
    """Add signal to `app`."""
    app.command()(signal)
