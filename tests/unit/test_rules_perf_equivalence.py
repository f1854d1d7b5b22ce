"""The webhook's fast paths against straightforward reference computations.

Placement shares answers, is walked once per pod spec and memoised across reviews per facts
snapshot; mutations copy only what they change and write their own patch. Each is checked here
against the obvious slow version, so a cache that goes stale or a patch that drifts fails loudly.
"""

from __future__ import annotations

import copy
import datetime
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.daemonset import DaemonSetView
from dsguard.daemonset_shape import daemonset_shape_errors
from dsguard.facts import ClusterFacts
from dsguard.policy import Coverage, Enforcement, OnMissing, Policy, TolerationPolicy, parse_policy
from dsguard.rules import coverage, image_versions, rollout_caps, tolerations
from dsguard.rules.context import (
    PLACEMENTS,
    Finding,
    ObjectEdit,
    PlacementCache,
    RuleContext,
    name_nodes,
    placement_key,
)
from dsguard.rules.engine import Evaluation, evaluate, mutate
from dsguard.rules.image_versions import _nodes_by_kubelet
from dsguard.scheduling import (
    NO_EXECUTE,
    NO_SCHEDULE,
    NodeInfo,
    Placement,
    PodPlacement,
    Taint,
)
from dsguard.selectors import LabelSelector
from dsguard.versions import ImageRef, Version, image_pattern_matches

# -- strategies ------------------------------------------------------------------------------------

NAMES = ["n0", "n1", "n2", "n3"]
TAINTS = [
    Taint("dedicated", "infra", NO_SCHEDULE),
    Taint("gpu", "", NO_SCHEDULE),
    Taint("evict", "", NO_EXECUTE),
    Taint("soft", "", "PreferNoSchedule"),
    Taint("node.kubernetes.io/not-ready", "", NO_EXECUTE),
    Taint("node.kubernetes.io/network-unavailable", "", NO_SCHEDULE),
]
_keys = st.sampled_from(["dedicated", "gpu", "evict", "node.kubernetes.io/network-unavailable", ""])
_effects = st.sampled_from(["", NO_SCHEDULE, NO_EXECUTE, "PreferNoSchedule"])


@st.composite
def node_infos(draw: st.DrawFn) -> NodeInfo:
    labels = draw(
        st.dictionaries(st.sampled_from(["pool", "zone", "kubernetes.io/os"]), st.sampled_from(["a", "b"]))
    )
    return NodeInfo(
        name=draw(st.sampled_from(NAMES)),
        labels=labels,
        taints=tuple(draw(st.lists(st.sampled_from(TAINTS), max_size=3, unique=True))),
        kubelet_version=draw(st.sampled_from(["v1.33.4", "v1.32.8", ""])),
    )


@st.composite
def toleration_dicts(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(_keys)
    op = "Exists" if not key else draw(st.sampled_from(["Equal", "Exists", ""]))
    t: dict[str, Any] = {"operator": op}
    if key:
        t["key"] = key
    if op != "Exists":
        t["value"] = draw(st.sampled_from(["infra", ""]))
    effect = draw(_effects)
    if effect:
        t["effect"] = effect
    if effect == NO_EXECUTE and draw(st.booleans()):
        t["tolerationSeconds"] = draw(st.integers(0, 600))
    return t


def _term(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["labels", "fields", "bad", "empty"]))
    if kind == "labels":
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        e: dict[str, Any] = {"key": draw(st.sampled_from(["pool", "zone"])), "operator": op}
        if op in ("In", "NotIn"):
            e["values"] = draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2))
        return {"matchExpressions": [e]}
    if kind == "fields":
        op = draw(st.sampled_from(["In", "NotIn"]))
        return {
            "matchFields": [
                {"key": "metadata.name", "operator": op, "values": [draw(st.sampled_from(NAMES))]}
            ]
        }
    if kind == "bad":
        return {"matchExpressions": [{"key": "pool", "operator": "Foo", "values": ["a"]}]}
    return {}


