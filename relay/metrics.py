"""Prometheus metrics. Every name starts with ``relay_``; label sets stay bounded.

Labels are event types (a small operator-managed catalog), outcome/result classes and
subscription ids (operator-managed, bounded by the subscriptions table) — never delivery ids,
URLs or header values.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from relay import __version__

# One registry per process; tests can build their own with Metrics(CollectorRegistry()).
# fmt: off
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                    60, 300, 1800)
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30)
# fmt: on


def status_class(status_code: int | None, error_kind: str | None) -> str:
    """The ``result`` label of an attempt: 2xx/3xx/4xx/5xx, timeout, or error."""
    if error_kind == "timeout":
        return "timeout"
    if status_code is None:
        return "error"
    if 200 <= status_code < 600:
        return f"{status_code // 100}xx"
    return "error"


class Metrics:
    """All of relay's metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("relay_build", "relay build information", registry=r)
        self.build_info.info({"version": __version__})
        self.deliveries = Counter(
            "relay_deliveries_total",
            "Deliveries that reached a final state",
            ["outcome", "event_type"],
            registry=r,
        )
        self.attempts = Counter(
            "relay_delivery_attempts_total",
            "HTTP delivery attempts by result class",
            ["result"],
            registry=r,
        )
        self.subscription_attempts = Counter(
            "relay_subscription_attempts_total",
            "HTTP delivery attempts per subscription, by success",
            ["subscription_id", "success"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "relay_delivery_attempt_duration_seconds",
            "Duration of one HTTP delivery attempt",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "relay_delivery_latency_seconds",
            "Outbox row created to delivered (2xx received)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.claims = Counter("relay_claims_total", "Claim queries run", ["kind"], registry=r)
        self.claimed = Counter("relay_claimed_rows_total", "Rows claimed", ["kind"], registry=r)
        self.fanout = Counter(
            "relay_fanout_deliveries_total",
            "Deliveries created by fan-out of outbox rows",
            registry=r,
        )
        self.lost_leases = Counter(
            "relay_lost_lease_acks_total",
            "Acks ignored because the lease had passed to another relay",
            registry=r,
        )
        self.ack_failures = Counter(
            "relay_ack_failures_total",
            "Ack statements that failed: 'transient' (database unreachable, retried as is) or "
            "'refused' (the database refused an outcome; the batch is split to isolate it)",
            ["kind"],
            registry=r,
        )
        self.ack_failing = Gauge(
            "relay_ack_failing",
            "1 while attempt outcomes cannot be recorded (acks keep failing)",
            registry=r,
        )
        self.ack_reduced = Counter(
            "relay_ack_reduced_total",
            "Outcomes the database refused as they were, recorded without the response body",
            registry=r,
        )
        self.in_flight = Gauge(
            "relay_deliveries_in_flight", "HTTP requests in progress", registry=r
        )
        self.ready = Gauge(
            "relay_deliveries_ready",
            "Deliveries leased by this relay, waiting for a free request slot (prefetch)",
            registry=r,
        )
        self.db_up = Gauge(
            "relay_db_connected",
            "1 when the named database connection works",
            ["connection"],
            registry=r,
        )
        # Gauges refreshed from the database on an interval.
        self.outbox_backlog = Gauge(
            "relay_outbox_backlog", "Outbox rows not yet fanned out", registry=r
        )
        self.pending = Gauge(
            "relay_deliveries_pending", "Deliveries waiting to be delivered", registry=r
        )
        self.dead = Gauge("relay_deliveries_dead", "Deliveries that are dead", registry=r)
        self.oldest_pending_age = Gauge(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest pending delivery or undispatched outbox row",
            registry=r,
        )
        self.credentials_encrypted = Gauge(
            "relay_credentials_encrypted",
            "1 when RELAY_ENCRYPTION_KEY is set: subscriptions' secrets and header values are "
            "stored encrypted; 0 when they are stored in plain text",
            registry=r,
        )
        self.relays_seen = Gauge(
            "relay_instances_seen",
            "Relays that reported in the last minute",
            registry=r,
        )
        # Retention (relay/daemon/pruner.py). The table label is one of relay's three history
        # tables: outbox, deliveries, delivery_attempts.
        self.history_bytes = Gauge(
            "relay_history_bytes",
            "Bytes on disk of a history table, its indexes and TOAST (pg_total_relation_size)",
            ["table"],
            registry=r,
        )
        self.pruned_rows = Counter(
            "relay_pruned_rows_total",
            "History rows deleted by retention pruning",
            ["table"],
            registry=r,
        )
        # Labelled children by label values: ``labels()`` takes a lock and builds a key on
        # every call, which showed in profiles of the per-attempt path.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._attempt_children: dict[tuple[str, int, bool], tuple[Any, Any]] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def attempt_made(self, result: str, subscription_id: int, ok: bool, seconds: float) -> None:
        """One HTTP attempt ended with result class ``result`` after ``seconds``."""
        # Both labelled children in one lookup by the caller's own values (no label strings
        # built per attempt): about 0.5 us of a delivery less than two _child() calls, timeit.
        key = (result, subscription_id, ok)
        children = self._attempt_children.get(key)
        if children is None:
            children = self._attempt_children[key] = (
                self._child(self.attempts, result),
                self._child(
                    self.subscription_attempts, str(subscription_id), "true" if ok else "false"
                ),
            )
        children[0].inc()
        children[1].inc()
        self.attempt_duration.observe(seconds)

    def delivery_ended(self, outcome: str, event_type: str, count: int = 1) -> None:
        """``count`` deliveries reached a final state (``delivered`` or ``dead``)."""
        self._child(self.deliveries, outcome, event_type).inc(count)
