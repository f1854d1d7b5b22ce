"""The four rules through the engine: tables of DaemonSets, policies and nodes, plus properties."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.facts import ClusterFacts
from dsguard.rules.engine import Evaluation, evaluate, judge
from dsguard.scheduling import NodeInfo, Taint
from tests.support.builders import daemonset, node_info, parsed_policy

#: The DaemonSet these tables judge: `agent` in `logging`, labelled tier=node-agent.
ds = partial(
    daemonset, name="agent", namespace="logging", image="registry.example.com/agent:2.1.0",
    labels={"tier": "node-agent"},
)  # fmt: skip


def facts(*nodes: NodeInfo, version: str | None = "v1.33.2") -> ClusterFacts:
    return ClusterFacts(nodes=tuple(nodes), server_version=version)


INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}


def messages(ev: Evaluation) -> str:
    return "\n".join(str(d) for d in ev.denials)


# -- required tolerations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "required", "satisfied"),
    [
        ([INFRA], INFRA, True),
        ([], INFRA, False),
        ([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], INFRA, True),  # any value
        ([{"key": "dedicated", "operator": "Exists"}], INFRA, True),  # any effect
        ([{"operator": "Exists"}], INFRA, True),  # tolerates everything
        ([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], INFRA, False),
        ([{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoExecute"}], INFRA, False),
        # Equal T can't cover an Exists R: R tolerates every value
        ([INFRA], {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}, False),
        # NoExecute with seconds: T must tolerate at least as long
        (
            [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
            True,
        ),
        (
            [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
            {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            False,
        ),
        (
            [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
            {"key": "k", "operator": "Exists", "effect": "NoExecute"},  # forever
            False,
        ),
        (
            [{"key": "k", "operator": "Exists", "effect": "NoExecute"}],
            {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
            True,
        ),
        # empty operator means Equal
        ([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}], INFRA, True),
    ],
)
def test_required_tolerations(
    present: list[dict[str, Any]], required: dict[str, Any], satisfied: bool
) -> None:
    p = parsed_policy("p", {"tolerations": {"required": [required]}})
    ev = evaluate([p], ds(tolerations=present), facts=facts())
    assert ev.allowed is satisfied
    if not satisfied:
        assert "spec.template.spec.tolerations: missing required toleration" in messages(ev)
        assert "tolerations.onMissing: Add" in messages(ev)


def test_add_mutates_missing_ones_in_and_keeps_existing() -> None:
    existing = {"key": "other", "operator": "Exists"}
    p = parsed_policy(
        "p",
        {
            "tolerations": {
                "required": [
                    INFRA,
                    {
                        "key": "node-role.kubernetes.io/control-plane",
                        "operator": "Exists",
                        "effect": "NoSchedule",
                    },
                ],
                "onMissing": "Add",
            }
        },
    )
    obj = ds(tolerations=[existing])
    ev = evaluate([p], obj, facts=facts())
    assert ev.allowed
    assert ev.patch == [
        {"op": "add", "path": "/spec/template/spec/tolerations/1", "value": INFRA},
        {
            "op": "add",
            "path": "/spec/template/spec/tolerations/2",
            "value": {
                "key": "node-role.kubernetes.io/control-plane",
                "operator": "Exists",
                "effect": "NoSchedule",
            },
        },
    ]
    assert obj["spec"]["template"]["spec"]["tolerations"] == [existing]  # input untouched
    assert ev.notices and "added toleration" in ev.notices[0]


def test_add_on_validate_without_mutation_denies_with_a_hint() -> None:
    p = parsed_policy("p", {"tolerations": {"required": [INFRA], "onMissing": "Add"}})
    ev = judge([p], ds(), facts=facts())
    assert not ev.allowed
    assert "MutatingWebhookConfiguration" in messages(ev)


# -- coverage ------------------------------------------------------------------------------


def test_coverage_names_nodes_and_taints() -> None:
    p = parsed_policy("p", {"tolerations": {"coverage": {"nodeSelector": {}}}})
    f = facts(
        node_info("plain"),
        node_info("infra-1", taints=[Taint("dedicated", "infra", "NoSchedule")]),
        # PreferNoSchedule doesn't block DaemonSets
        node_info("soft", taints=[Taint("x", "", "PreferNoSchedule")]),
        # auto-tolerated
        node_info("not-ready", taints=[Taint("node.kubernetes.io/not-ready", "", "NoExecute")]),
        node_info("cordoned", taints=[Taint("node.kubernetes.io/unschedulable", "", "NoSchedule")]),
    )
    ev = evaluate([p], ds(), facts=f)
    assert not ev.allowed
    msg = messages(ev)
    assert "no pod on 1 of 5 nodes: infra-1" in msg
    assert "dedicated=infra:NoSchedule" in msg
    assert evaluate([p], ds(tolerations=[INFRA]), facts=f).allowed


def test_coverage_selector_limits_scope_and_node_selector_misses() -> None:
    p = parsed_policy(
        "p", {"tolerations": {"coverage": {"nodeSelector": {"matchLabels": {"pool": "infra"}}}}}
    )
    f = facts(node_info("a", labels={"pool": "infra"}), node_info("b", labels={"pool": "web"}))
    assert evaluate([p], ds(node_selector={"pool": "web"}), facts=f).denials
    assert evaluate([p], ds(node_selector={"pool": "infra"}), facts=f).allowed
    assert "no pod on 1 of 1 nodes selected by pool=infra: a" in messages(
        evaluate([p], ds(node_selector={"pool": "web"}), facts=f)
    )


def test_network_unavailable_is_tolerated_only_with_host_network() -> None:
    p = parsed_policy("p", {"tolerations": {"coverage": {"nodeSelector": {}}}})
    f = facts(
        node_info("cni-less", taints=[Taint("node.kubernetes.io/network-unavailable", "", "NoSchedule")])
    )
    assert not evaluate([p], ds(), facts=f).allowed
    assert evaluate([p], ds(host_network=True), facts=f).allowed


def test_coverage_lists_ten_nodes_and_a_count() -> None:
    p = parsed_policy("p", {"tolerations": {"coverage": {"nodeSelector": {}}}})
    f = facts(*(node_info(f"n{i:02d}", taints=[Taint("t", "", "NoSchedule")]) for i in range(25)))
    msg = messages(evaluate([p], ds(), facts=f))
    assert "n09 (" in msg and "n10 (" not in msg and "and 15 more" in msg


# -- rollout caps --------------------------------------------------------------------------


def nodes(n: int) -> ClusterFacts:
    return facts(*(node_info(f"n{i}") for i in range(n)))


@pytest.mark.parametrize(
    ("strategy", "cap", "n", "allowed"),
    [
        (None, {"maxUnavailable": 1}, 10, True),  # default maxUnavailable 1
        (None, {"maxUnavailable": 0}, 10, False),
        (None, {"maxSurge": 0}, 10, True),  # default maxSurge 0
        ({"rollingUpdate": {"maxUnavailable": 2}}, {"maxUnavailable": "10%"}, 20, True),  # 2 <= ceil(2.0)
        ({"rollingUpdate": {"maxUnavailable": 3}}, {"maxUnavailable": "10%"}, 20, False),
        ({"rollingUpdate": {"maxUnavailable": 2}}, {"maxUnavailable": "10%"}, 11, True),  # ceil(1.1) = 2
        ({"rollingUpdate": {"maxUnavailable": "25%"}}, {"maxUnavailable": 1}, 4, True),  # ceil(1.0) = 1
        ({"rollingUpdate": {"maxUnavailable": "26%"}}, {"maxUnavailable": 1}, 4, False),  # ceil(1.04) = 2
        ({"rollingUpdate": {"maxUnavailable": "100%"}}, {"maxUnavailable": "50%"}, 3, False),  # 3 > ceil(1.5)
        ({"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "50%"}}, {"maxSurge": 1}, 3, False),
        ({"type": "OnDelete"}, {"maxUnavailable": 0}, 10, True),  # caps don't apply to OnDelete
        # no targeted nodes: compared as written, a percentage counts as one node in a mixed pair
        (None, {"maxUnavailable": "10%"}, 0, True),
        ({"rollingUpdate": {"maxUnavailable": 2}}, {"maxUnavailable": "10%"}, 0, False),
        ({"rollingUpdate": {"maxUnavailable": "20%"}}, {"maxUnavailable": "10%"}, 0, False),
        ({"rollingUpdate": {"maxUnavailable": "10%"}}, {"maxUnavailable": "10%"}, 0, True),
        ({"rollingUpdate": {"maxUnavailable": "50%"}}, {"maxUnavailable": 1}, 0, True),
    ],
)
def test_caps(strategy: dict[str, Any] | None, cap: dict[str, Any], n: int, allowed: bool) -> None:
    ev = evaluate([parsed_policy("p", {"rollout": cap})], ds(update_strategy=strategy), facts=nodes(n))
    assert ev.allowed is allowed, messages(ev)


def test_caps_count_only_targeted_nodes() -> None:
    f = facts(
        *(node_info(f"t{i}", taints=[Taint("gpu", "", "NoSchedule")]) for i in range(8)),
        node_info("a"),
        node_info("b"),
    )
    obj = ds(update_strategy={"rollingUpdate": {"maxUnavailable": 1}})
    # 2 targeted nodes: 50% -> 1, so 1 is within; of 10 nodes 5% would be 1 too, so use 40%: ceil(0.8) = 1
    assert evaluate([parsed_policy("p", {"rollout": {"maxUnavailable": "40%"}})], obj, facts=f).allowed
    msg = messages(
        evaluate(
            [parsed_policy("p", {"rollout": {"maxUnavailable": "40%"}})],
            ds(update_strategy={"rollingUpdate": {"maxUnavailable": 2}}),
            facts=f,
        )
    )
    assert 'lets 2 of 2 targeted nodes be unavailable at once, over the cap "40%" (1 of 2)' in msg


def test_clamp_lowers_to_the_cap() -> None:
    p = parsed_policy("p", {"rollout": {"maxUnavailable": "10%", "onExceed": "Clamp"}})
    ev = evaluate([p], ds(update_strategy={"rollingUpdate": {"maxUnavailable": 5}}), facts=nodes(20))
    assert ev.allowed
    assert ev.patch == [
        {"op": "replace", "path": "/spec/updateStrategy/rollingUpdate/maxUnavailable", "value": "10%"}
    ]
    assert judge([p], ev.obj, facts=nodes(20)).allowed


def test_clamp_adds_the_field_when_defaulted() -> None:
    p = parsed_policy("p", {"rollout": {"maxUnavailable": 0, "maxSurge": 2, "onExceed": "Clamp"}})
    # default maxUnavailable 1 over cap 0; clamping it alone would leave both zero -> deny instead
    ev = evaluate([p], ds(), facts=nodes(5))
    assert not ev.allowed and not ev.patch
    assert "Clamp cannot do it" in messages(ev)
    ok = ds(update_strategy={"rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    ok["spec"]["updateStrategy"]["rollingUpdate"] = {"maxUnavailable": 0, "maxSurge": 5}
    ev = evaluate([p], ok, facts=nodes(5))
    assert ev.allowed
    assert ev.obj["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 2}


def test_strictest_cap_wins_across_policies() -> None:
    a = parsed_policy("a", {"rollout": {"maxUnavailable": 3, "onExceed": "Clamp"}})
    b = parsed_policy("b", {"rollout": {"maxUnavailable": 2, "onExceed": "Clamp"}})
    ev = evaluate([a, b], ds(update_strategy={"rollingUpdate": {"maxUnavailable": 5}}), facts=nodes(10))
    assert ev.allowed
    assert ev.obj["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 2


# -- minReadySeconds floor ------------------------------------------------------------------


def with_min_ready(obj: dict[str, Any], seconds: object) -> dict[str, Any]:
    obj["spec"]["minReadySeconds"] = seconds
    return obj


@pytest.mark.parametrize(
    ("title", "value", "on_exceed", "allowed", "patched_to"),
    [
        ("unset is 0: under the floor", None, "Deny", False, None),
        ("under the floor", 10, "Deny", False, None),
        ("at the floor", 30, "Deny", True, None),
        ("over the floor", 600, "Deny", True, None),
        ("clamp raises unset", None, "Clamp", True, 30),
        ("clamp raises a lower value", 5, "Clamp", True, 30),
        ("clamp leaves a higher value", 45, "Clamp", True, None),
    ],
)
def test_min_ready_seconds_floor(
    title: str, value: int | None, on_exceed: str, allowed: bool, patched_to: int | None
) -> None:
    p = parsed_policy("p", {"rollout": {"minReadySeconds": 30, "onExceed": on_exceed}})
    obj = ds() if value is None else with_min_ready(ds(), value)
    ev = evaluate([p], obj, facts=nodes(3))
    assert ev.allowed is allowed, (title, messages(ev))
    if patched_to is None:
        assert not ev.patch, title
    else:
        assert ev.obj["spec"]["minReadySeconds"] == patched_to, title
        assert ev.notices == (f"dsguard raised spec.minReadySeconds from {value or 0} to the floor 30",)
    if not allowed:
        assert "spec.minReadySeconds: " in messages(ev) and "set it to at least 30" in messages(ev)


def test_min_ready_seconds_lowered_alone_is_judged_on_update() -> None:
    p = parsed_policy("p", {"rollout": {"minReadySeconds": 30}})
    old = with_min_ready(ds(), 30)
    assert not judge([p], with_min_ready(ds(), 0), facts=nodes(3), old=old).allowed
    # unchanged and already under the floor (predates the policy): a warning, not a denial
    stale = with_min_ready(ds(), 0)
    ev = judge([p], with_min_ready(ds(), 0), facts=nodes(3), old=stale)
    assert ev.allowed and any("not enforced" in w for w in ev.warnings)


# -- versions ------------------------------------------------------------------------------

VERSIONS: dict[str, Any] = {
    "versions": {
        "rules": [
            {
                "image": "registry.example.com/agent",
                "compatibility": [
                    {"kubernetes": ">=1.33.0", "versions": ">=2.0.0"},
                    {"kubernetes": "<1.31", "versions": "<2.0.0"},
                ],
            }
        ]
    }
}


@pytest.mark.parametrize(
    ("image", "kubelets", "denied_nodes"),
    [
        ("registry.example.com/agent:2.1.0", ["v1.33.2", "v1.32.0"], []),
        ("registry.example.com/agent:1.9.0", ["v1.33.2", "v1.32.0"], ["n0"]),
        ("registry.example.com/agent:2.0.0-rc.1", ["v1.33.2"], ["n0"]),  # rc orders before 2.0.0
        ("registry.example.com/agent:v2.0.0-debian-12-r3", ["v1.33.2"], []),  # suffix doesn't change order
        ("registry.example.com/agent:2.1.0", ["v1.30.9+k3s1", "v1.33.0-eks-1"], ["n0"]),
        ("registry.example.com/other:1.0.0", ["v1.33.2"], []),  # no rule matches
    ],
)
def test_versions(image: str, kubelets: list[str], denied_nodes: list[str]) -> None:
    f = facts(*(node_info(f"n{i}", kubelet=k) for i, k in enumerate(kubelets)))
    ev = evaluate([parsed_policy("p", VERSIONS)], ds(image=image), facts=f)
    assert ev.allowed is (not denied_nodes), messages(ev)
    for n in denied_nodes:
        assert f"({n})" in messages(ev)


def test_versions_only_targeted_nodes_count() -> None:
    f = facts(
        node_info("old", kubelet="v1.33.0", labels={"pool": "old"}),
        node_info("new", kubelet="v1.32.0", labels={"pool": "new"}),
    )
    obj = ds(image="registry.example.com/agent:1.0.0")
    assert not evaluate([parsed_policy("p", VERSIONS)], obj, facts=f).allowed
    assert evaluate(
        [parsed_policy("p", VERSIONS)],
        ds(image="registry.example.com/agent:1.0.0", node_selector={"pool": "new"}),
        facts=f,
    ).allowed


def test_versions_fall_back_to_the_apiserver_version() -> None:
    obj = ds(image="registry.example.com/agent:1.0.0")
    assert not evaluate([parsed_policy("p", VERSIONS)], obj, facts=facts(version="v1.33.1")).allowed
    assert evaluate([parsed_policy("p", VERSIONS)], obj, facts=facts(version="v1.32.1")).allowed
    assert evaluate([parsed_policy("p", VERSIONS)], obj, facts=facts(version=None)).allowed


def test_init_containers_are_checked() -> None:
    obj = ds(image="busybox:1.36")
    obj["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "init", "image": "registry.example.com/agent:1.0.0"}
    ]
    msg = messages(evaluate([parsed_policy("p", VERSIONS)], obj, facts=facts(node_info("n0"))))
    assert "spec.template.spec.initContainers[0].image" in msg


@pytest.mark.parametrize(
    ("setting", "denied", "warned"), [("Allow", False, False), ("Warn", False, True), ("Deny", True, False)]
)
def test_unknown_version(setting: str, denied: bool, warned: bool) -> None:
    spec = copy.deepcopy(VERSIONS)
    spec["versions"]["unknownVersion"] = setting
    for image in ("registry.example.com/agent:latest", "registry.example.com/agent@sha256:" + "a" * 64):
        ev = evaluate([parsed_policy("p", spec)], ds(image=image), facts=facts(node_info("n0")))
        assert (not ev.allowed) is denied
        assert bool(ev.warnings) is warned


# -- enforcement, matching, merging, UPDATE --------------------------------------------------


def test_enforcement_modes() -> None:
    spec = {"tolerations": {"required": [INFRA]}}
    assert not evaluate([parsed_policy("p", {**spec, "enforcement": "Enforce"})], ds(), facts=facts()).allowed
    warn = evaluate([parsed_policy("p", {**spec, "enforcement": "Warn"})], ds(), facts=facts())
    assert warn.allowed and "missing required toleration" in warn.warnings[0]
    audit = evaluate(
        [
            parsed_policy(
                "p",
                {**spec, "enforcement": "Audit", "tolerations": {"required": [INFRA], "onMissing": "Add"}},
            )
        ],
        ds(),
        facts=facts(),
    )
    assert audit.allowed and not audit.warnings and not audit.patch and audit.audits


def test_match_by_namespace_namespace_labels_and_labels() -> None:
    spec: dict[str, Any] = {"tolerations": {"required": [INFRA]}}
    f = ClusterFacts(namespaces={"logging": {"team": "obs"}, "web": {"team": "web"}})
    cases = [
        ({"namespaces": ["logging"]}, "logging", True),
        ({"namespaces": ["logging"]}, "web", False),
        ({"namespaceSelector": {"matchLabels": {"team": "obs"}}}, "logging", True),
        ({"namespaceSelector": {"matchLabels": {"team": "obs"}}}, "web", False),
        (
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "unknown-ns"}}},
            "unknown-ns",
            True,
        ),
        ({"selector": {"matchLabels": {"tier": "node-agent"}}}, "web", True),
        (
            {
                "selector": {
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["node-agent"]}]
                }
            },
            "web",
            False,
        ),
    ]
    for match, ns, governed in cases:
        ev = evaluate([parsed_policy("p", {**spec, "match": match})], ds(namespace=ns), facts=f)
        assert (not ev.allowed) is governed, (match, ns)


def test_denials_from_several_policies_are_listed_together_without_duplicates() -> None:
    a = parsed_policy("a", {"tolerations": {"required": [INFRA]}})
    b = parsed_policy("b", {"rollout": {"maxUnavailable": 0, "maxSurge": 1}})
    ev = evaluate([a, b, a], ds(), facts=nodes(3))
    assert [d.policy for d in ev.denials] == ["a", "b"]
    assert ev.denial_message().startswith("dsguard: DaemonSet logging/agent violates 2 policy rule(s):")


def test_update_with_unchanged_template_is_not_denied() -> None:
    p = parsed_policy(
        "p",
        {
            "tolerations": {"required": [INFRA], "onMissing": "Add"},
            "rollout": {"maxUnavailable": 0, "maxSurge": 1},
        },
    )
    old = ds()
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["extra"] = "label"
    ev = evaluate([p], new, facts=nodes(3), old=old)
    assert ev.allowed and not ev.patch
    assert any("not enforced" in w for w in ev.warnings)
    changed = copy.deepcopy(new)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/agent:2.2.0"
    assert judge([p], changed, facts=nodes(3), old=old).denials
    # the guard's pause: only updateStrategy changes, to OnDelete
    paused = copy.deepcopy(old)
    paused["spec"]["updateStrategy"] = {"type": "OnDelete"}
    assert judge([p], paused, facts=nodes(3), old=old).allowed


# -- properties ----------------------------------------------------------------------------

_keys = st.sampled_from(["dedicated", "gpu", "node-role.kubernetes.io/control-plane", "k"])
_effects = st.sampled_from(["", "NoSchedule", "NoExecute", "PreferNoSchedule"])


@st.composite
def tolerations(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["Equal", "Exists"]))
    t: dict[str, Any] = {"key": draw(_keys), "operator": op}
    if op == "Equal":
        t["value"] = draw(st.sampled_from(["infra", "a", ""]))
    effect = draw(_effects)
    if effect:
        t["effect"] = effect
    if effect == "NoExecute" and draw(st.booleans()):
        t["tolerationSeconds"] = draw(st.integers(0, 600))
    return t


@settings(max_examples=150, deadline=None)
@given(
    present=st.lists(tolerations(), max_size=3),
    required=st.lists(tolerations(), min_size=1, max_size=3),
    unavailable=st.one_of(st.integers(0, 30), st.integers(0, 100).map(lambda p: f"{p}%")),
    cap=st.one_of(st.integers(1, 10), st.integers(1, 100).map(lambda p: f"{p}%")),
    n=st.integers(0, 40),
)
def test_mutation_is_idempotent_and_its_result_passes(
    present: list[dict[str, Any]],
    required: list[dict[str, Any]],
    unavailable: int | str,
    cap: int | str,
    n: int,
) -> None:
    p = parsed_policy(
        "p",
        {
            "tolerations": {"required": required, "onMissing": "Add"},
            "rollout": {"maxUnavailable": cap, "onExceed": "Clamp"},
        },
    )
    obj = ds(
        tolerations=present,
        update_strategy={
            "rollingUpdate": {
                "maxUnavailable": unavailable,
                "maxSurge": 0 if unavailable not in (0, "0%") else 1,
            }
        },
    )
    f = nodes(n)
    first = evaluate([p], obj, facts=f)
    patched = jsonpatch.apply_patch(obj, first.patch)
    assert patched == first.obj
    second = evaluate([p], patched, facts=f)
    assert second.patch == []
    assert judge([p], patched, facts=f).allowed, messages(judge([p], patched, facts=f))
