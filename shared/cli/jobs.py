"""Starting and inspecting runs: `pulse trigger | status | watch | runs | run | cancel`.

The CLI reads `runs` through the shared read model (`shared.readmodel`) and never writes
it: trigger and cancel are `shared.operations`, whose cancel goes through
`shared.runtime.request_cancel`, the one writer of run records. The dashboard
calls the same functions.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from shared.names import JOBS
from shared.operations import RunAlreadyEnded, RunNotFound, build_request, cancel_run, trigger_run
from shared.readmodel.alerts import alert_backlog, backlog_line
from shared.readmodel.budgets import read_budgets
from shared.readmodel.runs import RunFilter, find_run, list_runs
from shared.readmodel.status import collect_status, queue_info, status_json
from shared.readmodel.timetext import human_seconds, iso, key_values
from shared.runtime import read_steps
from shared.schemas import RunRecord, RunStatus
from shared.settings import Settings

from .budgets import budgets_table
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Connections,
    check_job,
    check_seconds,
    cli_settings,
    connect,
    console,
    err_console,
    fail,
    parse_duration,
    parse_since,
    parse_time,
    print_json,
    run_async,
)
from .render import chains_table, live_status, run_detail, run_json, runs_table, status_table
from .trail import ActorOpt, acting_as, audited
from .workflows import steps_json, steps_table

_ARG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
#: How often `--wait` re-reads the run record: quick enough to feel live, cheap for the store.
_POLL_S = 0.25
#: On a non-terminal, an unchanged `--wait` progress line is printed again after this long.
_PROGRESS_REPEAT_S = 10.0

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


# -- input parsing -----------------------------------------------------------------------


def parse_args(pairs: list[str], *, option: str = "--arg", prefix: str = "") -> dict[str, Any]:
    """`KEY=VALUE` pairs into a dict; VALUE is JSON when it parses (numbers, true, lists), else text.

    `prefix` is a required start of each pair (`args.` for `dlq replay --set`), not part of the key.
    """
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.removeprefix(prefix).partition("=")
        if not pair.startswith(prefix) or not sep or not _ARG_KEY_RE.match(key):
            fail(f"{option} {pair!r}: expected {prefix}KEY=VALUE with KEY made of letters, digits, '_' or '-'")
        try:
            args[key] = json.loads(raw)
        except ValueError:
            args[key] = raw
    return args


# -- trigger -------------------------------------------------------------------------------


async def wait_for_run(conns: Connections, run_id: str, job: str, timeout_s: float | None) -> RunRecord | None:
    """Show the progress of `run_id` until it ends; None when `timeout_s` passed first.

    The deadline is around every wait (store reads, NATS queries, sleeps), not checked
    between polls: a server that stops answering cannot hold the command past `timeout_s`.
    """
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            with progress_display(run_id) as show:
                while True:
                    record = await find_run(conns.db, run_id)
                    if record is not None and record.status.is_terminal:
                        return record
                    show(time.monotonic() - started, await _progress_text(conns, run_id, job, record))
                    await asyncio.sleep(_POLL_S)
    except TimeoutError:
        return None


@contextmanager
def progress_display(run_id: str) -> Iterator[Callable[[float, str], None]]:
    """Where `--wait` shows progress: a spinner on a terminal, plain lines in a log or pipe.

    The yielded function takes the seconds waited so far and what the run is doing.
    """
    if err_console.is_terminal:
        with err_console.status(Text(f"{run_id}: queued")) as spinner:
            yield lambda elapsed_s, text: spinner.update(Text(f"{human_seconds(elapsed_s)}  {text}"))
        return
    yield _ProgressLines().show


class _ProgressLines:
    """Progress as lines for a non-terminal: one per change, and the same again now and then.

    A spinner redraws one line in place, which a log file or a CI job would keep as
    hundreds of lines; a line per change keeps the story, and an unchanged state is
    repeated every `_PROGRESS_REPEAT_S` so a long quiet stretch still shows the wait is alive.
    """

    def __init__(self) -> None:
        self._last_text: str | None = None
        self._last_at = 0.0

    def show(self, elapsed_s: float, text: str) -> None:
        now = time.monotonic()
        if text == self._last_text and now - self._last_at < _PROGRESS_REPEAT_S:
            return
        self._last_text, self._last_at = text, now
        err_console.print(f"{human_seconds(elapsed_s)}  {text}", highlight=False, markup=False, soft_wrap=True)


async def _progress_text(conns: Connections, run_id: str, job: str, record: RunRecord | None) -> str:
    if record is None:
        queue = await queue_info(conns.js, conns.settings, job)
        where = "no consumer yet: is the service running?" if queue is None else f"{queue.waiting} waiting"
        return f"{run_id}: queued ({where})"
    attempt = record.attempt_count or len(record.attempts)
    text = f"{run_id}: {record.status.value}, attempt {attempt}"
    if record.progress and record.status is RunStatus.RUNNING:
        text += f": {key_values(record.progress)}"
    if record.status is RunStatus.RETRYING and record.error:
        text += f" (last error: {record.error.splitlines()[0][:80]})"
    if record.status is RunStatus.DEFERRED and record.error:
        text += f" ({record.error})"  # the spent quota and its reset
    return text


def ended_text(record: RunRecord) -> str:
    """The last line of `--wait`: status, duration, attempts, and the summary as key=value."""
    attempts = record.attempt_count or len(record.attempts)
    how = f"after {attempts} attempt(s)" if attempts else "without running (the request was refused)"
    duration = record.duration_ms
    took = f" in {human_seconds(duration / 1000)}" if duration is not None else ""
    if record.interruptions:
        how += f" ({record.interruptions} more interrupted by the store or NATS, not counted)"
    summary = f": {key_values(record.summary)}" if record.summary else ""
    return f"{record.run_id} ended {record.status.value}{took} {how}{summary}"


def _trigger_note(run_id: str, at: datetime | None, duplicate: bool, existing: RunRecord | None) -> str:
    """The audit trail's line of a trigger."""
    if existing is not None:
        return f"same key as {run_id} ({existing.status.value}): not started again"
    if duplicate:
        return f"same key as the queued {run_id}: not started again"
    return f"will run at {iso(at)} as {run_id}" if at is not None else f"started as {run_id}"


