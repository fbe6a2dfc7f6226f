"""NATS JetStream wiring: connecting, and idempotent set-up of streams, buckets and consumers.

This is the one boundary where `nats` errors are translated (into `BusUnavailable` or
`PulseError`). FastStream brokers and raw nats-py clients are built from the same
options (`nats_connect_options`), so credentials and TLS are configured once.

Set-up is create-or-update: running `ensure_topology` twice leaves one of each, and a
changed setting (a job's max attempts, a stream's age limit) updates the live object.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.protocol.parser import AUTHORIZATION_VIOLATION

from shared.errors import BusUnavailable, ConfigError, PulseError
from shared.names import JOBS
from shared.settings import JobPolicy, Settings, read_secret_file

if TYPE_CHECKING:
    from faststream.nats import NatsBroker
    from faststream.security import BaseSecurity

log = logging.getLogger(__name__)

_DAY_S = 86_400.0
_SUBJECT_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Deliveries are not attempts: the runtime counts attempts in the run record, so a
#: request is redelivered for as long as it takes (an outage of the store or of NATS
#: costs no attempt) and the run record's count decides when the run has failed.
UNLIMITED_DELIVERIES = -1


def nats_password(settings: Settings) -> str | Callable[[], str]:
    """The NATS password as nats-py takes it: the value, or with `PULSE_NATS_PASSWORD_FILE`
    a callable that re-reads the file.

    nats-py calls it at every (re)connect, so a rotated password (Kubernetes updates a
    mounted secret in place) is used at the next reconnect without a restart. If the file
    cannot be read at that moment, the last password read is used.
    """
    assert settings.nats_password is not None
    path = settings.nats_password_file
    last = settings.nats_password.get_secret_value()
    if path is None:
        return last

    def read_password() -> str:
        nonlocal last
        try:
            last = read_secret_file(path, "PULSE_NATS_PASSWORD_FILE").get_secret_value()
        except ValueError as exc:
            log.warning("%s; using the password read before", exc, extra={"event": "nats.password_file_unreadable"})
        return last

    return read_password


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context for NATS when any TLS file is configured (or a tls:// URL is used)."""
    wants_tls = settings.nats_tls_ca_file or settings.nats_tls_cert_file or settings.nats_url.startswith("tls://")
    if not wants_tls:
        return None
    context = ssl.create_default_context(cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None)
    if settings.nats_tls_cert_file and settings.nats_tls_key_file:
        context.load_cert_chain(str(settings.nats_tls_cert_file), str(settings.nats_tls_key_file))
    return context


def inbox_prefix(settings: Settings) -> str | None:
    """The reply-inbox prefix of a client logged in as `PULSE_NATS_USER`: `_INBOX_<user>`.

    Each service's NATS user may subscribe only to its own inboxes (`shared/permissions.py`),
    so one service cannot read the replies meant for another. None (nats-py's `_INBOX`)
    without a user name, or when the name cannot be a subject token.
    """
    user = settings.nats_user
    return inbox_prefix_of(user) if user and _SUBJECT_TOKEN_RE.match(user) else None


def inbox_prefix_of(user: str) -> str:
    return f"_INBOX_{user}"


