"""ClusterCache: which watch events make a new facts snapshot, and which reach the rules."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from kubernetes_asyncio import client

from dsguard.cluster_cache import ClusterCache
from tests.support import builders

#: Ready nodes on kubelet v1.37.2, as a watch serves them (no apiVersion/kind).
node = partial(builders.node, labels={}, kubelet="v1.37.2", ready=True, heartbeat="t0", typed=False)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def rollout(max_unavailable: Any) -> dict[str, Any]:
    return {"rollout": {"maxUnavailable": max_unavailable}}


def meta(cache: ClusterCache) -> tuple[int, Any]:
    return cache.policy_meta["p"]


def test_heartbeats_keep_the_snapshot_and_a_namespace_change_keeps_the_node_list() -> None:
    cache = ClusterCache()
    cache.replace_nodes([node("a"), node("b")])
    cache.replace_namespaces([namespace("ops")])
    first = cache.facts
    cache.node_event("MODIFIED", node("a", heartbeat="t1"))
    assert cache.facts is first  # nothing the rules read changed
    cache.namespace_event("ADDED", namespace("ci-123"))
    second = cache.facts
    assert second is not first and "ci-123" in second.namespaces
    assert second.nodes is first.nodes  # the placement memo is keyed on this tuple: walks survive
    cache.node_event("MODIFIED", node("a", labels={"pool": "gpu"}))
    third = cache.facts
    assert third.nodes is not second.nodes and third.nodes[0].labels == {"pool": "gpu"}
    cache.node_event("DELETED", node("b"))
    assert [n.name for n in cache.facts.nodes] == ["a"]


def test_only_policy_changes_the_rules_read_notify() -> None:
    cache = ClusterCache()
    calls: list[str] = []
    cache.on_policies_changed = lambda: calls.append("changed")
    cache.replace_policies([builders.policy("p", rollout(1), generation=1)])
    assert calls == ["changed"]
    # The audit's own status write: same spec, nothing to re-decide
    cache.policy_event(
        "MODIFIED", builders.policy("p", rollout(1), generation=1, status={"violationCount": 0})
    )
    assert calls == ["changed"]
    assert meta(cache) == (1, {"violationCount": 0})
    cache.policy_event("MODIFIED", builders.policy("p", rollout(2), generation=2))
    assert calls == ["changed"] * 2 and meta(cache)[0] == 2
    cache.policy_event("DELETED", builders.policy("p", rollout(1), generation=2))
    assert calls == ["changed"] * 3 and "p" not in cache.policy_meta and cache.policies == ()


def test_an_invalid_edit_keeps_the_previous_version_and_reports_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = ClusterCache()
    cache.replace_policies([builders.policy("p", rollout(1), generation=1)])
    before = cache.policies
    cache.policy_event("MODIFIED", builders.policy("p", rollout("110%"), generation=2))
    assert cache.policies == before  # still enforcing the last valid version
    assert "spec.rollout.maxUnavailable" in cache.policy_errors["p"]
    assert meta(cache)[0] == 2  # the audit reports on the generation it saw
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "still enforcing its previous valid version" in errors[0].getMessage()
    cache.policy_event("MODIFIED", builders.policy("p", rollout("110%"), generation=2, status={"x": 1}))
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1  # not logged again


def test_policy_changes_reach_the_hook_given_at_construction() -> None:
    calls: list[str] = []
    cache = ClusterCache(on_policies_changed=lambda: calls.append("changed"))
    cache.replace_policies([builders.policy("p")])
    assert calls == ["changed"]


async def test_synced_waits_for_a_shared_node_watch_too() -> None:
    """The auditing guard feeds the cache from its own node watch; the audit waits for it."""
    async with client.ApiClient() as api:
        cache = ClusterCache()
        [namespaces, policies] = cache.reflectors_for(api, nodes=False, shared_nodes=True)
        namespaces.synced.set()
        policies.synced.set()
        cache.use_static_facts([], "v1.37.2")  # the server version read
        assert not cache.synced
        cache.replace_nodes([node("a")])
        assert cache.synced
        unshared = ClusterCache()
        for r in unshared.reflectors_for(api, nodes=False):
            r.synced.set()
        unshared.use_static_facts([], "v1.37.2")
        assert unshared.synced
        with pytest.raises(ValueError, match="not shared_nodes as well"):
            ClusterCache().reflectors_for(api, nodes=True, shared_nodes=True)
