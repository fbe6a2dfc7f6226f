"""`pulse up`: the whole system on this machine, with a live status view.

Order of start: servers (nats-server + the embedded store, unless PULSE_NATS_URL / PULSE_MONGO_URL
name running ones), the provider simulator, then the ticker, every service and the
operators' dashboard, each a child process with its own HTTP port and log file under the
data folder. `pulse up` waits until every child answers `/readyz`, prints the dashboard's
URL, then shows the status view.

Order of stop (Ctrl-C, SIGTERM, or the end of `--for`): services first (so none sees
its servers vanish mid-run), then the simulator, then the servers. Each child gets
SIGTERM, then SIGKILL after a grace period; children also get the parent-death signal,
so even a `kill -9` of `pulse up` leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import SecretStr
from rich.table import Table

from shared.localstack import FERRETDB_WRITE_BATCH, LocalServers, free_port, local_store_kind, start_local_servers
from shared.names import JOBS, SERVICES
from shared.settings import Settings

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    check_seconds,
    cli_settings,
    connect,
    console,
    err_console,
    fail,
    print_json,
    run_async,
)
from .render import live_status
from .stack import is_live, live_stack, new_record, read_stack, remove_stack, write_stack

#: The child that serves the operators' dashboard.
DASHBOARD = "dashboard"
#: Seconds a child gets to stop after SIGTERM before it is killed.
_STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One process started by `pulse up`."""

    name: str
    args: list[str]
    ready_url: str
    port: int
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    death_reported: bool = False

    def start(self) -> None:
        with self.log.open("ab") as out:
            # Own session: a Ctrl-C in the terminal reaches `pulse up` only, which then
            # stops the children in order instead of all at once.
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Stack:
    """Everything `pulse up` runs; `stop()` is safe to call more than once."""

    servers: LocalServers | None
    children: list[Child] = field(default_factory=list)

    def stop(self) -> None:
        for child in reversed(self.children):  # services before the simulator
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.servers is not None:
            self.servers.stop()
            self.servers = None


def _base_env(settings: Settings, nats_url: str, mongo_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PULSE_NATS_URL": nats_url,
            "PULSE_MONGO_URL": mongo_url,
            "PULSE_NAMESPACE": settings.namespace,
            "PULSE_MONGO_DB": settings.mongo_db,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def plan_children(
    settings: Settings,
    nats_url: str,
    mongo_url: str,
    logs: Path,
    *,
    simulator: bool,
    services: tuple[str, ...] = SERVICES,
    dashboard_port: int | None = None,
) -> list[Child]:
    """The simulator (optional), the services and the dashboard (with a port), each on its own port."""
    base = _base_env(settings, nats_url, mongo_url)
    children: list[Child] = []
    if simulator:
        port = free_port()
        sim_url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "shared.cli.simulate", "--host", "127.0.0.1", "--port", str(port)]
        children.append(Child("simulator", command, f"{sim_url}/_sim/health", port, logs / "simulator.log", base))
        base = {**base, "PULSE_POLYMARKET_GAMMA_URL": sim_url, "PULSE_POLYMARKET_DATA_URL": sim_url}
    for service in services:
        port = free_port()
        env = {**base, "PULSE_HTTP_PORT": str(port), "PULSE_HTTP_HOST": "127.0.0.1"}
        children.append(
            Child(
                service,
                [sys.executable, "-m", f"services.{service}"],
                f"http://127.0.0.1:{port}/readyz",
                port,
                logs / f"{service}.log",
                env,
            )
        )
    if dashboard_port is not None:
        env = {**base, "PULSE_DASHBOARD_HOST": "127.0.0.1", "PULSE_DASHBOARD_PORT": str(dashboard_port)}
        children.append(
            Child(
                DASHBOARD,
                [sys.executable, "-m", "services.dashboard"],
                f"http://127.0.0.1:{dashboard_port}/readyz",
                dashboard_port,
                logs / "dashboard.log",
                env,
            )
        )
    return children