async def _trigger(
    job: str,
    who: str,
    args: dict[str, Any],
    at: datetime | None,
    key: str | None,
    wait: bool,
    timeout_s: float | None,
    as_json: bool,
) -> int:
    settings = cli_settings()
    check_job(settings, job)
    request = build_request(job, args, at, key, who)
    run_id = request.run_id
    params = {"args": args, "at": iso(at), "key": key}
    # With --wait, --timeout bounds the whole command: connecting (each server's connect
    # timeout is cut to what is left, so the error names the one that did not answer),
    # starting the run, and every poll.
    limit_s = timeout_s if wait else None
    deadline = None if limit_s is None else asyncio.get_running_loop().time() + limit_s
    async with connect(settings, deadline=deadline) as conns:
        waiting = False
        try:
            async with asyncio.timeout_at(deadline):
                async with audited(settings, conns.db, who, "trigger", job, params) as note:
                    done = await trigger_run(conns.js, conns.db, settings.names, request, at=at, keyed=key is not None)
                    note.detail = _trigger_note(run_id, at, done.duplicate, done.existing)
                duplicate, existing = done.duplicate, done.existing
                _report_trigger(
                    run_id, job, at, duplicate, existing, json_out=as_json and not wait, quiet=as_json and wait
                )
                if not wait:
                    return EXIT_OK
                waiting = True
                record = existing if existing is not None and existing.status.is_terminal else None
                record = record or await wait_for_run(conns, run_id, job, None)
        except TimeoutError:
            if deadline is None or asyncio.get_running_loop().time() < deadline:
                raise  # a server's own timeout, not --timeout
            _timed_out(run_id, waiting, limit_s or 0.0)
    assert record is not None  # waited without a limit of its own: only a terminal record ends the wait
    if as_json:
        print_json(run_json(record))
    else:
        console.print(ended_text(record), highlight=False, markup=False, soft_wrap=True)
        if record.error:
            console.print(f"error: {record.error}", highlight=False, markup=False)
    return EXIT_OK if record.status is RunStatus.COMPLETED else EXIT_FAILED


def _timed_out(run_id: str, waiting: bool, limit_s: float) -> NoReturn:
    """The one line for a `--timeout` that passed: while waiting for the run, or still starting it."""
    if waiting:
        fail(
            f"{run_id} did not end within {limit_s:g}s (it goes on); follow it with: pulse logs {run_id} --follow",
            EXIT_FAILED,
        )
    fail(
        f"NATS or MongoDB did not answer within --timeout {limit_s:g}s while starting {run_id}; "
        f"see whether it started with: pulse run {run_id}"
    )


