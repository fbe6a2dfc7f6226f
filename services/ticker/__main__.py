"""Run the ticker service: `python -m services.ticker`.

Wiring only: settings, logging, NATS, topology, the HTTP port (`shared.runtime.health`),
then the loop (`ticker.py`). SIGTERM/SIGINT stop it cleanly; a crash at any point is
safe (see `ticker.py`). A configuration or connection problem at start-up is logged as
one clear line and exits 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.ticker.ticker import Ticker, default_replica_id
from shared.bus import connect_nats, ensure_topology
from shared.errors import ConfigError, PulseError
from shared.logs import configure_logging
from shared.runtime.health import HttpServer, build_http_app
from shared.settings import Settings, load_settings

log = logging.getLogger("services.ticker")

EXIT_CONFIG = 2


async def run_ticker(settings: Settings) -> None:
    """Connect, set up, serve HTTP and tick until SIGTERM or SIGINT."""
    replica = default_replica_id()
    nats_client = await connect_nats(settings, name=f"ticker-{replica}")
    try:
        js = nats_client.jetstream()
        await ensure_topology(js, settings, jobs=())  # the ticker consumes nothing
        ticker = Ticker(settings, js, replica=replica)
        await ticker.start()

        async def nats_ready() -> bool:
            return bool(nats_client.is_connected)

        async def ticker_ready() -> bool:
            return ticker.running

        http = HttpServer(
            build_http_app({"nats": nats_ready, "ticker": ticker_ready}, ticker.metrics.registry),
            settings.http_host,
            settings.http_port,
        )
        await http.start()
        log.info(
            "ticker serving /healthz /readyz /metrics on port %d",
            http.port,
            extra={"event": "service.http", "worker": replica},
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(ticker.stop()))
        try:
            await ticker.run()
        finally:
            await ticker.stop()
            await http.stop()
    finally:
        await nats_client.close()
    log.info("ticker.stopped", extra={"event": "ticker.stopped", "worker": replica})


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(settings)
    try:
        asyncio.run(run_ticker(settings))
    except PulseError as exc:
        log.error("ticker.failed %s", exc, extra={"event": "ticker.failed"})
        raise SystemExit(EXIT_CONFIG) from None


if __name__ == "__main__":
    main()
