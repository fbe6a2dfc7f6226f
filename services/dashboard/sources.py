"""The dashboard's connections: NATS and MongoDB that may come and go, and the live event hub.

The dashboard must answer while either server is down (a banner, never a 500), so it
never waits on a dead server: NATS is connected in the background (and nats-py
reconnects by itself afterwards), MongoDB is pinged every few seconds, and pages skip
what is known to be down. The NATS connection is the one of the service's FastStream
broker (`DashboardBroker`, started by the app's lifespan like every service's), whose
start does not wait for a NATS that is down.

Run events and alerts arrive through one ordered consumer of the EVENTS stream (an
ephemeral push consumer starting at the newest message, recreated by nats-py at the
right sequence after a reconnect; no state is left on the server) and are fanned out to
every open Server-Sent-Events connection through bounded queues: a page too slow for
its queue never slows the others, it reads what its queue dropped from the stream. Each
event carries its stream sequence, the SSE event id: a browser that reconnects says the
last id it got (`Last-Event-ID`), and `missed(after)` reads what came since from the
stream itself (at most `REPLAY_LIMIT` events; beyond that the page reloads instead).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from shared.bus import connect_broker
from shared.errors import PulseError
from shared.runtime import ServiceBroker, store_readable
from shared.settings import Settings
from shared.store import Database, Document, ensure_indexes, make_client

log = logging.getLogger("services.dashboard")

#: How often MongoDB is pinged and a lost first NATS connect retried.
CHECK_INTERVAL_S = 2.0
#: Events buffered per open page before the oldest are dropped.
QUEUE_SIZE = 200
#: Most events sent again to a reconnecting page; a page that missed more reloads.
REPLAY_LIMIT = 1000


@dataclass(frozen=True)
class LiveEvent:
    """A run event or an alert, as received from EVENTS."""

    kind: str  # "run" or "alert"
    subject: str
    data: dict[str, Any]
    #: Its sequence in the EVENTS stream: the SSE event id.
    seq: int


#: Put in the queue of a page that fell more than `QUEUE_SIZE` events behind.
OVERFLOWED = LiveEvent("overflow", "", {}, 0)


@dataclass(frozen=True)
class Missed:
    """The events a reconnecting page missed, oldest first; `complete` False when there were too many."""

    events: list[LiveEvent]
    complete: bool
    #: The stream's last sequence when they were read (below a page's id after EVENTS was recreated).
    last_seq: int


class EventHub:
    """Fans live events out to subscribers (one bounded queue per open page)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[LiveEvent | None]] = set()
        #: The EVENTS sequence the feed has reached (pages start their live stream after it).
        self.last_seq = 0

    def subscribe(self) -> asyncio.Queue[LiveEvent | None]:
        queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LiveEvent | None]) -> None:
        self._queues.discard(queue)

    def publish(self, event: LiveEvent | None) -> None:
        """Deliver to every subscriber. None ends every stream.

        A full queue (a page slower than the events) is emptied and gets `OVERFLOWED`: its
        page reads what it lost from the stream (`Sources.missed`) rather than losing it.
        """
        if event is not None:
            self.last_seq = max(self.last_seq, event.seq)
        for queue in list(self._queues):
            if queue.full():
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(OVERFLOWED)
            queue.put_nowait(event)

    @property
    def listeners(self) -> int:
        return len(self._queues)


class DashboardBroker(ServiceBroker):
    """The dashboard's broker: its start leaves a NATS that is down to `Sources`' background connect.

    Every service's app starts its broker; a worker cannot work without NATS, but the
    dashboard must serve its pages (with a banner) while NATS is away. It has no
    subscribers, so a start after the connection is up has nothing else to do.
    """

    async def start(self) -> None:
        if self._connection is not None:
            await super().start()


