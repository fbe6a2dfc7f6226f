"""Every subject, stream, consumer, bucket and collection name, in one place.

Nothing else in the code base spells a subject or collection name. A `Names` value
carries an optional namespace so that several environments (or isolated tests) can
share one NATS account without seeing each other's messages; in production the
namespace is empty and the names are exactly those of DESIGN.md:

    JOBS    jobs.<job>                      job requests (work queue)
            delayed.<job>.<token>           one-off delayed requests (Nats-Schedule)
    EVENTS  events.runs.<job>.<status>      run outcomes
            events.alerts.<job>             alerts
    DLQ     dlq.<job>                       dead letters
    core    control.cancel.<job>            cancel hints
            signals.<job>                   signals for waiting workflows (request/reply)
    KV      schedules, ticker, ratelimit
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The jobs of the system and the service that runs each (market_refresh, a workflow
#: requested by whale_sync, refreshes one market: the market_sync service runs it).
JOB_SERVICE: dict[str, str] = {
    "market_sync": "market_sync",
    "whale_sync": "whale_sync",
    "stats": "stats",
    "cleanup": "janitor",
    "watchdog": "janitor",
    "market_refresh": "market_sync",
}
JOBS: tuple[str, ...] = tuple(JOB_SERVICE)
#: Jobs whose code requests other jobs (whale_sync: a market_refresh per market with a
#: new whale trade). Follow-ups in a policy's `on_complete` are not listed here: the NATS
#: grants (`shared/permissions.py`) add those of the default policies.
JOB_REQUESTS: dict[str, tuple[str, ...]] = {
    "whale_sync": ("market_refresh",),
}
SERVICES: tuple[str, ...] = ("ticker", "market_sync", "whale_sync", "stats", "janitor")
#: The kinds of alert sink (shared/alerting.py); each has its own delivery consumer on EVENTS.
ALERT_SINKS: tuple[str, ...] = ("webhook", "slack")

_NAMESPACE_RE = re.compile(r"^[a-z0-9]{0,32}$")
_JOB_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_job_name(job: str) -> str:
    """Return `job` if it can be used in a subject and a consumer name, else raise ValueError."""
    if not _JOB_RE.match(job):
        raise ValueError(
            f"invalid job name {job!r}: use lowercase letters, digits and '_' "
            "(starting with a letter, at most 64 characters)"
        )
    return job


@dataclass(frozen=True)
class Names:
    """Names of every NATS and MongoDB resource, optionally under a namespace."""

    namespace: str = ""

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}: use at most 32 lowercase letters or digits")

    # -- helpers ---------------------------------------------------------------
    def _subject(self, subject: str) -> str:
        return f"{self.namespace}.{subject}" if self.namespace else subject

    def _resource(self, name: str) -> str:
        return f"{self.namespace}_{name}" if self.namespace else name

    # -- streams ---------------------------------------------------------------
    @property
    def jobs_stream(self) -> str:
        return self._resource("JOBS")

    @property
    def events_stream(self) -> str:
        return self._resource("EVENTS")

    @property
    def dlq_stream(self) -> str:
        return self._resource("DLQ")

    @property
    def logs_stream(self) -> str:
        return self._resource("LOGS")

    @property
    def streams(self) -> list[str]:
        """Every stream of the system (KV buckets' streams aside)."""
        return [self.jobs_stream, self.events_stream, self.dlq_stream, self.logs_stream]

    @property
    def jobs_stream_subjects(self) -> list[str]:
        return [self._subject("jobs.>"), self._subject("delayed.>")]

    @property
    def events_stream_subjects(self) -> list[str]:
        return [self._subject("events.>")]

    @property
    def dlq_stream_subjects(self) -> list[str]:
        return [self._subject("dlq.>")]

    @property
    def logs_stream_subjects(self) -> list[str]:
        return [self._subject("logs.>")]

    # -- subjects --------------------------------------------------------------
    def job_subject(self, job: str) -> str:
        """Where requests for `job` are published and consumed: `jobs.<job>`."""
        return self._subject(f"jobs.{check_job_name(job)}")

    def delayed_subject(self, job: str, token: str) -> str:
        """Holding subject of one delayed request (fires into `jobs.<job>`)."""
        return self._subject(f"delayed.{check_job_name(job)}.{token}")

    def delayed_wildcard(self, job: str | None = None) -> str:
        return self._subject(f"delayed.{job}.*" if job else "delayed.>")

    def run_event_subject(self, job: str, status: str) -> str:
        return self._subject(f"events.runs.{job}.{status}")

    def run_events_wildcard(self, job: str | None = None) -> str:
        return self._subject(f"events.runs.{job}.*" if job else "events.runs.>")

    def alert_subject(self, job: str) -> str:
        return self._subject(f"events.alerts.{job}")

    def alerts_wildcard(self) -> str:
        return self._subject("events.alerts.>")

    def dlq_subject(self, job: str) -> str:
        return self._subject(f"dlq.{job}")

    def dlq_wildcard(self) -> str:
        return self._subject("dlq.>")

    def signal_subject(self, job: str) -> str:
        """Where any client signals a waiting workflow of `job` (core NATS request; run id in a header)."""
        return self._subject(f"signals.{job}")

    def log_subject(self, job: str) -> str:
        """Where the log lines of `job`'s runs go: `logs.<job>` (the run id is in a header and the body)."""
        return self._subject(f"logs.{job}")

    def cancel_subject(self, job: str) -> str:
        """Core-NATS notification that a run of `job` was canceled (a hint; the record is truth)."""
        return self._subject(f"control.cancel.{job}")

    # -- consumers and KV ------------------------------------------------------
    def consumer_name(self, job: str) -> str:
        """The one durable pull consumer of `job`, shared by every replica."""
        return check_job_name(job)

    def alert_delivery_consumer(self, sink: str) -> str:
        """The durable consumer (on EVENTS) that delivers alerts to one sink: in order, each acked once accepted."""
        if sink not in ALERT_SINKS:
            raise ValueError(f"unknown alert sink {sink!r}: expected one of {', '.join(ALERT_SINKS)}")
        return f"alert_delivery_{sink}"

    @property
    def schedules_bucket(self) -> str:
        return self._resource("schedules")

    @property
    def ticker_bucket(self) -> str:
        return self._resource("ticker")

    @property
    def ratelimit_bucket(self) -> str:
        return self._resource("ratelimit")

    @property
    def kv_buckets(self) -> list[str]:
        return [self.schedules_bucket, self.ticker_bucket, self.ratelimit_bucket]


class Collections:
    """MongoDB collection names (the database name comes from settings)."""

    MARKETS = "markets"
    WHALE_TRADES = "whale_trades"
    RUNS = "runs"
    MARKET_STATS = "market_stats"
    #: Per-job state that outlives a run: whale_sync's watermark, alert bookkeeping.
    JOB_STATE = "job_state"
    #: Operator actions (who, what, when, from where, outcome), newest read first.
    AUDIT = "audit"
    #: The step journal of workflow runs: one document per step, `<run_id>:<step name>`.
    STEPS = "steps"
    #: Cancel requests, `_id` = run_id: written once by `request_cancel`, never updated,
    #: read by the runtime at each claim and heartbeat (apart from `runs`, so that no
    #: write to a run record can ever drop one).
    CANCELS = "cancels"
    #: The slot ledger, `_id` = `<job>:<slot UTC>` (the slot's run id): what the ticker did
    #: with each slot (requested, or missed with the reason); written by the ticker only
    #: (services/ticker/ledger.py), read joined with `runs` (shared/readmodel/slots.py).
    SLOTS = "slots"
    #: Upstream request budgets: one document per upstream and quota period,
    #: `<upstream>:<period start ISO-8601 UTC>`, whose `spent` is reserved by a conditional `$inc`.
    BUDGETS = "budgets"
    #: market_refresh's merged result, one document per run (`_id` = run_id): the market's
    #: prices and recent trades, and the change found by the check a minute later.
    MARKET_REFRESHES = "market_refreshes"
