"""Run the operators' dashboard: `python -m services.dashboard`.

Serves on `PULSE_DASHBOARD_HOST`:`PULSE_DASHBOARD_PORT` (uvicorn in-process, as every
service). It starts even while NATS or MongoDB is down and shows a banner until they
answer. Read-only unless `PULSE_DASHBOARD_TOKEN` is set. SIGTERM/SIGINT end the open
live streams and stop it (exit 0); a bad setting or a busy port is one log line and
exit 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.dashboard.app import Dashboard
from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.runtime import HttpServer
from shared.settings import Settings, load_settings

log = logging.getLogger("services.dashboard")

EXIT_CONFIG = 2


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the dashboard until `stop` is set."""
    dashboard = Dashboard(settings)
    http = HttpServer(dashboard, settings.dashboard_host, settings.dashboard_port)
    await http.start()
    await dashboard.start()
    mode = "actions enabled" if dashboard.guard.enabled else "read-only (no PULSE_DASHBOARD_TOKEN)"
    log.info(
        "dashboard serving on http://%s:%d (%s)",
        settings.dashboard_host,
        http.port,
        mode,
        extra={"event": "dashboard.http"},
    )
    try:
        await stop.wait()
    finally:
        await dashboard.stop()  # ends the live streams first, so the server can close them
        await http.stop()


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"dashboard: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        log.error(
            "dashboard cannot serve HTTP on %s:%d (%s); set PULSE_DASHBOARD_PORT to a free port",
            settings.dashboard_host,
            settings.dashboard_port,
            exc.strerror or exc,
            extra={"event": "dashboard.failed"},
        )
        raise SystemExit(EXIT_CONFIG) from None
    raise SystemExit(0)


if __name__ == "__main__":
    main()
