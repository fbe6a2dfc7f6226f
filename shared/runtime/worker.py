"""The worker: connects, binds each job's durable consumer, and feeds deliveries to the runner.

One pull loop per allowed concurrent run of a job (1 by default), each fetching one
message at a time from the job's durable consumer, so the consumer's `max_ack_pending`
(from the job's overlap policy) bounds runs across every replica, and a busy worker never
holds messages it is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import replace

import httpx
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from pymongo import AsyncMongoClient

from shared.bus import (
    SPARE_DELIVERIES,
    consumer_config,
    ensure_kv,
    ensure_stream,
    kv_configs,
    nats_connect_options,
    stream_configs,
)
from shared.errors import BusUnavailable, ConfigError
from shared.logs import SecretFilter, secret_values
from shared.names import JOBS
from shared.runtime import monitor
from shared.runtime.job import JobSpec
from shared.runtime.metrics import RuntimeMetrics
from shared.runtime.ratelimit import RateLimiter
from shared.runtime.runner import Bound, Runtime, run_message
from shared.settings import JobPolicy, Settings
from shared.store import Database, Document, connect_store, ensure_indexes

log = logging.getLogger("shared.runtime")

#: How long one pull waits for a message before asking again (also bounds stop latency).
_FETCH_TIMEOUT_S = 1.0
_RECONNECT_PAUSE_S = 0.5


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
            "so declare it with job(..., policy=JobPolicy(...))") from None


def job_consumer_config(settings: Settings, name: str, policy: JobPolicy) -> ConsumerConfig:
    """The durable consumer of a job, from its effective policy (like `bus.consumer_config`)."""
    if name in JOBS and settings.jobs.for_job(name) == policy:
        return consumer_config(settings, name)
    names = settings.names
    base = ConsumerConfig(durable_name=names.consumer_name(name), filter_subject=names.job_subject(name),
                          description=f"requests of job {name}")
    template = consumer_config(settings, JOBS[0])
    return replace(template, durable_name=base.durable_name, filter_subject=base.filter_subject,
                   description=base.description, max_deliver=policy.retry.max_attempts + SPARE_DELIVERIES,
                   max_ack_pending=policy.max_running)


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
        self._in_flight = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._bound: set[str] = set()
        self._nats: NatsClient | None = None
        self._mongo: AsyncMongoClient[Document] | None = None
        self._http: httpx.AsyncClient | None = None
        self._runtime: Runtime | None = None
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
        settings = self.settings
        self._nats = await self._connect_nats()
        js = self._nats.jetstream(timeout=settings.nats_connect_timeout_s)
        for stream in stream_configs(settings):
            await ensure_stream(js, stream)
        kv = None
        for bucket in kv_configs(settings):
            created = await ensure_kv(js, bucket)
            if bucket.bucket == settings.names.ratelimit_bucket:
                kv = created
        assert kv is not None
        self._mongo, db = await connect_store(settings)
        await ensure_indexes(db)
        self._http = httpx.AsyncClient(timeout=settings.http_timeout_s,
                                       headers={"User-Agent": "marketpulse/0.1 (+job runtime)"})
        scrubber = SecretFilter(secret_values(settings))
        self._runtime = Runtime(settings=settings, names=settings.names, db=db, nats=self._nats, js=js,
                                http=self._http, limiter=RateLimiter(kv, dict(settings.rate_limits)),
                                metrics=self.metrics, worker_id=self.worker_id, scrub=scrubber.scrub)
        for bound in self.jobs:
            await js.add_consumer(settings.names.jobs_stream,
                                  job_consumer_config(settings, bound.spec.name, bound.policy))
            await monitor.register_job(db, bound.spec.name)
            for slot in range(bound.policy.max_running):
                self._tasks.append(asyncio.create_task(self._consume(bound), name=f"consume:{bound.spec.name}:{slot}"))
        self._tasks.append(asyncio.create_task(self._watch_stale(), name="stale-monitor"))
        for bound in self.jobs:
            await self._nats.subscribe(settings.names.cancel_subject(bound.spec.name), cb=self._on_cancel_hint)
        log.info("worker %s started: %s", self.worker_id, [b.spec.name for b in self.jobs],
                 extra={"event": "worker.started", "worker": self.worker_id})

    async def _connect_nats(self) -> NatsClient:
        settings = self.settings

        async def _quiet(_: Exception) -> None:  # disconnects are reported by /readyz, not per try
            return None

        options = nats_connect_options(settings, name=self.worker_id)
        try:
            client: NatsClient = await asyncio.wait_for(nats.connect(error_cb=_quiet, **options),
                                                        timeout=settings.nats_connect_timeout_s)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusUnavailable(
                f"cannot reach NATS at {settings.nats_url_redacted} within {settings.nats_connect_timeout_s:g}s "
                f"({type(exc).__name__}). Check PULSE_NATS_URL and that the server is running.") from None
        return client

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop fetching, let running attempts finish (up to `timeout_s`), then disconnect.

        Attempts still running after `timeout_s` are interrupted; their requests are not
        acked and come back to another worker after the ack wait.
        """
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        if self._http is not None:
            await self._http.aclose()
        if self._nats is not None and not self._nats.is_closed:
            with contextlib.suppress(Exception):
                await self._nats.close()
        if self._mongo is not None:
            await self._mongo.close()
        log.info("worker %s stopped after %d runs", self.worker_id, self.runs_started,
                 extra={"event": "worker.stopped", "worker": self.worker_id})

    # -- consuming ---------------------------------------------------------------------

    async def _consume(self, bound: Bound) -> None:
        names = self.settings.names
        name = bound.spec.name
        sub = None
        while not self._stopping.is_set():
            try:
                if sub is None:
                    sub = await self.runtime.js.pull_subscribe_bind(durable=names.consumer_name(name),
                                                                  stream=names.jobs_stream)
                    self._bound.add(name)
                msgs = await sub.fetch(batch=1, timeout=_FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                # Disconnected or the consumer vanished: rebind after a pause.
                log.warning("consumer %s unavailable (%s); retrying", name, type(exc).__name__,
                            extra={"event": "worker.consumer_unavailable", "job": name})
                self._bound.discard(name)
                sub = None
                await asyncio.sleep(_RECONNECT_PAUSE_S)
                continue
            for msg in msgs:
                self.runs_started += 1
                self._in_flight += 1
                try:
                    await run_message(self.runtime, bound, msg)
                except Exception:
                    # Not settled: JetStream redelivers after the ack wait, and the runner's
                    # conditional writes make the repeat safe.
                    log.exception("run of %s could not be recorded; it will be redelivered", name,
                                  extra={"event": "run.error", "job": name})
                finally:
                    self._in_flight -= 1

    async def _on_cancel_hint(self, msg: Msg) -> None:
        # A hint only: the record's cancel_requested is the truth, seen at the next heartbeat.
        control = self.runtime.controls.get(msg.data.decode(errors="replace"))
        if control is not None:
            control.cancel()

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
                log.warning("stale check of %s failed: %s", name, type(exc).__name__,
                            extra={"event": "worker.stale_check_failed", "job": name})

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

    async def run_until_idle(self, timeout_s: float = 30.0, *, settle_s: float = 0.3) -> None:
        """Return once every request has been settled (burst mode), or raise TimeoutError.

        Args:
            timeout_s: longest time to wait.
            settle_s: how long the queue must stay idle, to cover a redelivery in flight.
        """
        deadline = time.monotonic() + timeout_s
        idle_since: float | None = None
        while time.monotonic() < deadline:
            if await self.is_idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= settle_s:
                    return
            else:
                idle_since = None
            await asyncio.sleep(0.05)
        raise TimeoutError(f"jobs {[b.spec.name for b in self.jobs]} still busy after {timeout_s:g}s")

    async def readiness_nats(self) -> bool:
        return self._nats is not None and self._nats.is_connected

    async def readiness_mongo(self) -> bool:
        if self._mongo is None:
            return False
        await self._mongo.admin.command("ping")
        return True

    async def readiness_consumers(self) -> bool:
        if self._runtime is None or not self._nats or not self._nats.is_connected:
            return False
        rt = self._runtime
        for bound in self.jobs:
            if bound.spec.name not in self._bound:
                return False
            await rt.js.consumer_info(rt.names.jobs_stream, rt.names.consumer_name(bound.spec.name), timeout=1.5)
        return True

    @property
    def db(self) -> Database:
        return self.runtime.db
