"""The webhook end to end: the real kube-apiserver calls `dsguard webhook`, driven by kubectl.

Each test works in its own namespace (the only ones the webhook configurations select, by the
label `dsguard-e2e: "true"`), with its own kwok nodes labelled `dsguard.test/group: <namespace>`
and DaemonSets that select only those nodes, so tests don't see each other's nodes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from localcluster.cluster import LocalCluster
from localcluster.nodes import create_nodes, delete_nodes, node_manifest, wait_nodes_ready
from localcluster.webhook_host import HostWebhook
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import in_group
from tests.support.polling import poll

E2E_LABEL = "dsguard-e2e"


@pytest.fixture(scope="module")
def webhook(cluster: LocalCluster) -> Iterator[HostWebhook]:
    with HostWebhook(cluster, namespace_selector={"matchLabels": {E2E_LABEL: "true"}}) as hook:
        yield hook
        print(f"webhook log tail:\n{hook.log_tail()}")


class Env:
    """One test's namespace, nodes and policies; cleaned up afterwards."""

    def __init__(self, cluster: LocalCluster, webhook: HostWebhook) -> None:
        self.cluster = cluster
        self.webhook = webhook
        self.ns = f"e2e-{uuid.uuid4().hex[:8]}"
        self.nodes: list[str] = []
        self.policies: list[str] = []

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl(*args, input=input, check=check)

    def add_nodes(self, specs: list[dict[str, Any]]) -> None:
        manifests = []
        for s in specs:
            name = f"{self.ns}-{s['name']}"
            labels = {**in_group(self.ns), **s.get("labels", {})}
            manifests.append(
                node_manifest(
                    name, labels=labels, taints=s.get("taints"), kubelet_version=s.get("kubelet", "v1.37.2")
                )
            )
            self.nodes.append(name)
        create_nodes(self.cluster.kubectl, manifests)
        wait_nodes_ready(self.cluster.kubectl, [m["metadata"]["name"] for m in manifests], timeout=60)

    def add_policy(self, spec: dict[str, Any], *, wait: bool = True) -> str:
        name = f"{self.ns}-{len(self.policies)}"
        apply(self.cluster, builders.policy(name, spec, namespaces=[self.ns]))
        self.policies.append(name)
        if wait:
            self.wait_policy_seen(name)
        return name

    def wait_policy_seen(self, name: str, timeout: float = 20.0) -> None:
        """The webhook watches policies; poll its metrics until it counts this one."""
        want = len(self.policies)

        def counted() -> bool:
            return any(
                line.startswith("dsguard_policies ") and float(line.split()[1]) >= want
                for line in self.webhook.metrics().splitlines()
            )

        poll(counted, what=f"the webhook to pick up DaemonSetPolicy {name}", timeout=timeout)

    def daemonset(
        self,
        name: str = "agent",
        *,
        image: str = "registry.example.com/agent:2.1.0",
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] | None = None,
        update_strategy: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """DaemonSet `name` in this test's namespace, on its nodes (and those of node_selector)."""
        return builders.daemonset(
            name, self.ns, image=image, node_selector={**in_group(self.ns), **(node_selector or {})},
            tolerations=tolerations, update_strategy=update_strategy,
        )  # fmt: skip

    def apply(self, obj: dict[str, Any], *args: str, check: bool = False) -> Any:
        return apply(self.cluster, obj, *args, check=check)

    def get_ds(self, name: str = "agent") -> dict[str, Any] | None:
        proc = self.kubectl("get", "daemonset", name, "-n", self.ns, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def cleanup(self) -> None:
        self.kubectl("delete", "namespace", self.ns, "--wait=false", "--ignore-not-found", check=False)
        if self.policies:
            self.kubectl("delete", "daemonsetpolicy", *self.policies, "--ignore-not-found", check=False)
        delete_nodes(self.cluster.kubectl, self.nodes)


@pytest.fixture
def env(cluster: LocalCluster, webhook: HostWebhook) -> Iterator[Env]:
    e = Env(cluster, webhook)
    cluster.kubectl("create", "namespace", e.ns)
    cluster.kubectl("label", "namespace", e.ns, f"{E2E_LABEL}=true")
    try:
        yield e
    finally:
        e.cleanup()


INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}