@st.composite
def pod_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "agent", "image": "registry.example.com/agent:2.1.0"}]}
    if draw(st.booleans()):
        spec["tolerations"] = draw(st.lists(toleration_dicts(), max_size=4))
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(
            st.dictionaries(st.sampled_from(["pool", "zone"]), st.sampled_from(["a", "b"]), max_size=2)
        )
    if draw(st.integers(0, 4)) == 0:
        spec["nodeName"] = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        spec["hostNetwork"] = draw(st.sampled_from([True, False, 1]))
    if draw(st.integers(0, 2)) == 0:
        terms = [_term(draw) for _ in range(draw(st.integers(0, 2)))]
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}},
            "podAntiAffinity": {},
        }
    return spec


def reordered(value: Any) -> Any:
    """The same JSON value with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def view(pod_spec: Mapping[str, Any]) -> DaemonSetView:
    obj = {"metadata": {"name": "agent", "namespace": "ns"}, "spec": {"template": {"spec": pod_spec}}}
    return DaemonSetView.from_object(obj)


# -- references: the obvious, uncached computations --------------------------------------------------


def reference_evaluate(p: PodPlacement, node: NodeInfo) -> Placement:
    """PodPlacement.evaluate as it was before the fast path: every tuple built, nothing shared."""
    if p.node_name and p.node_name != node.name:
        return Placement(False, f"nodeName is {p.node_name}", ())
    fits_affinity = p.matches_node_affinity(node)
    untolerated = tuple(
        t for t in node.taints if t.effect in (NO_SCHEDULE, NO_EXECUTE) and not p.tolerates(t)
    )
    if not fits_affinity:
        return Placement(False, "node affinity/nodeSelector does not match", untolerated)
    if untolerated:
        keeps = not any(t.effect == NO_EXECUTE for t in untolerated)
        if len(untolerated) == 1:
            reason = f"taint {untolerated[0]} is not tolerated"
        else:
            reason = f"taints {', '.join(str(t) for t in untolerated)} are not tolerated"
        return Placement(False, reason, untolerated, should_continue_running=keeps)
    return Placement(True, "", (), should_continue_running=True)


def reference_placements(
    facts: ClusterFacts, pod_spec: Mapping[str, Any]
) -> list[tuple[NodeInfo, Placement]]:
    # A fresh PodPlacement per node: no taint cache, no walk, no memo.
    return [(n, PodPlacement.from_pod_spec(pod_spec).evaluate(n)) for n in facts.nodes]


def reference_coverage(
    selector: LabelSelector, facts: ClusterFacts, pod_spec: Mapping[str, Any]
) -> list[Finding]:
    """coverage.check as it was: every in-scope node evaluated again."""
    placement = PodPlacement.from_pod_spec(pod_spec)
    in_scope = 0
    missed: list[str] = []
    taints: dict[str, None] = {}
    for node in facts.nodes:
        if not selector.matches(node.labels):
            continue
        in_scope += 1
        p = placement.evaluate(node)
        if p.should_run:
            continue
        missed.append(f"{node.name} ({p.reason})")
        for t in p.untolerated:
            taints[str(t)] = None
    if not missed:
        return []
    scope = f"nodes selected by {selector}" if str(selector) else "nodes"
    fix = "adjust spec.template.spec nodeSelector/affinity"
    if taints:
        fix = f"tolerate {', '.join(taints)} in spec.template.spec.tolerations, or " + fix
    msg = (
        f"the DaemonSet would run no pod on {len(missed)} of {in_scope} {scope}: {name_nodes(missed)}; {fix}"
    )
    return [Finding(coverage.RULE, msg)]


def reference_kubelets(facts: ClusterFacts, pod_spec: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for node, p in reference_placements(facts, pod_spec):
        if p.should_run and node.kubelet_version:
            groups[node.kubelet_version].append(node.name)
    return {k: tuple(v) for k, v in groups.items()}


class DirectEdit(ObjectEdit):
    """The edits as the engine made them before: in place, on a deep copy, no ops recorded."""

    def __init__(self, original: Mapping[str, Any]) -> None:
        super().__init__(original)
        self.obj = copy.deepcopy(dict(original))

    def _parent(self, keys: tuple[str, ...] | list[str]) -> dict[str, Any]:
        node = self.obj
        for k in keys:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        return node

    def set(self, keys: Any, field: str, value: Any) -> None:
        self._parent(keys)[field] = copy.deepcopy(value)

    def append(self, keys: Any, field: str, items: Any) -> None:
        parent = self._parent(keys)
        if not isinstance(parent.get(field), list):
            parent[field] = []
        parent[field].extend(copy.deepcopy(list(items)))


def reference_mutation(
    policies: list[Policy], obj: Mapping[str, Any], facts: ClusterFacts
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The engine's mutation step as it was: deep copy, edit in place, diff the whole object."""
    if daemonset_shape_errors(obj):
        # A rule whose fields can't be read doesn't run (dsguard.daemonset_shape). The only bad
        # field generated is junk tolerations, which both rules read (the caps scale with the
        # nodes the tolerations reach): the object is left untouched.
        return dict(obj), [], []
    ds = DaemonSetView.from_object(obj)
    matched = [
        p
        for p in policies
        if p.match.matches(
            namespace=ds.namespace, namespace_labels=facts.namespace_labels(ds.namespace), labels=ds.labels
        )
    ]
    mutators = [p for p in matched if p.enforcement is not Enforcement.AUDIT]
    edit = DirectEdit(obj)
    notices: list[str] = []
    for p in mutators:
        if p.tolerations is not None and p.tolerations.on_missing is OnMissing.ADD:
            notices += tolerations.mutate(p, edit, RuleContext(DaemonSetView.from_object(edit.obj), facts))
    ctx = RuleContext(DaemonSetView.from_object(edit.obj), facts)
    for p in mutators:
        if p.rollout is not None:
            notices += rollout_caps.mutate(p, edit, ctx)
            ctx = RuleContext(DaemonSetView.from_object(edit.obj), facts)
    if not notices:
        return dict(obj), [], []
    return edit.obj, jsonpatch.make_patch(obj, edit.obj).patch, notices


