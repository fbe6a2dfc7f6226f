"""Alert delivery: every alert on `events.alerts.>` reaches the sinks set in settings, once.

One place delivers: `AlertDelivery`, run by the janitor service. It reads alerts with a
durable pull consumer on EVENTS (`alert_delivery`), shared by every janitor replica, and
acknowledges an alert after all sinks were tried, so each alert is delivered once however
many replicas run. The consumer is created at the first start with `DeliverPolicy.NEW`:
turning delivery on does not send the last week of alerts.

Sinks (docs/alerts.md has the receiver's side):
- a generic webhook (`PULSE_ALERT_WEBHOOK_URL`): the alert as JSON, signed with
  HMAC-SHA256 over `<timestamp>.<body>` with `PULSE_ALERT_WEBHOOK_SECRET`, in
  `X-Pulse-Signature: sha256=<hex>`, the timestamp (Unix seconds) in `X-Pulse-Timestamp`,
  and `X-Pulse-Alert-Id` for receivers that de-duplicate;
- a Slack-compatible incoming webhook (`PULSE_ALERT_SLACK_WEBHOOK_URL`): `{"text": ...}`.

Each POST is retried with backoff (stamina) on transport errors, 429 and 5xx, up to
`PULSE_ALERT_DELIVERY_ATTEMPTS`; a 4xx other than 429 is not retried. A sink that still
fails is logged and skipped: one bad receiver never holds back the other sink or later
alerts, and nothing here is on a run's path (runs only publish the alert to NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import nats.errors
import nats.js.errors
import stamina
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.bus import connect_nats
from shared.errors import redact_url
from shared.schemas import Alert
from shared.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pulse-Signature"
TIMESTAMP_HEADER = "X-Pulse-Timestamp"
ALERT_ID_HEADER = "X-Pulse-Alert-Id"
#: A receiver should refuse signatures older than this (replays); see `verify`.
SIGNATURE_TOLERANCE_S = 300
_FETCH_TIMEOUT_S = 1.0
#: The consumer's ack wait: longer than every try of every sink together.
_ACK_WAIT_S = 600.0


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Pulse-Signature` value: `sha256=` + hex HMAC-SHA256 of `<timestamp>.<body>`."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float | None = None) -> bool:
    """What a receiver does: check the signature, and that the timestamp is recent."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= SIGNATURE_TOLERANCE_S and hmac.compare_digest(sign(secret, timestamp, body), signature)


