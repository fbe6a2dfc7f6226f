"""NATS permissions of every service, derived from `shared/names.py`: the one place that turns names into grants.

Each service connects as its own NATS user that may publish and subscribe only to what
it needs (DESIGN.md, "Edges of the system"). The grants are built from `Names`,
`JOB_SERVICE` and `SERVICES`, never spelled by hand, so a renamed subject or a job moved
to another service changes the deployed permissions with it. `render_authorization`
turns them into the `authorization { users = [...] }` block of `nats.conf`;
`deploy/generate_nats_config.py` writes that into the kustomize tree and a test checks
the committed file is current.

What each role may do (subjects shown without a namespace):

    every user   request the JetStream API it needs (`$JS.API....` with replies to its own
                 `_INBOX_<user>.>`, the inbox prefix its client uses),
                 and set up the streams and buckets idempotently (INFO/CREATE/UPDATE only:
                 never DELETE or PURGE)
    ticker       publish `jobs.<job>` for every job; write KV `ticker`; read KV `schedules`
    job service  bind its own consumers (`<job>` on JOBS): fetch, ack, nak, in-progress;
                 publish `events.runs.<job>.*`, `events.alerts.<job>`, `dlq.<job>` and
                 `logs.<job>` (run log lines) for the jobs it reports on; subscribe
                 `control.cancel.<job>` and `signals.<job>`;
                 publish `delayed.<job>.*` and `jobs.<job>`, read and delete its holding
                 messages (workflow wake-ups and resumes); publish `jobs.<other>` for
                 the jobs its jobs request (`requested_jobs`: `JOB_REQUESTS` and the
                 default `on_complete` follow-ups); write KV
                 `ratelimit`; read KV `schedules`
    janitor      also reports on every job: its watchdog marks any job's dead runs
                 `timed_out`, which publishes that job's run event and alert; and it
                 moves requests on subjects no job serves to `dlq.>` (list JOBS'
                 consumers, get and delete single JOBS messages, never purge); and it
                 delivers alerts: the durable consumers `alert_delivery_<sink>` on EVENTS
    dashboard    the operators' dashboard: read streams, consumers and buckets; publish
                 requests (trigger, re-run, replay, signal) and cancel hints; write KV
                 `schedules`; delete dead letters and held delayed requests, purge DLQ;
                 read EVENTS through an ordered consumer and single gets (live pages).
                 No stream, durable consumer or bucket configuration.
    operator     the `pulse` CLI: everything under the system's subjects and JetStream API

Example:
    >>> service_permissions(Names(), "whale_sync")["subscribe"]
    ['_INBOX_whale_sync.>', 'control.cancel.whale_sync', 'signals.whale_sync']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TypedDict

from shared.bus import inbox_prefix_of
from shared.chains import parse_follow_up
from shared.names import ALERT_SINKS, JOB_REQUESTS, JOB_SERVICE, JOBS, SERVICES, Names
from shared.settings import JobPolicies

#: The `pulse` CLI's user: it triggers, cancels, replays and edits schedules.
OPERATOR = "operator"
#: The operators' dashboard (services/dashboard): the CLI's actions, without administration.
DASHBOARD = "dashboard"
#: Every NATS user of the system, in the order they appear in `nats.conf`.
USERS: tuple[str, ...] = (*SERVICES, DASHBOARD, OPERATOR)

#: Jobs whose outcome a service records although it does not run them. The watchdog
#: (janitor) times out stalled runs of any job, and a timed-out run ends with its job's
#: run event and, past the failure threshold, its alert.
_REPORTS_ON_EVERY_JOB: frozenset[str] = frozenset({"janitor"})

#: The service that delivers alerts to the sinks in settings (shared/alerting.py).
_DELIVERS_ALERTS: frozenset[str] = frozenset({"janitor"})

_JS_API = "$JS.API"


def _inbox(user: str) -> str:
    """A user's own reply inboxes: clients logged in as `user` use this prefix (`bus.inbox_prefix`)."""
    return f"{inbox_prefix_of(user)}.>"


class Permissions(TypedDict):
    """Subjects one NATS user may publish to and subscribe to (allow lists; all else is denied)."""

    publish: list[str]
    subscribe: list[str]


def jobs_of(service: str) -> tuple[str, ...]:
    """The jobs `service` consumes (`JOB_SERVICE`), in `JOBS` order; empty for the ticker."""
    return tuple(job for job in JOBS if JOB_SERVICE[job] == service)


def requested_jobs(job: str) -> tuple[str, ...]:
    """The jobs whose requests a run of `job` publishes: its code's (`JOB_REQUESTS`) and its default follow-ups."""
    follow_ups = tuple(parse_follow_up(text).job for text in JobPolicies().for_job(job).on_complete)
    return tuple(dict.fromkeys(JOB_REQUESTS.get(job, ()) + follow_ups))


def password_variable(user: str) -> str:
    """The environment variable of the NATS server process that holds `user`'s password."""
    return f"NATS_PASSWORD_{user.upper()}"


