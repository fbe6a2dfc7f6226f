"""Prometheus metrics of the runtime, in a registry of its own.

A deliberate `CollectorRegistry` rather than the default one: stamina's Prometheus hook
registers in the default registry, and a worker per test in one process must not
collide on metric names.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, float("inf"))


class RuntimeMetrics:
    """Counters and histograms for runs by job and status, attempts, durations, rate limits."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.runs = Counter(
            "pulse_runs_total", "Runs that reached a terminal status", ["job", "status"], registry=self.registry
        )
        self.attempts = Counter(
            "pulse_attempts_total", "Attempts by outcome", ["job", "outcome"], registry=self.registry
        )
        self.run_duration = Histogram(
            "pulse_run_duration_seconds",
            "Run duration, first start to end",
            ["job", "status"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.deferred = Counter(
            "pulse_deliveries_deferred_total",
            "Deliveries put back without counting an attempt: the store or NATS was unreachable",
            ["job"],
            registry=self.registry,
        )
        self.runs_deferred = Counter(
            "pulse_runs_quota_deferred_total",
            "Times a run was held back because an upstream's quota was spent",
            ["job"],
            registry=self.registry,
        )
        self.unserved = Counter(
            "pulse_unserved_requests_total",
            "Requests on a subject no job serves, moved to the DLQ",
            registry=self.registry,
        )
        self.ratelimit_waits = Counter(
            "pulse_ratelimit_waits_total", "Token acquisitions that had to wait", ["bucket"], registry=self.registry
        )
        self.ratelimit_wait_seconds = Histogram(
            "pulse_ratelimit_wait_seconds", "Time spent waiting for a token", ["bucket"], registry=self.registry
        )
        self.last_success = Gauge(
            "pulse_last_success_timestamp_seconds",
            "Unix time of the last completed run",
            ["job"],
            registry=self.registry,
        )
        self.since_success = Gauge(
            "pulse_seconds_since_last_success", "Seconds since the last completed run", ["job"], registry=self.registry
        )

    def observe_success_time(self, job: str, at_unix: float) -> None:
        """Record the time of the last success of `job` (refreshes the 'since' gauge)."""
        self.last_success.labels(job=job).set(at_unix)
        self.since_success.labels(job=job).set(max(0.0, time.time() - at_unix))
