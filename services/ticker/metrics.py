"""Prometheus metrics of the ticker, in a registry of its own (see shared/runtime/_metrics.py for why)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Lateness of an on-time slot is milliseconds; a catch-up slot can be hours late.
_LATENESS_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600, 86400, float("inf"),
)  # fmt: skip


class TickerMetrics:
    """Tick lateness, slots fired and errors, labelled by job and kind (`slot` or `catch_up`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.lateness = Histogram(
            "pulse_ticker_lateness_seconds",
            "Publish time minus slot time of each request the ticker published",
            ["job", "kind"],
            buckets=_LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.fired = Counter(
            "pulse_ticker_slots_fired_total",
            "Slots this replica claimed and published",
            ["job", "kind"],
            registry=self.registry,
        )
        self.republished = Counter(
            "pulse_ticker_republished_total",
            "Unconfirmed claims published again after a claimer's crash",
            ["job"],
            registry=self.registry,
        )
        self.lost_claims = Counter(
            "pulse_ticker_claims_lost_total",
            "Slots another replica claimed first",
            ["job"],
            registry=self.registry,
        )
        self.missed = Counter(
            "pulse_ticker_slots_missed_total",
            "Slots this replica settled without a request after downtime (catch-up policy)",
            ["job"],
            registry=self.registry,
        )
        self.ledger_pending = Gauge(
            "pulse_ticker_ledger_pending",
            "Slot ledger entries queued and not yet written (grows while MongoDB is unreachable)",
            registry=self.registry,
        )
        self.errors = Counter(
            "pulse_ticker_errors_total",
            "Failed evaluations of a job (NATS errors)",
            ["job"],
            registry=self.registry,
        )
        self.last_slot = Gauge(
            "pulse_ticker_last_slot_timestamp_seconds",
            "Unix time of the last slot this replica saw fired",
            ["job"],
            registry=self.registry,
        )
