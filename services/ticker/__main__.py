"""Run the ticker service: `python -m services.ticker`.

Wiring only. The service is a FastStream app (`TickerService.app`), run by the runtime's
`run_app` like every other service: a `NatsBroker` whose
connection the ticker uses, `/healthz`, `/readyz` and `/metrics` as its ASGI routes
(`shared.runtime._health`), and the loop (`ticker.py`) started after start-up and stopped
before the broker stops. The ticker subscribes to nothing: its KV compare-and-set claims
and the `schedules` watch stay on nats-py (`broker.connection.jetstream()`), since
FastStream has no compare-and-set API. SIGTERM/SIGINT stop it cleanly (exit 0); a crash
at any point is safe (see `ticker.py`). A configuration or connection problem at
start-up (or an unusable HTTP port) is logged as one clear line and exits 2.

The slot ledger's store client connects lazily and is never waited on: a ticker whose
MongoDB is away keeps firing, and its ledger entries wait (see ledger.py).
"""

from __future__ import annotations

import asyncio
import logging

from faststream.asgi import AsgiFastStream

from services.ticker.ledger import SlotLedger
from services.ticker.metrics import TickerMetrics
from services.ticker.ticker import Ticker, default_replica_id
from shared.bus import connect_broker, ensure_topology
from shared.runtime import ServiceBroker, build_http_app, kv_readable, run_app
from shared.settings import Settings
from shared.store import make_client

log = logging.getLogger("services.ticker")


class TickerService:
    """The ticker's broker, loop and readiness, as FastStream app hooks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replica = default_replica_id()
        self.metrics = TickerMetrics()
        self.broker = ServiceBroker(settings, name=f"ticker-{self.replica}")
        self.mongo = make_client(settings)  # lazy: no I/O until the ledger's first write
        self.ticker: Ticker | None = None
        self._loop: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Connect, create or update the topology, and load the overrides (before the broker starts)."""
        client = await connect_broker(self.broker, self.settings)
        js = client.jetstream()
        await ensure_topology(js, self.settings, jobs=())  # the ticker consumes nothing
        ledger = SlotLedger(
            self.mongo[self.settings.mongo_db], replica=self.replica, batch_size=self.settings.store_write_batch
        )
        self.ticker = Ticker(self.settings, js, replica=self.replica, metrics=self.metrics, ledger=ledger)
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
        await self.mongo.close()
        log.info("ticker.stopped", extra={"event": "ticker.stopped", "worker": self.replica})

    async def nats_ready(self) -> bool:
        """Readiness check: the broker's NATS connection is up."""
        return self.ticker is not None and self.broker.connection.is_connected

    async def jetstream_ready(self) -> bool:
        """Readiness check: a real read of the ticker's KV bucket answers within its deadline."""
        if self.ticker is None or not self.broker.connection.is_connected:
            return False
        return await kv_readable(self.broker.connection.jetstream(), self.settings.names.ticker_bucket)

    async def ticker_ready(self) -> bool:
        """Readiness check: the loop ticks."""
        return self.ticker is not None and self.ticker.running

    def app(self) -> AsgiFastStream:
        """The FastStream app: broker, hooks and health routes."""
        return build_http_app(
            {"nats": self.nats_ready, "jetstream": self.jetstream_ready, "ticker": self.ticker_ready},
            self.metrics.registry,
            self.broker,
            on_startup=[self.setup],
            after_startup=[self.start_loop],
            on_shutdown=[self.stop_loop],
        )


def main() -> None:
    run_app("ticker", lambda settings: TickerService(settings).app())


if __name__ == "__main__":
    main()
