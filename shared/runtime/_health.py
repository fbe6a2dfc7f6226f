"""The FastStream app of a service: its broker plus `/healthz`, `/readyz` and `/metrics`.

Used by every service (the job consumers through `run_service`, and the ticker):

    app = build_http_app({"nats": nats_ok, "mongo": mongo_ok}, registry, broker,
                         on_startup=[...], on_shutdown=[...])
    server = HttpServer(app, settings.http_host, settings.http_port)
    await server.start()          # server.port is the bound port (useful with port 0)
    async with app.start_lifespan_context():   # hooks and broker start; stop on exit
        ...
    await server.stop()

`/healthz` answers 200 while the process serves requests (liveness). `/readyz` runs every
readiness check concurrently (each bounded by `check_timeout_s`) and answers 200 when all
pass, else 503; the JSON body names each check's result. `/metrics` is the Prometheus
text format of the given registry. A service with pages of its own (the dashboard) passes
its ASGI app as `fallback`: it answers every path these routes do not match.

uvicorn runs in-process with the ASGI lifespan off, and the service enters the app's
lifespan itself: so a start-up failure is one clear log line with exit code 2 (uvicorn's
lifespan would print a traceback and exit 3), and SIGTERM drains running attempts before
the broker stops (the service, not uvicorn, owns the signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping, MutableMapping, Sequence
from typing import Any

import nats.js.errors
import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.names import Collections
from shared.store import Database, store_deadline

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]

#: A readiness check slower than this counts as failed (the default `check_timeout_s`).
CHECK_TIMEOUT_S = 2.0
#: Deadline of a readiness check's own store or KV read: inside `CHECK_TIMEOUT_S`, so the
#: read ends as a timeout of its own (its connection cleaned up) rather than by cancellation.
STORE_READ_TIMEOUT_S = 1.5
#: The key readiness reads from a KV bucket; it need not exist ("not found" is an answer).
_PROBE_KEY = "readiness-probe"


async def kv_readable(js: JetStreamContext, bucket: str, timeout_s: float = STORE_READ_TIMEOUT_S) -> bool:
    """Readiness: a real read of the KV `bucket` is answered within `timeout_s`.

    A connected client can still face a JetStream that does not answer (no quorum, a hung
    server); the read goes through the JetStream API. Never raises.
    """
    try:
        kv = await asyncio.wait_for(js.key_value(bucket), timeout=timeout_s)
        await asyncio.wait_for(kv.get(_PROBE_KEY), timeout=timeout_s)
    except nats.js.errors.KeyNotFoundError:
        return True
    except Exception:  # an unreachable dependency is "not ready", never a 500
        return False
    return True


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def store_readable(db: Database, timeout_s: float = STORE_READ_TIMEOUT_S) -> bool:
    """Readiness: a real read (a `find_one` by `_id` on `job_state`) answers within `timeout_s`.

    A store whose storage is stuck may still answer a ping; a read goes through the query
    path. Never raises: a store that is away, slow or hung is "not ready".
    """
    try:
        with store_deadline(timeout_s, "readiness read"):
            await db[Collections.JOB_STATE].find_one({"_id": _PROBE_KEY}, {"_id": 1})
    except Exception:  # an unreachable dependency is "not ready", never a 500
        return False
    return True


async def _run_check(check: ReadinessCheck, timeout_s: float) -> bool:
    try:
        return bool(await asyncio.wait_for(check(), timeout=timeout_s))
    except Exception:  # an unreachable dependency is "not ready", never a 500
        return False


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def health_routes(
    readiness_checks: Mapping[str, ReadinessCheck],
    registry: CollectorRegistry,
    *,
    check_timeout_s: float = CHECK_TIMEOUT_S,
) -> list[tuple[str, AsgiApp]]:
    """The `(path, ASGI app)` routes of `/healthz`, `/readyz` and `/metrics` (with or without a final `/`).

    Args:
        readiness_checks: name → async callable returning True when that dependency is fine.
        registry: the Prometheus registry exposed on `/metrics`.
        check_timeout_s: a check slower than this counts as failed.
    """

    async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, b'{"status":"ok"}', "application/json")

    async def readyz(scope: Scope, receive: Receive, send: Send) -> None:
        names = list(readiness_checks)
        results = await asyncio.gather(*(_run_check(readiness_checks[n], check_timeout_s) for n in names))
        checks = dict(zip(names, results, strict=True))
        ready = all(results)
        body = json.dumps({"status": "ready" if ready else "unready", "checks": checks}).encode()
        await _respond(send, 200 if ready else 503, body, "application/json")

    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, generate_latest(registry), CONTENT_TYPE_LATEST)

    # FastStream matches the exact path; a probe configured with a trailing slash must work too.
    return [
        (path + suffix, route)
        for path, route in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics))
        for suffix in ("", "/")
    ]


def build_http_app(
    readiness_checks: Mapping[str, ReadinessCheck],
    registry: CollectorRegistry,
    *brokers: NatsBroker,
    check_timeout_s: float = CHECK_TIMEOUT_S,
    on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    after_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    after_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    fallback: AsgiApp | None = None,
) -> AsgiFastStream:
    """A service's FastStream ASGI app: its brokers and hooks, serving `health_routes`.

    Args:
        readiness_checks: name → async callable returning True when that dependency is fine.
        registry: the Prometheus registry exposed on `/metrics`.
        brokers: the service's FastStream brokers (started and stopped by the app's lifespan).
        check_timeout_s: a readiness check slower than this counts as failed.
        on_startup: run before the brokers start (connect, set up topology, register subscribers).
        after_startup: run once the brokers consume.
        on_shutdown: run before the brokers stop (which waits for running handlers).
        after_shutdown: run after the brokers stopped (close other clients).
        fallback: the ASGI app of every other path (the dashboard's pages); without it they answer 404.
    """
    # logger=None: the app's "starting"/"shut down" lines are not JSON; services log their own.
    return _AppWithFallback(
        *brokers,
        fallback=fallback,
        asgi_routes=health_routes(readiness_checks, registry, check_timeout_s=check_timeout_s),
        logger=None,
        on_startup=on_startup,
        after_startup=after_startup,
        on_shutdown=on_shutdown,
        after_shutdown=after_shutdown,
    )


class _AppWithFallback(AsgiFastStream):
    """FastStream's ASGI app, handing each HTTP path its exact-match routes do not serve to `fallback` (if any)."""

    def __init__(self, *brokers: NatsBroker, fallback: AsgiApp | None, **options: Any) -> None:
        super().__init__(*brokers, **options)
        self._fallback = fallback

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._fallback is not None and scope["type"] == "http":
            await self._fallback(scope, receive, send)
            return
        await super().not_found(scope, receive, send)


class _QuietServer(uvicorn.Server):
    # The service owns SIGTERM/SIGINT (to drain runs first); uvicorn must not take them.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """Serves an ASGI app (the service's `AsgiFastStream`) with uvicorn inside the running event loop.

    The ASGI lifespan is off: the service enters `app.start_lifespan_context()` itself.
    """

    def __init__(self, app: AsgiApp, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, log_config=None)
        self._server = _QuietServer(config)
        self._host, self._port = host, port
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        for server in self._server.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        raise RuntimeError("the HTTP server is not started")

    def _bind(self) -> socket.socket:
        # Bound here rather than by uvicorn, which would log the error and sys.exit(3).
        family, kind, proto, _, address = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts reuse the port
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; return once the port is bound.

        Raises:
            OSError: the port could not be bound (e.g. already in use).
        """
        sock = self._bind()
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                sock.close()
                with contextlib.suppress(SystemExit):
                    self._task.result()  # re-raise an unexpected start-up error
                raise OSError(f"the HTTP server on {self._host}:{self._port} stopped during start-up")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the HTTP server did not start within {timeout_s:g}s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop serving and wait for the server to close."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, SystemExit):
                await self._task
            self._task = None
