"""The ticker's HTTP port: /healthz, /readyz and /metrics.

Kept in one small module so that switching to the shared health app
(`shared/runtime/health.py`, being written) is a one-line change in `__main__`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ReadyProbe = Callable[[], Awaitable[bool]]


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def make_app(registry: CollectorRegistry, ready: ReadyProbe) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app: /healthz (alive), /readyz (200 when `ready()` says so, else 503), /metrics."""
    metrics_app = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do
        path = scope.get("path", "")
        if path == "/healthz":
            await _plain(send, 200, b"ok\n")
        elif path == "/readyz":
            ok = await ready()
            await _plain(send, 200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        elif path == "/metrics":
            await metrics_app(scope, receive, send)
        else:
            await _plain(send, 404, b"not found\n")

    return app


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to the service (it stops the ticker first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: Callable[[Scope, Receive, Send], Awaitable[None]], host: str, port: int) -> asyncio.Task[None]:
    """Serve `app` in a background task; returns once the port is bound."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(), name="ticker-http")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
        await asyncio.sleep(0.01)
    log.info("http.serving", extra={"event": "http.serving"})
    return task
