"""`pulse backfill JOB --from T1 --to T2 [--dry-run] [--json]`: request a past window's slots, each once.

The rules (slot run ids, what is not requested again, pacing by the job's bucket) are in
`shared/backfill.py`; this module parses, prints and exits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from shared.backfill import BackfillPlan, SlotEntry, plan_backfill, run_backfill
from shared.names import JOBS
from shared.readmodel.timetext import human_seconds, iso
from shared.schemas import utcnow
from shared.settings import Settings

from .common import check_job, cli_settings, connect, console, err_console, parse_since, print_json, run_async
from .trail import ActorOpt, acting_as

_SAYS = {
    "ran": "already ran ({status}): not requested again",
    "queued": "already queued: not requested again",
    "to_request": "would be requested",
    "requested": "requested",
    "duplicate": "already queued (JetStream dropped the repeat)",
}


def _slot_line(entry: SlotEntry) -> str:
    return f"  {iso(entry.slot)}  {entry.run_id}  {_SAYS[entry.state].format(status=entry.status)}"


def _summary(plan: BackfillPlan) -> str:
    pacing = plan.pacing
    head = (
        f"{len(plan.slots)} slots, {plan.already} already ran or queued, "
        f"{plan.to_request} {'to request' if plan.dry_run else 'requested'}"
    )
    if plan.limit is None or plan.calls_per_run == 0:
        return head + "; no rate limit bucket paces them"
    cost = (
        f"; about {plan.calls} provider calls ({plan.calls_per_run} per run) against bucket {plan.bucket} "
        f"({plan.limit.rate:g} per {plan.limit.period_s:g}s, burst {plan.limit.burst})"
    )
    pace = f"; paced {pacing.at_once} at once, then one every {pacing.interval_s:.2f}s"
    took = f" ({human_seconds(pacing.duration_s(plan.to_request))} in all)"
    return head + cost + pace + took


async def _backfill(
    settings: Settings, job: str, start: datetime, end: datetime, dry_run: bool, who: str
) -> BackfillPlan:
    async with connect(settings) as conns:
        plan = await plan_backfill(conns.js, conns.db, settings, job, start, end, utcnow())
        if dry_run:
            return plan

        def progress(entry: SlotEntry) -> None:
            # A paced backfill can take minutes: show each slot as it goes, on a terminal only.
            if err_console.is_terminal:
                err_console.print(_slot_line(entry), highlight=False, markup=False)

        return await run_backfill(conns.js, conns.db, settings, plan, requested_by=who, on_slot=progress)


def backfill(
    job: Annotated[str, typer.Argument(help=f"The job: one of {', '.join(JOBS)}.", show_default=False)],
    start: Annotated[
        str, typer.Option("--from", help="Window start: an ISO-8601 UTC time, or a duration back from now (24h).")
    ],
    end: Annotated[
        str | None, typer.Option("--to", help="Window end, excluded (default: now); same forms as --from.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the slots, how many already ran, and the cost; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    actor: ActorOpt = None,
) -> None:
    """Request each slot of JOB's schedule in [--from, --to) once, under the slot's run id.

    Slots that already have a run record (any state) or a queued request are not
    requested again, so a repeated backfill requests nothing. Requests are paced by the
    job's rate limit bucket (PULSE_JOBS__<JOB>__RATE_LIMIT_BUCKET, CALLS_PER_RUN tokens
    per run). At most 1500 slots, all in the past and within the run retention
    (PULSE_RUNS_RETENTION_DAYS). Recorded in the audit trail.

    Example: pulse backfill whale_sync --from 2026-12-01T08:00:00Z --to 2026-12-01T09:00:00Z --dry-run

    Example: pulse backfill market_sync --from 6h --json
    """
    settings = cli_settings()
    check_job(settings, job)
    window_start = parse_since(start, option="--from")
    window_end = parse_since(end, option="--to") if end is not None else utcnow()
    who = acting_as(actor)
    plan = run_async(lambda: _backfill(settings, job, window_start, window_end, dry_run, who))
    if as_json:
        print_json(plan.as_json())
        return
    console.print(
        f"{job}: backfill [{iso(plan.start)}, {iso(plan.end)}) of schedule {plan.schedule!r}"
        + (" (dry run: nothing is requested)" if plan.dry_run else ""),
        highlight=False,
        markup=False,
    )
    if plan.dry_run or not err_console.is_terminal:  # else each slot was shown as it went
        for entry in plan.slots:
            console.print(_slot_line(entry), highlight=False, markup=False)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(_summary(plan), highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add `pulse backfill` to `app`."""
    app.command("backfill")(backfill)
