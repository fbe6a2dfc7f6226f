"""`pulse why JOB [--json]`: what keeps a job from running now, each blocker with what to do.

The facts and the decision are `shared/readmodel/why.py` (the dashboard reads the same).
Exit 0 whatever the answer: a blocked job is an answer, not an error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shared.names import JOBS
from shared.readmodel.why import Sources, Why, explain
from shared.schemas import utcnow
from shared.settings import Settings

from .common import check_job, cli_settings, connect, console, print_json, run_async


async def _why(settings: Settings, job: str) -> Why:
    async with connect(settings) as conns:
        return await explain(Sources(conns.js, conns.db, settings), job, utcnow())


def why(
    job: Annotated[str, typer.Argument(help=f"The job: one of {', '.join(JOBS)}.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON on stdout.")] = False,
) -> None:
    """Say what keeps JOB from running now, each blocker with what to do.

    Blockers: disabled, paused, ticker_stalled, overlap, no_worker, pending_redelivery,
    dead_lettered, rate_limited; with none, not_due (its next slot) or nothing.

    Example: pulse why market_sync

    Example: pulse why whale_sync --json
    """
    settings = cli_settings()
    check_job(settings, job)
    answer = run_async(lambda: _why(settings, job))
    if as_json:
        print_json(answer.as_json())
        return
    blockers = [b for b in answer.blockers if b.kind != "not_due"]
    if not blockers:
        console.print(f"{job}: nothing blocks it ({answer.doing})", highlight=False, markup=False)
    else:
        console.print(f"{job}: blocked ({answer.doing})", highlight=False, markup=False)
    for blocker in answer.blockers:
        console.print(f"  {blocker.kind}: {blocker.detail}", highlight=False, markup=False)
        console.print(f"    do: {blocker.action}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add `pulse why` to `app`."""
    app.command("why")(why)
