"""guard.store.Store: the guard's indexes, fed by hand as the watches would, and what it reports
(the DaemonSets a change concerns, a lifted pause); guard.store.Dirty, the marks the guard takes."""

from __future__ import annotations

import copy
from typing import Any

from dsguard.annotations import PAUSED
from guard.rollout import DaemonSetState
from guard.store import Dirty, Store
from tests.support.guard_fakes import T0, ds_obj, pod_obj, revision_obj


def node_obj(name: str, *, ready: bool = True, heartbeat: str = "t0") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": "2027-01-15T08:00:00Z",
                    "lastHeartbeatTime": heartbeat,
                }
            ]
        },
    }


class Recorded:
    def __init__(self) -> None:
        self.changed: list[str] = []
        self.resumed: list[tuple[DaemonSetState, DaemonSetState]] = []
        self.now = T0
        self.store = Store(
            on_change=self.changed.append,
            on_resumed=lambda before, after: self.resumed.append((before, after)),
            clock=lambda: self.now,
        )

    def take(self) -> list[str]:
        changed = list(self.changed)
        self.changed.clear()
        return changed


def test_each_event_reports_the_daemonset_it_concerns() -> None:
    r = Recorded()
    r.store.daemonset_event("ADDED", ds_obj("uid-1", "a"))
    r.store.revision_event("ADDED", revision_obj("good", 1, uid="uid-2"))
    r.store.pod_event("ADDED", pod_obj("a-0", "good", crashing=False, uid="uid-1"))
    assert r.take() == ["uid-1", "uid-2", "uid-1"]
    r.store.pod_event("ADDED", {"metadata": {"name": "loose", "labels": {}}})  # no DaemonSet owns it
    r.store.revision_event("ADDED", {"metadata": {"name": "orphan"}})
    assert r.take() == []
    r.store.daemonset_event("DELETED", ds_obj("uid-1", "a"))
    assert r.take() == [] and r.store.daemonsets == {}  # gone: nothing left to decide for


def test_a_relist_reports_every_daemonset_and_drops_the_ones_gone() -> None:
    r = Recorded()
    r.store.replace_daemonsets([ds_obj("uid-1", "a"), ds_obj("uid-2", "b")])
    assert sorted(r.take()) == ["uid-1", "uid-2"]
    r.store.replace_daemonsets([ds_obj("uid-2", "b")])
    assert r.take() == ["uid-2"] and list(r.store.daemonsets) == ["uid-2"]
    r.store.replace_nodes([node_obj("n1")])  # any node may matter to any rollout
    assert r.take() == ["uid-2"]


def test_only_a_node_readiness_change_reports_the_daemonsets_with_pods_there() -> None:
    r = Recorded()
    r.store.replace_nodes([node_obj("node-a-0"), node_obj("elsewhere")])
    r.store.pod_event("ADDED", pod_obj("a-0", "bad", crashing=False, uid="uid-1"))  # on node-a-0
    r.take()
    r.store.node_event("MODIFIED", node_obj("node-a-0", heartbeat="t1"))  # a heartbeat: same health
    r.store.node_event("MODIFIED", node_obj("elsewhere", ready=False))  # no pod of ours there
    assert r.take() == []
    r.store.node_event("MODIFIED", node_obj("node-a-0", ready=False))
    assert r.take() == ["uid-1"] and not r.store.nodes["node-a-0"].ready
    r.store.node_event("ADDED", node_obj("new"))  # a node not seen before
    r.store.node_event("DELETED", node_obj("node-a-0", ready=False))
    assert r.take() == [] and sorted(r.store.nodes) == ["elsewhere", "new"]