def nats_connect_options(settings: Settings, *, name: str) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` carrying servers, credentials and TLS."""
    options: dict[str, Any] = {
        "servers": [url.strip() for url in settings.nats_url.split(",")],
        "name": name,
        "connect_timeout": max(1, int(settings.nats_connect_timeout_s)),
        # Long-running services reconnect forever; callers that must fail fast (the CLI,
        # start-up) bound the whole connect with `connect_nats`'s timeout instead.
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = nats_password(settings)
    prefix = inbox_prefix(settings)
    if prefix is not None:
        options["inbox_prefix"] = prefix
    if settings.nats_token is not None:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds_file is not None:
        options["user_credentials"] = str(settings.nats_creds_file)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def broker_security(settings: Settings) -> BaseSecurity | None:
    """FastStream's `security=` object for our NATS credentials and TLS (None when neither is set).

    One mechanism at a time, as the server accepts: a creds file, a token, or a user and
    password; TLS rides along with any of them.

    Raises:
        ConfigError: more than one mechanism is configured, or a creds file is set but
            the `nkeys` package that signs with it is missing.
    """
    # Imported here, not at the top: the CLI imports this module and need not load FastStream.
    from faststream.nats.security import NatsCredentials, NatsSecurity, NatsToken, NatsUserPassword

    context = tls_context(settings)
    chosen = [
        name
        for name, value in (
            ("PULSE_NATS_USER", settings.nats_user),
            ("PULSE_NATS_TOKEN", settings.nats_token),
            ("PULSE_NATS_CREDS_FILE", settings.nats_creds_file),
        )
        if value
    ]
    if len(chosen) > 1:
        raise ConfigError(f"set only one NATS login, got {', '.join(chosen)}: the server accepts one mechanism")
    if settings.nats_creds_file is not None:
        try:
            return NatsCredentials.from_file(settings.nats_creds_file, ssl_context=context)
        except ImportError:
            raise ConfigError(
                "PULSE_NATS_CREDS_FILE needs the `nkeys` package to sign the login; "
                "install it or log in with a user or token"
            ) from None
    if settings.nats_token is not None:
        return NatsToken(settings.nats_token.get_secret_value(), ssl_context=context)
    if settings.nats_user:
        password = nats_password(settings) if settings.nats_password is not None else ""
        # FastStream passes the password through to nats-py, which accepts a callable.
        return NatsUserPassword(settings.nats_user, password, ssl_context=context)  # type: ignore[arg-type]
    return NatsSecurity(ssl_context=context) if context is not None else None


def broker_options(settings: Settings, *, name: str) -> dict[str, Any]:
    """Keyword arguments for FastStream's `NatsBroker`: the same servers, name and reconnect
    behaviour as `nats_connect_options`, with credentials and TLS as a `security=` object
    (FastStream deprecates its `token=`/`user_credentials=` arguments).
    """
    options = nats_connect_options(settings, name=name)
    return {
        "servers": options["servers"],
        "name": name,
        "connect_timeout": options["connect_timeout"],
        "max_reconnect_attempts": options["max_reconnect_attempts"],
        "reconnect_time_wait": options["reconnect_time_wait"],
        "inbox_prefix": options.get("inbox_prefix", "_INBOX"),
        "security": broker_security(settings),
    }


def _unreachable(settings: Settings, limit: float, exc: BaseException) -> BusUnavailable:
    """The one start-up error for a NATS that did not answer (the URL is redacted)."""
    return BusUnavailable(
        f"cannot reach NATS at {settings.nats_url_redacted} within {limit:g}s "
        f"({type(exc).__name__}: {str(exc) or 'no answer'}). Check PULSE_NATS_URL and that the server is running."
    )


async def connect_broker(broker: NatsBroker, settings: Settings) -> NatsClient:
    """Connect a FastStream broker (built from `broker_options`) and return its nats-py client.

    Raises:
        BusUnavailable: no answer within `settings.nats_connect_timeout_s` (or the login was
            refused); the message names the redacted URL.
    """
    # Reconnects are unlimited (a long-lived service survives a NATS restart), so nats-py
    # would keep trying forever: the first connect is bounded here instead.
    limit = settings.nats_connect_timeout_s
    try:
        client: NatsClient = await asyncio.wait_for(broker.connect(), timeout=limit)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise _unreachable(settings, limit, exc) from None
    return client


class RelogClient(NatsClient):
    """nats-py's client, except that the server revoking a live login reconnects instead of closing.

    nats-server drops a client whose login its reloaded config no longer accepts (a
    rotated password) with "Authorization Violation", and nats-py 2.16 then closes the
    client for good. Here that error on an established connection starts the usual
    reconnect loop instead, which logs in again with the credentials read afresh (see
    `nats_password`), retrying once a second until they are accepted.
    """

    async def _process_err(self, err_msg: str) -> None:
        if AUTHORIZATION_VIOLATION in err_msg.lower() and self.is_connected and self.options["allow_reconnect"]:
            await self._process_op_err(nats.errors.AuthorizationError())
            return
        await super()._process_err(err_msg)


async def open_client(**options: Any) -> NatsClient:
    """`nats.connect(**options)`, with a `RelogClient`."""
    client = RelogClient()
    await client.connect(**options)
    return client


async def connect_nats(settings: Settings, *, name: str, timeout_s: float | None = None) -> NatsClient:
    """Connect to NATS, or raise `BusUnavailable` naming the (redacted) URL within `timeout_s`.

    Args:
        settings: where and how to connect.
        name: client name shown in the server's connection list.
        timeout_s: overall bound; defaults to `settings.nats_connect_timeout_s`.
    """
    limit = timeout_s if timeout_s is not None else settings.nats_connect_timeout_s
    # Reconnects stay unlimited so a long-lived client survives a NATS restart; the first
    # connect is bounded by `limit` instead (nats-py keeps trying servers until then).
    options = nats_connect_options(settings, name=name)

    async def _quiet(_: Exception) -> None:  # nats-py logs every failed try otherwise
        return None

    try:
        client: NatsClient = await asyncio.wait_for(open_client(error_cb=_quiet, **options), timeout=limit)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise _unreachable(settings, limit, exc) from None
    return client


# -- streams ------------------------------------------------------------------------


def _limits_stream(
    settings: Settings, name: str, subjects: list[str], max_age_days: float, **more: Any
) -> StreamConfig:
    """A history stream: file storage, kept `max_age_days`, oldest messages dropped first."""
    return StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        max_age=max_age_days * _DAY_S,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
        **more,
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The JOBS, EVENTS and DLQ streams as DESIGN.md defines them, and LOGS (per-run log lines)."""
    names = settings.names
    replicas = settings.stream_replicas
    return [
        StreamConfig(
            name=names.jobs_stream,
            subjects=names.jobs_stream_subjects,
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=settings.duplicate_window_s,
            allow_msg_schedules=True,  # one-off delayed requests (Nats-Schedule: @at ...)
            allow_direct=True,
        ),
        _limits_stream(
            settings,
            names.events_stream,
            names.events_stream_subjects,
            settings.events_max_age_days,
            duplicate_window=settings.duplicate_window_s,
        ),
        _limits_stream(
            settings,
            names.dlq_stream,
            names.dlq_stream_subjects,
            settings.dlq_max_age_days,
            duplicate_window=settings.duplicate_window_s,
        ),
        # Per-run log lines (shared/runlogs.py): bounded by age and size, oldest dropped.
        _limits_stream(
            settings,
            names.logs_stream,
            names.logs_stream_subjects,
            settings.logs_max_age_days,
            max_bytes=settings.logs_max_bytes,
        ),
    ]


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it in place when its configuration changed."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError:
            pass  # another replica created it first: fall through to update
    await js.update_stream(config)


# -- KV buckets ----------------------------------------------------------------------


def kv_configs(settings: Settings) -> list[KeyValueConfig]:
    names = settings.names
    replicas = settings.stream_replicas
    return [
        KeyValueConfig(bucket=names.schedules_bucket, history=5, storage=StorageType.FILE, replicas=replicas),
        KeyValueConfig(bucket=names.ticker_bucket, history=1, storage=StorageType.FILE, replicas=replicas),
        KeyValueConfig(bucket=names.ratelimit_bucket, history=1, storage=StorageType.FILE, replicas=replicas),
    ]


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Bind to the bucket, creating it when missing."""
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            return await js.key_value(config.bucket)  # created concurrently


# -- consumers -----------------------------------------------------------------------


def consumer_config(settings: Settings, job: str, policy: JobPolicy | None = None) -> ConsumerConfig:
    """The one durable pull consumer of `job`, derived from its policy.

    Args:
        settings: names, ack wait and replicas.
        job: the job's name.
        policy: the job's policy; defaults to `settings.jobs.<job>` (required for a job
            that settings do not know, such as a test job).
    """
    names = settings.names
    policy = policy if policy is not None else settings.jobs.for_job(job)
    return ConsumerConfig(
        durable_name=names.consumer_name(job),
        filter_subject=names.job_subject(job),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=UNLIMITED_DELIVERIES,
        max_ack_pending=policy.max_running,
        num_replicas=settings.stream_replicas,
        description=f"requests of job {job}",
    )


async def ensure_consumer(js: JetStreamContext, settings: Settings, job: str, policy: JobPolicy | None = None) -> None:
    """Create or update the durable consumer of `job` (FastStream would not update it)."""
    await js.add_consumer(settings.names.jobs_stream, consumer_config(settings, job, policy))


async def ensure_topology(
    js: JetStreamContext,
    settings: Settings,
    jobs: tuple[str, ...] = JOBS,
    *,
    policies: Mapping[str, JobPolicy] | None = None,
) -> dict[str, KeyValue]:
    """Create or update every stream, bucket and the consumers of `jobs`. Idempotent.

    Args:
        js: JetStream of a connected client.
        settings: names, replicas, ack wait and the jobs' default policies.
        jobs: the jobs whose durable consumers to create or update.
        policies: policies overriding `settings.jobs` for some of `jobs` (test jobs).

    Returns:
        The KV buckets, by bucket name.

    Raises:
        PulseError: when the server refuses a configuration (the message says which).
        BusUnavailable: JetStream did not answer.
    """
    policies = policies or {}
    try:
        for stream in stream_configs(settings):
            await ensure_stream(js, stream)
        buckets = {config.bucket: await ensure_kv(js, config) for config in kv_configs(settings)}
        for job in jobs:
            await ensure_consumer(js, settings, job, policies.get(job))
    except nats.js.errors.APIError as exc:
        raise PulseError(
            f"NATS at {settings.nats_url_redacted} refused the JetStream set-up: {exc}. "
            "Is JetStream enabled (nats-server -js) and is the server 2.12 or newer?"
        ) from None
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise BusUnavailable(
            f"JetStream at {settings.nats_url_redacted} did not answer ({type(exc).__name__}); "
            "is JetStream enabled (nats-server -js)?"
        ) from None
    return buckets
