"""Run the ticker service: `python -m services.ticker`.

Wiring only. The service is a FastStream app (`ticker_app`): a `NatsBroker` whose
connection the ticker uses, `/healthz`, `/readyz` and `/metrics` as its ASGI routes
(`shared.runtime.health`), and the loop (`ticker.py`) started after start-up and stopped
before the broker stops. The ticker subscribes to nothing: its KV compare-and-set claims
and the `schedules` watch stay on nats-py (`broker.connection.jetstream()`), since
FastStream has no compare-and-set API. SIGTERM/SIGINT stop it cleanly (exit 0); a crash
at any point is safe (see `ticker.py`). A configuration or connection problem at
start-up (or an unusable HTTP port) is logged as one clear line and exits 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from services.ticker.metrics import TickerMetrics
from services.ticker.ticker import Ticker, default_replica_id
from shared.bus import broker_options, connect_broker, ensure_topology
from shared.errors import ConfigError, PulseError
from shared.logs import configure_logging
from shared.runtime import HttpServer, build_http_app
from shared.settings import Settings, load_settings

log = logging.getLogger("services.ticker")

EXIT_CONFIG = 2


class TickerService:
    """The ticker's broker, loop and readiness, as FastStream app hooks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replica = default_replica_id()
        self.metrics = TickerMetrics()
        # logger=None: our JSON log carries the ticker's own lines; /readyz reports disconnects.
        self.broker = NatsBroker(**broker_options(settings, name=f"ticker-{self.replica}"), logger=None)
        self.ticker: Ticker | None = None
        self._loop: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Connect, create or update the topology, and load the overrides (before the broker starts)."""
        client = await connect_broker(self.broker, self.settings)
        js = client.jetstream()
        await ensure_topology(js, self.settings, jobs=())  # the ticker consumes nothing
        self.ticker = Ticker(self.settings, js, replica=self.replica, metrics=self.metrics)
        await self.ticker.start()

    async def start_loop(self) -> None:
        """Start ticking (after start-up)."""
        assert self.ticker is not None
        self._loop = asyncio.create_task(self.ticker.run(), name="ticker")

    async def stop_loop(self) -> None:
        """Stop ticking and wait for a tick in progress (before the broker stops)."""
        if self.ticker is not None:
            await self.ticker.stop()
        if self._loop is not None:
            await asyncio.gather(self._loop, return_exceptions=True)
        log.info("ticker.stopped", extra={"event": "ticker.stopped", "worker": self.replica})

    async def nats_ready(self) -> bool:
        """Readiness check: the broker's NATS connection is up."""
        return self.ticker is not None and self.broker.connection.is_connected

    async def ticker_ready(self) -> bool:
        """Readiness check: the loop ticks."""
        return self.ticker is not None and self.ticker.running

    def app(self) -> AsgiFastStream:
        """The FastStream app: broker, hooks and health routes."""
        return build_http_app(
            {"nats": self.nats_ready, "ticker": self.ticker_ready},
            self.metrics.registry,
            self.broker,
            on_startup=[self.setup],
            after_startup=[self.start_loop],
            on_shutdown=[self.stop_loop],
        )


async def run_ticker(settings: Settings, stop: asyncio.Event) -> None:
    """Serve HTTP and tick until `stop` is set."""
    service = TickerService(settings)
    app = service.app()
    http = HttpServer(app, settings.http_host, settings.http_port)
    await http.start()
    log.info(
        "ticker serving /healthz /readyz /metrics on port %d",
        http.port,
        extra={"event": "service.http", "worker": service.replica},
    )
    try:
        async with app.start_lifespan_context():
            await stop.wait()
    finally:
        await http.stop()


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(settings)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_ticker(settings, stop)

    try:
        asyncio.run(_main())
    except PulseError as exc:
        log.error("ticker.failed %s", exc, extra={"event": "ticker.failed"})
        raise SystemExit(EXIT_CONFIG) from None
    except OSError as exc:
        log.error(
            "ticker cannot serve HTTP on %s:%d (%s); set PULSE_HTTP_PORT to a free port",
            settings.http_host,
            settings.http_port,
            exc.strerror or exc,
            extra={"event": "ticker.failed"},
        )
        raise SystemExit(EXIT_CONFIG) from None


if __name__ == "__main__":
    main()