def test_missing_toleration_is_added_and_pods_land_on_tainted_nodes(env: Env) -> None:
    env.add_nodes(
        [{"name": "plain"}, {"name": "infra-1", "taints": [INFRA]}, {"name": "infra-2", "taints": [INFRA]}]
    )
    env.add_policy({"tolerations": {"required": [INFRA], "onMissing": "Add"}})
    proc = env.apply(env.daemonset())
    assert proc.returncode == 0, proc.stderr
    assert "dsguard added toleration" in proc.stderr  # the mutation is reported as a warning
    stored = env.get_ds()
    assert stored is not None
    assert INFRA in stored["spec"]["template"]["spec"]["tolerations"]

    def pods_by_node() -> set[str] | None:
        pods = env.kubectl("get", "pods", "-n", env.ns, "-l", "app=agent", "-o", "json")
        nodes = {p["spec"].get("nodeName") for p in json.loads(pods.stdout)["items"]}
        return nodes if nodes == set(env.nodes) else None

    # the real DaemonSet controller creates a pod on every node, the tainted ones included
    poll(pods_by_node, what="a pod on each of the three nodes", interval=0.3)


def test_missing_toleration_with_deny_fails_kubectl_with_our_message(env: Env) -> None:
    env.add_policy({"tolerations": {"required": [INFRA]}})
    proc = env.apply(env.daemonset())
    assert proc.returncode != 0
    assert 'admission webhook "validate.dsguard.io" denied the request' in proc.stderr
    assert "spec.template.spec.tolerations: missing required toleration" in proc.stderr
    assert "tolerations.onMissing: Add" in proc.stderr  # the fix is named
    assert env.get_ds() is None


