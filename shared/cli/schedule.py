"""`pulse schedule`: see and change job schedules at runtime, and manage delayed one-off runs.

    list            every job's schedule, its source, paused or not, next fire time
    set JOB         override the schedule (--every 30s | --cron "*/5 * * * *" | --spec "daily at 02:00")
    pause JOB       stop firing (the override keeps the schedule)
    resume JOB      fire again from the next slot (slots missed while paused never fire)
    reset JOB       back to the default schedule from settings, not paused
    pending         delayed one-off runs not yet fired
    cancel-pending  cancel one of those

Overrides live in the `schedules` KV bucket (JSON `ScheduleOverride` per job); the
running ticker watches the bucket and applies a change within milliseconds, no restart.
Every write is a compare-and-set, so two operators editing at once never lose a change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import nats.js.errors
import typer
from nats.js.kv import KeyValue

from shared.delayed import cancel_delayed, list_delayed
from shared.names import JOBS
from shared.schedules import EffectiveSchedule, ScheduleOverride, effective_schedule, parse_schedule
from shared.schemas import utcnow
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
    operator,
    print_json,
    run_async,
)

#: Compare-and-set attempts before giving up on a bucket that keeps changing under us.
_CAS_TRIES = 5

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
JobArg = Annotated[str, typer.Argument(help=f"The job: one of {', '.join(JOBS)}.", show_default=False)]

schedule_app = typer.Typer(
    name="schedule",
    help="See and change job schedules at runtime; list and cancel delayed one-off runs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


# -- the override document -----------------------------------------------------------


async def _read_override(kv: KeyValue, job: str) -> tuple[ScheduleOverride | None, int | None]:
    """The job's override and its revision (None, revision-of-tombstone-or-None when absent)."""
    try:
        entry = await kv.get(job)
    except nats.js.errors.KeyDeletedError as exc:
        # A delete leaves a tombstone; the next write must name its revision.
        entry = exc.entry
        return None, entry.revision if entry is not None else None
    except nats.js.errors.KeyNotFoundError:
        return None, None
    if not entry.value:
        return None, entry.revision
    try:
        return ScheduleOverride.from_bytes(entry.value), entry.revision
    except ValueError as exc:
        err_console.print(f"warning: the stored override of {job} is unreadable and is replaced ({exc})")
        return None, entry.revision


async def _write(kv: KeyValue, job: str, value: ScheduleOverride | None, last: int | None) -> bool:
    """Compare-and-set the job's override (None deletes it); False on a concurrent change."""
    try:
        if value is None:
            await kv.delete(job, last=last)
        elif last is None:
            await kv.create(job, value.to_bytes())
        else:
            await kv.update(job, value.to_bytes(), last=last)
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
        return False
    return True


#: Turns the stored override (None: absent) into the one to store (None: delete it).
Change = Callable[[ScheduleOverride | None], ScheduleOverride | None]


async def _change(settings: Settings, job: str, change: Change) -> tuple[ScheduleOverride | None, EffectiveSchedule]:
    """Apply `change` to the job's override with compare-and-set retries; return the result."""
    async with connect(settings, need_store=False) as conns:
        kv = await conns.js.key_value(settings.names.schedules_bucket)
        for _ in range(_CAS_TRIES):
            current, revision = await _read_override(kv, job)
            new = change(current)
            if new is None and current is None:
                break  # nothing stored, nothing to delete
            if await _write(kv, job, new, revision):
                break
        else:
            fail(f"the schedule of {job} kept changing under this command; try again", EXIT_FAILED)
    policy = settings.jobs.for_job(job)
    return new, effective_schedule(job, policy.schedule, enabled=policy.enabled, override=new)


