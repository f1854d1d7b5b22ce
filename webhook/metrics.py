"""Prometheus metrics of the webhook, on a registry of its own (one per app, so tests don't share)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

ENDPOINTS = ("mutate", "validate")
VERDICTS = ("allowed", "denied", "patched", "warned", "exempt", "bad_request", "error")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._memo_counted = False
        self.reviews = Counter(
            "dsguard_webhook_reviews_total",
            "AdmissionReviews answered, by endpoint and verdict "
            "(allowed, denied, patched, warned, exempt, bad_request, error).",
            ["endpoint", "verdict"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dsguard_webhook_review_duration_seconds",
            "Time to answer one AdmissionReview, body read to response built.",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.audits = Counter(
            "dsguard_webhook_audit_findings_total",
            "Violations recorded by Audit policies, by policy and rule.",
            ["policy", "rule"],
            registry=self.registry,
        )
        self.policies = Gauge("dsguard_policies", "DaemonSetPolicies in force.", registry=self.registry)
        self.policy_errors = Gauge(
            "dsguard_policy_errors", "DaemonSetPolicies rejected as invalid.", registry=self.registry
        )
        # Children bound once: labels() costs a lock and a dict lookup on every review.
        self.review_counters = {(e, v): self.reviews.labels(e, v) for e in ENDPOINTS for v in VERDICTS}
        self.latencies = {e: self.latency.labels(e) for e in ENDPOINTS}
        self.connections = Gauge(
            "dsguard_webhook_connections",
            "Connections open on the webhook port, TLS handshakes in progress included.",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "dsguard_webhook_connections_refused_total",
            "Connections closed at accept: over --max-connections or --max-connections-per-client.",
            registry=self.registry,
        )
        self.read_timeouts = Counter(
            "dsguard_webhook_read_timeouts_total",
            "Connections closed for a request head (header) or body (body) not received in time.",
            ["part"],
            registry=self.registry,
        )
        self.nodes = Gauge("dsguard_nodes", "Nodes in the webhook's cache.", registry=self.registry)
        # The alert rules need it: with failurePolicy Ignore, no ready replica means DaemonSets
        # go through unchecked (manifests/helm/dsguard/files/prometheus-rules.yaml).
        self.ready = Gauge(
            "dsguard_webhook_ready",
            "1 when this replica is ready (/readyz: nodes, namespaces, policies and the server "
            "version synced), else 0.",
            registry=self.registry,
        )
        self.watch_restarts = Counter(
            "dsguard_watch_restarts_total",
            "List/watch restarts, by resource and reason (gone, error).",
            ["resource", "reason"],
            registry=self.registry,
        )
        self.watch_staleness = Gauge(
            "dsguard_watch_staleness_seconds",
            "Seconds the cache of a resource may be behind the apiserver: 0 while its watch is open "
            "after a complete list, else since it was last current (an outage, a failing list).",
            ["resource"],
            registry=self.registry,
        )

    def count_memo(self, stats: Callable[[], tuple[int, int]]) -> None:
        """Export the verdict memo's (hits, misses), read at each scrape; once per registry."""
        if not self._memo_counted:
            self.registry.register(_MemoCollector(stats))
            self._memo_counted = True


class _MemoCollector(Collector):
    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "dsguard_webhook_verdict_memo",
            "Reviews answered from the verdict memo (hit) or judged (miss; reviews the memo can't key "
            "are not counted).",
            labels=["result"],
        )
        hits, misses = self.stats()
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family
