"""Alert delivery against a local HTTP receiver: once per alert, retried on 5xx, signed, never in a run's way;
kept while a receiver keeps failing (or is down, across a restart) and then delivered in order, once each."""

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
from shared.localstack import free_port
from shared.names import ALERT_SINKS
from shared.readmodel.alerts import alert_backlog
from shared.requests import publish_request
from shared.runtime import HttpServer, JobContext, job
from shared.runtime._events import publish_alert
from shared.schemas import Alert, AlertKind, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.helpers import wait_for
from tests.integration.test_cli_common import invoke
from tests.integration.test_runtime_support import WorkerFactory, policy, request_for, terminal_run
from tests.integration.test_runtime_support import start_worker as start_worker

SECRET = b"shared-webhook-secret"


@dataclass
class Receiver:
    """A local HTTP receiver: records every POST; can fail the first N, fail some paths while they are
    in `failing`, or hold answers until released."""

    fail_first: int = 0
    failing: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
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
        status = 503 if len(self.requests) <= self.fail_first or scope["path"] in self.failing else 200
        if status == 200:
            self.accepted.append((scope["path"], headers, body))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        self.answered += 1

    def bodies(self, path: str) -> list[bytes]:
        return [body for p, _, body in self.requests if p == path]

    def accepted_ids(self) -> list[str]:
        """The webhook's accepted alerts, by `X-Pulse-Alert-Id`, in the order they arrived."""
        return [headers[ALERT_ID_HEADER.lower()] for path, headers, _ in self.accepted if path == "/hook"]

    def accepted_details(self, path: str) -> list[str]:
        """What each accepted alert said (`detail`, or the Slack text's end), in order."""
        texts = [json.loads(body) for p, _, body in self.accepted if p == path]
        return [text["detail"] if "detail" in text else text["text"].rsplit(": ", 1)[-1] for text in texts]


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

    async def _start(base_url: str, *, attempts: int | None = None) -> AlertDelivery:
        """A delivery to `<base_url>/hook` and `/slack`; `attempts`: quick tries before an alert is handed back."""
        sinks: list[Sink] = [WebhookSink(f"{base_url}/hook", SECRET), SlackSink(f"{base_url}/slack")]
        tuned = settings if attempts is None else settings.model_copy(update={"alert_delivery_attempts": attempts})
        delivery = AlertDelivery(
            tuned, sinks, name=f"delivery-{len(started)}", wait_initial_s=0.05, redeliver_after_s=0.1
        )
        await delivery.start()
        started.append(delivery)
        return delivery

    yield _start
    for delivery in started:
        await delivery.stop(timeout_s=5)


def alert(job: str, detail: str) -> Alert:
    return Alert(job=job, kind=AlertKind.DEAD_LETTER, since=utcnow(), detail=detail)


async def settled(js: JetStreamContext, settings: Settings) -> bool:
    """Every alert published so far was taken and acknowledged by both sinks' delivery consumers."""
    names = settings.names
    for sink in ALERT_SINKS:
        info = await js.consumer_info(names.events_stream, names.alert_delivery_consumer(sink))
        if info.num_pending or info.num_ack_pending:
            return False
    return True


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


async def test_alerts_wait_for_a_failing_receiver_and_then_arrive_in_order_once_each(
    settings: Settings, js: JetStreamContext, receiver: tuple[Receiver, str], deliveries: Any
) -> None:
    app, url = receiver
    app.failing.add("/hook")  # the webhook answers 503 until it recovers; Slack works
    delivery = await deliveries(url, attempts=2)
    ids = [f"alert:order:{number}" for number in range(3)]
    for number, alert_id in enumerate(ids):
        await publish_alert(js, settings.names, alert("stats", f"letter {number}"), msg_id=alert_id)

    # Slack is not held back by the failing webhook; the webhook's first alert is handed back, again and again.
    await wait_for(lambda: _accepted(app, "/slack", 3), timeout_s=20, what="Slack to take all three alerts")
    await wait_for(lambda: _handed_back(delivery, 2), timeout_s=20, what="the webhook's alert to be handed back")
    assert app.accepted_ids() == []
    assert app.accepted_details("/slack") == ["letter 0", "letter 1", "letter 2"]

    # Operators see what waits, where: the read model, `pulse alerts` and `pulse status`.
    backlog = await alert_backlog(js, settings.names)
    assert [(sink.sink, sink.undelivered) for sink in backlog] == [("webhook", 3), ("slack", 0)]
    assert backlog[0].oldest_raised_at is not None
    listed = await asyncio.to_thread(invoke, settings, "alerts", "--since", "1h")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.count("dead_letter") == 3
    assert "alerts not delivered yet: webhook 3 (oldest raised 20" in listed.stderr
    status = await asyncio.to_thread(invoke, settings, "status", "--job", "stats")
    assert "alerts not delivered yet: webhook 3" in " ".join(status.stdout.split())

    tries_while_failing = len(app.bodies("/hook"))
    app.failing.clear()  # the receiver comes back
    await wait_for(lambda: settled(js, settings), timeout_s=30, what="the kept alerts to be delivered")
    assert app.accepted_ids() == ids  # in order, once each
    assert app.accepted_details("/hook") == ["letter 0", "letter 1", "letter 2"]
    assert len(app.accepted_details("/slack")) == 3  # nothing sent twice to the sink that worked
    assert tries_while_failing >= 4  # 2 quick tries per delivery, at least 2 deliveries
    assert delivery.failed == 0
    assert [sink.undelivered for sink in await alert_backlog(js, settings.names)] == [0, 0]


async def test_alerts_kept_for_a_receiver_that_is_down_survive_a_restart_of_the_delivery(
    settings: Settings, js: JetStreamContext, deliveries: Any
) -> None:
    port = free_port()  # nobody listens: connection refused
    url = f"http://127.0.0.1:{port}"
    first = await deliveries(url, attempts=1)
    ids = [f"alert:down:{number}" for number in range(3)]
    for number, alert_id in enumerate(ids):
        await publish_alert(js, settings.names, alert("whale_sync", f"letter {number}"), msg_id=alert_id)
    await wait_for(lambda: _handed_back(first, 2), timeout_s=20, what="both sinks to hand their alert back")
    await first.stop(timeout_s=5)  # every janitor goes away while the alerts wait

    app = Receiver()
    server = HttpServer(app, "127.0.0.1", port)  # type: ignore[arg-type]
    await server.start()  # the receiver comes back ...
    try:
        await deliveries(url, attempts=1)  # ... and so does a janitor
        await wait_for(lambda: settled(js, settings), timeout_s=30, what="the kept alerts to be delivered")
        assert app.accepted_ids() == ids
        assert app.accepted_details("/slack") == ["letter 0", "letter 1", "letter 2"]
        assert len(app.requests) == 6  # each alert once to each sink, no repeats
    finally:
        await server.stop()


async def _accepted(app: Receiver, path: str, count: int) -> bool:
    return len([p for p, _, _ in app.accepted if p == path]) >= count


async def _handed_back(delivery: AlertDelivery, count: int) -> bool:
    return delivery.handed_back >= count
