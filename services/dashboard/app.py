"""The dashboard's ASGI app: routing, the per-request context, error pages, health routes.

`Dashboard(settings).app()` is the service's FastStream app (`shared.runtime.build_http_app`,
run by `run_app` as every service): `/healthz`, `/readyz` (NATS connected and a real store
read) and `/metrics` from the runtime, every other path from `Dashboard`.

Every page is rendered on the server from the shared read model (`shared.readmodel`),
the same functions `pulse` calls. A server that is down never makes a page fail: each
part of a page is read through `Page.read`, which turns an unreachable NATS or MongoDB
into a banner and leaves that part empty. Unexpected errors become a 500 page that
names no internals (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from faststream.asgi import AsgiFastStream
from pymongo.errors import PyMongoError

from services.dashboard.render import environment
from services.dashboard.security import SESSION_COOKIE, Guard, Session
from services.dashboard.sources import Sources, Unavailable
from services.dashboard.web import EventStream, HttpError, Receive, Request, Response, Router, Scope, Send
from shared.errors import PulseError
from shared.readmodel.timetext import iso
from shared.runtime import build_http_app
from shared.settings import Settings

log = logging.getLogger("services.dashboard")
T = TypeVar("T")

STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png"}
NAV = (
    ("/", "Overview", "overview"),
    ("/runs", "Runs", "runs"),
    ("/schedules", "Schedules", "schedules"),
    ("/dlq", "Dead letters", "dlq"),
    ("/budgets", "Budgets", "budgets"),
    ("/stats", "Market stats", "stats"),
)
FLASH_COOKIE = "pulse_flash"
#: How often the system gauges of /metrics (queues, dead letters) are read again.
GAUGES_INTERVAL_S = 15.0
#: Errors that mean "a server is down or slow", shown as a banner rather than a 500.
SERVER_ERRORS: tuple[type[BaseException], ...] = (
    Unavailable,
    PyMongoError,
    nats.errors.Error,
    nats.js.errors.Error,
    TimeoutError,
    PulseError,
    ConnectionError,
)


@dataclass
class Page:
    """What one request collects while it renders: the session, banners, and the flash message."""

    dashboard: Dashboard
    request: Request
    session: Session | None
    problems: list[str] = field(default_factory=list)

    @property
    def sources(self) -> Sources:
        return self.dashboard.sources

    @property
    def settings(self) -> Settings:
        return self.dashboard.settings

    @property
    def can_act(self) -> bool:
        return self.dashboard.guard.enabled and self.session is not None

    async def read(self, what: str, make: Callable[[], Awaitable[T]]) -> T | None:
        """Run one read of the page; a down server adds a banner and gives None."""
        try:
            return await asyncio.wait_for(make(), timeout=self.settings.mongo_timeout_s + 1)
        except SERVER_ERRORS as exc:
            self.problems.append(self.dashboard.describe(exc, what))
            return None

    def render(self, template: str, *, status: int = 200, title: str, page: str = "", **values: Any) -> Response:
        flash = self.request.cookies.get(FLASH_COOKIE)
        text, flash_error = (flash[2:], flash.startswith("!")) if flash else ("", False)
        problems = list(self.problems)
        if not self.sources.nats_up:
            problems.insert(0, self.dashboard.down_line("NATS"))
        if not self.sources.mongo_up:
            problems.insert(0, self.dashboard.down_line("MongoDB"))
        context = {
            "title": title,
            "page": page,
            "nav": NAV,
            "problems": list(dict.fromkeys(problems)),
            "session": self.session,
            "guard_enabled": self.dashboard.guard.enabled,
            "can_act": self.can_act,
            "csrf": self.dashboard.guard.csrf_token(self.session),
            "flash": _unquote_flash(text),
            "flash_error": flash_error,
            "request_path": self.request.path,
            "now": datetime.now(UTC),
            "now_iso": iso(datetime.now(UTC).replace(microsecond=0)),
            "live_url": _resuming(values.pop("live_url", None), self.sources.hub.last_seq),
            **values,
        }
        body = self.dashboard.templates.get_template(template).render(context)
        cookies = [f"{FLASH_COOKIE}=; Max-Age=0; Path=/; SameSite=Strict"] if flash else []
        return Response(body, status, cookies=cookies)

    def error(self, status: int, message: str, *, back: str | None = None) -> Response:
        heading = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed", 409: "Conflict"}
        return self.render(
            "error.html", status=status, title=heading.get(status, "Error"), heading=heading.get(status, "Error"),
            message=message, back=back,
        )  # fmt: skip


def _resuming(live_url: str | None, seq: int) -> str | None:
    """The page's event stream, starting after the EVENTS sequence the page was rendered at."""
    if live_url is None:
        return None
    return f"{live_url}{'&' if '?' in live_url else '?'}last_event_id={seq}"


