"""PlacementCache.advance: walks patched for node changes (in place, joins, leaves, several at a
time) give what fresh walks give: the placements, the targeted nodes, and every rule's findings
(coverage's picks, versions' kubelet groups, caps' counts) down to the nodes they list."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.facts import ClusterFacts
from dsguard.rules.context import NodeWalk, PlacementCache
from dsguard.rules.engine import findings_by_policy
from dsguard.scheduling import NodeInfo
from tests.support.builders import daemonset, node_info, parsed_policy

AGENT = "registry.example.com/agent"
TAINTS: dict[str, list[dict[str, str]]] = {
    "none": [],
    "infra": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}],
    "gpu": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}],
    "evict": [{"key": "gpu", "value": "yes", "effect": "NoExecute"}],
}
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
GPU = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}


def _versions(kubernetes: str, versions: str) -> dict[str, Any]:
    return {"rules": [{"image": AGENT, "compatibility": [{"kubernetes": kubernetes, "versions": versions}]}]}


POLICIES = [
    parsed_policy(
        "pool-a",
        {
            "match": {},
            "tolerations": {"coverage": {"nodeSelector": {"matchLabels": {"pool": "a"}}}},
            "rollout": {"maxUnavailable": "30%"},
            "versions": _versions(">=1.33.0", ">=2.0.0"),
        },
    ),
    parsed_policy(
        "everywhere",
        {
            "match": {},
            "tolerations": {"coverage": {"nodeSelector": {}}},
            "versions": _versions("<1.33.0", "<2.0.0"),
        },
    ),
]
SPECS = [
    daemonset("plain", image=f"{AGENT}:1.0.0", max_unavailable=1),
    daemonset("infra", image=f"{AGENT}:2.1.0", tolerations=[INFRA], max_unavailable="50%"),
    daemonset("pool-b", image=f"{AGENT}:1.0.0", tolerations=[INFRA, GPU], node_selector={"pool": "b"}),
    daemonset("gpu", image=f"{AGENT}:2.1.0", tolerations=[GPU], node_selector={"pool": "a"}),
]

names = st.sampled_from([f"n{i}" for i in range(8)])
nodes = st.builds(
    lambda name, pool, taint, kubelet, rack: node_info(
        name, labels={"pool": pool, "rack": rack}, hostname_label=True, taints=TAINTS[taint], kubelet=kubelet
    ),
    names,
    st.sampled_from(["a", "b"]),
    st.sampled_from(list(TAINTS)),
    st.sampled_from(["v1.31.4", "v1.33.2", "v1.34.0", ""]),
    st.sampled_from(["r1", "r2"]),
)
# One step: nodes set (joined or changed) or deleted (a name), one to three at a time.
steps = st.lists(st.lists(st.one_of(nodes, names), min_size=1, max_size=3), min_size=1, max_size=10)


def _facts(by_name: dict[str, NodeInfo]) -> ClusterFacts:
    return ClusterFacts(nodes=tuple(by_name[n] for n in sorted(by_name)))


def _judged(facts: ClusterFacts, cache: PlacementCache) -> list[Any]:
    out = []
    for obj in SPECS:
        for policy, findings in findings_by_policy(POLICIES, obj, facts=facts, placements=cache):
            out.append((policy.name, [(f, f.nodes.to_dicts() if f.nodes else None) for f in findings]))
    return out


def _changes(
    before: dict[str, NodeInfo], after: dict[str, NodeInfo]
) -> list[tuple[NodeInfo | None, NodeInfo | None]]:
    """As IncrementalAudit sees them: by name, in any order."""
    changed = [(before.get(n), node) for n, node in after.items() if before.get(n) is not node]
    return changed + [(node, None) for n, node in before.items() if n not in after]


@settings(max_examples=300, deadline=None)
@given(st.lists(nodes, max_size=6), steps)
def test_advanced_walks_equal_fresh_ones_after_every_step(
    initial: list[NodeInfo], changes: list[list[NodeInfo | str]]
) -> None:
    by_name = {n.name: n for n in initial}
    facts = _facts(by_name)
    cache = PlacementCache()
    _judged(facts, cache)  # walks and derived results to patch
    for step in changes:
        after = dict(by_name)
        for c in step:
            if isinstance(c, str):
                after.pop(c, None)
            else:
                after[c.name] = c
        new = _facts(after)
        assert cache.advance(facts.nodes, new.nodes, _changes(by_name, after))
        by_name, facts = after, new
        for obj in SPECS:
            walk = cache.walk(facts, obj["spec"]["template"]["spec"])
            fresh = NodeWalk.of(facts, obj["spec"]["template"]["spec"])
            assert (walk.placements, walk.targeted) == (fresh.placements, fresh.targeted)
        assert cache.misses == len(SPECS)  # every walk above was an advanced one
        assert _judged(facts, cache) == _judged(facts, PlacementCache()), f"after {step}"


def test_changes_that_do_not_give_the_new_list_drop_the_walks() -> None:
    a, b, c = (node_info(n) for n in ("a", "b", "c"))
    facts = ClusterFacts(nodes=(a, b))
    cache = PlacementCache()
    cache.walk(facts, {})
    # c joined, but b is said to have left too: the list would be (a, c), not (a, b, c).
    assert not cache.advance(facts.nodes, (a, b, c), [(None, c), (b, None)])
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("old", "new", "changes"),
    [
        pytest.param(("b", "a"), ("b", "a", "c"), [(None, "c")], id="a list not sorted by name"),
        pytest.param(("a", "b"), ("a", "b", "c"), [(None, "b")], id="a join of a node already there"),
        pytest.param(("a", "b"), ("a",), [("c", None)], id="a leave of a node not there"),
    ],
)
def test_advance_refuses_what_it_cannot_patch(
    old: tuple[str, ...], new: tuple[str, ...], changes: list[tuple[str | None, str | None]]
) -> None:
    made = {n: node_info(n) for n in "abc"}
    old_nodes = tuple(made[n] for n in old)
    cache = PlacementCache()
    cache.walk(ClusterFacts(nodes=old_nodes), {})
    pairs = [(made[o] if o else None, made[n] if n else None) for o, n in changes]
    assert not cache.advance(old_nodes, tuple(made[n] for n in new), pairs)
    assert len(cache) == 0
