"""The one boundary between httpx and our errors, for every provider call.

    200 with a JSON body         → the decoded body
    429, 5xx, timeout, transport → quick retries (stamina), honouring Retry-After,
                                   then `ProviderUnavailable` (retried later by the runtime)
    200 with a body that is not JSON (an HTML error page, a truncated answer)
                                 → quick retries, then `ProviderDataError`
    any other 4xx (401/403/404/414/422...) → `ProviderRejected` at once, never retried

Every try takes a token from the upstream's shared rate-limit bucket first, so retries
are as polite as first calls (and spends one request of the upstream's quota, if it has
one). A 429 with Retry-After empties that bucket for every process until then
(`limiter.hold_off`), so the other jobs and replicas wait too instead of meeting 429s.
Errors name the endpoint (never the query string, headers
or API key) and say what to do.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
import stamina

from shared.errors import ProviderDataError, ProviderRejected, ProviderUnavailable, bounded, redact_url
from shared.providers.base import Limiter
from shared.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "marketpulse/0.1 (prediction-market sync; +https://github.com/marketpulse)"
#: A Retry-After longer than this is not waited out inside the attempt: the attempt ends
#: with ProviderUnavailable(delay_s=...) and the runtime redelivers later, instead of
#: holding a worker (and its run's time budget) idle. The official SDK draws the same line.
MAX_INLINE_RETRY_AFTER_S = 5.0
#: Header carrying the optional API key. A header, never the query string: httpx logs URLs.
API_KEY_HEADER = "Authorization"

JsonParams = Mapping[str, str | int | float | bool]


class _Transient(Exception):
    """A try failed in a way the next try may not (internal to this module)."""

    def __init__(
        self, detail: str, *, retry_after_s: float | None = None, malformed: bool = False, status: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.malformed = malformed
        self.status = status


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process's one HTTP client for providers: User-Agent, explicit timeouts, pooled connections.

    Args:
        settings: `http_timeout_s` bounds connect, read, write and pool waits separately.
    """
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        timeout=httpx.Timeout(settings.http_timeout_s),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        follow_redirects=False,
    )


def auth_headers(settings: Settings) -> dict[str, str]:
    """Headers that carry the API key, if one is configured (empty otherwise)."""
    if settings.polymarket_api_key is None:
        return {}
    return {API_KEY_HEADER: f"Bearer {settings.polymarket_api_key.get_secret_value()}"}


def parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait: `Retry-After` (seconds or HTTP date) or a body field."""
    raw = response.headers.get("Retry-After")
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(raw).timestamp() - time.time()
            except (ValueError, TypeError, IndexError):
                seconds = math.nan  # unreadable: fall back to our own backoff
        if math.isfinite(seconds):
            return max(0.0, seconds)
    try:
        # Polymarket's SDK also honours a JSON body field of the same meaning.
        body = response.json()
    except ValueError:
        return None
    value = body.get("retry_after_seconds") if isinstance(body, dict) else None
    if isinstance(value, int | float) and math.isfinite(value):
        return max(0.0, float(value))
    return None


def _retry_hook(exc: Exception) -> bool | float:
    """stamina's decision: retry transient failures; wait exactly Retry-After when given."""
    if not isinstance(exc, _Transient):
        return False
    if exc.retry_after_s is None:
        return True
    if exc.retry_after_s > MAX_INLINE_RETRY_AFTER_S:
        return False
    return exc.retry_after_s


def _endpoint(url: str) -> str:
    """The URL without query string or credentials, for messages."""
    return redact_url(url.split("?", 1)[0])


def _rejection_detail(response: httpx.Response) -> str:
    """A short, safe description of a refusal: the provider's `error` field or the content type."""
    try:
        body = response.json()
    except ValueError:
        return f"non-JSON body ({response.headers.get('content-type', 'no content type')})"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return bounded(body["error"], 200)
    return "JSON body without an error field"


async def _get_once(
    http: httpx.AsyncClient,
    url: str,
    params: JsonParams,
    headers: Mapping[str, str],
    timeout_s: float,
) -> Any:
    try:
        response = await http.get(url, params=dict(params), headers=dict(headers), timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise _Transient(f"no answer within {timeout_s:g}s ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise _Transient(f"connection failed ({type(exc).__name__})") from exc
    status = response.status_code
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status}", retry_after_s=parse_retry_after(response), status=status)
    if status >= 300:
        raise ProviderRejected(
            f"GET {_endpoint(url)} was refused with HTTP {status}: {_rejection_detail(response)}. "
            "Check the provider base URL and API key settings (PULSE_POLYMARKET_*); this is not retried."
        )
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Transient(f"body is not JSON ({type(exc).__name__})", malformed=True) from exc


async def get_json(
    http: httpx.AsyncClient,
    url: str,
    *,
    params: JsonParams,
    headers: Mapping[str, str],
    limiter: Limiter,
    bucket: str,
    attempts: int,
    timeout_s: float,
) -> Any:
    """GET `url` and return its decoded JSON body, retrying transient failures quickly.

    Args:
        http: the process's shared client.
        url: full endpoint URL, without query string.
        params: query parameters (never secrets).
        headers: extra headers (the API key goes here).
        limiter: shared rate limiter; one token of `bucket` per try, held off by a 429's Retry-After.
        bucket: rate-limit bucket of this upstream.
        attempts: tries in all, the first included.
        timeout_s: per-try timeout (connect, read, write, pool each).

    Raises:
        ProviderUnavailable: 429/5xx/timeouts outlasted `attempts`, or Retry-After is too long
            to wait inline (`delay_s` carries it).
        ProviderRejected: any other non-2xx answer.
        ProviderDataError: the body was not JSON on every try.
    """
    try:
        async for attempt in stamina.retry_context(
            on=_retry_hook, attempts=attempts, timeout=None, wait_initial=0.1, wait_max=2.0, wait_jitter=0.2
        ):
            with attempt:
                await limiter.acquire(bucket)
                try:
                    return await _get_once(http, url, params, headers, timeout_s)
                except _Transient as exc:
                    if exc.status == 429 and exc.retry_after_s:
                        await limiter.hold_off(bucket, exc.retry_after_s)
                    raise
    except _Transient as exc:
        where = f"GET {_endpoint(url)}"
        if exc.malformed:
            raise ProviderDataError(
                f"{where} answered with a body that is not JSON on {attempts} tries; "
                "the provider may be misbehaving or the base URL points elsewhere."
            ) from exc
        raise ProviderUnavailable(
            f"{where} failed after {attempts} tries: {exc.detail}",
            delay_s=exc.retry_after_s,
        ) from exc
    raise AssertionError("stamina.retry_context ended without an outcome")  # pragma: no cover