def _report_trigger(
    run_id: str,
    job: str,
    at: datetime | None,
    duplicate: bool,
    existing: RunRecord | None,
    *,
    json_out: bool,
    quiet: bool,
) -> None:
    """Say what trigger did; `quiet` keeps stdout for the final JSON of `--wait --json`."""
    if json_out:
        print_json(
            {
                "run_id": run_id,
                "job": job,
                "at": iso(at),
                "duplicate": duplicate,
                "status": existing.status.value if existing else None,
            }
        )
        return
    # The run id alone goes to stdout so scripts can capture it; the story goes to stderr.
    (err_console if quiet else console).print(run_id, highlight=False, markup=False)
    if existing is not None:
        err_console.print(f"same --key as an existing run: {run_id} is {existing.status.value}; not started again")
    elif duplicate:
        err_console.print("same --key as a request already queued; not started again")
    elif at is not None:
        err_console.print(f"{job} will run at {iso(at)} (cancel with: pulse cancel {run_id})")


def trigger(
    job: Annotated[str, typer.Argument(help=f"The job to run: one of {', '.join(JOBS)}.", show_default=False)],
    arg: Annotated[list[str] | None, typer.Option("--arg", "-a", help="KEY=VALUE argument (repeatable).")] = None,
    in_: Annotated[str | None, typer.Option("--in", help="Run once after this delay: 90s, 5m, 1h30m.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Run once at this time (ISO 8601 with timezone).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key: the same key twice gives one run.")] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Show elapsed time and the job's progress until the run ends (a spinner on a terminal, "
            "a line per change otherwise), then its duration and summary; exit 0 if completed.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="With --wait: give up after SECONDS, connecting and starting the run included."),
    ] = None,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Start a job now (or once later) and print its run_id.

    Example: pulse trigger market_sync --wait ;  pulse trigger stats --in 10m --key nightly-2026-01-01
    """
    if in_ is not None and at is not None:
        fail("give either --in or --at, not both")
    when = None
    if in_ is not None:
        when = datetime.now(UTC) + parse_duration(in_, option="--in")
    elif at is not None:
        when = parse_time(at, option="--at")
        if when <= datetime.now(UTC):
            fail(f"--at {at!r} is in the past; to run now, leave out --at")
    check_seconds(timeout, option="--timeout")
    args = parse_args(arg or [])
    who = acting_as(actor)
    try:
        code = run_async(lambda: _trigger(job, who, args, when, key, wait, timeout, as_json))
    except typer.Exit as exc:
        if wait and exc.exit_code == EXIT_INTERRUPTED:
            err_console.print("stopped waiting; the run itself goes on (see: pulse runs --job " + job + ")")
        raise
    raise typer.Exit(code)


# -- status / watch ---------------------------------------------------------------------------


def _jobs_option(settings_job: list[str] | None) -> tuple[str, ...]:
    if not settings_job:
        return JOBS
    for job in settings_job:
        if job not in JOBS:
            fail(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    return tuple(settings_job)


JobsOpt = Annotated[list[str] | None, typer.Option("--job", "-j", help="Only this job (repeatable).")]


def status(job: JobsOpt = None, as_json: JsonOpt = False) -> None:
    """Per job: schedule and next fire, paused, last run, freshness and its target, failures, queue;
    then each upstream quota's spend (as `pulse budgets`), when PULSE_QUOTAS sets any, the chains, and
    the alerts a webhook / Slack sink has not accepted yet.

    Example: pulse status ;  pulse status --job whale_sync --json
    """
    settings = cli_settings()
    jobs = _jobs_option(job)

    async def _run() -> None:
        async with connect(settings) as conns:
            rows = await collect_status(conns.js, conns.db, settings, jobs)
            budgets = await read_budgets(conns.db, settings)
            backlog = await alert_backlog(conns.js, settings.names)
        if as_json:
            print_json(status_json(rows))
            return
        console.print(status_table(rows))
        if budgets:
            console.print(budgets_table(budgets))
        chains = chains_table(rows)
        if chains is not None:
            console.print(chains)
        undelivered = backlog_line(backlog)
        if undelivered:
            console.print(undelivered, style="bold yellow", highlight=False, markup=False, soft_wrap=True)

    run_async(_run)


async def watch_status(
    settings: Settings, jobs: tuple[str, ...], *, once: bool, for_s: float | None, interval_s: float
) -> None:
    """Render the status view once, or live until `for_s` passes (or Ctrl-C)."""
    async with connect(settings) as conns:
        if once:
            console.print(status_table(await collect_status(conns.js, conns.db, settings, jobs)))
            return
        stop = asyncio.Event()
        if for_s is not None:
            asyncio.get_running_loop().call_later(for_s, stop.set)
        await live_status(
            conns.nats, conns.js, conns.db, settings, jobs, stop=stop, interval_s=interval_s, console=console
        )


def watch(
    job: JobsOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Render the view once and exit.")] = False,
    for_: Annotated[float | None, typer.Option("--for", help="Stop after SECONDS (default: until Ctrl-C).")] = None,
    interval: Annotated[float, typer.Option("--interval", help="Refresh at least every SECONDS.")] = 2.0,
) -> None:
    """The status view, live: refreshed on every run event, and every --interval seconds.

    Example: pulse watch ;  pulse watch --job market_sync --for 60
    """
    settings = cli_settings()
    jobs = _jobs_option(job)
    check_seconds(interval, option="--interval")
    check_seconds(for_, option="--for")
    try:
        run_async(lambda: watch_status(settings, jobs, once=once, for_s=for_, interval_s=interval))
    except typer.Exit as exc:
        if exc.exit_code != 130:  # Ctrl-C is how a watch normally ends
            raise


# -- runs / run -------------------------------------------------------------------------------


def runs(
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only runs of this job.")] = None,
    status_: Annotated[str | None, typer.Option("--status", "-s", help="Only runs with this status.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Started after: 2h, 1d or an ISO time.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many runs.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs, newest first.

    Example: pulse runs --job market_sync --status failed --since 1d
    """
    settings = cli_settings()
    if job is not None:
        check_job(settings, job)
    try:
        flt = RunFilter(job=job, status=status_, since=parse_since(since) if since is not None else None)
    except ValueError as exc:
        fail(str(exc))

    async def _run() -> None:
        async with connect(settings, setup=False) as conns:
            records = (await list_runs(conns.db, flt, limit)).records
        if as_json:
            print_json([run_json(r) for r in records])
        elif not records:
            err_console.print("no runs match")
        else:
            console.print(runs_table(records, cut=80 if console.is_terminal else None))

    run_async(_run)


