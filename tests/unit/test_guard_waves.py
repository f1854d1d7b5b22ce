"""The guard driving a wave rollout (guard.controller with dsguard.waves), against the fakes:
the takeover, one canary pod at a time, no budget spent twice before the watch catches up."""

from __future__ import annotations

import json
from typing import Any

from dsguard.annotations import ORIGINAL_STRATEGY, WAVE, WAVES_REVISION, WAVES_TAKEOVER
from dsguard.policy import GuardPolicy, Match, Policy, WavesPolicy
from tests.support.guard_fakes import STRATEGY, T0, Harness, ds_obj, iso, revision_obj

ZONE = "topology.kubernetes.io/zone"
NODES = {"a-0": "a", "a-1": "a", "b-0": "b", "b-1": "b"}
WAVES = Policy(
    name="waves",
    match=Match(),
    guard=GuardPolicy(failure_threshold=1, waves=WavesPolicy(canary=1, group_by=ZONE, max_unavailable=1)),
)


def node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {ZONE: NODES[name]}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": iso(T0 - 900)}]},
    }


def pod(node_name: str, revision: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"agent-{node_name}",
            "namespace": "ns",
            "uid": f"uid-{node_name}-{revision}",
            "labels": {"controller-revision-hash": revision},
            "creationTimestamp": iso(T0 - 600),
            "ownerReferences": [{"kind": "DaemonSet", "uid": "uid-1", "controller": True}],
        },
        "spec": {"nodeName": node_name},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": iso(T0 - 500)}],
            "containerStatuses": [{"name": "c", "restartCount": 0, "state": {"running": {}}}],
        },
    }


def harness() -> Harness:
    h = Harness(ds_obj(), policies=[WAVES])
    h.store.replace_nodes([node(n) for n in NODES])
    h.store.revision_event("ADDED", revision_obj("old", 1))
    h.store.revision_event("ADDED", revision_obj("new", 2))
    h.store.replace_pods([pod(n, "old") for n in NODES])
    return h


async def test_the_guard_takes_over_then_replaces_one_canary_pod_at_a_time() -> None:
    h = harness()
    await h.process()  # the webhook missed the change: the guard switches to OnDelete itself
    stored = h.api.get()
    annotations = stored["metadata"]["annotations"]
    assert stored["spec"]["updateStrategy"] == {"type": "OnDelete"}  # merge patch: null removes
    assert json.loads(annotations[ORIGINAL_STRATEGY]) == STRATEGY
    assert (annotations[WAVES_REVISION], annotations[WAVE], annotations[WAVES_TAKEOVER]) == ("new", "0", "0")
    assert not h.pods.deleted, "nothing deleted before the rollout is recorded"

    h.watch()
    await h.process()
    assert h.pods.deleted == [("ns", "agent-a-0", "uid-a-0-old")], "the canary only"
    # The watch hasn't shown the deletion yet: the guard must not spend the budget again.
    await h.process()
    assert len(h.pods.deleted) == 1

    # the old pod goes, its replacement (new revision) comes up Ready
    h.store.pod_event("DELETED", pod("a-0", "old"))
    h.store.pod_event("ADDED", pod("a-0", "new"))
    await h.process()
    baked = h.api.get()["metadata"]["annotations"]
    assert "dsguard.io/bake-started-at" in baked or baked[WAVE] == "1", baked
    assert len(h.pods.deleted) == 1, "no pod of the next wave before the canary's wave is recorded done"
