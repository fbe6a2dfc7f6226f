"""`pulse schedule`: see and change job schedules at runtime, and manage delayed one-off runs.

    list            every job's schedule, its source, paused or not, next fire time
    set JOB         override the schedule (--every 30s | --cron "*/5 * * * *" | --spec "daily at 02:00")
                    and/or the catch-up policy (--catch-up skip|latest|all);
                    fires nothing by itself (--now also starts one run)
    pause JOB       stop firing (the override keeps the schedule)
    resume JOB      fire again from the next slot (slots missed while paused never fire)
    reset JOB       back to the default schedule and catch-up policy from settings, not paused
    pending         delayed one-off runs not yet fired
    cancel-pending  cancel one of those

Overrides live in the `schedules` KV bucket (JSON `ScheduleOverride` per job); the
running ticker watches the bucket and applies a change within milliseconds, no restart.
Every write is a compare-and-set, so two operators editing at once never lose a change.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shared.delayed import cancel_delayed
from shared.names import JOBS
from shared.readmodel.schedules import (
    Change,
    ConcurrentChange,
    change_override,
    iso_seconds,
    list_schedules,
    pending_runs,
    set_catch_up,
    set_schedule,
)
from shared.readmodel.schedules import pause as pause_change
from shared.readmodel.schedules import reset as reset_change
from shared.readmodel.schedules import resume as resume_change
from shared.requests import publish_request
from shared.schedules import EffectiveSchedule, ScheduleOverride, parse_schedule
from shared.schemas import CATCH_UP_POLICIES, CatchUp, JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    check_job,
    cli_settings,
    connect,
    console,
    err_console,
    fail,
    print_json,
    run_async,
)
from .trail import ActorOpt, acting_as, audited

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
JobArg = Annotated[str, typer.Argument(help=f"The job: one of {', '.join(JOBS)}.", show_default=False)]

schedule_app = typer.Typer(
    name="schedule",
    help="See and change job schedules at runtime; list and cancel delayed one-off runs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


# -- the override document -----------------------------------------------------------


async def _change(
    settings: Settings, job: str, change: Change, *, who: str, action: str, params: dict[str, Any] | None = None
) -> tuple[ScheduleOverride | None, EffectiveSchedule]:
    """Apply `change` to the job's override (compare-and-set), audited; exit 1 if it kept changing."""

    def warn(problem: str) -> None:
        err_console.print(f"warning: the stored override of {job} is unreadable and is replaced ({problem})")

    async with connect(settings, need_store=False) as conns:
        try:
            async with audited(settings, None, who, action, job, params) as note:
                override, eff = await change_override(conns.js, settings, job, change, on_unreadable=warn)
                state = "paused" if eff.paused else "active"
                note.detail = f"{job}: schedule {eff.schedule.text!r} ({eff.source}), {state}"
                return override, eff
        except ConcurrentChange as exc:
            fail(str(exc), EXIT_FAILED)


def _report(eff: EffectiveSchedule, what: str) -> None:
    now = utcnow()
    nxt = eff.next_fire(now)
    state = "disabled in settings" if not eff.enabled else "paused" if eff.paused else "active"
    console.print(
        f"{eff.job}: {what}; schedule {eff.schedule.text!r} ({eff.source}), {state}, catch-up {eff.catch_up}"
        + (f", next at {iso_seconds(nxt)}" if nxt else ""),
        highlight=False,
        markup=False,
    )
    if not eff.enabled:
        err_console.print(
            f"note: {eff.job} is disabled (PULSE_JOBS__{eff.job.upper()}__ENABLED=false); the ticker will not fire it"
        )


# -- list ------------------------------------------------------------------------------


async def _list(settings: Settings) -> list[dict[str, Any]]:
    def warn(job: str, problem: str) -> None:
        err_console.print(f"warning: the stored override of {job} is unreadable and is replaced ({problem})")

    async with connect(settings, need_store=False) as conns:
        return await list_schedules(conns.js, settings, on_unreadable=warn)


