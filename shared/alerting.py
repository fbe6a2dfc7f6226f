"""Alert delivery: every alert on `events.alerts.>` reaches each sink set in settings, once.

One place delivers: `AlertDelivery`, run by the janitor service. Each sink has its own
durable pull consumer on EVENTS (`alert_delivery_<sink>`), shared by every janitor
replica, with one alert in flight at a time (`max_ack_pending` 1). An alert is
acknowledged only once its sink accepted it (or refused it for good with a 4xx); while
the sink keeps failing, the alert is handed back (`nak` with a growing delay, up to
`_REDELIVER_MAX_S`) and nothing after it goes out, so when the receiver comes back it
gets every alert it missed, in order, once each. JetStream keeps the consumer's place,
so a restart of every janitor loses nothing; the wait is bounded only by EVENTS' age
limit (`PULSE_EVENTS_MAX_AGE_DAYS`). A consumer is created at its sink's first start
with `DeliverPolicy.NEW`: turning a sink on does not send the last week of alerts.
`shared/readmodel/alerts.py` reads each consumer's backlog for `pulse alerts`/`status`.

Sinks (docs/alerts.md has the receiver's side):
- a generic webhook (`PULSE_ALERT_WEBHOOK_URL`): the alert as JSON, signed with
  HMAC-SHA256 over `<timestamp>.<body>` with `PULSE_ALERT_WEBHOOK_SECRET`, in
  `X-Pulse-Signature: sha256=<hex>`, the timestamp (Unix seconds) in `X-Pulse-Timestamp`,
  and `X-Pulse-Alert-Id` for receivers that de-duplicate;
- a Slack-compatible incoming webhook (`PULSE_ALERT_SLACK_WEBHOOK_URL`): `{"text": ...}`.

Each delivery POSTs with quick retries (stamina) on transport errors, 429 and 5xx, up to
`PULSE_ALERT_DELIVERY_ATTEMPTS`, before the alert is handed back; a 4xx other than 429 is
a refusal, logged and not retried. The sinks never wait for each other, and nothing here
is on a run's path (runs only publish the alert to NATS).
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
from enum import StrEnum
from typing import Protocol

import httpx
import nats.errors
import nats.js.errors
import stamina
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
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
#: The consumer's ack wait: longer than all quick retries of one delivery together.
_ACK_WAIT_S = 600.0
#: A failing sink's alert is tried again after this long, then twice as long each time ...
_REDELIVER_AFTER_S = 10.0
#: ... but at most this long: a receiver that comes back gets its alerts within minutes.
_REDELIVER_MAX_S = 300.0


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


class Outcome(StrEnum):
    """What became of one delivery of an alert to a sink."""

    #: The receiver answered 2xx/3xx.
    ACCEPTED = "accepted"
    #: The receiver answered a 4xx other than 429: it will not take this alert, ever.
    REFUSED = "refused"
    #: Transport errors, 429 or 5xx on every try: the receiver may take it later.
    FAILING = "failing"


class _Retry(Exception):
    """A try that may succeed later (transport error, 429, 5xx)."""


async def post_alert(
    http: httpx.AsyncClient, sink: Sink, alert: Alert, alert_id: str, *, attempts: int, wait_initial_s: float = 0.5
) -> Outcome:
    """POST `alert` to `sink`, retrying transient failures with backoff."""
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
                    _log_failure(sink, alert_id, f"refused with HTTP {response.status_code}; not sent again")
                    return Outcome.REFUSED
        return Outcome.ACCEPTED
    except _Retry as exc:
        _log_failure(sink, alert_id, f"still failing after {attempts} tries ({exc}); kept to send again")
        return Outcome.FAILING


def _log_failure(sink: Sink, alert_id: str, why: str) -> None:
    log.error(
        "alert not delivered to the %s sink",
        sink.name,
        extra={"event": "alert.delivery_failed", "sink": sink.name, "alert_id": alert_id, "reason": why},
    )


def redeliver_delay(deliveries: int, first_s: float) -> float:
    """How long a failing sink's alert waits before its next delivery: doubling, at most `_REDELIVER_MAX_S`."""
    return min(_REDELIVER_MAX_S, first_s * 2.0 ** max(0, min(deliveries - 1, 20)))


