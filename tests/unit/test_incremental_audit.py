"""guard.policy_audit.IncrementalAudit: after any sequence of changes (nodes, namespaces,
DaemonSets, policies, the apiserver version), its results equal a full audit's, while it re-judges
only the DaemonSets a change can affect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo
from guard.policy_audit import IncrementalAudit, audit
from tests.support.builders import daemonset, node_info, parsed_policy

AGENT = "registry.example.com/agent"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
GPU = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
TAINTS: dict[str, list[dict[str, str]]] = {
    "none": [],
    "infra": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}],
    "gpu": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}],
}
NAMESPACES = ("logging", "monitoring")

# Policies as the tests switch them on, off or to another variant: every rule that reads nodes
# (coverage with a selector or all nodes, caps counting targeted nodes, kubelet versions).
POOL_A = {"nodeSelector": {"matchLabels": {"pool": "a"}}}
PLATFORM = {"namespaceSelector": {"matchLabels": {"tier": "platform"}}}


def _versions(kubernetes: str, versions: str) -> dict[str, Any]:
    return {"rules": [{"image": AGENT, "compatibility": [{"kubernetes": kubernetes, "versions": versions}]}]}


POLICY_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "coverage": [
        {"match": {"namespaces": ["logging"]}, "tolerations": {"required": [INFRA], "coverage": POOL_A}},
        {"match": {}, "tolerations": {"required": [GPU], "coverage": {"nodeSelector": {}}}},
    ],
    "versions": [
        {"match": PLATFORM, "versions": _versions(">=1.33.0", ">=2.0.0")},
        {"match": {}, "versions": _versions("<1.33.0", "<2.0.0")},
    ],
    "caps": [
        {"match": {"selector": {"matchLabels": {"team": "obs"}}}, "rollout": {"maxUnavailable": "20%"}},
        {"match": {"namespaces": ["monitoring"]}, "rollout": {"maxUnavailable": 1}},
    ],
}


@dataclass
class World:
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    daemonsets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    server_version: str = "v1.33.2"
    _node_tuple: tuple[NodeInfo, ...] | None = None

    def facts(self) -> ClusterFacts:
        # As ClusterCache: the same nodes tuple until a node changes.
        if self._node_tuple is None:
            self._node_tuple = tuple(self.nodes[n] for n in sorted(self.nodes))
        labels = {ns: {"kubernetes.io/metadata.name": ns, **extra} for ns, extra in self.namespaces.items()}
        return ClusterFacts(nodes=self._node_tuple, namespaces=labels, server_version=self.server_version)

    def apply(self, change: tuple[Any, ...]) -> None:
        kind, *args = change
        if kind == "node":
            name, pool, taint, kubelet, *zone = args
            labels = {"pool": pool, **({"zone": zone[0]} if zone else {})}  # no rule reads zone
            self.nodes[name] = node_info(
                name, labels=labels, hostname_label=True, taints=TAINTS[taint], kubelet=kubelet
            )
            self._node_tuple = None
        elif kind == "node-delete":
            if self.nodes.pop(args[0], None) is not None:
                self._node_tuple = None
        elif kind == "namespace":
            ns, tier = args
            self.namespaces[ns] = {"tier": tier}
        elif kind == "ds":
            name, ns, tag, tolerations, selector, max_unavailable, team = args
            obj = daemonset(
                name, namespace=ns, image=f"{AGENT}:{tag}", labels={"app": name, "team": team},
                tolerations=tolerations, node_selector=selector, max_unavailable=max_unavailable,
            )  # fmt: skip
            self.daemonsets[(ns, name)] = obj
        elif kind == "ds-delete":
            for key in [k for k in self.daemonsets if k[1] == args[0]]:
                del self.daemonsets[key]
        elif kind == "policy":
            name, variant = args
            if variant is None:
                self.policies.pop(name, None)
            else:
                self.policies[name] = parsed_policy(name, POLICY_VARIANTS[name][variant])
        elif kind == "server":
            self.server_version = args[0]


node_names = st.sampled_from([f"n{i}" for i in range(6)])
node_change = st.tuples(
    st.just("node"), node_names, st.sampled_from(["a", "b"]), st.sampled_from(list(TAINTS)),
    st.sampled_from(["v1.31.4", "v1.33.2", "v1.34.0"]), st.sampled_from(["z1", "z2"]),
)  # fmt: skip
ds_names = st.sampled_from(["d0", "d1", "d2", "d3"])
ds_change = st.tuples(
    st.just("ds"), ds_names, st.sampled_from(NAMESPACES), st.sampled_from(["1.0.0", "2.1.0"]),
    st.sampled_from([[], [INFRA], [GPU], [INFRA, GPU]]),
    st.sampled_from([None, {"pool": "a"}, {"pool": "b"}]),
    st.sampled_from([1, "50%"]), st.sampled_from(["obs", "net"]),
)  # fmt: skip
change = st.one_of(
    node_change,
    st.tuples(st.just("node-delete"), node_names),
    st.tuples(st.just("namespace"), st.sampled_from(NAMESPACES), st.sampled_from(["platform", "workload"])),
    ds_change,
    st.tuples(st.just("ds-delete"), ds_names),
    st.tuples(st.just("policy"), st.sampled_from(list(POLICY_VARIANTS)), st.sampled_from([None, 0, 1])),
    st.tuples(st.just("server"), st.sampled_from(["v1.33.2", "v1.31.4"])),
)


def _world(initial: list[tuple[Any, ...]]) -> World:
    world = World(namespaces={ns: {"tier": "platform"} for ns in NAMESPACES})
    for c in initial:
        world.apply(c)
    return world


# Node changes the patched walks must follow (PlacementCache.advance), always tried: a node
# stops being targeted (caps count one fewer), and a kubelet change that reorders the groups
# versions names the nodes by.
_UNTARGETED: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] = (
    [
        ("node", "n0", "a", "none", "v1.33.2", "z1"),
        ("node", "n1", "a", "none", "v1.33.2", "z1"),
        ("node", "n2", "a", "none", "v1.33.2", "z1"),
        ("policy", "caps", 0),
        ("ds", "d0", "monitoring", "1.0.0", [], None, "50%", "obs"),
    ],
    [("node", "n1", "a", "infra", "v1.33.2", "z1")],  # 2 of 3 over 20% (1), then 1 of 2: none
)
_REGROUPED: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] = (
    [
        ("node", "n0", "a", "none", "v1.34.0", "z1"),
        ("node", "n1", "a", "none", "v1.33.2", "z1"),
        ("node", "n2", "a", "none", "v1.34.0", "z1"),
        ("policy", "versions", 0),
        ("ds", "d0", "logging", "1.0.0", [], None, 1, "net"),
    ],
    [("node", "n0", "a", "none", "v1.33.2", "z1")],
)


@settings(max_examples=300, deadline=None)
@given(st.lists(change, min_size=3, max_size=12), st.lists(change, min_size=1, max_size=15))
@example(*_UNTARGETED)
@example(*_REGROUPED)
def test_incremental_results_equal_a_full_audit_after_every_change(
    initial: list[tuple[Any, ...]], changes: list[tuple[Any, ...]]
) -> None:
    world = _world(initial)
    incremental = IncrementalAudit()
    for c in [None, *changes]:
        if c is not None:
            world.apply(c)
        facts = world.facts()
        policies = list(world.policies.values())
        got = incremental.run(policies, world.daemonsets, facts)
        assert got == audit(policies, world.daemonsets.values(), facts), f"after {c}"


def _base() -> World:
    world = _world([])
    for i, (pool, taint) in enumerate([("a", "none"), ("a", "infra"), ("b", "none"), ("b", "gpu")]):
        world.apply(("node", f"n{i}", pool, taint, "v1.33.2"))
    world.apply(("ds", "everywhere", "logging", "2.1.0", [INFRA, GPU], None, 1, "obs"))
    world.apply(("ds", "pool-b", "monitoring", "2.1.0", [], {"pool": "b"}, 1, "net"))
    world.apply(("ds", "ungoverned", "monitoring", "2.1.0", [], None, 1, "net"))
    world.apply(("policy", "versions", 1))  # matches every DaemonSet, reads targeted kubelets
    return world


@pytest.mark.parametrize(
    ("change", "rejudged"),
    [
        # a kubelet upgrade on a node all three target: all three read its kubelet
        (("node", "n2", "b", "none", "v1.31.4"), {"everywhere", "pool-b", "ungoverned"}),
        # a label no rule reads: nothing
        (("node", "n2", "b", "none", "v1.33.2", "z1"), set()),
        # a pool-a node gains a GPU taint: everywhere tolerates it; ungoverned no longer targets it
        (("node", "n0", "a", "gpu", "v1.33.2"), {"ungoverned"}),
        # a tainted pool-a node only everywhere targets, whose kubelet changes
        (("node", "n1", "a", "infra", "v1.31.4"), {"everywhere"}),
        (("node-delete", "n1"), {"everywhere"}),
        (("node", "n9", "b", "none", "v1.33.2"), {"everywhere", "pool-b", "ungoverned"}),
        (("namespace", "monitoring", "workload"), {"pool-b", "ungoverned"}),
        (("ds", "pool-b", "monitoring", "1.0.0", [], {"pool": "b"}, 1, "net"), {"pool-b"}),
        # a policy matching logging only: the DaemonSets it matched (none) or matches (everywhere)
        (("policy", "coverage", 0), {"everywhere"}),
        (("server", "v1.34.0"), {"everywhere", "pool-b", "ungoverned"}),
    ],
)
def test_a_change_rejudges_only_the_daemonsets_it_can_affect(
    change: tuple[Any, ...], rejudged: set[str]
) -> None:
    world = _base()
    incremental = IncrementalAudit()
    incremental.run(list(world.policies.values()), world.daemonsets, world.facts())
    world.apply(change)
    facts = world.facts()
    policies = list(world.policies.values())
    got = incremental.run(policies, world.daemonsets, facts)
    assert got == audit(policies, world.daemonsets.values(), facts)
    assert incremental.rejudged == len(rejudged)


@pytest.mark.parametrize(
    "change",
    [
        ("node", "n5", "a", "infra", "v1.33.2"),  # joins: not targeted, but picked by the selector
        ("node", "n1", "a", "gpu", "v1.33.2"),  # another taint: a new reason in the message
        ("node-delete", "n1"),  # leaves: one node fewer in scope
        ("node", "n1", "b", "infra", "v1.33.2"),  # leaves the selector's pool
    ],
)
def test_a_node_the_daemonset_never_targets_but_coverage_picks_rejudges_it(change: tuple[Any, ...]) -> None:
    world = _base()
    world.apply(("policy", "coverage", 0))  # logging, required INFRA, coverage of pool a
    world.apply(("ds", "logger", "logging", "2.1.0", [], None, 1, "obs"))  # tolerates nothing
    incremental = IncrementalAudit()
    incremental.run(list(world.policies.values()), world.daemonsets, world.facts())
    world.apply(change)
    facts = world.facts()
    policies = list(world.policies.values())
    assert incremental.run(policies, world.daemonsets, facts) == audit(
        policies, world.daemonsets.values(), facts
    )


def test_findings_per_daemonset_are_what_the_policies_list() -> None:
    world = _base()
    world.apply(("node", "n4", "a", "none", "v1.31.4"))  # the versions variant 1 fails 2.1.0 here
    incremental = IncrementalAudit()
    results = incremental.run(list(world.policies.values()), world.daemonsets, world.facts())
    findings: Mapping[tuple[str, str], Any] = incremental.findings
    assert set(findings) == set(world.daemonsets)
    for result in results.values():
        for v in result.violations:
            assert v in findings[(v.namespace, v.name)].violations
        for ref in result.matched:
            ns, name = ref.split("/")
            assert result.policy in findings[(ns, name)].matched
