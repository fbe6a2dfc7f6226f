"""Run the ticker service: `python -m services.ticker`.

Wiring only: settings, logging, NATS, topology, HTTP port, then the loop (`ticker.py`).
SIGTERM/SIGINT stop it cleanly; a crash at any point is safe (see `ticker.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.ticker.http import make_app, serve
from services.ticker.ticker import Ticker, default_replica_id
from shared.bus import connect_nats, ensure_topology
from shared.errors import PulseError
from shared.logs import configure_logging
from shared.settings import Settings, get_settings

log = logging.getLogger("services.ticker")


async def run_ticker(settings: Settings) -> None:
    """Connect, set up, serve HTTP and tick until SIGTERM or SIGINT."""
    replica = default_replica_id()
    nats_client = await connect_nats(settings, name=f"ticker-{replica}")
    try:
        js = nats_client.jetstream()
        await ensure_topology(js, settings, jobs=())  # the ticker consumes nothing
        ticker = Ticker(settings, js, replica=replica)
        await ticker.start()

        async def ready() -> bool:
            return ticker.started and nats_client.is_connected

        http_task = await serve(make_app(ticker.metrics.registry, ready), settings.http_host, settings.http_port)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(ticker.stop()))
        try:
            await ticker.run()
        finally:
            await ticker.stop()
            http_task.cancel()
    finally:
        await nats_client.close()
    log.info("ticker.stopped", extra={"event": "ticker.stopped"})


def main() -> None:
    try:
        settings = get_settings()
    except PulseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings)
    try:
        asyncio.run(run_ticker(settings))
    except PulseError as exc:
        log.error("ticker.failed %s", exc, extra={"event": "ticker.failed"})
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
