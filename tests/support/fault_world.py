"""The world of the control-plane fault tests (tests/cluster/test_faults_etcd.py) and of
bench/fault_recovery.py: a control plane of its own (a fault test restarts its components, so never
the shared session cluster), the webhook and a guard on the host, both watching the cluster's
DaemonSetPolicies, one policy for the test's namespace (the guard's threshold and a signed alert),
kwok nodes, the DaemonSet `agent` rolled out on the good build, and the alert receiver.

The helpers read what each process saw from its metrics: the guard's complete lists per watch
(`dsguard_guard_watch_lists_total`) and restarts by reason, the webhook's restarts by reason.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster
from localcluster.guard_host import HostGuard
from localcluster.webhook_host import HostWebhook, apply_crd
from tests.support.builders import daemonset, policy
from tests.support.guard_scenario import GOOD_IMAGE, THRESHOLD, AlertReceiver, Scenario
from tests.support.kubectl import apply
from tests.support.kwok import in_group
from tests.support.polling import poll
from tests.support.tls import TLSFiles

#: the guard's watches: its own four and the cluster cache's two
GUARD_WATCHES = ("daemonsets", "controllerrevisions", "pods", "nodes", "namespaces", "daemonsetpolicies")
#: the webhook's watches (dsguard/cluster_cache.py)
WEBHOOK_WATCHES = ("nodes", "namespaces", "daemonsetpolicies")
#: the toleration a policy change requires (onMissing: Add): the webhook adds it once it saw the change
FAULT_TOLERATION = {"key": "dsguard.test/fault", "operator": "Exists", "effect": "NoSchedule"}
NODES = 12


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` in a Prometheus text exposition whose labels include `labels`."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class FaultWorld:
    def __init__(self, workdir: Path, tls: TLSFiles, *, apiserver_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.cluster = LocalCluster(workdir / "cluster", apiserver_args=apiserver_args)
        self.ns = f"faults-{uuid.uuid4().hex[:6]}"
        self.tls = tls
        self.s: Scenario
        self.receiver: AlertReceiver
        self.webhook: HostWebhook
        self.guard: HostGuard
        self.policy_name = f"guard-{self.ns}"  # what assert_signed_alert expects
        self._policy: dict[str, Any] = {}
        self.good = ""

    def start(self) -> Self:
        self.cluster.start()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        c = self.cluster
        c.kubectl("create", "namespace", self.ns)
        sa = ("get", "serviceaccount", "default", "-n", self.ns)
        poll(
            lambda: c.kubectl(*sa, check=False).returncode == 0,
            what="the namespace's ServiceAccount",
            timeout=30,
        )
        self.s = Scenario(c, self.ns, self.workdir, self.tls)
        self.receiver = self.s.receiver()
        apply_crd(c)
        self._policy = {
            "guard": {
                "failureThreshold": THRESHOLD,
                "action": "Pause",
                "alerts": [
                    {"type": "Webhook", "url": self.receiver.url, "hmacSecretRef": self.s.hmac_secret()}
                ],
            }
        }
        self.apply_policy()
        self.webhook = HostWebhook(
            c, namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": self.ns}}
        ).start()
        self.guard = HostGuard(
            c, env={"SSL_CERT_FILE": str(self.tls.ca_file)}, lease_name=self.s.lease, tick=0.2
        )
        self.s.guards.append(self.guard)
        self.guard.start()
        self.s.add_nodes(NODES)
        self.s.apply(self.s.daemonset())
        self.good = self.s.rolled_out(GOOD_IMAGE, timeout=90)

    def stop(self) -> None:
        if hasattr(self, "s"):
            self.s.cleanup()
        if hasattr(self, "webhook"):
            self.webhook.stop()
        self.cluster.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the policy --------------------------------------------------------------------------
    def apply_policy(self, extra: Mapping[str, Any] | None = None) -> None:
        apply(self.cluster, policy(self.policy_name, {**self._policy, **(extra or {})}, namespaces=[self.ns]))

    def require_fault_toleration(self) -> None:
        """The policy change whose effect the webhook shows: a required toleration, added when missing."""
        self.apply_policy({"tolerations": {"required": [FAULT_TOLERATION], "onMissing": "Add"}})

    def webhook_adds_the_toleration(self) -> bool:
        """A server-side dry run of a new DaemonSet: did the mutating webhook add FAULT_TOLERATION?"""
        probe = daemonset("probe", self.ns, image=GOOD_IMAGE, node_selector=in_group(self.ns))
        proc = self.cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(probe), check=False
        )
        if proc.returncode != 0:
            return False
        tolerations = json.loads(proc.stdout)["spec"]["template"]["spec"].get("tolerations") or []
        return FAULT_TOLERATION in tolerations

    # -- what the processes saw ----------------------------------------------------------------
    def guard_lists(self) -> dict[str, float]:
        text = self.guard.metrics_text()
        return {r: samples(text, "dsguard_guard_watch_lists_total", resource=r) for r in GUARD_WATCHES}

    def guard_restarts(self, reason: str) -> dict[str, float]:
        text = self.guard.metrics_text()
        return {
            r: samples(text, "dsguard_guard_watch_restarts_total", resource=r, reason=reason)
            for r in GUARD_WATCHES
        }

    def webhook_restarts(self, reason: str) -> dict[str, float]:
        text = self.webhook.metrics()
        return {
            r: samples(text, "dsguard_watch_restarts_total", resource=r, reason=reason)
            for r in WEBHOOK_WATCHES
        }

    def relisted_since(self, before: Mapping[str, float]) -> bool:
        now = self.guard_lists()
        return all(now[r] > before[r] for r in GUARD_WATCHES)

    def etcd_down_seen(self) -> bool:
        """The apiserver reports etcd unreachable (its /readyz/etcd check)."""
        try:
            status, _ = self.cluster.api_get("/readyz/etcd", timeout=5)
        except OSError:
            return False
        return status != 200

    def timed(self, predicate: Any, what: str, timeout: float = 90.0) -> float:
        """poll(predicate) and the seconds it took."""
        t0 = time.monotonic()
        poll(predicate, what=what, timeout=timeout, interval=0.1)
        return time.monotonic() - t0