class Sink(Protocol):
    """Somewhere alerts go: a name for logs, a URL, and how an alert becomes a request body."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    def render(self, alert: Alert, alert_id: str) -> tuple[bytes, dict[str, str]]: ...


@dataclass(frozen=True)
class WebhookSink:
    """A generic webhook: the alert as JSON, signed with the shared secret."""

    url: str = field(repr=False)
    secret: bytes = field(repr=False)
    name: str = "webhook"

    def render(self, alert: Alert, alert_id: str) -> tuple[bytes, dict[str, str]]:
        body = alert.model_dump_json().encode()
        timestamp = str(int(time.time()))
        return body, {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
            ALERT_ID_HEADER: alert_id,
        }


@dataclass(frozen=True)
class SlackSink:
    """A Slack-compatible incoming webhook: one `text` line per alert."""

    url: str = field(repr=False)
    name: str = "slack"

    def render(self, alert: Alert, alert_id: str) -> tuple[bytes, dict[str, str]]:
        since = alert.since.strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"[marketpulse] {alert.job}: {alert.kind.value} (since {since}): {alert.detail}"
        return json.dumps({"text": text}).encode(), {"Content-Type": "application/json"}


def sinks_from_settings(settings: Settings) -> list[Sink]:
    """The sinks configured in settings (none: alerts stay on NATS and in `pulse alerts`)."""
    sinks: list[Sink] = []
    if settings.alert_webhook_url is not None and settings.alert_webhook_secret is not None:
        secret = settings.alert_webhook_secret.get_secret_value().encode()
        sinks.append(WebhookSink(settings.alert_webhook_url.get_secret_value(), secret))
    if settings.alert_slack_webhook_url is not None:
        sinks.append(SlackSink(settings.alert_slack_webhook_url.get_secret_value()))
    return sinks


class _Retry(Exception):
    """A try that may succeed later (transport error, 429, 5xx)."""


async def post_alert(
    http: httpx.AsyncClient, sink: Sink, alert: Alert, alert_id: str, *, attempts: int, wait_initial_s: float = 0.5
) -> bool:
    """POST `alert` to `sink`, retrying transient failures with backoff; True when it was accepted."""
    try:
        async for attempt in stamina.retry_context(
            on=_Retry, attempts=attempts, timeout=None, wait_initial=wait_initial_s, wait_max=30.0
        ):
            with attempt:
                body, headers = sink.render(alert, alert_id)  # a fresh timestamp and signature per try
                try:
                    response = await http.post(sink.url, content=body, headers=headers)
                except httpx.TransportError as exc:
                    raise _Retry(type(exc).__name__) from None
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retry(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    _log_failure(sink, alert_id, f"refused with HTTP {response.status_code}")
                    return False
        return True
    except _Retry as exc:
        _log_failure(sink, alert_id, f"still failing after {attempts} tries ({exc})")
        return False


def _log_failure(sink: Sink, alert_id: str, why: str) -> None:
    log.error(
        "alert not delivered to the %s sink",
        sink.name,
        extra={"event": "alert.delivery_failed", "sink": sink.name, "alert_id": alert_id, "reason": why},
    )


class AlertDelivery:
    """Delivers each alert of `events.alerts.>` to every sink, once across all replicas.

    `await start()` connects (its own NATS connection), creates the durable consumer if
    it is missing and starts the delivery loop; `await stop()` lets the alert in hand
    finish (bounded) and disconnects.
    """

    def __init__(
        self, settings: Settings, sinks: list[Sink], *, name: str = "alert-delivery", wait_initial_s: float = 0.5
    ) -> None:
        self._settings = settings
        self._sinks = sinks
        self._name = name
        self._wait_initial_s = wait_initial_s
        self._nats: NatsClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.delivered = 0
        self.failed = 0

    def __repr__(self) -> str:
        sinks = ",".join(sink.name for sink in self._sinks)
        return f"<AlertDelivery sinks={sinks} delivered={self.delivered} failed={self.failed}>"

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertDelivery | None:
        """The delivery for the sinks in settings, or None when none is configured."""
        sinks = sinks_from_settings(settings)
        return cls(settings, sinks) if sinks else None

    async def start(self) -> None:
        settings, names = self._settings, self._settings.names
        self._nats = await connect_nats(settings, name=self._name)
        js = self._nats.jetstream(timeout=settings.nats_connect_timeout_s)
        durable = names.alert_delivery_consumer
        try:
            await js.consumer_info(names.events_stream, durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(
                names.events_stream,
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=names.alerts_wildcard(),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=_ACK_WAIT_S,
                    deliver_policy=DeliverPolicy.NEW,
                    max_ack_pending=1,  # in order, one at a time across replicas
                    num_replicas=settings.stream_replicas,
                    description="delivers alerts to the configured sinks",
                ),
            )
        subscription = await js.pull_subscribe_bind(durable=durable, stream=names.events_stream)
        self._http = httpx.AsyncClient(timeout=settings.alert_delivery_timeout_s)
        self._task = asyncio.create_task(self._loop(subscription), name="alert-delivery")
        log.info(
            "delivering alerts to %s",
            ", ".join(f"{sink.name} ({redact_url(sink.url.split('?', 1)[0])})" for sink in self._sinks),
            extra={"event": "alert.delivery_started"},
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.close()
            self._nats = None

    async def _loop(self, subscription: nats.js.JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                messages = await subscription.fetch(1, timeout=_FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except Exception as exc:  # NATS away: nats-py reconnects; try again shortly
                log.warning("alert fetch failed: %s", type(exc).__name__, extra={"event": "alert.fetch_failed"})
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                await self._deliver(msg)

    async def _deliver(self, msg: Msg) -> None:
        try:
            alert = Alert.model_validate_json(msg.data)
        except ValueError:
            log.error("unreadable alert skipped", extra={"event": "alert.unreadable"})
            await msg.term()
            return
        alert_id = (msg.headers or {}).get("Nats-Msg-Id") or f"events:{msg.metadata.sequence.stream}"
        assert self._http is not None
        results = await asyncio.gather(
            *(
                post_alert(
                    self._http,
                    sink,
                    alert,
                    alert_id,
                    attempts=self._settings.alert_delivery_attempts,
                    wait_initial_s=self._wait_initial_s,
                )
                for sink in self._sinks
            )
        )
        self.delivered += sum(results)
        self.failed += len(results) - sum(results)
        await msg.ack()