def test_pods_are_indexed_by_revision_and_node_as_they_move() -> None:
    r = Recorded()
    r.store.pod_event("ADDED", pod_obj("a-0", "bad", crashing=True))
    r.store.pod_event("ADDED", pod_obj("a-1", "good", crashing=False))
    assert [p.name for p in r.store.pods_on_revision("uid-1", "bad")] == ["a-0"]
    moved = pod_obj("a-0", "good", crashing=False)  # relabelled and rescheduled
    moved["spec"]["nodeName"] = "node-x"
    r.store.pod_event("MODIFIED", moved)
    assert list(r.store.pods_on_revision("uid-1", "bad")) == []
    assert sorted(p.name for p in r.store.pods_on_revision("uid-1", "good")) == ["a-0", "a-1"]
    assert r.store.pods_on_node["node-a-0"] == set() and r.store.pods_on_node["node-x"] == {("uid-1", "a-0")}
    assert r.store.rolling() == set()  # every pod Ready
    r.store.pod_event("MODIFIED", pod_obj("a-1", "good", crashing=True))
    assert r.store.rolling() == {"uid-1"}
    r.store.pod_event("DELETED", moved)
    r.store.pod_event("DELETED", pod_obj("a-1", "good", crashing=True))
    assert r.store.pods == {} and r.store.by_revision == {} and r.store.rolling() == set()
    assert r.store.pods_on_node["node-x"] == set()


def test_revisions_are_kept_per_daemonset_and_a_relist_replaces_them() -> None:
    r = Recorded()
    r.store.revision_event("ADDED", revision_obj("good", 1))
    r.store.revision_event("ADDED", revision_obj("bad", 2))
    assert sorted(rev.hash for rev in r.store.revisions_of("uid-1")) == ["bad", "good"]
    r.store.revision_event("DELETED", revision_obj("good", 1))
    assert [rev.hash for rev in r.store.revisions_of("uid-1")] == ["bad"]
    r.store.replace_revisions([revision_obj("fixed", 3, uid="uid-2")])
    assert list(r.store.revisions_of("uid-1")) == []
    assert [rev.hash for rev in r.store.revisions_of("uid-2")] == ["fixed"]


def test_progress_since_moves_only_when_the_counts_do() -> None:
    r = Recorded()
    obj = ds_obj()
    r.store.daemonset_event("ADDED", obj)
    assert r.store.daemonsets["uid-1"].progress_since == T0
    r.now = T0 + 30
    obj["metadata"]["resourceVersion"] = "11"  # a change that is not progress
    r.store.daemonset_event("MODIFIED", copy.deepcopy(obj))
    assert r.store.daemonsets["uid-1"].progress_since == T0
    assert r.store.daemonsets["uid-1"].state.resource_version == "11"
    obj["status"]["updatedNumberScheduled"] = 3
    r.store.daemonset_event("MODIFIED", copy.deepcopy(obj))
    assert r.store.daemonsets["uid-1"].progress_since == T0 + 30
    assert r.store.in_progress() == {"uid-1"}


def test_a_lifted_pause_is_reported_with_the_state_before_it() -> None:
    r = Recorded()
    paused = ds_obj()
    paused["metadata"]["annotations"] = {PAUSED: "true"}
    r.store.daemonset_event("ADDED", paused)  # first seen paused: not a change
    r.store.daemonset_event("MODIFIED", paused)
    assert r.resumed == []
    resumed = ds_obj()
    resumed["metadata"]["resourceVersion"] = "12"
    r.store.daemonset_event("MODIFIED", resumed)
    [(before, after)] = r.resumed
    assert before.paused and before.resource_version == "10"
    assert not after.paused and after.resource_version == "12"
    assert r.store.daemonsets["uid-1"].state == after


def test_synced_once_every_index_has_listed() -> None:
    store = Store(on_change=lambda uid: None)
    for replace in (store.replace_daemonsets, store.replace_revisions, store.replace_pods):
        replace([])
        assert not store.synced
    store.replace_nodes([])
    assert store.synced
    store.replace_pods([])  # a relist after a 410 Gone
    assert store.synced


async def test_dirty_marks_one_or_everything_and_wakes() -> None:
    dirty = Dirty()
    assert not dirty.wake.is_set()
    dirty.mark("uid-1")
    assert dirty.uids == {"uid-1"} and dirty.wake.is_set() and not dirty.everything
    dirty.wake.clear()
    dirty.mark_all()
    assert dirty.everything and dirty.wake.is_set()
