"""A small ASGI layer: requests, responses, routes with path parameters, Server-Sent Events.

FastStream's ASGI routes match exact paths only, and the dashboard needs `/runs/<id>`;
a router this size is less than another dependency (Starlette would also need
python-multipart to read forms). Forms are `application/x-www-form-urlencoded` only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, unquote

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Largest request body read (forms are a few fields; anything bigger is refused).
MAX_BODY_BYTES = 64 * 1024

_SECURITY_HEADERS = {
    # Every asset is ours: no inline script, no third-party origin, no framing.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class HttpError(Exception):
    """An error answered with `status` and a one-line `message` (rendered as a page)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One HTTP request: method, path, query, headers, cookies, path parameters, form."""

    scope: Scope
    receive: Receive
    params: dict[str, str] = field(default_factory=dict)
    _form: dict[str, list[str]] | None = None

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=False)

    def arg(self, name: str) -> str | None:
        """The first non-empty query value of `name`, stripped, or None."""
        values = [v.strip() for v in self.query.get(name, []) if v.strip()]
        return values[0] if values else None

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope.get("headers", [])}

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is treated as no cookies
            return {}
        return {key: morsel.value for key, morsel in jar.items()}

    @property
    def client(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else "unknown"

    async def form(self) -> dict[str, list[str]]:
        """The urlencoded body (read once, at most `MAX_BODY_BYTES`)."""
        if self._form is not None:
            return self._form
        kind = self.headers.get("content-type", "").split(";")[0].strip()
        body = bytearray()
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the request body did not arrive")
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > MAX_BODY_BYTES:
                raise HttpError(413, f"the form is larger than {MAX_BODY_BYTES // 1024} KB")
        if body and kind != "application/x-www-form-urlencoded":
            raise HttpError(415, "send the form as application/x-www-form-urlencoded")
        self._form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return self._form

    async def field(self, name: str) -> str | None:
        """The first value of form field `name`, stripped (None when absent or blank)."""
        values = (await self.form()).get(name, [])
        value = values[0].strip() if values else ""
        return value or None

    async def fields(self, name: str) -> list[str]:
        """Every non-blank value of form field `name` (checkbox lists)."""
        return [v.strip() for v in (await self.form()).get(name, []) if v.strip()]


class Response:
    """A complete response: status, body, headers (security headers always added)."""

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        headers: Mapping[str, str] | None = None,
        cookies: list[str] | None = None,
    ) -> None:
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        self.headers = {**_SECURITY_HEADERS, "content-type": content_type, **(headers or {})}
        self.cookies = cookies or []

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        raw = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        raw += [(b"set-cookie", cookie.encode()) for cookie in self.cookies]
        return raw

    async def send(self, send: Send) -> None:
        headers = [*self.raw_headers(), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def redirect(location: str, cookies: list[str] | None = None) -> Response:
    """303 See Other (the answer to a form post)."""
    return Response(b"", 303, headers={"location": location}, cookies=cookies)


class EventStream:
    """A Server-Sent Events response fed by an async generator of ready-made `event:`/`data:` blocks.

    It ends when the generator does or when the client leaves: `send()` after a disconnect
    returns silently (uvicorn), so only `receive()`'s `http.disconnect` tells; the stream is
    cancelled then and the generator closed, which releases what it holds (its hub queue).
    """

    def __init__(self, events: AsyncGenerator[str], receive: Receive) -> None:
        self.events = events
        self.receive = receive

    async def send(self, send: Send) -> None:
        headers = {**_SECURITY_HEADERS, "content-type": "text/event-stream; charset=utf-8", "x-accel-buffering": "no"}
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        stream = asyncio.create_task(self._stream(send), name="sse-stream")
        gone = asyncio.create_task(self._disconnected(), name="sse-disconnect")
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            await asyncio.wait({stream, gone})
            await self.events.aclose()
        if not stream.cancelled():
            stream.result()  # re-raise what broke the stream

    async def _stream(self, send: Send) -> None:
        async for block in self.events:
            await send({"type": "http.response.body", "body": block.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _disconnected(self) -> None:
        """Return when the client has gone (the request's body, empty for a GET, comes first)."""
        while (await self.receive())["type"] != "http.disconnect":
            pass


def sse(event: str, data: str, event_id: str | None = None) -> str:
    """One SSE block; multi-line data becomes several `data:` lines."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"


Handler = Callable[[Request], Awaitable[Response | EventStream]]


class Router:
    """Routes `METHOD /path/{name}` patterns to handlers; `{name}` matches one path segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._patterns: dict[int, str] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
        self._routes.append((method, re.compile(regex), handler))
        self._patterns[id(handler)] = f"{method} {pattern}"

    def pattern_of(self, handler: Handler) -> str:
        """The route pattern of `handler` (a bounded metric label, never the raw path)."""
        return self._patterns.get(id(handler), "unknown")

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters (URL-decoded), or HttpError 404/405."""
        allowed = False
        for route_method, regex, handler in self._routes:
            found = regex.match(path)
            if found is None:
                continue
            if route_method != method:
                allowed = True
                continue
            return handler, {k: unquote(v) for k, v in found.groupdict().items()}
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}")
        raise HttpError(404, f"there is no page at {path}")