# -- building blocks -------------------------------------------------------------------


def _topology_setup(names: Names) -> list[str]:
    """Idempotent set-up of streams and buckets (`bus.ensure_topology`) at every start.

    INFO, CREATE and UPDATE only: a service may create what is missing or re-apply the
    configuration, but no service user can delete or purge a stream.
    """
    streams = list(names.streams)
    streams += [_kv_stream(bucket) for bucket in names.kv_buckets]
    subjects = [f"{_JS_API}.INFO", f"{_JS_API}.STREAM.NAMES"]
    for stream in streams:
        subjects += [f"{_JS_API}.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE")]
    return subjects


def _consume(names: Names, job: str) -> list[str]:
    """Bind, fetch from and acknowledge on the durable consumer of `job` only."""
    return _consume_from(names.jobs_stream, names.consumer_name(job), names.job_subject(job))


def _consume_from(stream: str, consumer: str, filter_subject: str) -> list[str]:
    """Create, bind, fetch from and acknowledge on one durable consumer of `stream`."""
    return [
        # nats-py picks one of three create subjects by server version and filter.
        f"{_JS_API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{_JS_API}.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}",
        f"{_JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{_JS_API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        # ack, nak(delay), in_progress and term are publishes to the message's reply subject.
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def _resume(names: Names, job: str) -> list[str]:
    """Wake and resume workflows of `job`: schedule a wake-up, drop it, publish the request again."""
    stream = names.jobs_stream
    return [
        names.delayed_wildcard(job),
        names.job_subject(job),
        f"{_JS_API}.DIRECT.GET.{stream}.{names.delayed_wildcard(job)}",
        f"{_JS_API}.STREAM.MSG.DELETE.{stream}",
    ]


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _kv_read(bucket: str) -> list[str]:
    """Bind, get and watch a KV bucket, without writing to it."""
    stream = _kv_stream(bucket)
    return [
        f"{_JS_API}.DIRECT.GET.{stream}",
        f"{_JS_API}.DIRECT.GET.{stream}.>",
        f"{_JS_API}.STREAM.MSG.GET.{stream}",
        # A watch is an ordered ephemeral consumer with flow control.
        f"{_JS_API}.CONSUMER.CREATE.{stream}",
        f"{_JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{_JS_API}.CONSUMER.INFO.{stream}.>",
        f"{_JS_API}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _kv_write(bucket: str) -> list[str]:
    """Read and write a KV bucket (put, create and compare-and-set are publishes)."""
    return [*_kv_read(bucket), f"$KV.{bucket}.>"]


def _reports(names: Names, job: str) -> list[str]:
    """Record the outcome of a run of `job`: its run events, alerts, dead letters and log lines."""
    return [names.run_events_wildcard(job), names.alert_subject(job), names.dlq_subject(job), names.log_subject(job)]


def _unserved_sweep(names: Names) -> list[str]:
    """Find requests on subjects no job serves, move them to the DLQ (`runtime/_unserved.py`).

    Reading and deleting single messages of JOBS, never purging it.
    """
    stream = names.jobs_stream
    return [
        f"{_JS_API}.CONSUMER.LIST.{stream}",
        f"{_JS_API}.STREAM.MSG.GET.{stream}",
        f"{_JS_API}.STREAM.MSG.DELETE.{stream}",
        names.dlq_subject(">"),
    ]


def _unique(subjects: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(subjects))


# -- roles -------------------------------------------------------------------------------


def service_permissions(names: Names, service: str) -> Permissions:
    """The publish and subscribe allow lists of `service`'s NATS user.

    Args:
        names: the deployment's names (an empty namespace in production).
        service: one of `SERVICES`, or `OPERATOR` for the `pulse` CLI.

    Raises:
        ValueError: when `service` is not a known service (the message lists them).
    """
    if service == OPERATOR:
        return operator_permissions(names)
    if service == DASHBOARD:
        return dashboard_permissions(names)
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: expected one of {', '.join(USERS)}")
    publish = _topology_setup(names)
    subscribe = [_inbox(service)]
    if service == "ticker":
        publish += [names.job_subject(job) for job in JOBS]
        publish += _kv_write(names.ticker_bucket) + _kv_read(names.schedules_bucket)
    else:
        own = jobs_of(service)
        reported = JOBS if service in _REPORTS_ON_EVERY_JOB else own
        for job in own:
            publish += _consume(names, job) + _resume(names, job)
            publish += [names.job_subject(requested) for requested in requested_jobs(job)]
            subscribe += [names.cancel_subject(job), names.signal_subject(job)]
        for job in reported:
            publish += _reports(names, job)
        if service in _REPORTS_ON_EVERY_JOB:
            publish += _unserved_sweep(names)
        if service in _DELIVERS_ALERTS:
            for sink in ALERT_SINKS:
                consumer = names.alert_delivery_consumer(sink)
                publish += _consume_from(names.events_stream, consumer, names.alerts_wildcard())
        publish += _kv_write(names.ratelimit_bucket) + _kv_read(names.schedules_bucket)
    return Permissions(publish=_unique(publish), subscribe=_unique(subscribe))


def operator_permissions(names: Names) -> Permissions:
    """The `pulse` CLI: trigger, delay, cancel, replay, edit schedules, read everything.

    Operators administer the system, so they get the whole JetStream API of the account;
    the namespace still bounds the plain subjects they can reach.
    """
    streams = list(names.streams)
    streams += [_kv_stream(bucket) for bucket in names.kv_buckets]
    publish = [
        f"{_JS_API}.>",
        *(f"$JS.ACK.{stream}.>" for stream in streams),
        *(f"$JS.FC.{stream}.>" for stream in streams),
        *names.jobs_stream_subjects,
        names.cancel_subject("*"),
        names.signal_subject("*"),
        *(f"$KV.{bucket}.>" for bucket in names.kv_buckets),
    ]
    subscribe = [_inbox(OPERATOR), *names.events_stream_subjects, *names.dlq_stream_subjects]
    return Permissions(publish=_unique(publish), subscribe=_unique(subscribe))


def dashboard_permissions(names: Names) -> Permissions:
    """The dashboard: everything its pages read and its actions write, no administration.

    It reads stream and consumer state (queues, dead letters, held delayed requests),
    publishes requests into JOBS (trigger, re-run, replay, delayed runs, a signaled
    workflow's resumption) and cancel hints, edits the `schedules` bucket, deletes single
    messages of JOBS (a canceled delayed request or wake-up) and DLQ, purges DLQ, and reads
    run events and alerts from EVENTS: live through an ordered consumer (ephemeral, as a
    KV watch's), and the events a reconnecting page missed by single gets. It never
    creates, updates or deletes a stream, a durable consumer or a bucket.
    """
    jobs, dlq, events = names.jobs_stream, names.dlq_stream, names.events_stream
    publish = [
        f"{_JS_API}.INFO",
        *(f"{_JS_API}.STREAM.INFO.{stream}" for stream in (jobs, names.events_stream, dlq)),
        *(f"{_JS_API}.STREAM.MSG.GET.{stream}" for stream in (jobs, dlq, events)),
        # The live pages' ordered consumer of EVENTS (ephemeral; flow control replies).
        f"{_JS_API}.CONSUMER.CREATE.{events}",
        f"{_JS_API}.CONSUMER.CREATE.{events}.>",
        f"{_JS_API}.CONSUMER.DELETE.{events}.>",
        f"$JS.FC.{events}.>",
        # Held delayed requests are read with direct gets by subject (shared/delayed.py).
        f"{_JS_API}.DIRECT.GET.{jobs}",
        f"{_JS_API}.DIRECT.GET.{jobs}.>",
        *(f"{_JS_API}.STREAM.MSG.DELETE.{stream}" for stream in (jobs, dlq)),
        f"{_JS_API}.STREAM.PURGE.{dlq}",
        f"{_JS_API}.CONSUMER.INFO.{jobs}.*",
        *(
            f"{_JS_API}.STREAM.INFO.{_kv_stream(b)}"
            for b in (names.schedules_bucket, names.ticker_bucket, names.ratelimit_bucket)
        ),
        *names.jobs_stream_subjects,
        names.cancel_subject("*"),
        *_kv_write(names.schedules_bucket),
        *_kv_read(names.ticker_bucket),
        # A job page's "why isn't it running" peeks at the job's rate limit bucket (never takes a token).
        *_kv_read(names.ratelimit_bucket),
    ]
    subscribe = [_inbox(DASHBOARD)]  # the ordered consumer delivers to the dashboard's inbox
    return Permissions(publish=_unique(publish), subscribe=_unique(subscribe))


def all_permissions(names: Names) -> dict[str, Permissions]:
    """Every user's permissions, keyed by user name (`USERS` order)."""
    return {user: service_permissions(names, user) for user in USERS}


# -- nats.conf -----------------------------------------------------------------------------


def render_authorization(names: Names) -> str:
    """The `authorization` block of `nats.conf`: one user per service, the dashboard and the operator.

    Passwords are `$NATS_PASSWORD_<USER>` references that nats-server resolves from its
    own environment (fed from a Secret), so no secret is ever written to the file.
    Subjects are JSON strings: quoted, so `$JS...` is never taken for a variable.
    """
    lines = [
        "# Generated by deploy/generate_nats_config.py from shared/permissions.py: do not edit.",
        "# One NATS user per marketpulse service; each may publish and subscribe only to",
        "# the subjects listed (everything else is denied).",
        "authorization {",
        "  users = [",
    ]
    for user, grants in all_permissions(names).items():
        lines += [
            "    {",
            f"      user: {json.dumps(user)}",
            f"      password: ${password_variable(user)}",
            "      permissions: {",
            f"        publish: {{ allow: {json.dumps(grants['publish'])} }}",
            f"        subscribe: {{ allow: {json.dumps(grants['subscribe'])} }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
