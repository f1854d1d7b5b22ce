"""Prometheus metrics of the webhook, on a registry of its own (one per app, so tests don't share)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.watch_restarts = Counter(
            "dsguard_watch_restarts_total",
            "List/watch restarts, by resource and reason (gone, error).",
            ["resource", "reason"],
            registry=self.registry,
        )
