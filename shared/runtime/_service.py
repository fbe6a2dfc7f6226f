"""`run_service` and `run_app`: the blocking entry points of every service process.

    # services/stats/__main__.py
    @job("stats")
    async def stats_job(ctx: JobContext) -> dict[str, Any]: ...

    def main() -> None:
        run_service("stats", [stats_job])

A consumer service is a FastStream app (`worker_app`): the worker's `NatsBroker` with the
worker's set-up and tear-down as app hooks, and `/healthz`, `/readyz`, `/metrics` as its
ASGI routes, served by uvicorn in this process. It reads settings, configures JSON
logging, binds the HTTP port, starts the app, and on SIGTERM or SIGINT stops fetching,
lets running attempts finish within the ack wait, and exits 0. A configuration or
connection problem at start-up (or an unusable HTTP port) is logged as one clear line
and exits 2. A service that is not a consumer (the ticker) passes its own app to
`run_app` and gets the same start-up, signals and exit codes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from faststream.asgi import AsgiFastStream

from shared.errors import ConfigError, PulseError
from shared.logs import configure_logging
from shared.runtime._health import HttpServer, build_http_app
from shared.runtime._job import JobSpec
from shared.runtime._worker import Worker
from shared.settings import Settings, load_settings

log = logging.getLogger("shared.runtime")

EXIT_CONFIG = 2


class Companion(Protocol):
    """A background task a service runs beside its worker (e.g. the janitor's alert delivery)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: Builds a companion from the settings; None when it has nothing to do (e.g. no alert sink).
CompanionFactory = Callable[[Settings], "Companion | None"]


def worker_app(
    worker: Worker, *, stop_timeout_s: float | None = None, companions: Sequence[Companion] = ()
) -> AsgiFastStream:
    """The FastStream app of a worker: its broker, its lifecycle hooks and the health routes.

    Args:
        worker: the (not yet started) worker.
        stop_timeout_s: how long shutdown waits for running attempts; default the ack wait.
        companions: started after the worker, stopped before it.
    """
    timeout_s = worker.settings.ack_wait_s if stop_timeout_s is None else stop_timeout_s

    async def after_start() -> None:
        await worker.after_start()
        for companion in companions:
            await companion.start()

    async def before_stop() -> None:
        for companion in reversed(companions):
            await companion.stop()
        await worker.before_stop(timeout_s)

    checks = {"nats": worker.readiness_nats, "mongo": worker.readiness_mongo, "consumers": worker.readiness_consumers}
    return build_http_app(
        checks,
        worker.metrics.registry,
        worker.broker,
        on_startup=[worker.setup],
        after_startup=[after_start],
        on_shutdown=[before_stop],
        after_shutdown=[worker.close],
    )


AppFactory = Callable[[Settings], AsgiFastStream]


#: Where a service listens: the settings prefix of its address (`http` → PULSE_HTTP_HOST /
#: PULSE_HTTP_PORT, the services' health port; `dashboard` → PULSE_DASHBOARD_HOST / _PORT).
Listen = Literal["http", "dashboard"]


def _address(settings: Settings, listen: Listen) -> tuple[str, int]:
    host: str = getattr(settings, f"{listen}_host")
    port: int = getattr(settings, f"{listen}_port")
    return host, port


async def serve(
    settings: Settings, service: str, build: AppFactory, stop: asyncio.Event, *, listen: Listen = "http"
) -> None:
    """Serve HTTP, run the FastStream app `build(settings)` until `stop` is set, then stop it."""
    app = build(settings)
    http = HttpServer(app, *_address(settings, listen))
    await http.start()  # first: /healthz answers (and /readyz says why not ready) while connecting
    log.info(
        "%s serving /healthz /readyz /metrics on port %d",
        service,
        http.port,
        extra={"event": "service.http", "worker": service},
    )
    try:
        async with app.start_lifespan_context():
            await stop.wait()
    finally:
        await http.stop()


def run_app(service: str, build: AppFactory, *, listen: Listen = "http") -> None:
    """Run a service's FastStream app until SIGTERM/SIGINT; never returns (exits the process).

    Exit codes: 0 after a signal (running attempts drained, even if NATS is away), 2 on a
    configuration or connection problem at start-up or an unusable HTTP port, logged as
    one line without a traceback.

    Args:
        service: the service's name (logs).
        build: makes the app (broker, hooks, health routes) from the loaded settings.
        listen: which settings give the HTTP address (the dashboard serves on its own).
    """
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"{service}: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, service, build, stop, listen=listen)

    try:
        asyncio.run(main())
    except PulseError as exc:  # start-up failures: one clear line, no traceback
        log.error("%s cannot start: %s", service, exc, extra={"event": "service.failed"})
        raise SystemExit(EXIT_CONFIG) from None
    except OSError as exc:
        host, port = _address(settings, listen)
        log.error(
            "%s cannot serve HTTP on %s:%d (%s); set PULSE_%s_PORT to a free port",
            service,
            host,
            port,
            exc.strerror or exc,
            listen.upper(),
            extra={"event": "service.failed"},
        )
        raise SystemExit(EXIT_CONFIG) from None
    raise SystemExit(0)


def run_service(service: str, specs: Sequence[JobSpec], *, companions: Sequence[CompanionFactory] = ()) -> None:
    """Run a consumer service of `specs` until SIGTERM/SIGINT (see `run_app`).

    Args:
        service: the service's name (logs, NATS connection name).
        specs: its jobs, declared with `@job(...)`.
        companions: background tasks run beside the worker (None from a factory: not needed).
    """

    def build(settings: Settings) -> AsgiFastStream:
        made = [make(settings) for make in companions]
        return worker_app(Worker(settings, specs, service=service), companions=[c for c in made if c is not None])

    run_app(service, build)