def run(
    run_id: Annotated[str, typer.Argument(help="The run's id, as printed by trigger or runs.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """One run: status, attempt history with errors and timings, summary; a workflow's step timeline.

    Example: pulse run market_sync:manual:3f2a9c...
    """
    settings = cli_settings()

    async def _run() -> int:
        async with connect(settings, setup=False) as conns:
            record = await find_run(conns.db, run_id)
            steps = await read_steps(conns.db, run_id)
        if record is None:
            fail(
                f"no run {run_id!r} is recorded (a queued run has no record until it starts); "
                "list runs with: pulse runs",
                EXIT_FAILED,
            )
        if as_json:
            print_json({**run_json(record), "steps": steps_json(steps)})
        else:
            console.print(run_detail(record))
            if steps:  # a workflow: its step timeline
                console.print(steps_table(steps))
        return EXIT_OK

    raise typer.Exit(run_async(_run))


# -- cancel -------------------------------------------------------------------------------------


def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel.", show_default=False)],
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Cancel a queued, delayed, retrying or running run; it ends `canceled` at its next check point.

    Example: pulse cancel whale_sync:manual:5d1c...
    """
    settings = cli_settings()
    job = run_id.split(":", 1)[0]
    check_job(settings, job)
    who = acting_as(actor)

    async def _run() -> int:
        async with connect(settings) as conns:
            try:
                async with audited(settings, conns.db, who, "cancel", run_id) as note:
                    done = await cancel_run(conns.nats, conns.js, conns.db, settings.names, run_id, by=who)
                    note.detail = f"{run_id}: {done.status}" + (" (delayed request removed)" if done.delayed else "")
            except RunAlreadyEnded as exc:
                fail(str(exc), EXIT_FAILED)
            except RunNotFound as exc:
                fail(f"{exc}; list runs with: pulse runs", EXIT_FAILED)
        _report_cancel(run_id, done.status, delayed=done.delayed, as_json=as_json)
        return EXIT_OK

    raise typer.Exit(run_async(_run))


def _report_cancel(run_id: str, status: str, *, delayed: bool, as_json: bool) -> None:
    if as_json:
        print_json({"run_id": run_id, "status": status, "delayed_request_removed": delayed, "cancel_requested": True})
    elif delayed:
        console.print(f"{run_id} canceled: the delayed request was removed before it fired", highlight=False)
    elif status == RunStatus.CANCELED.value:
        console.print(f"{run_id} canceled", highlight=False)
    else:
        console.print(
            f"{run_id} is {status}: cancel requested, it stops at its next check point "
            f"(follow with: pulse run {run_id})",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add trigger, status, watch, runs, run and cancel to `app`."""
    app.command()(trigger)
    app.command()(status)
    app.command()(watch)
    app.command()(runs)
    app.command()(run)
    app.command()(cancel)