@schedule_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Show every job's schedule, where it comes from, paused or not, and when it fires next.

    Example: pulse schedule list --json
    """
    settings = cli_settings()
    rows = run_async(lambda: _list(settings))
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("job", "schedule", "source", "state", "catch-up", "next fire (UTC)", "last slot fired")
    for row in rows:
        state = "disabled" if not row["enabled"] else "paused" if row["paused"] else "active"
        table.add_row(
            row["job"],
            row["schedule"],
            row["schedule_source"],
            state,
            row["catch_up"],
            row["next_fire"] or "-",
            row["last_slot"] or "-",
        )
    console.print(table)


# -- set / pause / resume / reset -------------------------------------------------------


def _spec_from_options(every: str | None, cron: str | None, spec: str | None, catch_up: str | None) -> str | None:
    """The schedule text the options give (None: only --catch-up was given); exit 2 on a bad combination."""
    given = [text for text in (every, cron, spec) if text is not None]
    if len(given) > 1 or (not given and catch_up is None):
        fail(
            "give exactly one of --every, --cron or --spec (with or without --catch-up), or --catch-up alone, "
            "e.g. --every 30s, --cron '*/5 * * * *' or --catch-up skip"
        )
    if not given:
        return None
    if every is not None:
        text = f"every {every.strip()}"
    elif cron is not None:
        text = f"cron {cron.strip()}"
    else:
        text = (spec or "").strip()
    try:
        parse_schedule(text)
    except ValueError as exc:
        fail(str(exc))
    return text


@schedule_app.command("set")
def set_(
    job: JobArg,
    every: Annotated[str | None, typer.Option("--every", help="Fixed interval: 30s, 5m, 2h, 1d.")] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help="5-field cron expression, then an optional IANA zone (UTC by default).")
    ] = None,
    spec: Annotated[
        str | None,
        typer.Option(
            "--spec",
            help="Any schedule form: 'hourly at :15', 'daily at 02:00', "
            "'weekly on mon at 09:30', 'monthly on 1 at 00:00'; all but intervals take an "
            "IANA zone at the end ('daily at 02:00 Europe/Berlin'), UTC by default.",
        ),
    ] = None,
    catch_up: Annotated[
        str | None,
        typer.Option(
            "--catch-up",
            help="What happens to slots missed while no ticker ran: skip (record them missed), "
            "latest (fire the newest one; the default) or all (fire each, oldest first, up to "
            "PULSE_CATCH_UP_MAX_SLOTS).",
            show_default=False,
        ),
    ] = None,
    now: Annotated[bool, typer.Option("--now", help="Also start one run now (a manual run).")] = False,
    actor: ActorOpt = None,
) -> None:
    """Override JOB's schedule at runtime (the ticker applies it within seconds, no restart).

    The change fires nothing by itself: the job next runs at the new schedule's next slot
    (add --now to also start one run at once). A paused job stays paused.

    Example: pulse schedule set whale_sync --every 30s

    Example: pulse schedule set stats --cron "*/15 * * * *"

    Example: pulse schedule set cleanup --spec "daily at 03:30"

    Example: pulse schedule set stats --spec "daily at 02:00 Europe/Berlin"

    Example: pulse schedule set market_sync --catch-up all

    Cron and calendar schedules read the zone's wall clock: a time skipped by a
    daylight-saving change runs once at the first valid time after it, a repeated
    time runs once (its first occurrence). Slots and run ids stay in UTC.
    """
    settings = cli_settings()
    check_job(settings, job)
    policy = _catch_up_option(catch_up)
    text = _spec_from_options(every, cron, spec, catch_up)
    who = acting_as(actor)
    changes = [change for change in (_schedule_change(text, who), _catch_up_change(policy, who)) if change]
    params = {key: value for key, value in (("schedule", text), ("catch_up", policy)) if value is not None}
    _, eff = run_async(lambda: _change(settings, job, _chain(changes), who=who, action="schedule_set", params=params))
    _report(eff, "schedule set" if text is not None else "catch-up policy set")
    if policy == "all" and settings.jobs.for_job(job).overlap == "skip":
        err_console.print(
            f"note: {job} has overlap=skip, so the runtime records every catch-up request but the newest "
            f"skipped (overlap); set PULSE_JOBS__{job.upper()}__OVERLAP=queue for catch-up all to run them"
        )
    if now:
        run_id = run_async(lambda: _start_now(settings, job, who))
        console.print(f"{job}: started now as {run_id}", highlight=False, markup=False)


def _catch_up_option(value: str | None) -> CatchUp | None:
    """The --catch-up value, or exit 2 with one line naming the accepted ones."""
    if value is None:
        return None
    by_name: dict[str, CatchUp] = {known: known for known in CATCH_UP_POLICIES}
    policy = by_name.get(value.strip().lower())
    if policy is None:
        fail(f"--catch-up must be one of {', '.join(CATCH_UP_POLICIES)}, got {value!r}")
    return policy


def _schedule_change(text: str | None, who: str) -> Change | None:
    return set_schedule(text, who) if text is not None else None


def _catch_up_change(policy: CatchUp | None, who: str) -> Change | None:
    return set_catch_up(policy, who) if policy is not None else None


def _chain(changes: list[Change]) -> Change:
    """One compare-and-set change applying `changes` in order."""

    def change(current: ScheduleOverride | None) -> ScheduleOverride | None:
        for step in changes:
            current = step(current)
        return current

    return change


async def _start_now(settings: Settings, job: str, who: str) -> str:
    """Publish one manual request of `job` (for `schedule set --now`); return its run id."""
    request = JobRequest(
        run_id=new_run_id(job, Trigger.MANUAL),
        job=job,
        trigger=Trigger.MANUAL,
        scheduled_for=utcnow(),
        requested_by=who,
    )
    async with (
        connect(settings, need_store=False) as conns,
        audited(settings, None, who, "trigger", job, {"from": "schedule set --now"}) as note,
    ):
        await publish_request(conns.js, settings.names, request)
        note.detail = f"started as {request.run_id}"
    return request.run_id


@schedule_app.command("pause")
def pause(job: JobArg, actor: ActorOpt = None) -> None:
    """Stop the ticker from requesting JOB until `pulse schedule resume JOB`.

    Manual and delayed runs still work.

    Example: pulse schedule pause market_sync
    """
    settings = cli_settings()
    check_job(settings, job)
    who = acting_as(actor)
    _, eff = run_async(lambda: _change(settings, job, pause_change(who), who=who, action="schedule_pause"))
    _report(eff, "paused")


@schedule_app.command("resume")
def resume(job: JobArg, actor: ActorOpt = None) -> None:
    """Let the ticker request JOB again, from its next slot; slots missed while paused do not fire.

    Example: pulse schedule resume market_sync
    """
    settings = cli_settings()
    check_job(settings, job)
    who = acting_as(actor)
    _, eff = run_async(lambda: _change(settings, job, resume_change(who), who=who, action="schedule_resume"))
    _report(eff, "resumed")


@schedule_app.command("reset")
def reset(job: JobArg, actor: ActorOpt = None) -> None:
    """Drop JOB's runtime override: back to the default schedule and catch-up policy from settings, not paused.

    Like resume, slots missed while it was paused do not fire.

    Example: pulse schedule reset whale_sync
    """
    settings = cli_settings()
    check_job(settings, job)
    who = acting_as(actor)
    _, eff = run_async(lambda: _change(settings, job, reset_change(who), who=who, action="schedule_reset"))
    _report(eff, "reset to the default")


# -- delayed one-off runs ----------------------------------------------------------------


async def _pending(settings: Settings, job: str | None) -> list[dict[str, Any]]:
    async with connect(settings, need_store=False) as conns:
        return await pending_runs(conns.js, settings, job)


@schedule_app.command("pending")
def pending(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's delayed runs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List delayed one-off runs (`pulse trigger JOB --in/--at`) that have not fired yet.

    Example: pulse schedule pending --job stats --json
    """
    settings = cli_settings()
    if job is not None:
        check_job(settings, job)
    rows = run_async(lambda: _pending(settings, job))
    if as_json:
        print_json(rows)
        return
    if not rows:
        err_console.print("no delayed runs pending")
        return
    from rich.table import Table

    table = Table("job", "fires at (UTC)", "requested by")
    # The run id is what cancel-pending needs: never wrap or cut it.
    table.add_column("run_id", no_wrap=True, min_width=max(len(row["run_id"]) for row in rows))
    for row in rows:
        table.add_row(row["job"], row["at"], row["requested_by"], row["run_id"])
    console.print(table)


async def _cancel(settings: Settings, run_id: str, who: str) -> bool:
    async with (
        connect(settings, need_store=False) as conns,
        audited(settings, None, who, "cancel_pending", run_id) as note,
    ):
        canceled = await cancel_delayed(conns.js, settings.names, run_id)
        note.detail = "canceled before it fired" if canceled else "not pending: nothing canceled"
        return canceled


@schedule_app.command("cancel-pending")
def cancel_pending(
    run_id: Annotated[str, typer.Argument(help="The delayed run, as shown by `pulse schedule pending`.")],
    actor: ActorOpt = None,
) -> None:
    """Cancel a delayed one-off run before it fires (exit 1 if it is not pending).

    Example: pulse schedule cancel-pending stats:delayed:3f2a9c0d
    """
    settings = cli_settings()
    who = acting_as(actor)
    if run_async(lambda: _cancel(settings, run_id, who)):
        console.print(f"{run_id}: canceled; it will not fire", highlight=False, markup=False)
        raise typer.Exit(EXIT_OK)
    fail(f"{run_id} is not pending (already fired, canceled, or unknown); see: pulse schedule pending", EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add `pulse schedule ...` to `app`."""
    app.add_typer(schedule_app, name="schedule")