def test_max_unavailable_over_the_cap_is_denied_or_clamped(env: Env) -> None:
    env.add_nodes([{"name": f"n{i}"} for i in range(10)])
    env.add_policy({"rollout": {"maxUnavailable": "20%"}})
    wide = env.daemonset(update_strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 5}})
    proc = env.apply(wide)
    assert proc.returncode != 0
    assert (
        'maxUnavailable: 5 lets 5 of 10 targeted nodes be unavailable at once, over the cap "20%" (2 of 10)'
        in proc.stderr
    )

    env.add_policy({"rollout": {"maxUnavailable": "20%", "onExceed": "Clamp"}})
    env.kubectl("delete", "daemonsetpolicy", env.policies[0])
    env.policies.pop(0)
    # poll: the deletion reaches the webhook's watch a moment later
    poll(lambda: env.apply(wide).returncode == 0, what="the clamped apply to pass", timeout=20, interval=0.3)
    stored = env.get_ds()
    assert stored is not None
    assert stored["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"


def test_incompatible_image_is_denied_naming_nodes_and_a_node_selector_avoids_them(env: Env) -> None:
    env.add_nodes(
        [
            {"name": "old-1", "kubelet": "v1.32.5", "labels": {"pool": "old"}},
            {"name": "old-2", "kubelet": "v1.32.5", "labels": {"pool": "old"}},
            {"name": "new-1", "kubelet": "v1.37.2", "labels": {"pool": "new"}},
        ]
    )
    env.add_policy(
        {
            "versions": {
                "rules": [
                    {
                        "image": "registry.example.com/agent",
                        "compatibility": [{"kubernetes": "<1.33", "versions": "<2.0.0"}],
                    }
                ]
            }
        }
    )
    proc = env.apply(env.daemonset(image="registry.example.com/agent:2.1.0"))
    assert proc.returncode != 0
    assert f"{env.ns}-old-1" in proc.stderr and f"{env.ns}-old-2" in proc.stderr
    assert f"{env.ns}-new-1" not in proc.stderr
    assert "v1.32.5" in proc.stderr and '"<2.0.0"' in proc.stderr
    ok = env.apply(env.daemonset(image="registry.example.com/agent:2.1.0", node_selector={"pool": "new"}))
    assert ok.returncode == 0, ok.stderr


def test_warn_prints_warnings_and_stores_the_object(env: Env) -> None:
    env.add_policy({"enforcement": "Warn", "tolerations": {"required": [INFRA]}})
    proc = env.apply(env.daemonset())
    assert proc.returncode == 0, proc.stderr
    assert "Warning:" in proc.stderr and "missing required toleration" in proc.stderr
    assert env.get_ds() is not None


def test_policy_changes_apply_without_restart_and_invalid_ones_are_rejected(env: Env) -> None:
    ds = env.daemonset()
    assert env.apply(ds, "--dry-run=server").returncode == 0
    env.add_policy({"tolerations": {"required": [INFRA]}}, wait=False)
    # no restart: the watch brings the new policy in
    poll(
        lambda: env.apply(ds, "--dry-run=server").returncode != 0,
        what="the new policy to deny",
        timeout=20,
        interval=0.3,
    )

    bad = builders.policy(
        f"{env.ns}-bad",
        {
            "rollout": {"maxUnavailable": "110%"},
            "versions": {
                "rules": [{"image": "x", "compatibility": [{"kubernetes": ">=1.x", "versions": ">=1"}]}]
            },
        },
    )
    proc = apply(env.cluster, bad, check=False)
    assert proc.returncode != 0
    assert "spec.rollout.maxUnavailable" in proc.stderr
    assert "spec.versions.rules[0].compatibility[0].kubernetes" in proc.stderr


def test_server_dry_run_gets_the_same_verdict_and_stores_nothing(env: Env) -> None:
    env.add_policy({"tolerations": {"required": [INFRA]}})
    denied = env.apply(env.daemonset(), "--dry-run=server")
    assert denied.returncode != 0 and "missing required toleration" in denied.stderr
    allowed = env.apply(env.daemonset(tolerations=[INFRA]), "--dry-run=server")
    assert allowed.returncode == 0, allowed.stderr
    assert "(server dry run)" in allowed.stdout
    assert env.get_ds() is None


def test_existing_daemonset_is_not_locked_by_a_later_policy(env: Env) -> None:
    assert env.apply(env.daemonset()).returncode == 0
    env.add_policy({"tolerations": {"required": [INFRA]}})
    # a label edit passes with a warning; a template change is judged
    label = env.kubectl("label", "daemonset", "agent", "-n", env.ns, "team=obs", check=False)
    assert label.returncode == 0, label.stderr
    assert "not enforced: unchanged by this update" in label.stderr
    bump = env.apply(env.daemonset(image="registry.example.com/agent:2.2.0"))
    assert bump.returncode != 0 and "missing required toleration" in bump.stderr


@pytest.mark.parametrize("value", ["5% ", "10.5%", "%%"])
def test_a_bad_percentage_gets_the_apiservers_own_message_not_a_webhook_error(env: Env, value: str) -> None:
    """The mutating webhook runs before apps/v1 validation: it leaves what it can't read untouched
    (with a warning) and the apiserver names the problem; the toleration is still added."""
    env.add_nodes([{"name": "plain"}, {"name": "infra-1", "taints": [INFRA]}])
    env.add_policy(
        {
            "tolerations": {"required": [INFRA], "onMissing": "Add"},
            "rollout": {"maxUnavailable": "20%", "onExceed": "Clamp"},
        }
    )
    bad = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": value}}
    proc = env.apply(env.daemonset(update_strategy=bad))
    assert proc.returncode != 0
    assert "failed calling webhook" not in proc.stderr, proc.stderr
    assert 'The DaemonSet "agent" is invalid' in proc.stderr, proc.stderr  # the apiserver's validation
    assert "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value" in proc.stderr, proc.stderr
    # and our warning, naming the field the mutating webhook left alone
    assert "dsguard left it unchanged: spec.updateStrategy.rollingUpdate.maxUnavailable" in proc.stderr
    assert env.get_ds() is None
    # Fixed, the same policy adds the toleration and clamps the cap.
    good = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}  # 2 of 2 nodes: over 20%
    proc = env.apply(env.daemonset(update_strategy=good))
    assert proc.returncode == 0, proc.stderr
    stored = env.get_ds()
    assert stored is not None
    assert INFRA in stored["spec"]["template"]["spec"]["tolerations"]
    assert stored["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"


@pytest.mark.parametrize("digits", [40, 5000])
def test_a_node_affinity_bound_out_of_int64_is_no_webhook_error(env: Env, digits: int) -> None:
    """The mutating webhook sees a Gt value of 5,000 digits before apps/v1 validation, which
    refuses it (a label value: 63 bytes at most); one of 40 digits is a valid label value,
    stored, and its term matches no node, as in the scheduler. Neither is a webhook error."""
    env.add_nodes([{"name": "plain", "labels": {"generation": "7"}}])
    env.add_policy({"tolerations": {"required": [INFRA], "onMissing": "Add"}})
    ds = env.daemonset()
    term = {"matchExpressions": [{"key": "generation", "operator": "Gt", "values": ["9" * digits]}]}
    ds["spec"]["template"]["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
    }
    proc = env.apply(ds)
    assert "failed calling webhook" not in proc.stderr, proc.stderr
    if digits > 63:
        assert proc.returncode != 0
        assert "must be no more than 63 bytes" in proc.stderr, proc.stderr  # v1.37 wording
        return
    assert proc.returncode == 0, proc.stderr
    assert "dsguard added toleration" in proc.stderr
    stored = env.get_ds()
    assert stored is not None
    assert INFRA in stored["spec"]["template"]["spec"]["tolerations"]


def _memo_hits(webhook: HostWebhook) -> float:
    for line in webhook.metrics().splitlines():
        if line.startswith('dsguard_webhook_verdict_memo_total{result="hit"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_reapplied_daemonset_is_judged_again_after_its_namespace_changes(env: Env) -> None:
    """A controller writes the same DaemonSet again and again (the same object, an UPDATE each
    time): the verdict memo answers the repeats; the namespace then gains the label a policy
    selects, which the review itself doesn't carry, and the next answer has that policy's finding
    (a warning: the template didn't change). That the memo is emptied by the change is proven by
    tests/unit/test_verdict_memo.py: here the apiserver's object may differ anyway."""
    env.add_nodes([{"name": "plain"}])
    platform = {"matchLabels": {"dsguard.test/tier": "platform"}}
    env.add_policy(
        {
            "match": {"namespaces": [env.ns], "namespaceSelector": platform},
            "tolerations": {"required": [INFRA]},
        }
    )
    created = env.apply(env.daemonset())
    assert created.returncode == 0 and "Warning" not in created.stderr, created.stderr

    def settled() -> dict[str, Any] | None:
        ds = env.get_ds()
        if ds is None:
            return None
        status = ds.get("status") or {}
        ready = (
            status.get("observedGeneration") == ds["metadata"]["generation"]
            and status.get("numberReady") == 1
        )
        return ds if ready else None

    stored: dict[str, Any] = poll(
        settled, what="the DaemonSet's pod to be ready (its status settled)", timeout=60
    )
    del stored["metadata"]["resourceVersion"]  # an unconditional update, as a controller's re-apply
    # The manager that created it: its managed fields don't change, so neither does the object.
    replace = ("replace", "--dry-run=server", "--field-manager=kubectl-client-side-apply", "-f", "-")
    hits = _memo_hits(env.webhook)

    def answered_from_the_memo() -> bool:
        proc = env.kubectl(*replace, input=json.dumps(stored), check=False)
        assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
        return _memo_hits(env.webhook) > hits

    # The first repeats may differ in what the apiserver adds (managedFields times): poll.
    poll(
        answered_from_the_memo,
        what="a repeated review answered from the verdict memo",
        timeout=20,
        interval=0.1,
    )
    env.kubectl("label", "namespace", env.ns, "dsguard.test/tier=platform")
    warned = poll(
        lambda: (
            "missing required toleration"
            in env.kubectl(*replace, input=json.dumps(stored), check=False).stderr
        ),
        what="the re-applied DaemonSet to be judged by the policy its namespace now matches",
        timeout=20,
        interval=0.3,
    )
    assert warned