async def wait_ready(children: list[Child], timeout_s: float, stop: asyncio.Event) -> bool:
    """Wait until every child answers its ready URL with 200, or raise naming the laggard.

    Returns False when `stop` was set first (Ctrl-C during start-up).
    """
    deadline = time.monotonic() + timeout_s
    waiting = list(children)
    async with httpx.AsyncClient(timeout=1.0) as http:
        while waiting and not stop.is_set():
            for child in list(waiting):
                if child.exit_code is not None:
                    raise ChildFailed(child, f"{child.name} exited with code {child.exit_code} at start-up")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(child.ready_url)).status_code == 200:
                        waiting.remove(child)
                        err_console.print(
                            f"  [green]ready[/] {child.name} (port {child.port}, pid "
                            f"{child.process.pid if child.process else '-'})",
                            highlight=False,
                        )
            if waiting and time.monotonic() > deadline:
                raise ChildFailed(
                    waiting[0], f"{waiting[0].name} was not ready within {timeout_s:g}s ({waiting[0].ready_url})"
                )
            if waiting:
                await asyncio.sleep(0.2)
    return not waiting


class ChildFailed(Exception):
    """A child did not become ready; carries it so its log can be shown."""

    def __init__(self, child: Child, message: str) -> None:
        super().__init__(message)
        self.child = child


def processes_table(stack: Stack) -> Table:
    """Name, pid, port, state of every child: the header of the live view."""
    table = Table(title="processes", title_justify="left", header_style="bold")
    for column in ("process", "pid", "port", "state", "log"):
        table.add_column(column)
    if stack.servers is not None:
        for process, (name, port) in zip(stack.servers.processes, stack.servers.labels, strict=False):
            table.add_row(name, str(process.pid), str(port), _state(process.poll()), str(stack.servers.data_dir))
    for child in stack.children:
        table.add_row(
            child.name,
            str(child.process.pid) if child.process else "-",
            str(child.port),
            _state(child.exit_code),
            str(child.log),
        )
    return table


def _state(code: int | None) -> str:
    return "[green]running[/]" if code is None else f"[bold red]exited ({code})[/]"


def _install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not in the main thread (an in-process test runner): --for is the way out there.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, stop.set)


async def _run_up(
    stack: Stack, settings: Settings, for_s: float | None, show_status: bool, ready_timeout_s: float
) -> int:
    stop = asyncio.Event()
    _install_stop_handlers(stop)
    started = time.monotonic()
    for child in stack.children:
        child.start()
    try:
        if not await wait_ready(stack.children, ready_timeout_s, stop):
            return EXIT_OK
    except ChildFailed as exc:
        err_console.print(f"[bold red]error:[/] {exc}; its log ({exc.child.log}) ends:", highlight=False)
        err_console.print(exc.child.log_tail(), markup=False, highlight=False)
        return EXIT_FAILED
    err_console.print(
        f"marketpulse is up: {len(stack.children)} processes ready in "
        f"{time.monotonic() - started:.1f}s. Ctrl-C stops everything.",
        highlight=False,
    )
    for child in stack.children:
        if child.name == DASHBOARD:
            mode = "actions enabled" if settings.dashboard_token is not None else "read-only: set PULSE_DASHBOARD_TOKEN"
            err_console.print(f"dashboard: http://127.0.0.1:{child.port}/ ({mode})", highlight=False, markup=False)
    if for_s is not None:
        asyncio.get_running_loop().call_later(for_s, stop.set)
    if not show_status:
        while not stop.is_set():
            _report_deaths(stack)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        return EXIT_OK
    async with connect(settings) as conns:
        await live_status(
            conns.nats,
            conns.js,
            conns.db,
            settings,
            JOBS,
            stop=stop,
            interval_s=2.0,
            console=console,
            header=lambda: processes_table(stack),
        )
    return EXIT_OK


def _report_deaths(stack: Stack) -> None:
    for child in stack.children:
        if child.exit_code is not None and not child.death_reported:
            err_console.print(
                f"[bold red]{child.name} exited with code {child.exit_code}[/] (log: {child.log})", highlight=False
            )
            child.death_reported = True