# -- placement ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(spec=pod_specs(), nodes=st.lists(node_infos(), max_size=6))
def test_evaluate_fast_path_matches_the_reference(spec: dict[str, Any], nodes: list[NodeInfo]) -> None:
    placement = PodPlacement.from_pod_spec(spec)
    for n in nodes:
        assert placement.evaluate(n) == reference_evaluate(PodPlacement.from_pod_spec(spec), n)


def _check_context(facts: ClusterFacts, spec: dict[str, Any]) -> None:
    ctx = RuleContext(view(spec), facts)
    expected = reference_placements(facts, spec)
    assert list(ctx.placements) == expected
    assert list(ctx.targeted) == [n for n, p in expected if p.should_run]
    for selector in (LabelSelector(), LabelSelector(match_labels=(("pool", "a"),))):
        policy = Policy(name="p", tolerations=TolerationPolicy(coverage=Coverage(node_selector=selector)))
        found = coverage.check(policy, ctx)
        # The message and verdict as before; the field and the node list are new, checked beside.
        assert [(f.rule, f.message) for f in found] == [
            (f.rule, f.message) for f in reference_coverage(selector, facts, spec)
        ]
        for f in found:
            missed = [n.name for n, p in expected if selector.matches(n.labels) and not p.should_run]
            assert f.nodes is not None and [n["node"] for n in f.nodes.to_dicts()] == missed
    if facts.nodes:
        assert dict(_nodes_by_kubelet(ctx)) == reference_kubelets(facts, spec)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("facts"), st.lists(node_infos(), max_size=6)),
            st.tuples(st.just("review"), st.integers(0, 3), st.booleans()),
        ),
        min_size=1,
        max_size=12,
    ),
    specs=st.lists(pod_specs(), min_size=4, max_size=4),
)
def test_cached_placements_match_fresh_ones_across_snapshots(
    steps: list[tuple[Any, ...]], specs: list[dict[str, Any]]
) -> None:
    facts = ClusterFacts()
    for step in steps:
        if step[0] == "facts":
            # Drop the old snapshot first (no cycles: freed at once): the new one may well land at
            # its address, so have the same id.
            del facts
            facts = ClusterFacts(nodes=tuple(step[1]))
            continue
        _, i, shuffle = step
        spec = reordered(specs[i]) if shuffle else copy.deepcopy(specs[i])
        _check_context(facts, spec)
        _check_context(facts, spec)  # now from the memo


