"""`pulse slots [JOB] --last 24h`: every slot of a job's schedule and what became of it.

One strip per job (one mark per slot, oldest first, rows of `ROW` marks each headed by
the time of its first slot), then the gaps: consecutive slots that got no run, with the
reason. The facts come from the shared read model (`shared/readmodel/slots.py`: the slot
ledger joined with the run records), as the dashboard will show them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from shared.names import JOBS
from shared.overrides import current_schedule
from shared.readmodel.slots import LEGEND, JobSlots, as_json, read_job_slots
from shared.readmodel.timetext import iso
from shared.schemas import utcnow
from shared.settings import Settings

from .common import check_job, cli_settings, connect, console, fail, parse_duration, print_json, run_async

#: Marks per row of a strip (an hour of a per-minute schedule).
ROW = 60


async def _read(settings: Settings, jobs: list[str], window: timedelta) -> list[JobSlots]:
    now = utcnow()
    since = now - window
    async with connect(settings) as conns:
        views = []
        for job in jobs:
            eff = await current_schedule(conns.js, settings.names, job, settings.jobs.for_job(job))
            views.append(await read_job_slots(conns.db, eff, since=since, until=now, now=now))
        return views


def _print(view: JobSlots) -> None:
    state = "disabled" if not view.enabled else "paused" if view.paused else "active"
    counts = ", ".join(f"{n} {name}" for name, n in sorted(view.counts.items(), key=lambda item: -item[1]))
    console.print(
        f"{view.job}  {view.schedule!r}  {state}  catch-up {view.catch_up}  "
        f"({len(view.slots)} slots{': ' + counts if counts else ''}"
        f"{'; only the newest shown' if view.truncated else ''})",
        highlight=False,
        markup=False,
    )
    for start in range(0, len(view.slots), ROW):
        row = view.slots[start : start + ROW]
        console.print(f"  {iso(row[0].slot)}  {view.strip[start : start + ROW]}", highlight=False, markup=False)
    gaps = view.gaps
    if gaps:
        console.print("  gaps:", highlight=False, markup=False)
    for gap in gaps:
        span = iso(gap.first) if gap.count == 1 else f"{iso(gap.first)} .. {iso(gap.last)}"
        console.print(
            f"    {span}  {gap.count} slot{'s' if gap.count != 1 else ''}: {gap.because}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def slots(
    job: Annotated[
        str | None, typer.Argument(help=f"The job: one of {', '.join(JOBS)} (all jobs when left out).")
    ] = None,
    last: Annotated[str, typer.Option("--last", help="How far back: 90m, 24h, 2d.")] = "24h",
    as_json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Show each slot of a job's schedule as one mark (completed, failed, skipped, missed, ...) and list the gaps.

    A missed slot never got a request: no ticker ran at its time and the job's catch-up
    policy did not fire it later, the job was paused, or it was beyond the catch-up
    bound. Slots come from the schedule in force now (none while the job is disabled).

    Example: pulse slots whale_sync --last 6h

    Example: pulse slots --json
    """
    settings = cli_settings()
    if job is not None:
        check_job(settings, job)
    window = parse_duration(last, option="--last")
    if window.total_seconds() <= 0:
        fail(f"--last must be a positive duration such as 24h, got {last!r}")
    jobs = [job] if job is not None else list(JOBS)
    views = run_async(lambda: _read(settings, jobs, window))
    if as_json_:
        print_json([as_json(view) for view in views])
        return
    for view in views:
        _print(view)
    console.print(f"legend: {LEGEND}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add `pulse slots` to `app`."""
    app.command("slots")(slots)
