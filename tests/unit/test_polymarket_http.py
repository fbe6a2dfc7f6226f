"""The httpx → our-errors boundary: every answer we can get maps to one outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
import stamina

from shared.errors import ProviderDataError, ProviderRejected, ProviderUnavailable
from shared.providers.base import NoLimit
from shared.providers.http import USER_AGENT, auth_headers, get_json, parse_retry_after
from shared.settings import load_settings

URL = "http://provider.test/markets/keyset"


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3):
        yield


async def fetch(handler: Callable[[httpx.Request], httpx.Response], attempts: int = 3) -> object:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"User-Agent": USER_AGENT}) as http:
        return await get_json(
            http, URL, params={"limit": 1}, headers={}, limiter=NoLimit(), bucket="b", attempts=attempts, timeout_s=1
        )


def always(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Callable[..., httpx.Response]:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, content=body, headers=headers)

    handler.calls = calls  # type: ignore[attr-defined]
    return handler


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried_then_unavailable(status: int) -> None:
    handler = always(status)
    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        await fetch(handler)
    assert len(handler.calls) == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 414, 422])
async def test_refusals_are_permanent_and_not_retried(status: int) -> None:
    handler = always(status, b'{"type":"validation error","error":"offset too large"}')
    with pytest.raises(ProviderRejected, match=f"HTTP {status}: offset too large"):
        await fetch(handler)
    assert len(handler.calls) == 1  # type: ignore[attr-defined]


async def test_cloudflare_html_refusal_is_described_without_its_body() -> None:
    with pytest.raises(ProviderRejected, match=r"non-JSON body \(text/html\)"):
        await fetch(always(403, b"<html>blocked</html>", {"content-type": "text/html"}))


async def test_a_body_that_is_not_json_is_retried_then_a_data_error() -> None:
    handler = always(200, b"<html>oops")
    with pytest.raises(ProviderDataError):
        await fetch(handler)
    assert len(handler.calls) == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("x")]
)
async def test_timeouts_and_transport_errors_are_unavailable(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(ProviderUnavailable):
        await fetch(handler)


async def test_a_transient_failure_then_success_returns_the_body() -> None:
    answers = iter(
        [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(200, json=[1])]
    )
    assert await fetch(lambda request: next(answers)) == [1]


async def test_a_long_retry_after_is_not_waited_inline() -> None:
    handler = always(429, headers={"Retry-After": "120"})
    with pytest.raises(ProviderUnavailable) as caught:
        await fetch(handler)
    assert caught.value.delay_s == 120
    assert len(handler.calls) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "2.5"}, b"", 2.5),
        ({}, b'{"retry_after_seconds": 3}', 3.0),
        ({"Retry-After": "junk"}, b"", None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"", 0.0),
        ({}, b"", None),
    ],
)
def test_retry_after_is_read_from_header_or_body(headers: dict[str, str], body: bytes, expected: float | None) -> None:
    assert parse_retry_after(httpx.Response(429, headers=headers, content=body)) == expected


async def test_the_api_key_travels_in_a_header_and_never_in_errors() -> None:
    settings = load_settings(polymarket_api_key="k-123-secret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": "bad key"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(ProviderRejected) as caught:
            await get_json(
                http,
                URL,
                params={"limit": 1},
                headers=auth_headers(settings),
                limiter=NoLimit(),
                bucket="b",
                attempts=2,
                timeout_s=1,
            )
    assert seen[0].headers["authorization"] == "Bearer k-123-secret"
    assert "k-123-secret" not in str(seen[0].url)
    assert "k-123-secret" not in str(caught.value)
    assert auth_headers(load_settings()) == {}