def test_a_snapshot_at_a_recycled_address_gets_its_own_walks() -> None:
    spec = {"tolerations": [{"key": "gpu", "operator": "Exists"}]}
    addresses: set[int] = set()
    recycled = 0
    for i in range(40):
        # Alternate the taint so that a stale walk would answer wrongly.
        taint = Taint("gpu", "", NO_SCHEDULE) if i % 2 else Taint("dedicated", "infra", NO_SCHEDULE)
        facts = ClusterFacts(nodes=(NodeInfo("n0", {}, (taint,), "v1.33.4"),))
        recycled += id(facts) in addresses
        addresses.add(id(facts))
        assert bool(RuleContext(view(spec), facts).targeted) is bool(i % 2)
        del facts
    assert recycled  # CPython reuses a freed object's address: the case above really happened


def test_placement_cache_hits_on_equal_specs_and_forgets_old_snapshots() -> None:
    cache = PlacementCache()
    nodes = (NodeInfo("n0", {"pool": "a"}, (), "v1.33.4"),)
    facts = ClusterFacts(nodes=nodes)
    spec = {"nodeSelector": {"pool": "a", "zone": "b"}, "tolerations": [{"key": "k", "operator": "Exists"}]}
    first = cache.walk(facts, spec)
    assert cache.walk(facts, reordered(spec)) is first  # key order is not content
    assert cache.walk(facts, {**spec, "containers": [{"name": "x"}]}) is first  # nor are other fields
    assert (cache.hits, cache.misses) == (2, 1)
    assert cache.walk(facts, {**spec, "hostNetwork": True}) is not first
    # A new snapshot with the same node list (what a namespace change makes): the walks stay.
    assert cache.walk(ClusterFacts(nodes=nodes, namespaces={"ns": {}}), spec) is first
    newer = ClusterFacts(nodes=(*nodes,))  # a new node list, equal content: walked again
    assert newer.nodes is not nodes
    assert cache.walk(newer, spec) is not first
    assert len(cache) == 1


