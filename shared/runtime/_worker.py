"""The worker: a FastStream `NatsBroker` with one pull subscriber per job, feeding the runner.

Each job's subscriber binds the job's durable consumer (created or updated first with
nats-py `add_consumer`, since FastStream binds an existing durable as it is and never
updates it), pulls one message at a time and runs up to the job's `max_running`
attempts at once (`max_workers`), so the consumer's `max_ack_pending` bounds runs across
every replica and a busy worker never holds messages it is not running. The subscriber
uses `AckPolicy.MANUAL`: the runner (`runtime/_runner.py` and `retry.py`) settles the raw
nats-py message itself (ack, nak with delay, term, in_progress heartbeats).

The cancel hint is a core-NATS FastStream subscriber. Left on nats-py (no FastStream
API): stream, bucket and consumer create-or-update, the rate limiter's KV compare-and-set,
and the drain-mode/readiness probes (`consumer_info`, `stream_info`), all through
`broker.connection`, the broker's own nats-py client.

Known edge (FastStream's pull loop): a message the server hands to a fetch that is still
waiting when `stop()` begins is dropped by the stopping subscriber without a nak, so it
comes back after the ack wait (one delivery counted, no attempt recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsMessage, PullSub
from faststream.nats.subscriber.usecases.basic import LogicSubscriber
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pymongo import AsyncMongoClient

from shared.bus import connect_broker, ensure_topology, inbox_prefix
from shared.errors import ConfigError, SignalRejected, bounded
from shared.logs import SecretFilter, secret_values
from shared.names import JOBS
from shared.runlogs import RunLogShipper
from shared.runtime import _monitor as monitor
from shared.runtime import _suspend as suspend
from shared.runtime._broker import ServiceBroker
from shared.runtime._budgets import Budgets
from shared.runtime._health import STORE_READ_TIMEOUT_S, store_readable
from shared.runtime._heartbeat import hold_message
from shared.runtime._job import JobSpec
from shared.runtime._metrics import RuntimeMetrics
from shared.runtime._ratelimit import RateLimiter
from shared.runtime._records import (
    AttemptTakenOver,
    RunHeldElsewhere,
    SupersededDelivery,
    SupersededRequest,
    run_lease_s,
)
from shared.runtime._retry import infrastructure_delay_s, is_infrastructure_failure, unhandled_outcome
from shared.runtime._runner import Bound, RecordedNotAnnounced, Runtime, fail_unhandled, run_message
from shared.settings import JobPolicy, Settings
from shared.store import Database, Document, connect_store, ensure_indexes

log = logging.getLogger("shared.runtime")

#: How long one pull waits for a message before asking again (also bounds stop latency).
_FETCH_TIMEOUT_S = 1.0
#: Requests whose unexpected errors a worker remembers (the oldest is forgotten first):
#: only requests failing right now are kept, so this is never reached in practice.
_UNHANDLED_TRACKED = 1024


async def _keep_raw(message: StreamMessage[Any]) -> None:
    """Decoder that decodes nothing: the runner parses and validates the raw payload itself
    (an invalid one is dead-lettered there), so FastStream must not try JSON first."""


def effective_policy(settings: Settings, spec: JobSpec) -> JobPolicy:
    """The policy a job runs with: the spec's override, else `settings.jobs.<name>`.

    Raises:
        ConfigError: the job has neither.
    """
    if spec.policy is not None:
        return spec.policy
    try:
        return settings.jobs.for_job(spec.name)
    except KeyError:
        raise ConfigError(
            f"job {spec.name!r} has no policy: it is not one of {list(JOBS)} in settings, "
            "so declare it with job(..., policy=JobPolicy(...))"
        ) from None


class Worker:
    """Consumes the requests of `specs` until stopped.

    Args:
        settings: connection settings, policies and names.
        specs: the jobs this worker runs (from `@job(...)`).
        service: name shown in logs and in the NATS connection list.

    Example:
        worker = Worker(settings, [my_job])
        await worker.start()
        await worker.run_until_idle(timeout_s=30)   # drain mode for tests and benchmarks
        await worker.stop()

    A service runs the same steps as FastStream app hooks instead of `start`/`stop`
    (`shared.runtime._service.worker_app`): `setup` before the broker starts, `after_start`
    after it, `before_stop` before it stops, `close` after.
    """

    def __init__(self, settings: Settings, specs: Sequence[JobSpec], *, service: str = "worker") -> None:
        names = [spec.name for spec in specs]
        if not specs or len(set(names)) != len(names):
            raise ConfigError(f"a worker needs one or more jobs with distinct names, got {names}")
        self.settings = settings
        self.service = service
        self.jobs = [Bound(spec, effective_policy(settings, spec)) for spec in specs]
        self.metrics = RuntimeMetrics()
        self.worker_id = f"{service}@{socket.gethostname()}:{os.getpid()}"
        self.runs_started = 0
        #: Messages this worker settled (acked, nak'ed with a decision, or termed).
        self.settled = 0
        self.broker = ServiceBroker(
            settings, name=self.worker_id, decoder=_keep_raw, graceful_timeout=settings.ack_wait_s
        )
        self._subscribers: list[LogicSubscriber[Any]] = []
        self._in_flight = 0
        #: Deliveries whose handling raised an unexpected error, by the request's stream sequence.
        self._unhandled: dict[int, int] = {}
        self._nats: NatsClient | None = None
        self._mongo: AsyncMongoClient[Document] | None = None
        self._http: httpx.AsyncClient | None = None
        self._runtime: Runtime | None = None
        self._stale_task: asyncio.Task[None] | None = None
        self._log_shipper: RunLogShipper | None = None
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        jobs = ",".join(b.spec.name for b in self.jobs)
        return f"<Worker {self.worker_id} jobs={jobs} started={self.runs_started} in_flight={self._in_flight}>"

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the worker is not started; await worker.start() first")
        return self._runtime

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, set up streams, buckets, indexes and consumers, and start consuming.

        Raises:
            BusUnavailable, StoreUnavailable: a server did not answer in time.
        """
        await self.setup()
        try:
            await self.broker.start()
        except BaseException:
            await self.close()
            raise
        await self.after_start()

    async def setup(self) -> None:
        """Connect the broker, create or update the topology, and register the subscribers.

        Everything up to `broker.start()`; on failure the connections made so far are closed.
        """
        try:
            await self._setup()
        except BaseException:
            await self.close()
            raise

    async def _setup(self) -> None:
        settings = self.settings
        self._nats = await connect_broker(self.broker, settings)
        js = self._nats.jetstream(timeout=settings.nats_connect_timeout_s)
        # Create-or-update the consumers first: FastStream binds an existing durable without updating it.
        buckets = await ensure_topology(
            js,
            settings,
            tuple(bound.spec.name for bound in self.jobs),
            policies={bound.spec.name: bound.policy for bound in self.jobs},
        )
        self._mongo, db = await connect_store(settings)
        await ensure_indexes(db)
        self._http = httpx.AsyncClient(
            timeout=settings.http_timeout_s, headers={"User-Agent": "marketpulse/0.1 (+job runtime)"}
        )
        scrubber = SecretFilter(secret_values(settings))
        self._runtime = Runtime(
            settings=settings,
            names=settings.names,
            db=db,
            nats=self._nats,
            js=js,
            http=self._http,
            limiter=RateLimiter(buckets[settings.names.ratelimit_bucket], dict(settings.rate_limits)),
            budgets=Budgets(db, dict(settings.quotas)),
            metrics=self.metrics,
            worker_id=self.worker_id,
            scrub=scrubber.scrub,
        )
        for bound in self.jobs:
            await monitor.register_job(db, bound.spec.name)
            self._subscribe(bound)

    def _subscribe(self, bound: Bound) -> None:
        names = self.settings.names
        name = bound.spec.name
        jobs = self.broker.subscriber(
            names.job_subject(name),
            stream=JStream(names.jobs_stream, declare=False),  # ours: created by ensure_stream
            durable=names.consumer_name(name),
            pull_sub=PullSub(batch_size=1, timeout=_FETCH_TIMEOUT_S),
            ack_policy=AckPolicy.MANUAL,
            max_workers=bound.policy.max_running,
            no_reply=True,
            # Pull fetches reply to this inbox: our own NATS user's (`bus.inbox_prefix`).
            inbox_prefix=f"{inbox_prefix(self.settings) or '_INBOX'}.".encode(),
        )
        jobs(self._job_handler(bound))
        cancel = self.broker.subscriber(names.cancel_subject(name), no_reply=True)
        cancel(self._on_cancel_hint)
        # One replica takes each signal (queue group) and answers the sender.
        signals = self.broker.subscriber(names.signal_subject(name), queue=f"{names.consumer_name(name)}_signals")
        signals(self._on_signal)
        self._subscribers.append(jobs)

    def _job_handler(self, bound: Bound) -> Callable[[NatsMessage], Awaitable[None]]:
        async def handle(msg: NatsMessage) -> None:
            self.runs_started += 1
            self._in_flight += 1
            try:
                async with hold_message(msg.raw_message, self.settings.heartbeat_interval_s):
                    await run_message(self.runtime, bound, msg.raw_message)
                self.settled += 1
                self._unhandled.pop(msg.raw_message.metadata.sequence.stream, None)
            except Exception as exc:
                await self._put_back(bound, msg.raw_message, exc)
            finally:
                self._in_flight -= 1

        handle.__name__ = f"run_{bound.spec.name}"
        return handle

    async def _put_back(self, bound: Bound, msg: Msg, exc: Exception) -> None:
        """A delivery the runtime could not finish: nak it with a bounded backoff, or leave it.

        Store or NATS unreachable (before or after the run): nak'ed, and no attempt is
        counted (attempts are counted when an attempt starts). A delivery superseded by
        a later one of its message (it outlived the ack wait), or whose attempt was
        taken over while it ran, is left alone; a message
        superseded by a later message of its run is acked; a run held by a live attempt
        elsewhere is nak'ed for one lease. Anything else is a bug:
        see `_on_unhandled`. Either way the runner's conditional writes make the repeat safe.
        """
        job = bound.spec.name
        delivery = msg.metadata.num_delivered
        delay = infrastructure_delay_s(delivery, self.settings.ack_wait_s)
        extra = {"job": job, "worker": self.worker_id, "delivery": delivery}
        if isinstance(exc, SupersededDelivery):
            # Settling would ack or nak the message the newer delivery holds.
            log.info("%s; it is left to that delivery", exc, extra={**extra, "event": "run.superseded"})
            return
        if isinstance(exc, AttemptTakenOver):  # the same: the delivery that took the run over settles it
            log.warning("%s; the message is left to that delivery", exc, extra={**extra, "event": "run.taken_over"})
            return
        if isinstance(exc, SupersededRequest):
            log.info("%s; it is acked", exc, extra={**extra, "event": "run.superseded"})
            with contextlib.suppress(Exception):  # NATS away: it comes back and is refused again
                await msg.ack()
            return
        if isinstance(exc, RunHeldElsewhere):
            delay = run_lease_s(self.settings.heartbeat_interval_s, self.settings.ack_wait_s)
            log.info("%s; put back for %.1fs", exc, delay, extra={**extra, "event": "run.held_elsewhere"})
        elif isinstance(exc, RecordedNotAnnounced):
            log.warning(
                "run %s is recorded %s, but its events could not be published (%s); "
                "they are published when the request comes back in %.1fs",
                exc.record.run_id,
                exc.record.status.value,
                type(exc.cause).__name__,
                delay,
                extra={**extra, "event": "run.publish_deferred", "run_id": exc.record.run_id},
            )
        elif is_infrastructure_failure(exc):
            self.metrics.deferred.labels(job=job).inc()
            log.warning(
                "a request of %s was put back for %.1fs without counting an attempt: %s",
                job,
                delay,
                self.runtime.scrub(f"{type(exc).__name__}: {exc}"[:300]),
                extra={**extra, "event": "run.deferred"},
            )
        else:
            await self._on_unhandled(bound, msg, exc, extra)
            return
        with contextlib.suppress(Exception):  # NATS itself may be away: then the ack wait brings it back
            await msg.nak(delay=delay)

    async def _on_unhandled(self, bound: Bound, msg: Msg, exc: Exception, extra: dict[str, Any]) -> None:
        """An unexpected error (a bug): the request comes back after the ack wait, a bounded number of times.

        The traceback is logged at the first such delivery, a line at the next ones. At
        `unhandled_error_deliveries` the run is failed with the error and a dead letter
        (`unhandled_outcome`, `fail_unhandled`). Deliveries are counted by this process,
        so with R replicas a request comes back at most R times that many.
        """
        seq = msg.metadata.sequence.stream
        count = self._unhandled.pop(seq, 0) + 1
        limit = self.settings.unhandled_error_deliveries
        error = self.runtime.scrub(bounded(f"{type(exc).__name__}: {exc}"))
        extra = {**extra, "event": "run.error", "unhandled": count}
        job = bound.spec.name
        if count == 1:
            log.error(
                "a request of %s could not be handled (%d of %d deliveries before its run is failed)",
                job,
                count,
                limit,
                exc_info=exc,
                extra=extra,
            )
        else:
            log.error(
                "a request of %s could not be handled again (%d of %d): %s", job, count, limit, error, extra=extra
            )
        outcome = unhandled_outcome(error, count, limit)
        if outcome is not None:
            try:
                await fail_unhandled(self.runtime, bound, msg, outcome)
                self.settled += 1
                return
            except Exception as unreachable:  # the store or NATS is away: put back, try again
                self._remember_unhandled(seq, count)
                if isinstance(unreachable, RecordedNotAnnounced) or is_infrastructure_failure(unreachable):
                    await self._put_back(bound, msg, unreachable)
                else:  # fail_unhandled lets nothing else out; never loop back into this method
                    log.error("ending a request of %s failed: %r", job, unreachable, extra=extra)
                return
        self._remember_unhandled(seq, count)  # left unsettled: it comes back after the ack wait

    def _remember_unhandled(self, seq: int, count: int) -> None:
        self._unhandled[seq] = count
        if len(self._unhandled) > _UNHANDLED_TRACKED:
            del self._unhandled[next(iter(self._unhandled))]

    async def after_start(self) -> None:
        """Start the stale-run monitor and the run-log shipper, and log that the worker is consuming."""
        self._stale_task = asyncio.create_task(self._watch_stale(), name="stale-monitor")
        if self._log_shipper is None:
            self._log_shipper = RunLogShipper(self.settings, name=f"{self.worker_id}:logs")
            await self._log_shipper.start()
        log.info(
            "worker %s started",
            self.worker_id,
            extra={"event": "worker.started", "worker": self.worker_id, "jobs": [b.spec.name for b in self.jobs]},
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop fetching, let running attempts finish (up to `timeout_s`), then disconnect.

        Attempts still running after `timeout_s` are interrupted; their requests are not
        acked and come back to another worker after the ack wait.
        """
        await self.before_stop(timeout_s)
        # Subscribers stop fetching, wait for running handlers (graceful timeout), cancel the
        # rest; then the broker drains its connection (or says it could not).
        await self.broker.stop()
        await self.close()

    async def before_stop(self, timeout_s: float | None = None) -> None:
        """Stop the stale monitor and set how long the broker's stop waits for running attempts."""
        self._stopping.set()
        if timeout_s is not None:
            # FastStream reads its graceful timeout from the broker config when stopping.
            self.broker.config.broker_config.graceful_timeout = timeout_s
        if self._stale_task is not None:
            self._stale_task.cancel()
            await asyncio.gather(self._stale_task, return_exceptions=True)
            self._stale_task = None

    async def close(self) -> None:
        """Close the NATS, HTTP and MongoDB clients (after the broker stopped)."""
        if self._log_shipper is not None:
            await self._log_shipper.stop()  # before NATS closes: its last lines go out first
            self._log_shipper = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._nats is not None and not self._nats.is_closed:
            with contextlib.suppress(Exception):
                await self._nats.close()
        if self._mongo is not None:
            await self._mongo.close()
            self._mongo = None
        if self._runtime is not None:
            log.info(
                "worker %s stopped after %d runs",
                self.worker_id,
                self.runs_started,
                extra={"event": "worker.stopped", "worker": self.worker_id},
            )

    # -- consuming ---------------------------------------------------------------------

    async def _on_cancel_hint(self, msg: NatsMessage) -> None:
        # A hint only: the `cancels` entry is the truth, seen at the next heartbeat.
        run_id = msg.raw_message.data.decode(errors="replace")
        control = self.runtime.controls.get(run_id)
        if control is not None:
            control.cancel()
        else:  # a sleeping or waiting workflow ends now (a no-op for any other run)
            rt = self.runtime
            await suspend.cancel_suspended(rt.db, rt.js, rt.names, run_id)

    async def _on_signal(self, msg: NatsMessage) -> dict[str, Any]:
        """A signal for a waiting workflow: headers name the run and the signal, the body is JSON."""
        rt = self.runtime
        headers = msg.raw_message.headers or {}
        run_id, name = headers.get(suspend.RUN_ID_HEADER), headers.get(suspend.SIGNAL_HEADER)
        if not run_id or not name:
            return {"error": f"a signal needs the headers {suspend.RUN_ID_HEADER} and {suspend.SIGNAL_HEADER}"}
        try:
            payload = json.loads(msg.raw_message.data) if msg.raw_message.data else None
            await suspend.deliver_signal(
                rt.db, rt.js, rt.names, run_id, name, payload, max_bytes=self.settings.step_results_max_bytes
            )
        except (ValueError, SignalRejected) as exc:
            return {"error": str(exc) if isinstance(exc, SignalRejected) else f"the body is not JSON: {exc}"}
        return {"run_id": run_id, "signal": name, "delivered": True}

    async def _watch_stale(self) -> None:
        # Often enough to alert within a fifth of the shortest stale_after, never more than
        # once a heartbeat: on FerretDB the last-success lookup scans the job's runs.
        shortest = min(bound.policy.stale_after_s for bound in self.jobs)
        interval = min(60.0, max(self.settings.heartbeat_interval_s, shortest / 5))
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if self._stopping.is_set():
                return
            await self.check_stale()

    async def check_stale(self) -> None:
        """Raise `stale` alerts and refresh the time-since-success gauges (runs periodically)."""
        rt = self.runtime
        for bound in self.jobs:
            name = bound.spec.name
            try:
                await monitor.check_stale(rt.db, rt.js, rt.names, name, bound.policy.stale_after_s)
                last = await monitor.last_success(rt.db, name)
                if last is not None:
                    self.metrics.observe_success_time(name, last.timestamp())
            except Exception as exc:
                log.warning(
                    "stale check of %s failed: %s",
                    name,
                    type(exc).__name__,
                    extra={"event": "worker.stale_check_failed", "job": name},
                )

    # -- drain mode and readiness --------------------------------------------------------

    async def is_idle(self) -> bool:
        """True when no request of these jobs is waiting, pending redelivery or running."""
        if self._in_flight:
            return False
        rt = self.runtime
        for bound in self.jobs:
            info = await rt.js.consumer_info(rt.names.jobs_stream, rt.names.consumer_name(bound.spec.name))
            if info.num_pending or info.num_ack_pending:
                return False
        state = await rt.js.stream_info(rt.names.jobs_stream, subjects_filter=rt.names.jobs_stream_subjects[0])
        subjects = {rt.names.job_subject(b.spec.name) for b in self.jobs}
        # Work-queue messages are deleted when acked or termed; a nak'ed one waits here.
        return not any(count for subject, count in (state.state.subjects or {}).items() if subject in subjects)

    async def run_until_idle(self, timeout_s: float = 30.0, *, settled: int = 0) -> None:
        """Return once every request has been settled (burst mode), or raise TimeoutError.

        Idle is exact, not a quiet period: an unsettled request is still in the
        work-queue stream (waiting, nak'ed with a delay, or awaiting redelivery) or
        pending on the consumer, and one being run is in flight.

        Args:
            timeout_s: longest time to wait.
            settled: also wait until this worker has settled at least this many messages
                in all (for callers that publish and drain before the first fetch).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.settled >= settled and await self.is_idle():
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"jobs {[b.spec.name for b in self.jobs]} still busy after {timeout_s:g}s ({self.settled} settled)"
        )

    async def readiness_nats(self) -> bool:
        """Readiness check: the broker's NATS connection is up."""
        return self._nats is not None and self._nats.is_connected

    async def readiness_mongo(self) -> bool:
        """Readiness check: MongoDB answers a real read within `STORE_READ_TIMEOUT_S`."""
        if self._runtime is None:
            return False
        return await store_readable(self._runtime.db, STORE_READ_TIMEOUT_S)

    async def readiness_consumers(self) -> bool:
        """Readiness check: every job's subscriber is running and its durable consumer answers."""
        if self._runtime is None or not self._nats or not self._nats.is_connected:
            return False
        if len(self._subscribers) != len(self.jobs) or not all(sub.running for sub in self._subscribers):
            return False
        rt = self._runtime
        for bound in self.jobs:
            await rt.js.consumer_info(rt.names.jobs_stream, rt.names.consumer_name(bound.spec.name), timeout=1.5)
        return True

    @property
    def db(self) -> Database:
        return self.runtime.db
