"""dsguard.upgrade_plan: what an upgrade does to DaemonSets under the policies' version rules."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules import image_versions
from dsguard.rules.context import RuleContext, Severity, name_nodes
from dsguard.scheduling import NodeInfo, Taint
from dsguard.upgrade_plan import (
    FindingKind,
    Manifest,
    Status,
    parse_node_selector,
    parse_target_version,
    plan_upgrade,
    upgraded_facts,
    version_verdicts,
)
from dsguard.versions import Version
from tests.support import builders
from tests.support.builders import node_info, parsed_policy

AGENT = "registry.example.com/agent"


def policy(
    name: str = "agents",
    *,
    compat: Sequence[tuple[str, str]] = ((">=1.35.0", ">=2.0.0"),),
    image: str = AGENT,
    unknown: str | None = None,
    namespaces: Sequence[str] = ("logging",),
    enforcement: str = "Enforce",
    versions: bool = True,
) -> Policy:
    """A policy with one versions rule for `image`, of (kubernetes, versions) pairs; or, without
    versions, a rollout cap only."""
    spec: dict[str, Any] = {"match": {"namespaces": list(namespaces)}, "enforcement": enforcement}
    if versions:
        spec["versions"] = {
            "rules": [
                {"image": image, "compatibility": [{"kubernetes": k, "versions": v} for k, v in compat]}
            ]
        }
        if unknown:
            spec["versions"]["unknownVersion"] = unknown
    else:
        spec["rollout"] = {"maxUnavailable": 1}
    return parsed_policy(name, spec)


#: Nodes in pool `a` unless said otherwise (labels={"pool": ...}).
node = partial(node_info, labels={"pool": "a"})
#: DaemonSet `agent` in `logging` on the agent 1.9.0 (containers named c0, c1, ...), as in a
#: manifest (no template labels).
daemonset = partial(
    builders.daemonset, namespace="logging", images=[f"{AGENT}:1.9.0"], template_metadata=False
)


OLD = [node("old-0", kubelet="v1.34.2"), node("old-1", kubelet="v1.34.2")]
POOLS = [
    node("a-0", kubelet="v1.34.2"),
    node("a-1", kubelet="v1.34.2"),
    node("b-0", kubelet="v1.34.2", labels={"pool": "b"}),
]
GPU_TAINT = Taint("gpu", "true", "NoSchedule")


@dataclass
class Case:
    id: str
    policies: list[Policy]
    daemonsets: list[dict[str, Any]]
    nodes: list[NodeInfo]
    target: str = "v1.35.0"
    pool: str | None = None  # upgrade only nodes with pool=<pool>
    server_version: str | None = "v1.34.2"
    # expected, per DaemonSet name: (status, nodes that break at the target, of which new)
    want: dict[str, tuple[Status, list[str], list[str]]] = field(default_factory=dict)
    not_governed: int = 0


CASES = [
    Case(
        "compatible-at-target",
        [policy()],
        [daemonset(images=[f"{AGENT}:2.1.0"])],
        OLD,
        want={"agent": (Status.OK, [], [])},
    ),
    Case(
        "incompatible-at-target",
        [policy()],
        [daemonset()],
        OLD,
        want={"agent": (Status.BREAKS, ["old-0", "old-1"], ["old-0", "old-1"])},
    ),
    Case(
        "below-the-range-target-is-fine",
        [policy()],
        [daemonset()],
        OLD,
        target="v1.34.9",
        want={"agent": (Status.OK, [], [])},
    ),
    Case(
        "already-broken",
        [policy()],
        [daemonset()],
        [node("new-0", kubelet="v1.35.1"), node("new-1", kubelet="v1.35.2")],
        target="v1.36.0",
        want={"agent": (Status.ALREADY_BROKEN, ["new-0", "new-1"], [])},
    ),
    Case(
        "partly-broken-today-and-more-after",
        [policy()],
        [daemonset()],
        [node("new-0", kubelet="v1.35.1"), node("old-0", kubelet="v1.34.2")],
        want={"agent": (Status.BREAKS, ["new-0", "old-0"], ["old-0"])},
    ),
    Case(
        "upgrade-fixes-it",
        [policy(compat=[("<1.35.0", ">=2.0.0")])],
        [daemonset()],
        OLD,
        want={"agent": (Status.OK, [], [])},
    ),
    Case(
        "node-pool-upgrade",
        [policy()],
        [daemonset()],
        POOLS,
        pool="a",
        want={"agent": (Status.BREAKS, ["a-0", "a-1"], ["a-0", "a-1"])},
    ),
    Case(
        "daemonset-off-the-upgraded-pool-by-nodeSelector",
        [policy()],
        [daemonset("on-b", node_selector={"pool": "b"}), daemonset("on-a", node_selector={"pool": "a"})],
        POOLS,
        pool="a",
        want={"on-b": (Status.OK, [], []), "on-a": (Status.BREAKS, ["a-0", "a-1"], ["a-0", "a-1"])},
    ),
    Case(
        "daemonset-off-the-upgraded-nodes-by-taints",
        [policy()],
        [
            daemonset("plain"),
            daemonset("tolerant", tolerations=[{"key": "gpu", "operator": "Exists"}]),
        ],
        [
            node("gpu-0", kubelet="v1.34.2", labels={"pool": "gpu"}, taints=[GPU_TAINT]),
            node("cpu-0", kubelet="v1.34.2", labels={"pool": "cpu"}),
        ],
        pool="gpu",
        want={
            "plain": (Status.OK, [], []),
            "tolerant": (Status.BREAKS, ["gpu-0"], ["gpu-0"]),
        },
    ),
    Case(
        "no-tag-warn-cannot-check",
        [policy(unknown="Warn")],
        [daemonset(images=[f"{AGENT}:latest"])],
        OLD,
        want={"agent": (Status.CANNOT_CHECK, [], [])},
    ),
    Case(
        "no-tag-allow-cannot-check",
        [policy(unknown="Allow")],
        [daemonset(images=[AGENT])],
        OLD,
        want={"agent": (Status.CANNOT_CHECK, [], [])},
    ),
    Case(
        "no-tag-deny-fails",
        [policy(unknown="Deny")],
        [daemonset(images=[f"{AGENT}@sha256:" + "a" * 64])],
        OLD,
        want={"agent": (Status.ALREADY_BROKEN, [], [])},
    ),
    Case(
        "no-tag-but-another-image-breaks",
        [policy()],
        [daemonset(images=[f"{AGENT}:stable"], init_images=[f"{AGENT}:1.0"])],
        OLD,
        want={"agent": (Status.BREAKS, ["old-0", "old-1"], ["old-0", "old-1"])},
    ),
    Case(
        "policy-not-matching",
        [policy(namespaces=["other"])],
        [daemonset()],
        OLD,
        not_governed=1,
    ),
    Case(
        "policy-without-versions",
        [policy(versions=False)],
        [daemonset()],
        OLD,
        not_governed=1,
    ),
    Case(
        "image-no-rule-covers",
        [policy(image="registry.example.com/other")],
        [daemonset()],
        OLD,
        want={"agent": (Status.OK, [], [])},
    ),
    Case(
        "audit-policy-still-checked",
        [policy(enforcement="Audit")],
        [daemonset()],
        OLD,
        want={"agent": (Status.BREAKS, ["old-0", "old-1"], ["old-0", "old-1"])},
    ),
    Case(
        "multiple-policies",
        [
            policy("fine", compat=[(">=1.30.0", ">=1.0.0")]),
            policy("strict", compat=[(">=1.35.0", ">=2.0.0")]),
            policy("elsewhere", namespaces=["web"]),
        ],
        [daemonset()],
        OLD,
        want={"agent": (Status.BREAKS, ["old-0", "old-1"], ["old-0", "old-1"])},
    ),
    Case(
        "no-nodes-known-apiserver-stands-in",
        [policy()],
        [daemonset()],
        [],
        want={"agent": (Status.BREAKS, [], [])},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    facts = ClusterFacts(nodes=tuple(case.nodes), server_version=case.server_version)
    pool = case.pool
    plan = plan_upgrade(
        case.policies,
        case.daemonsets,
        facts,
        case.target,
        upgrade=(lambda n: n.labels.get("pool") == pool) if pool else None,
        node_selector=f"pool={pool}" if pool else None,
    )
    got = {r.name: (r.status, list(r.broken_nodes), list(r.newly_broken_nodes)) for r in plan.daemonsets}
    assert got == case.want
    assert plan.not_governed == case.not_governed
    assert plan.apiserver_upgraded is (pool is None)
    want_upgraded = [n.name for n in case.nodes if pool is None or n.labels["pool"] == pool]
    assert list(plan.nodes_upgraded) == want_upgraded
    assert len(plan.breaking) == sum(1 for s, _, _ in case.want.values() if s in ("breaks", "already-broken"))


def test_findings_carry_the_rules_message_policy_and_container() -> None:
    plan = plan_upgrade(
        [policy("fine", compat=[(">=1.30.0", ">=1.0.0")]), policy("strict")],
        [Manifest(daemonset(images=["nginx:1.27", f"{AGENT}:1.9.0"]), "ds.yaml#1")],
        ClusterFacts(nodes=tuple(OLD), server_version="v1.34.2"),
        "v1.35.0",
    )
    (r,) = plan.daemonsets
    assert r.source == "ds.yaml#1"
    assert r.policies == ("fine", "strict")
    assert [i.image for i in r.images] == ["nginx:1.27", f"{AGENT}:1.9.0"]
    (f,) = r.findings
    assert (f.policy, f.image.container, f.image.path) == (
        "strict",
        "c1",
        "spec.template.spec.containers[1].image",
    )
    assert f.kind is FindingKind.INCOMPATIBLE and f.new
    assert f.message.startswith(f"spec.template.spec.containers[1].image: {AGENT}:1.9.0 is not compatible")
    assert "2 node(s) running kubelet v1.35.0 (old-0, old-1)" in f.message
    assert 'allows versions ">=2.0.0"' in f.message


def test_allow_unknown_version_gets_its_own_message_and_warn_keeps_the_rules() -> None:
    facts = ClusterFacts(nodes=tuple(OLD))
    for unknown, kind_severity in (("Allow", Severity.WARNING), ("Warn", Severity.WARNING)):
        plan = plan_upgrade([policy(unknown=unknown)], [daemonset(images=[AGENT])], facts, "v1.35.0")
        (f,) = plan.daemonsets[0].findings
        assert f.kind is FindingKind.UNKNOWN_VERSION and f.severity is kind_severity
        assert "has no version tag" in f.message
        assert ("unknownVersion: Allow" in f.message) is (unknown == "Allow")
        assert not plan.breaking


def test_upgraded_facts() -> None:
    facts = ClusterFacts(nodes=tuple(POOLS), namespaces={"x": {"a": "b"}}, server_version="v1.34.2")
    everything = upgraded_facts(facts, "v1.35.0")
    assert [n.kubelet_version for n in everything.nodes] == ["v1.35.0"] * 3
    assert everything.server_version == "v1.35.0"
    assert everything.namespaces == facts.namespaces
    pool = upgraded_facts(facts, "v1.35.0", lambda n: n.labels["pool"] == "b")
    assert [n.kubelet_version for n in pool.nodes] == ["v1.34.2", "v1.34.2", "v1.35.0"]
    assert pool.server_version == "v1.34.2"
    assert [n.labels for n in pool.nodes] == [n.labels for n in POOLS]
    assert [n.kubelet_version for n in facts.nodes] == ["v1.34.2"] * 3  # the input is untouched


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1.35.0", "v1.35.0"),
        ("v1.35.0", "v1.35.0"),
        ("1.35", "v1.35.0"),
        ("V1.35.2", "v1.35.2"),
        (" 1.36.1 ", "v1.36.1"),
        ("v1.36.0-rc.1", "v1.36.0-rc.1"),
        ("01.035.0", "v1.35.0"),
    ],
)
def test_parse_target_version(text: str, want: str) -> None:
    assert parse_target_version(text) == want


@pytest.mark.parametrize(
    "text", ["", "1", "v1", "latest", "1.35.0.1", "1.x", "v1.35.0-debian", ">=1.35", "1..3"]
)
def test_parse_target_version_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a Kubernetes version: expected MAJOR\.MINOR"):
        parse_target_version(text)


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ("pool=a", [{"pool": "a"}, {"pool": "a", "x": "y"}], [{"pool": "b"}, {}]),
        ("pool==a", [{"pool": "a"}], [{"pool": "b"}]),
        ("pool!=a", [{"pool": "b"}, {}], [{"pool": "a"}]),
        ("pool=a,zone!=z1", [{"pool": "a", "zone": "z2"}, {"pool": "a"}], [{"pool": "a", "zone": "z1"}]),
        ("gpu", [{"gpu": ""}, {"gpu": "x"}], [{}]),
        ("!gpu", [{}], [{"gpu": "true"}]),
        ("node.kubernetes.io/pool = a", [{"node.kubernetes.io/pool": "a"}], [{"pool": "a"}]),
        ("pool=a,pool=b", [], [{"pool": "a"}, {"pool": "b"}]),
        ("pool=", [{"pool": ""}], [{"pool": "a"}, {}]),
    ],
)
def test_parse_node_selector(
    text: str, matching: list[dict[str, str]], not_matching: list[dict[str, str]]
) -> None:
    sel = parse_node_selector(text)
    for labels in matching:
        assert sel.matches(labels), labels
    for labels in not_matching:
        assert not sel.matches(labels), labels


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("pool in (a,b)", "set-based requirements"),
        ("pool=a,", "empty requirement"),
        ("=a", "key ''"),
        ("po ol=a", "key 'po ol'"),
        ("pool=a b", "value 'a b'"),
        ("pool=a=b", "must not contain"),
        ("-bad=a", "key '-bad'"),
    ],
)
def test_parse_node_selector_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_node_selector(text)
    assert message in str(e.value)


# --- version_verdicts agrees with image_versions.check -----------------------------------------


def assert_agree(p: Policy, obj: Mapping[str, Any], facts: ClusterFacts) -> None:
    assert p.versions is not None
    ctx = RuleContext(DaemonSetView.from_object(obj), facts)
    findings = image_versions.check(p, ctx)
    verdicts = [v for v in version_verdicts(p.versions, ctx) if v.reported]
    assert len(verdicts) == len(findings), ([f.message for f in findings], verdicts)
    targeted = {n.name for n in ctx.targeted}
    kubelets = {n.name: n.kubelet_version for n in facts.nodes}
    for f, v in zip(findings, verdicts, strict=True):
        assert f.severity is v.severity
        assert f.message.startswith(f"{v.image.path}: ")
        if v.kind is FindingKind.INCOMPATIBLE:
            assert v.compatibility is not None
            assert set(v.nodes) <= targeted
            assert {kubelets[n] for n in v.nodes} == set(v.kubelets) or not facts.nodes
            m = re.search(r"with (\d+) node\(s\) running kubelet (.*?) \((.*?)\): on kubernetes", f.message)
            assert m is not None, f.message
            assert m.group(2) == ", ".join(v.kubelets)
            distinct = len(set(rule_compat(p))) == len(rule_compat(p))
            if not facts.nodes:
                assert "((no nodes known: the apiserver version)" in f.message and not v.nodes
            elif distinct:
                assert int(m.group(1)) == len(v.nodes)
                assert m.group(3) == name_nodes(list(v.nodes))
            else:  # the rule counts a node once per equal entry; the verdict names it once
                assert int(m.group(1)) >= len(v.nodes)
            assert f'on kubernetes "{v.compatibility.kubernetes}"' in f.message
            # and every such node really is out of that entry's range
            image_version = v.image.image.rpartition(":")[2]
            iv = Version.parse(image_version)
            assert iv is not None and not v.compatibility.versions.contains(iv)
            for k in v.kubelets:
                kv = Version.parse(k)
                assert kv is not None and v.compatibility.kubernetes.contains(kv)
        elif v.kind is FindingKind.UNKNOWN_VERSION:
            assert "has no version tag" in f.message
        else:
            assert "invalid image reference" in f.message


def rule_compat(p: Policy) -> list[Any]:
    assert p.versions is not None
    return [c for r in p.versions.rules for c in r.compatibility]


AGREE_CASES = [
    (policy(), daemonset(), OLD),
    (policy(), daemonset(images=[f"{AGENT}:1.9.0", "nginx:1", f"{AGENT}:latest", "BAD//ref"]), OLD),
    (policy(unknown="Deny"), daemonset(images=[AGENT], init_images=[f"{AGENT}:0.1"]), OLD),
    (policy(unknown="Allow"), daemonset(images=[AGENT, f"{AGENT}:0.1"]), OLD),
    (
        policy(compat=[(">=1.30.0", ">=1.5.0"), (">=1.35.0", ">=2.0.0"), ("<1.35.0", "<1.9.0")]),
        daemonset(images=[f"{AGENT}:1.9.0", f"{AGENT}:1.0.0"]),
        [
            node("n0", kubelet="v1.34.2"),
            node("n1", kubelet="v1.35.0"),
            node("n2", kubelet="v1.36.0"),
            node("n3", kubelet="garbage"),
        ],
    ),
    (policy(), daemonset(node_selector={"pool": "b"}), POOLS),
    (policy(), daemonset(), [node(f"n{i:02}", kubelet="v1.35.0") for i in range(25)]),
    (policy(), daemonset(), []),
]


@pytest.mark.parametrize(("p", "obj", "nodes"), AGREE_CASES)
def test_version_verdicts_agree_with_image_versions_check(
    p: Policy, obj: dict[str, Any], nodes: list[NodeInfo]
) -> None:
    assert_agree(p, obj, ClusterFacts(nodes=tuple(nodes), server_version="v1.35.1"))
    assert_agree(p, obj, upgraded_facts(ClusterFacts(nodes=tuple(nodes)), "v1.36.0"))


_KUBELETS = st.sampled_from(["v1.33.0", "v1.34.2", "v1.35.0", "v1.35.4+k3s1", "v1.36.0-rc.1", "", "x"])
_TAGS = st.sampled_from(["1.0.0", "1.9.0", "2.0.0", "2.1.0-rc.1", "3", "latest", ""])
_RANGES = st.sampled_from([">=1.35.0", "<1.35.0", ">=1.34.0, <1.36.0", "==1.35", "!=1.33.0", ">1.0"])


@settings(max_examples=150, deadline=None)
@given(
    kubelets=st.lists(st.tuples(_KUBELETS, st.sampled_from(["a", "b"]), st.booleans()), max_size=14),
    tags=st.lists(_TAGS, min_size=1, max_size=3),
    compat=st.lists(st.tuples(_RANGES, _RANGES), min_size=1, max_size=3),
    unknown=st.sampled_from(["Allow", "Warn", "Deny"]),
    pool=st.sampled_from([None, "a", "b"]),
    tolerate=st.booleans(),
)
def test_version_verdicts_agree_property(
    kubelets: list[tuple[str, str, bool]],
    tags: list[str],
    compat: list[tuple[str, str]],
    unknown: str,
    pool: str | None,
    tolerate: bool,
) -> None:
    nodes = [
        node(f"n{i}", kubelet=k, labels={"pool": p}, taints=[GPU_TAINT] if tainted else [])
        for i, (k, p, tainted) in enumerate(kubelets)
    ]
    images = [f"{AGENT}:{t}" if t else AGENT for t in tags]
    obj = daemonset(
        images=images,
        node_selector={"pool": pool} if pool else None,
        tolerations=[{"key": "gpu", "operator": "Exists"}] if tolerate else None,
    )
    p = policy(compat=compat, unknown=unknown)
    assert_agree(p, obj, ClusterFacts(nodes=tuple(nodes), server_version="v1.34.0"))
    assert_agree(p, obj, upgraded_facts(ClusterFacts(nodes=tuple(nodes)), "v1.35.0"))