def test_placement_cache_is_bounded() -> None:
    cache = PlacementCache(maxsize=3, max_placements=10)
    facts = ClusterFacts(nodes=tuple(NodeInfo(f"n{i}", {}, (), "") for i in range(4)))
    for i in range(5):
        cache.walk(facts, {"nodeSelector": {"i": str(i)}})
    assert len(cache) == 2  # 10 placements // 4 nodes


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"hostNetwork": True}, {"hostNetwork": 1}),
        ({"nodeSelector": {"a": "1"}}, {"nodeSelector": {"a": 1}}),
        ({"tolerations": None}, {}),
        (
            {"tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 1}]},
            {"tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 1.0}]},
        ),
        # null: no required affinity; {}: one that matches no node
        (
            {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": None}}},
            {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
        ),
        ({"affinity": [1]}, {"affinity": {"nodeAffinity": [1]}}),
    ],
)
def test_placement_keys_tell_apart_what_json_does(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert placement_key(a) != placement_key(b)


@pytest.mark.parametrize(
    "spec",
    [
        # orjson would write these as null or as a plain string: no key, so no cache
        {"tolerations": [{"key": "k", "value": math.nan}]},
        {"nodeSelector": {"a": math.inf}},
        {"nodeSelector": {"a": datetime.datetime(2025, 1, 1)}},
        {"nodeName": type("Name", (str,), {})("n0")},
        {"nodeSelector": {1: "a"}},
        {"tolerations": [{"key": "k", "tolerationSeconds": 2**64}]},
    ],
)
def test_specs_without_an_exact_key_are_walked_uncached(spec: dict[str, Any]) -> None:
    assert placement_key(spec) is None
    facts = ClusterFacts(nodes=(NodeInfo("n0", {"a": "nan"}, (), ""),))
    assert list(RuleContext(view(spec), facts).placements) == reference_placements(facts, spec)


def test_placement_key_has_a_null_only_when_it_means_none() -> None:
    assert placement_key({"tolerations": [{"key": "k", "value": None}]}) is not None
    assert placement_key({"nodeName": "null"}) is not None


class _Recording(dict[str, Any]):
    """A pod spec that notes every key read from it or from the mappings inside it."""

    def __init__(self, data: Mapping[str, Any], reads: set[str], prefix: str = "") -> None:
        super().__init__(data)
        self._reads, self._prefix = reads, prefix

    def _note(self, key: object) -> None:
        self._reads.add(f"{self._prefix}{key}")

    def _wrap(self, key: str, value: Any) -> Any:
        return _Recording(value, self._reads, f"{self._prefix}{key}.") if isinstance(value, dict) else value

    def get(self, key: str, default: Any = None) -> Any:
        self._note(key)
        return self._wrap(key, super().get(key, default))

    def __getitem__(self, key: str) -> Any:
        self._note(key)
        return self._wrap(key, super().__getitem__(key))

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._note("*")
        return super().__iter__()

    def items(self) -> Any:
        self._note("*")
        return super().items()


def test_the_key_covers_everything_placement_reads() -> None:
    """If PodPlacement.from_pod_spec ever reads another field, the cache key must grow too."""
    spec = {
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "nodeSelector": {"pool": "a"},
        "nodeName": "n0",
        "hostNetwork": True,
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [],
            },
            "podAffinity": {},
        },
        "containers": [],
        "priorityClassName": "x",
    }
    reads: set[str] = set()
    PodPlacement.from_pod_spec(_Recording(spec, reads))
    required = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    assert required in reads  # the recording works
    keyed_whole = ("tolerations", "nodeSelector", "nodeName", "hostNetwork", required)
    keyed_levels = {"affinity", "affinity.nodeAffinity"}  # only descended through, to `required`
    for r in reads:
        assert r in keyed_levels or any(r == k or r.startswith(k + ".") for k in keyed_whole), r


# -- mutations -----------------------------------------------------------------------------------------


@st.composite
def daemonsets(draw: st.DrawFn) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "agent", "image": "registry.example.com/agent:2.1.0"}]
    }
    tols = draw(st.sampled_from(["absent", "null", "list", "junk"]))
    if tols == "null":
        pod_spec["tolerations"] = None
    elif tols == "list":
        pod_spec["tolerations"] = draw(st.lists(toleration_dicts(), max_size=3))
    elif tols == "junk":
        pod_spec["tolerations"] = "not a list"
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "a"}}}
    template = draw(st.sampled_from(["full", "no-spec", "null-spec"]))
    spec["template"] = (
        {"metadata": {"labels": {"app": "a"}}, "spec": pod_spec}
        if template == "full"
        else {"metadata": {}}
        if template == "no-spec"
        else {"metadata": {}, "spec": None}
    )
    strategy = draw(st.sampled_from(["absent", "null", "type-only", "null-rolling", "rolling"]))
    if strategy == "null":
        spec["updateStrategy"] = None
    elif strategy == "type-only":
        spec["updateStrategy"] = {"type": "RollingUpdate"}
    elif strategy == "null-rolling":
        spec["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": None}
    elif strategy == "rolling":
        rolling: dict[str, Any] = {}
        if draw(st.booleans()):
            rolling["maxUnavailable"] = draw(st.one_of(st.integers(0, 9), st.sampled_from(["50%", "10%"])))
        if draw(st.booleans()):
            rolling["maxSurge"] = draw(st.one_of(st.integers(0, 9), st.sampled_from(["50%", "0%"])))
        spec["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "ns", "labels": {"app": "a"}},
        "spec": spec,
    }