class Sources:
    """NATS, MongoDB and the event hub, with what is up right now."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = EventHub()
        self.broker = DashboardBroker(settings, name="dashboard")
        self.nats: NatsClient | None = None
        self.mongo: AsyncMongoClient[Document] = make_client(settings)
        self.db: Database = self.mongo[settings.mongo_db]
        self.mongo_up = False
        self._feed: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._indexes_ready = False

    @property
    def nats_up(self) -> bool:
        return self.nats is not None and self.nats.is_connected

    @property
    def js(self) -> JetStreamContext:
        """JetStream, or `Unavailable` when NATS is not connected."""
        if self.nats is None or not self.nats.is_connected:
            raise Unavailable("NATS")
        return self.nats.jetstream(timeout=self.settings.nats_connect_timeout_s)

    def store(self) -> Database:
        """The database, or `Unavailable` when MongoDB did not answer the last ping."""
        if not self.mongo_up:
            raise Unavailable("MongoDB")
        return self.db

    async def nats_ready(self) -> bool:
        """Readiness: the NATS connection is up."""
        return self.nats_up

    async def mongo_ready(self) -> bool:
        """Readiness: a real read of the store answers (not the last ping's memory)."""
        return await store_readable(self.db)

    async def start(self) -> None:
        """Try each server once (bounded), then keep trying in the background; servers may be down."""
        await self._ping_mongo()
        await self._connect_nats()
        self._tasks = [
            asyncio.create_task(self._nats_loop(), name="dashboard-nats"),
            asyncio.create_task(self._mongo_loop(), name="dashboard-mongo"),
        ]

    async def stop(self) -> None:
        """End every live stream and stop the loops (before the broker stops and drains NATS)."""
        self.hub.publish(None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Close the MongoDB client (after the broker stopped)."""
        await self.mongo.close()

    async def missed(self, after: int) -> Missed:
        """The events after sequence `after` still in the stream, read from it (never more than `REPLAY_LIMIT`)."""
        js, names = self.js, self.settings.names
        state = (await js.stream_info(names.events_stream)).state
        if state.last_seq <= after:
            return Missed([], complete=True, last_seq=state.last_seq)
        first = max(after + 1, state.first_seq)
        if state.last_seq - first + 1 > REPLAY_LIMIT:
            return Missed([], complete=False, last_seq=state.last_seq)
        events = []
        for seq in range(first, state.last_seq + 1):
            try:
                msg = await js.get_msg(names.events_stream, seq)
            except nats.js.errors.NotFoundError:  # expired or deleted meanwhile
                continue
            event = self._event(msg.subject or "", msg.data or b"", seq)
            if event is not None:
                events.append(event)
        return Missed(events, complete=True, last_seq=state.last_seq)

    async def _nats_loop(self) -> None:
        while self.nats is None or self._feed is None:
            await asyncio.sleep(CHECK_INTERVAL_S)
            await self._connect_nats()

    async def _connect_nats(self) -> None:
        """One bounded first connect (nats-py reconnects by itself afterwards), then the event feed."""
        if self.nats is None:
            try:
                self.nats = await connect_broker(self.broker, self.settings)
            except PulseError as exc:
                log.warning("dashboard.nats_unreachable: %s", exc, extra={"event": "dashboard.nats_unreachable"})
                return
        if self._feed is None:
            await self._subscribe_feed()

    async def _subscribe_feed(self) -> None:
        """The ordered consumer of EVENTS right after its newest message; retried while the stream does not exist."""
        names = self.settings.names
        try:
            js = self.js
            newest = (await js.stream_info(names.events_stream)).state.last_seq
            # From the sequence read, not "new": nothing published in between is skipped.
            start = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=newest + 1)
            self._feed = await js.subscribe(
                names.events_stream_subjects[0], stream=names.events_stream, ordered_consumer=True, config=start,
                cb=self._on_event,
            )  # fmt: skip
            self.hub.last_seq = max(self.hub.last_seq, newest)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError, Unavailable) as exc:
            log.warning("dashboard.events_unavailable: %s", type(exc).__name__,
                        extra={"event": "dashboard.events_unavailable"})  # fmt: skip

    async def _on_event(self, msg: Msg) -> None:
        event = self._event(msg.subject, msg.data, msg.metadata.sequence.stream)
        if event is not None:
            self.hub.publish(event)

    def _event(self, subject: str, body: bytes, seq: int) -> LiveEvent | None:
        """A run event or alert from an EVENTS message; None for a body that is not a JSON object."""
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        alerts = self.settings.names.alerts_wildcard().removesuffix(">")
        return LiveEvent("alert" if subject.startswith(alerts) else "run", subject, data, seq)

    async def _mongo_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            await self._ping_mongo()

    async def _ping_mongo(self) -> None:
        try:
            await asyncio.wait_for(self.mongo.admin.command("ping"), timeout=self.settings.mongo_timeout_s)
            if not self._indexes_ready:
                await ensure_indexes(self.db)
                self._indexes_ready = True
            self.mongo_up = True
        except (PyMongoError, TimeoutError, PulseError):
            self.mongo_up = False


class Unavailable(Exception):
    """A server the page needs is down; the page shows a banner instead of that part."""

    def __init__(self, server: str) -> None:
        super().__init__(f"{server} is unreachable")
        self.server = server
