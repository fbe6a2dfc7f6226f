"""The NatsBroker of every service: FastStream's, with a stop that never raises and a
connection that survives a revoked login.

FastStream's `NatsBroker.stop` stops the subscribers and then drains the connection;
while NATS is unreachable the drain raises `ConnectionReconnectingError` (and stopping a
subscriber may fail too), which would end a SIGTERM'd service with a traceback and skip
the hooks that close the other clients. Here a stop that cannot drain logs one line,
closes the connection and returns: the service still exits 0, and anything not acked
comes back after the ack wait.

Its connection is a `shared.bus.RelogClient`: a login the server revokes when its config
is reloaded (a rotated password) leads to a reconnect with the password file read again,
not to a connection closed for good.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType
from typing import Any

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from shared.bus import RelogClient, broker_options
from shared.settings import Settings

log = logging.getLogger("shared.runtime")


class ServiceBroker(NatsBroker):
    """A `NatsBroker` from our settings whose `stop` logs instead of raising."""

    def __init__(self, settings: Settings, *, name: str, **options: Any) -> None:
        # logger=None: FastStream would log every message received and processed; our
        # JSON log has one line per run transition instead, and /readyz reports disconnects.
        super().__init__(**broker_options(settings, name=name), logger=None, **options)
        self.client_name = name

    async def _connect(self) -> NatsClient:
        # FastStream 0.7's NatsBroker._connect, with our client class instead of nats.connect's.
        connection = RelogClient()
        await connection.connect(**self._connection_kwargs)
        self.config.connect(connection)
        return connection

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        connection = self._connection
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        except Exception as exc:  # e.g. NATS is away: the drain cannot complete
            errors = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
            log.warning(
                "%s stopped without draining its NATS connection (%s); unacked requests come back after the ack wait",
                self.client_name,
                ", ".join(sorted({type(error).__name__ for error in errors})),
                extra={"event": "service.stop_incomplete", "worker": self.client_name},
            )
            if connection is not None and not connection.is_closed:
                with contextlib.suppress(Exception):
                    await connection.close()
            self._connection = None
            self.config.disconnect()
