"""Prometheus metrics of the rollout guard, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class GuardMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.watched = Gauge(
            "dsguard_guard_rollouts_in_progress",
            "Governed DaemonSets whose rollout is not complete.",
            registry=self.registry,
        )
        self.apiserver_rate = Gauge(
            "dsguard_guard_apiserver_request_rate",
            "The waves' apiserver gate: the apiserver's requests per second, over the baseline window "
            "(12 samples) and the current one (6 samples); sampled only while a policy has the gate.",
            ["window"],
            registry=self.registry,
        )
        self.failing_pods = Gauge(
            "dsguard_guard_failing_pods",
            "Failing pods on update revisions, at the last evaluation.",
            registry=self.registry,
        )
        self.actions = Counter(
            "dsguard_guard_actions_total",
            "Actions taken, by step (pause, rollback, resume, stalled).",
            ["step"],
            registry=self.registry,
        )
        self.action_errors = Counter(
            "dsguard_guard_action_errors_total",
            "Actions the API refused (other than conflicts), by step.",
            ["step"],
            registry=self.registry,
        )
        self.alerts_pending = Gauge(
            "dsguard_guard_alerts_pending",
            "Alerts pending on DaemonSets (entries of their dsguard.io/alerts-pending annotations), "
            "as last seen.",
            registry=self.registry,
        )
        self.alerts_resent = Counter(
            "dsguard_guard_alerts_resent_total",
            "Pending alerts found on a DaemonSet that this guard had not sent, sent again "
            "(after a crash, a shutdown or a failover).",
            registry=self.registry,
        )
        self.watch_restarts = Counter(
            "dsguard_guard_watch_restarts_total",
            "List/watch restarts, by resource and reason.",
            ["resource", "reason"],
            registry=self.registry,
        )
        self.watch_staleness = Gauge(
            "dsguard_guard_watch_staleness_seconds",
            "Seconds the guard's view of a resource may be behind the apiserver: 0 while its watch "
            "is open after a complete list, else since it was last current. While any is above 0 the "
            "guard decides nothing (it would decide on what it no longer sees).",
            ["resource"],
            registry=self.registry,
        )
        self.watch_lists = _ListsCollector()
        self.registry.register(self.watch_lists)
        self.leader = Gauge(
            "dsguard_guard_leader", "1 while this replica holds the lease.", registry=self.registry
        )
        self.audits = Counter(
            "dsguard_audit_runs_total", "Background audits of existing DaemonSets.", registry=self.registry
        )
        self.audit_seconds = Histogram(
            "dsguard_audit_duration_seconds",
            "Time of one audit's judgement (the DaemonSets a change can affect; all of them at a resync; "
            "rules only, no API calls).",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry,
        )
        self.audit_rejudged = Gauge(
            "dsguard_audit_rejudged_daemonsets",
            "DaemonSets judged again by the last audit (the incremental audit's reach).",
            registry=self.registry,
        )
        self.violating = Gauge(
            "dsguard_audit_violating_daemonsets",
            "DaemonSets that violate the policy, at the last audit.",
            ["policy"],
            registry=self.registry,
        )
        self.audit_writes = Counter(
            "dsguard_audit_status_writes_total",
            "DaemonSetPolicy status writes, by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.report_writes = Counter(
            "dsguard_audit_report_writes_total",
            "Policy report (OpenReports Report or PolicyReport) writes, by operation (apply, delete) "
            "and result (ok, error).",
            ["operation", "result"],
            registry=self.registry,
        )


class _ListsCollector(Collector):
    """dsguard_guard_watch_lists_total: complete lists per watch (the first sync and every relist),
    read from the reflectors when scraped (`source`, set once they exist)."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "dsguard_guard_watch_lists",
            "Complete lists, by resource: the first sync and every relist (after a 410 Gone or an error).",
            labels=["resource"],
        )
        for resource, count in sorted(self.source().items()):
            family.add_metric([resource], count)
        yield family