def flash_cookie(message: str, *, error: bool = False) -> str:
    """A one-shot message shown on the next page (after a form's redirect)."""
    from urllib.parse import quote

    return (
        f"{FLASH_COOKIE}={'!' if error else '-'}:{quote(message[:300], safe='')}; Max-Age=60; Path=/; SameSite=Strict"
    )


def _unquote_flash(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text.removeprefix(":"))


PageHandler = Callable[[Page], Awaitable[Response | EventStream]]


class DashboardMetrics:
    """The dashboard's own Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pulse_dashboard_requests_total",
            "Requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.live_streams = Gauge(
            "pulse_dashboard_live_streams", "Open Server-Sent-Events streams", registry=self.registry
        )
        self.up = Gauge(
            "pulse_dashboard_server_up", "1 while the dashboard reaches the server", ["server"], registry=self.registry
        )
        # The system's state as the read model sees it, for the alert rules (deploy/prometheus).
        self.pending = Gauge(
            "pulse_consumer_pending", "Requests waiting in the job's consumer", ["job"], registry=self.registry
        )
        self.ack_pending = Gauge(
            "pulse_consumer_ack_pending", "Requests delivered and not yet acked", ["job"], registry=self.registry
        )
        self.redelivered = Gauge(
            "pulse_consumer_redelivered", "Requests being redelivered", ["job"], registry=self.registry
        )
        self.dead_letters = Gauge("pulse_dlq_messages", "Dead letters held in DLQ", ["job"], registry=self.registry)
        self.stale_after = Gauge(
            "pulse_job_stale_after_seconds",
            "The job's freshness target (stale_after_s)",
            ["job"],
            registry=self.registry,
        )


class Dashboard:
    """The ASGI application."""

    def __init__(self, settings: Settings, sources: Sources | None = None) -> None:
        self.settings = settings
        self.sources = sources or Sources(settings)
        self.guard = Guard(settings.dashboard_token)
        self.templates = environment()
        self.router = Router()
        self.closing = asyncio.Event()
        self.metrics = DashboardMetrics()
        hub = self.sources.hub
        self.metrics.live_streams.set_function(lambda: hub.listeners)
        self.metrics.up.labels(server="nats").set_function(lambda: 1 if self.sources.nats_up else 0)
        self.metrics.up.labels(server="mongo").set_function(lambda: 1 if self.sources.mongo_up else 0)
        self._gauges: asyncio.Task[None] | None = None
        from services.dashboard import actions, facts, pages

        pages.register(self)
        facts.register(self)
        actions.register(self)

    def route(self, method: str, pattern: str, handler: PageHandler) -> None:
        async def call(request: Request) -> Response | EventStream:
            return await handler(self.page(request))

        self.router.add(method, pattern, call)

    def page(self, request: Request) -> Page:
        return Page(self, request, self.guard.session(request.cookies.get(SESSION_COOKIE)))

    def describe(self, exc: BaseException, what: str) -> str:
        """One banner line for a failed read: which server, and what to check (never a URL with a secret)."""
        if (isinstance(exc, Unavailable) and exc.server == "NATS") or isinstance(
            exc, nats.errors.Error | nats.js.errors.Error
        ):
            return self.down_line("NATS")
        if isinstance(exc, Unavailable | PyMongoError):
            return self.down_line("MongoDB")
        if isinstance(exc, TimeoutError):
            return f"{what}: no answer within {self.settings.mongo_timeout_s + 1:g}s (a server is slow or down)"
        return f"{what}: {type(exc).__name__}: {str(exc)[:200]}"

    def down_line(self, server: str) -> str:
        """The banner of a server that is down: what is missing, what to check."""
        if server == "NATS":
            return (
                f"NATS is unreachable ({self.settings.nats_url_redacted}): schedules, queues, dead letters, "
                "actions and live updates are unavailable. Check the server and PULSE_NATS_URL; "
                "the dashboard reconnects by itself."
            )
        return (
            f"MongoDB is unreachable ({self.settings.mongo_url_redacted}): runs, history, stats and the audit "
            "trail are unavailable. Check the server and PULSE_MONGO_URL; the dashboard reconnects by itself."
        )

    async def start(self) -> None:
        """Connect (servers may be down: they are retried in the background) and start the gauges."""
        await self.sources.start()
        self._gauges = asyncio.create_task(self._refresh_gauges(), name="dashboard-gauges")

    async def stop(self) -> None:
        """End the live streams (so the HTTP server can close them) and the background loops."""
        self.closing.set()
        if self._gauges is not None:
            self._gauges.cancel()
            await asyncio.gather(self._gauges, return_exceptions=True)
        await self.sources.stop()

    async def close(self) -> None:
        """Close the store's client (after the broker stopped)."""
        await self.sources.close()

    def app(self) -> AsgiFastStream:
        """The service's FastStream app (run by `shared.runtime.run_app` on the dashboard's address)."""

        async def announce() -> None:
            mode = "actions enabled" if self.guard.enabled else "read-only (no PULSE_DASHBOARD_TOKEN)"
            log.info("dashboard pages served (%s)", mode, extra={"event": "dashboard.http"})

        return build_http_app(
            {"nats": self.sources.nats_ready, "mongo": self.sources.mongo_ready},
            self.metrics.registry,
            self.sources.broker,
            fallback=self,
            on_startup=[self.start],
            after_startup=[announce],
            on_shutdown=[self.stop],  # the live streams end before the broker drains NATS
            after_shutdown=[self.close],
        )

    async def _refresh_gauges(self) -> None:
        """Read the system gauges of /metrics (queues, dead letters, targets) from the read model, again and again."""
        from services.dashboard.pages import observe_system

        while True:
            if self.sources.nats_up:
                try:
                    await asyncio.wait_for(observe_system(self), timeout=self.settings.nats_connect_timeout_s)
                except SERVER_ERRORS as exc:  # a server went away: the next round tries again
                    log.warning("dashboard.gauges_unavailable: %s", type(exc).__name__,
                                extra={"event": "dashboard.gauges_unavailable"})  # fmt: skip
            await asyncio.sleep(GAUGES_INTERVAL_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "http":
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        request = Request(scope, receive)
        route = "static" if path.startswith("/static/") else "unmatched"
        try:
            if path.startswith("/static/"):
                response: Response | EventStream = self._static(path.removeprefix("/static/"))
            else:
                handler, params = self.router.match(scope["method"], path)
                request.params = params
                route = self.router.pattern_of(handler)
                response = await handler(request)
        except HttpError as exc:
            response = self.page(request).error(exc.status, exc.message)
        except Exception:
            log.exception("dashboard.error", extra={"event": "dashboard.error"})
            response = Response(
                "<!doctype html><title>Error</title><h1>Something went wrong</h1>"
                "<p>The dashboard logged the error. <a href='/'>Back to the overview</a></p>",
                500,
            )
        status = response.status if isinstance(response, Response) else 200
        self.metrics.requests.labels(route=route, status=str(status)).inc()
        with contextlib.suppress(OSError):
            await response.send(send)

    def _static(self, name: str) -> Response:
        target = (STATIC / name).resolve()
        if STATIC.resolve() not in target.parents or not target.is_file() or target.suffix not in _STATIC_TYPES:
            raise HttpError(404, f"there is no asset {name!r}")
        return Response(
            target.read_bytes(), content_type=_STATIC_TYPES[target.suffix], headers={"cache-control": "max-age=300"}
        )