def up(
    for_: Annotated[float | None, typer.Option("--for", help="Stop everything after SECONDS.")] = None,
    no_status: Annotated[bool, typer.Option("--no-status", help="No live view; just keep running.")] = False,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Server data and process logs.")] = Path(".data/up"),
    no_simulator: Annotated[
        bool, typer.Option("--no-simulator", help="Use the configured provider URLs instead of the local simulator.")
    ] = False,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for /readyz.")] = 90.0,
    service: Annotated[
        list[str] | None,
        typer.Option("--service", "-s", help=f"Start only this service (repeatable): {', '.join(SERVICES)}."),
    ] = None,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="Do not start the operators' dashboard.")
    ] = False,
) -> None:
    """Start the whole system locally (servers, simulator, ticker, services, dashboard) and watch it.

    Servers are started unless PULSE_NATS_URL / PULSE_MONGO_URL name running ones. The
    dashboard listens on 127.0.0.1 (PULSE_DASHBOARD_PORT, else a free port); its URL is printed.
    Ctrl-C (or SIGTERM) stops everything.

    Example: pulse up ;  pulse up --for 60 --no-status
    """
    settings = cli_settings(use_stack=False)
    running = live_stack(settings.stack_file)
    if running is not None:
        fail(
            f"a local stack is already running (pulse up pid {running.pid}, recorded in {settings.stack_file}): "
            "stop it first, or set PULSE_STACK_FILE to record a second one elsewhere"
        )
    check_seconds(for_, option="--for")
    check_seconds(ready_timeout, option="--ready-timeout")
    services = tuple(service) if service else SERVICES
    unknown = [name for name in services if name not in SERVICES]
    if unknown:
        fail(f"unknown service {unknown[0]!r}: expected one of {', '.join(SERVICES)}")
    given_nats = "PULSE_NATS_URL" in os.environ
    given_mongo = "PULSE_MONGO_URL" in os.environ
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    servers = None
    if not (given_nats and given_mongo):
        try:
            store = local_store_kind()
            err_console.print(
                f"starting {'nats-server ' if not given_nats else ''}"
                f"{'the ' + store + ' store ' if not given_mongo else ''}in {data_dir}",
                highlight=False,
            )
            servers = start_local_servers(data_dir, nats=not given_nats, mongo=not given_mongo, store=store)
            if store == "ferretdb" and not given_mongo:
                # FerretDB 1.24 hangs on a bulk write of more than about 100 updates
                # (docs/decisions.md): the services' writes stay well below that.
                os.environ.setdefault("PULSE_STORE_WRITE_BATCH", str(FERRETDB_WRITE_BATCH))
        except Exception as exc:  # ConfigError (missing binary, bad PULSE_LOCAL_STORE) or Unreachable
            fail(str(exc))
    nats_url = settings.nats_url if given_nats or servers is None else servers.nats_url
    mongo_url = settings.mongo_url.get_secret_value() if given_mongo or servers is None else servers.mongo_url
    run_settings = settings.model_copy(update={"nats_url": nats_url, "mongo_url": SecretStr(mongo_url)})
    dashboard_port = None
    if not no_dashboard:
        dashboard_port = settings.dashboard_port if "PULSE_DASHBOARD_PORT" in os.environ else free_port()
    children = plan_children(
        settings,
        nats_url,
        mongo_url,
        logs,
        simulator=not no_simulator,
        services=services,
        dashboard_port=dashboard_port,
    )
    stack = Stack(servers, children)
    record = new_record(
        nats_url=nats_url,
        mongo_url=mongo_url,
        mongo_db=settings.mongo_db,
        namespace=settings.namespace,
        data_dir=data_dir,
    )
    code = EXIT_FAILED
    try:
        write_stack(settings.stack_file, record)
        err_console.print(
            f"servers recorded in {settings.stack_file}: pulse commands in other shells find them by themselves; "
            'for other tools run  eval "$(pulse env)"  or paste:',
            highlight=False,
            markup=False,
        )
        err_console.print("\n".join(record.export_lines()), highlight=False, markup=False, soft_wrap=True)
        code = run_async(lambda: _run_up(stack, run_settings, for_, not no_status, ready_timeout))
    except typer.Exit as exc:
        code = exc.exit_code
    finally:
        err_console.print("stopping…")
        stack.stop()
        remove_stack(settings.stack_file, record.pid)
        err_console.print("stopped")
    raise typer.Exit(0 if code == 130 else code)


def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print the stack record as JSON on stdout.")] = False,
) -> None:
    """Print `export` lines for the running `pulse up` stack (for eval in a shell).

    Exit 2 when no `pulse up` is running (a record left by a stopped one is ignored).

    Example: eval "$(pulse env)" ;  pulse env --json
    """
    settings = cli_settings(use_stack=False)
    record = read_stack(settings.stack_file)
    if record is None:
        fail(f"no local stack is recorded in {settings.stack_file}: start one with pulse up")
    if not is_live(record):
        fail(
            f"the stack recorded in {settings.stack_file} is gone (pulse up pid {record.pid} no longer runs): "
            "start one with pulse up"
        )
    if as_json:
        print_json(record.model_dump(mode="json"))
    else:
        sys.stdout.write("\n".join(record.export_lines()) + "\n")


def register(app: typer.Typer) -> None:
    """Add `up` and `env` to `app`."""
    app.command()(up)
    app.command()(env)