def _report(eff: EffectiveSchedule, what: str) -> None:
    now = utcnow()
    nxt = eff.next_fire(now)
    state = "disabled in settings" if not eff.enabled else "paused" if eff.paused else "active"
    console.print(
        f"{eff.job}: {what}; schedule {eff.schedule.text!r} ({eff.source}), {state}"
        + (f", next at {_iso(nxt)}" if nxt else ""),
        highlight=False,
        markup=False,
    )
    if not eff.enabled:
        err_console.print(
            f"note: {eff.job} is disabled (PULSE_JOBS__{eff.job.upper()}__ENABLED=false); the ticker will not fire it"
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


# -- list ------------------------------------------------------------------------------


async def _list(settings: Settings) -> list[dict[str, Any]]:
    async with connect(settings, need_store=False) as conns:
        schedules = await conns.js.key_value(settings.names.schedules_bucket)
        ticker = await conns.js.key_value(settings.names.ticker_bucket)
        rows = []
        now = utcnow()
        for job in JOBS:
            override, _ = await _read_override(schedules, job)
            policy = settings.jobs.for_job(job)
            eff = effective_schedule(job, policy.schedule, enabled=policy.enabled, override=override)
            rows.append(
                {
                    "job": job,
                    "schedule": eff.schedule.text,
                    "kind": eff.schedule.kind,
                    "source": eff.source,
                    "default": policy.schedule,
                    "paused": eff.paused,
                    "enabled": eff.enabled,
                    "next_fire": _iso(eff.next_fire(now)),
                    "last_slot": await _last_slot(ticker, job),
                }
            )
    return rows


async def _last_slot(kv: KeyValue, job: str) -> str | None:
    try:
        entry = await kv.get(job)
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        slot = json.loads(entry.value or b"{}").get("slot")
    except ValueError:
        return None
    return str(slot).replace("+00:00", "Z") if slot else None


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

    table = Table("job", "schedule", "source", "state", "next fire (UTC)", "last slot fired")
    for row in rows:
        state = "disabled" if not row["enabled"] else "paused" if row["paused"] else "active"
        table.add_row(
            row["job"], row["schedule"], row["source"], state, row["next_fire"] or "-", row["last_slot"] or "-"
        )
    console.print(table)


# -- set / pause / resume / reset -------------------------------------------------------


def _spec_from_options(every: str | None, cron: str | None, spec: str | None) -> str:
    given = [text for text in (every, cron, spec) if text is not None]
    if len(given) != 1:
        fail("give exactly one of --every, --cron or --spec, e.g. --every 30s or --cron '*/5 * * * *'")
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
    cron: Annotated[str | None, typer.Option("--cron", help="5-field cron expression, in UTC.")] = None,
    spec: Annotated[
        str | None,
        typer.Option(
            "--spec",
            help="Any schedule form: 'hourly at :15', 'daily at 02:00', "
            "'weekly on mon at 09:30', 'monthly on 1 at 00:00'.",
        ),
    ] = None,
) -> None:
    """Override JOB's schedule at runtime (the ticker applies it within seconds, no restart).

    A paused job stays paused.

    Example: pulse schedule set whale_sync --every 30s

    Example: pulse schedule set stats --cron "*/15 * * * *"

    Example: pulse schedule set cleanup --spec "daily at 03:30"
    """
    settings = cli_settings()
    check_job(settings, job)
    text = _spec_from_options(every, cron, spec)
    who = operator()

    def change(current: ScheduleOverride | None) -> ScheduleOverride:
        base = current or ScheduleOverride()
        return base.model_copy(update={"schedule": text, "updated_at": utcnow(), "updated_by": who})

    _, eff = run_async(lambda: _change(settings, job, change))
    _report(eff, "schedule set")


@schedule_app.command("pause")
def pause(job: JobArg) -> None:
    """Stop the ticker from requesting JOB until `pulse schedule resume JOB`.

    Manual and delayed runs still work.

    Example: pulse schedule pause market_sync
    """
    settings = cli_settings()
    check_job(settings, job)
    who = operator()

    def change(current: ScheduleOverride | None) -> ScheduleOverride:
        base = current or ScheduleOverride()
        return base.model_copy(update={"paused": True, "updated_at": utcnow(), "updated_by": who})

    _, eff = run_async(lambda: _change(settings, job, change))
    _report(eff, "paused")


@schedule_app.command("resume")
def resume(job: JobArg) -> None:
    """Let the ticker request JOB again, from its next slot; slots missed while paused do not fire.

    Example: pulse schedule resume market_sync
    """
    settings = cli_settings()
    check_job(settings, job)
    who = operator()

    def change(current: ScheduleOverride | None) -> ScheduleOverride | None:
        if current is None or not current.paused:
            return current  # not paused: nothing to change
        now = utcnow()
        return current.model_copy(update={"paused": False, "resumed_at": now, "updated_at": now, "updated_by": who})

    _, eff = run_async(lambda: _change(settings, job, change))
    _report(eff, "resumed")


@schedule_app.command("reset")
def reset(job: JobArg) -> None:
    """Drop JOB's runtime override: back to the default schedule from settings, not paused.

    Like resume, slots missed while it was paused do not fire.

    Example: pulse schedule reset whale_sync
    """
    settings = cli_settings()
    check_job(settings, job)
    who = operator()

    def change(current: ScheduleOverride | None) -> ScheduleOverride | None:
        if current is None:
            return None
        if current.paused:
            # Keep a fence so that un-pausing through reset does not fire the skipped slots.
            now = utcnow()
            return ScheduleOverride(resumed_at=now, updated_at=now, updated_by=who)
        return None

    _, eff = run_async(lambda: _change(settings, job, change))
    _report(eff, "reset to the default")


# -- delayed one-off runs ----------------------------------------------------------------


async def _pending(settings: Settings, job: str | None) -> list[dict[str, Any]]:
    async with connect(settings, need_store=False) as conns:
        entries = await list_delayed(conns.js, settings.names, job)
    return [
        {
            "run_id": request.run_id,
            "job": request.job,
            "at": _iso(at),
            "requested_by": request.requested_by,
            "requested_at": _iso(request.requested_at),
            "args": request.args,
        }
        for request, at in entries
    ]


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


async def _cancel(settings: Settings, run_id: str) -> bool:
    async with connect(settings, need_store=False) as conns:
        return await cancel_delayed(conns.js, settings.names, run_id)


@schedule_app.command("cancel-pending")
def cancel_pending(
    run_id: Annotated[str, typer.Argument(help="The delayed run, as shown by `pulse schedule pending`.")],
) -> None:
    """Cancel a delayed one-off run before it fires (exit 1 if it is not pending).

    Example: pulse schedule cancel-pending stats:delayed:3f2a9c0d
    """
    settings = cli_settings()
    if run_async(lambda: _cancel(settings, run_id)):
        console.print(f"{run_id}: canceled; it will not fire", highlight=False, markup=False)
        raise typer.Exit(EXIT_OK)
    fail(f"{run_id} is not pending (already fired, canceled, or unknown); see: pulse schedule pending", EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add `pulse schedule ...` to `app`."""
    app.add_typer(schedule_app, name="schedule")