@st.composite
def mutating_policies(draw: st.DrawFn) -> list[Policy]:
    out = []
    for i in range(draw(st.integers(1, 3))):
        spec: dict[str, Any] = {"enforcement": draw(st.sampled_from(["Enforce", "Warn", "Audit"]))}
        if draw(st.booleans()):
            spec["tolerations"] = {
                "required": draw(
                    st.lists(toleration_dicts().filter(lambda t: "key" in t), min_size=1, max_size=2)
                ),
                "onMissing": "Add",
            }
        if draw(st.booleans()) or "tolerations" not in spec:
            cap: dict[str, Any] = {"onExceed": "Clamp"}
            for field in draw(
                st.lists(st.sampled_from(["maxUnavailable", "maxSurge"]), min_size=1, unique=True)
            ):
                cap[field] = draw(st.one_of(st.integers(0, 5), st.sampled_from(["25%", "0%"])))
            spec["rollout"] = cap
        out.append(parse_policy({"metadata": {"name": f"p{i}"}, "spec": spec}))
    return out


@settings(max_examples=300, deadline=None)
@given(obj=daemonsets(), policies=mutating_policies(), n=st.integers(0, 12))
def test_patch_matches_the_whole_object_diff(obj: dict[str, Any], policies: list[Policy], n: int) -> None:
    facts = ClusterFacts(nodes=tuple(NodeInfo(f"n{i}", {}, (), "v1.33.4") for i in range(n)))
    before = copy.deepcopy(obj)
    ev = evaluate(policies, obj, facts=facts)
    assert obj == before  # the input is never touched
    want_obj, want_patch, want_notices = reference_mutation(policies, obj, facts)
    assert ev.obj == want_obj
    assert list(ev.notices) == want_notices
    assert jsonpatch.apply_patch(obj, ev.patch) == ev.obj
    assert jsonpatch.apply_patch(obj, ev.patch) == jsonpatch.apply_patch(obj, want_patch)
    assert obj == before
    # Only the edited subtrees are new; the rest is the input's, shared rather than copied.
    assert ev.obj["metadata"] is obj["metadata"]
    assert ev.obj["spec"]["selector"] is obj["spec"]["selector"]
    # /mutate skips the judgement and gets the same patch.
    quick = mutate(policies, obj, facts=facts)
    assert (quick.obj, quick.patch, quick.notices, quick.policies) == (
        ev.obj,
        ev.patch,
        ev.notices,
        ev.policies,
    )
    assert (quick.denials, quick.warnings, quick.audits) == ((), (), ())


_paths = st.lists(st.sampled_from(["a", "b", "x/y", "t~"]), min_size=0, max_size=3)
_values = st.one_of(
    st.none(), st.integers(-3, 3), st.sampled_from(["s", "10%"]), st.lists(st.integers(0, 3), max_size=2)
)
_docs = st.recursive(
    _values,
    lambda inner: st.dictionaries(st.sampled_from(["a", "b", "x/y", "t~", "f"]), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    doc=st.dictionaries(st.sampled_from(["a", "b", "x/y", "t~"]), _docs, max_size=3),
    edits=st.lists(
        st.tuples(st.sampled_from(["set", "append"]), _paths, st.sampled_from(["f", "a", "t~"]), _values),
        min_size=1,
        max_size=5,
    ),
)
def test_object_edit_matches_in_place_edits_of_a_deep_copy(
    doc: dict[str, Any], edits: list[tuple[str, list[str], str, Any]]
) -> None:
    before = copy.deepcopy(doc)
    fast, slow = ObjectEdit(doc), DirectEdit(doc)
    for kind, keys, field, value in edits:
        if kind == "set":
            fast.set(keys, field, value)
            slow.set(keys, field, value)
        else:
            fast.append(keys, field, [value])
            slow.append(keys, field, [value])
        assert fast.obj == slow.obj
    assert doc == before
    assert jsonpatch.apply_patch(doc, fast.ops) == fast.obj
    # Patch values are the edits' own copies: changing the result leaves the patch as it was.
    ops = copy.deepcopy(fast.ops)
    for value in list(fast.obj.values()):
        if isinstance(value, dict):
            value.clear()
    assert fast.ops == ops


def test_mutate_without_judgement_neither_denies_nor_warns() -> None:
    p = parse_policy(
        {
            "metadata": {"name": "p"},
            "spec": {
                "tolerations": {"required": [{"key": "k", "operator": "Exists"}], "onMissing": "Add"},
                "rollout": {"maxUnavailable": 0, "maxSurge": 0},
                "enforcement": "Audit",
            },
        }
    )
    obj = {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"template": {"spec": {}}}}
    full = evaluate([p], obj, facts=ClusterFacts())
    assert full.audits
    quick = mutate([p], obj, facts=ClusterFacts())
    assert quick == Evaluation(ds=quick.ds, obj=obj, policies=("p",))


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    PLACEMENTS.clear()
    yield
    PLACEMENTS.clear()