class AlertDelivery:
    """Delivers each alert of `events.alerts.>` to every sink, in order, once across all replicas.

    `await start()` connects (its own NATS connection), creates each sink's durable
    consumer if it is missing and starts one delivery loop per sink; `await stop()` lets
    the alerts in hand finish (bounded), hands back any still unsent, and disconnects.
    `redeliver_after_s` is the first wait before a failing sink's alert is tried again.
    """

    def __init__(
        self,
        settings: Settings,
        sinks: list[Sink],
        *,
        name: str = "alert-delivery",
        wait_initial_s: float = 0.5,
        redeliver_after_s: float = _REDELIVER_AFTER_S,
    ) -> None:
        self._settings = settings
        self._sinks = sinks
        self._name = name
        self._wait_initial_s = wait_initial_s
        self._redeliver_after_s = redeliver_after_s
        self._nats: NatsClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.delivered = 0  # accepted by a sink
        self.failed = 0  # refused by a sink (4xx): not sent again
        self.handed_back = 0  # a sink kept failing: the alert waits for its next delivery

    def __repr__(self) -> str:
        sinks = ",".join(sink.name for sink in self._sinks)
        return (
            f"<AlertDelivery sinks={sinks} delivered={self.delivered} failed={self.failed} "
            f"handed_back={self.handed_back}>"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertDelivery | None:
        """The delivery for the sinks in settings, or None when none is configured."""
        sinks = sinks_from_settings(settings)
        return cls(settings, sinks) if sinks else None

    async def start(self) -> None:
        settings = self._settings
        self._nats = await connect_nats(settings, name=self._name)
        js = self._nats.jetstream(timeout=settings.nats_connect_timeout_s)
        self._http = httpx.AsyncClient(timeout=settings.alert_delivery_timeout_s)
        for sink in self._sinks:
            subscription = await self._bind(js, sink)
            self._tasks.append(asyncio.create_task(self._loop(sink, subscription), name=f"alert-delivery-{sink.name}"))
        log.info(
            "delivering alerts to %s",
            ", ".join(f"{sink.name} ({redact_url(sink.url.split('?', 1)[0])})" for sink in self._sinks),
            extra={"event": "alert.delivery_started"},
        )

    async def _bind(self, js: JetStreamContext, sink: Sink) -> JetStreamContext.PullSubscription:
        """The sink's durable consumer, created (from new alerts on) the first time."""
        names = self._settings.names
        durable = names.alert_delivery_consumer(sink.name)
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
                    max_ack_pending=1,  # in order, one at a time across replicas; a failing alert holds the rest
                    num_replicas=self._settings.stream_replicas,
                    description=f"delivers alerts to the {sink.name} sink",
                ),
            )
        return await js.pull_subscribe_bind(durable=durable, stream=names.events_stream)

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in self._tasks:
                task.cancel()  # an alert still in hand is handed back (see `_deliver`)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.close()
            self._nats = None

    async def _loop(self, sink: Sink, subscription: JetStreamContext.PullSubscription) -> None:
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
                await self._deliver(sink, msg)

    async def _deliver(self, sink: Sink, msg: Msg) -> None:
        try:
            alert = Alert.model_validate_json(msg.data)
        except ValueError:
            log.error("unreadable alert skipped", extra={"event": "alert.unreadable"})
            await msg.term()
            return
        alert_id = (msg.headers or {}).get("Nats-Msg-Id") or f"events:{msg.metadata.sequence.stream}"
        assert self._http is not None
        try:
            outcome = await post_alert(
                self._http,
                sink,
                alert,
                alert_id,
                attempts=self._settings.alert_delivery_attempts,
                wait_initial_s=self._wait_initial_s,
            )
        except asyncio.CancelledError:
            # Stopping mid-delivery: hand the alert back now, not after the ack wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        if outcome is Outcome.FAILING:
            delay_s = redeliver_delay(msg.metadata.num_delivered or 1, self._redeliver_after_s)
            self.handed_back += 1
            log.warning(
                "alert kept for the %s sink; trying again in %.0fs",
                sink.name,
                delay_s,
                extra={"event": "alert.delivery_deferred", "sink": sink.name, "alert_id": alert_id},
            )
            await msg.nak(delay=delay_s)
            return
        if outcome is Outcome.ACCEPTED:
            self.delivered += 1
        else:
            self.failed += 1
        await msg.ack()
