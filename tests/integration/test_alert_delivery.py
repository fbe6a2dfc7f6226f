"""Alert delivery against a local HTTP receiver: once per alert, retried on 5xx, signed, never in a run's way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.alerting import (
    ALERT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AlertDelivery,
    Sink,
    SlackSink,
    WebhookSink,
    verify,
)
from shared.errors import PermanentError
from shared.requests import publish_request
from shared.runtime import HttpServer, JobContext, job
from shared.runtime._events import publish_alert
from shared.schemas import Alert, AlertKind, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.helpers import wait_for
from tests.integration.test_runtime_support import WorkerFactory, policy, request_for, terminal_run
from tests.integration.test_runtime_support import start_worker as start_worker

SECRET = b"shared-webhook-secret"


@dataclass
class Receiver:
    """A local HTTP receiver: records every POST; can fail the first N or hold answers until released."""

    fail_first: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    answered: int = 0

    def __post_init__(self) -> None:
        self.release.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["path"], headers, body))
        await self.release.wait()
        status = 503 if len(self.requests) <= self.fail_first else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        self.answered += 1

    def bodies(self, path: str) -> list[bytes]:
        return [body for p, _, body in self.requests if p == path]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    app = Receiver()
    server = HttpServer(app, "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    yield app, f"http://127.0.0.1:{server.port}"
    app.release.set()
    await server.stop()


@pytest.fixture
async def deliveries(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[AlertDelivery]]]:
    started: list[AlertDelivery] = []

    async def _start(base_url: str) -> AlertDelivery:
        sinks: list[Sink] = [WebhookSink(f"{base_url}/hook", SECRET), SlackSink(f"{base_url}/slack")]
        delivery = AlertDelivery(settings, sinks, name=f"delivery-{len(started)}", wait_initial_s=0.05)
        await delivery.start()
        started.append(delivery)
        return delivery

    yield _start
    for delivery in started:
        await delivery.stop(timeout_s=5)


def alert(job: str, detail: str) -> Alert:
    return Alert(job=job, kind=AlertKind.DEAD_LETTER, since=utcnow(), detail=detail)


async def settled(js: JetStreamContext, settings: Settings) -> bool:
    """Every alert published so far was taken and acknowledged by the delivery consumer."""
    names = settings.names
    info = await js.consumer_info(names.events_stream, names.alert_delivery_consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_each_alert_is_delivered_once_to_each_sink_and_signed(
    settings: Settings, js: JetStreamContext, receiver: tuple[Receiver, str], deliveries: Any
) -> None:
    app, url = receiver
    await deliveries(url)
    await deliveries(url)  # a second replica: still once per alert
    for number in range(3):
        await publish_alert(js, settings.names, alert("stats", f"letter {number}"), msg_id=f"alert:t:{number}")
    await publish_alert(js, settings.names, alert("stats", "letter 0"), msg_id="alert:t:0")  # a repeat: deduplicated
    await wait_for(lambda: _count(app, 6), timeout_s=20, what="3 alerts on 2 sinks")
    await wait_for(lambda: settled(js, settings), timeout_s=10, what="the consumer to settle")
    assert len(app.requests) == 6

    hooks = [(headers, body) for path, headers, body in app.requests if path == "/hook"]
    assert sorted(json.loads(body)["detail"] for _, body in hooks) == ["letter 0", "letter 1", "letter 2"]
    for headers, body in hooks:
        assert headers["content-type"] == "application/json"
        assert verify(SECRET, headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()])
        assert not verify(b"another secret", headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()])
        assert not verify(SECRET, headers[TIMESTAMP_HEADER.lower()], body + b" ", headers[SIGNATURE_HEADER.lower()])
    assert {headers[ALERT_ID_HEADER.lower()] for headers, _ in hooks} == {"alert:t:0", "alert:t:1", "alert:t:2"}
    texts = [json.loads(body)["text"] for body in app.bodies("/slack")]
    assert all(text.startswith("[marketpulse] stats: dead_letter (since ") for text in texts)


async def test_a_5xx_is_retried_until_the_receiver_accepts(
    settings: Settings, js: JetStreamContext, receiver: tuple[Receiver, str], deliveries: Any
) -> None:
    app, url = receiver
    app.fail_first = 3  # the first three POSTs (of either sink) answer 503
    delivery = await deliveries(url)
    await publish_alert(js, settings.names, alert("whale_sync", "retry me"), msg_id="alert:t:retry")
    await wait_for(lambda: settled(js, settings), timeout_s=20, what="the alert to be delivered")
    assert len(app.requests) == 5  # 3 refused + 1 accepted per sink
    assert (delivery.delivered, delivery.failed) == (2, 0)
    assert {headers.get(ALERT_ID_HEADER.lower()) for path, headers, _ in app.requests if path == "/hook"} == {
        "alert:t:retry"
    }


async def test_a_slow_receiver_never_holds_up_a_run(
    settings: Settings,
    js: JetStreamContext,
    db: Database,
    receiver: tuple[Receiver, str],
    deliveries: Any,
    start_worker: WorkerFactory,
) -> None:
    app, url = receiver
    app.release.clear()  # the receiver takes every request and answers nothing until released
    await deliveries(url)

    @job("doomed", policy=policy())
    async def doomed(ctx: JobContext) -> None:
        raise PermanentError("the upstream table is gone")

    await start_worker([doomed])
    first, second = request_for("doomed"), request_for("doomed")
    for request in (first, second):
        await publish_request(js, settings.names, request)
    for request in (first, second):
        await wait_for(lambda r=request: terminal_run(db, r.run_id), timeout_s=15, what="the run to fail")  # type: ignore[misc]
    # Both runs ended (and dead-lettered) while the receiver still holds the first alert.
    assert app.answered == 0
    assert len(app.requests) >= 1
    app.release.set()
    await wait_for(lambda: settled(js, settings), timeout_s=20, what="the held alerts to be delivered")
    details = [json.loads(body)["detail"] for body in app.bodies("/hook")]
    assert sorted(d.split(" ")[1] for d in details) == sorted([first.run_id, second.run_id])


async def _count(app: Receiver, count: int) -> bool:
    return len(app.requests) >= count