# -- image versions: each entry's versions judged once per image, not per kubelet ---------------------

_RANGES = [">=1.31.0", "<1.33.0", ">=1.31.0, <1.33.0", ">=7.50.0", ">=7.44.0, <8.0.0", "<7.0.0", "==7.44.1"]
_KUBELETS = ["v1.30.2", "v1.31.4", "v1.32.0", "v1.33.1", "v1.34.0", ""]
_TAGS = ["7.43.0", "7.44.1", "7.50.2", "8.1.0", "latest"]


def reference_version_verdicts(policy: Policy, ctx: RuleContext) -> list[Any]:
    """The version rule's loop as it was: every entry judged for every kubelet version."""
    assert policy.versions is not None
    out: list[Any] = []
    groups = _nodes_by_kubelet(ctx)
    for img in ctx.ds.images():
        ref = ImageRef.parse(img.image)
        rules = [r for r in policy.versions.rules if image_pattern_matches(r.image, ref)]
        if not rules or ref.version is None:
            continue
        broken: dict[Any, list[tuple[str, Any]]] = defaultdict(list)
        for kubelet, names in groups.items():
            kv = Version.parse(kubelet)
            if kv is None:
                continue
            for rule in rules:
                for compat in rule.compatibility:
                    if compat.kubernetes.contains(kv) and not compat.versions.contains(ref.version):
                        broken[compat].append((kubelet, names))
        out += [(img.path, compat, tuple(where)) for compat, where in broken.items()]
    return out


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(  # (rule index, kubernetes range, versions range); repeats across rules allowed
        st.tuples(st.integers(0, 1), st.sampled_from(_RANGES[:3]), st.sampled_from(_RANGES[3:])),
        min_size=1,
        max_size=5,
    ),
    kubelets=st.lists(st.sampled_from(_KUBELETS), min_size=1, max_size=6),
    tags=st.lists(st.sampled_from(_TAGS), min_size=1, max_size=3),
)
def test_version_verdicts_match_the_per_kubelet_reference(
    entries: list[tuple[int, str, str]], kubelets: list[str], tags: list[str]
) -> None:
    rules = [
        {"image": "registry.example.com/agent", "compatibility": [{"kubernetes": k, "versions": v}]}
        for i in (0, 1)
        for (r, k, v) in entries
        if r == i
    ]
    policy = parse_policy({"metadata": {"name": "p"}, "spec": {"versions": {"rules": rules}}})
    facts = ClusterFacts(nodes=tuple(NodeInfo(f"n{i}", {}, (), k) for i, k in enumerate(kubelets)))
    containers = [{"name": f"c{i}", "image": f"registry.example.com/agent:{t}"} for i, t in enumerate(tags)]
    ctx = RuleContext(view({"containers": containers}), facts, PlacementCache())
    assert policy.versions is not None
    got = [
        (v.image.path, v.compatibility, v.kubelet_groups)
        for v in image_versions.verdicts(policy.versions, ctx)
        if v.kind is image_versions.FindingKind.INCOMPATIBLE
    ]
    assert got == reference_version_verdicts(policy, ctx)
