"""The guard's indexes, fed by its watches: DaemonSets, their ControllerRevisions, their pods (by
revision and by node) and each node's Ready condition.

`Store` keeps them and says which DaemonSets a change concerns (`on_change(uid)`), and when a
pause was lifted (`on_resumed(before, after)`, before the new state replaces the old). `Dirty`
is the set of DaemonSets the guard must decide for again: the store, the outbox (an alert
settled), a policy change and a new leader mark it; the guard's loop takes from it. Pure: no
I/O (the import contract says so).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from dsguard.pod_health import NodeHealth, PodView
from dsguard.revisions import Revision
from dsguard.scheduling import NodeInfo, PodPlacement
from guard.rollout import DaemonSetState

Progress = tuple[int, int, int, int]
Obj = dict[str, Any]  # an object from the API, as dsguard.kube.Reflector hands it over


@dataclass
class Tracked:
    """A DaemonSet as last seen, and since when its rollout progress (the counts) is unchanged."""

    state: DaemonSetState
    progress: Progress = (0, 0, 0, 0)
    progress_since: float = 0.0


class Dirty:
    """DaemonSets (by uid) to decide for again, and the event that wakes the guard's loop for them.

    `mark_all()` stands for every DaemonSet the guard tracks: the guard expands it when it takes
    the marks (`everything`), so whoever marks needs no view of the DaemonSets.
    """

    def __init__(self) -> None:
        self.uids: set[str] = set()
        self.everything = False
        self.wake = asyncio.Event()

    def mark(self, uid: str) -> None:
        self.uids.add(uid)
        self.wake.set()

    def mark_all(self) -> None:
        self.everything = True
        self.wake.set()


def _ignore_resume(before: DaemonSetState, after: DaemonSetState) -> None:
    pass


class Store:
    """The indexes. The replace_* and *_event methods are a Reflector's on_replace and on_event."""

    LISTS = frozenset({"daemonsets", "revisions", "pods", "nodes"})

    def __init__(
        self,
        *,
        on_change: Callable[[str], None],
        on_resumed: Callable[[DaemonSetState, DaemonSetState], None] = _ignore_resume,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._on_change = on_change
        self._on_resumed = on_resumed
        self._clock = clock
        self.daemonsets: dict[str, Tracked] = {}  # by uid
        self.revisions: dict[str, dict[str, Revision]] = defaultdict(dict)  # owner uid -> name
        self.pods: dict[str, dict[str, PodView]] = defaultdict(dict)  # owner uid -> name
        # owner uid -> controller-revision-hash -> name: a decision reads only the update revision's
        # pods, a few at the start of a rollout (when it matters most) rather than all of them
        self.by_revision: dict[str, dict[str, dict[str, PodView]]] = defaultdict(lambda: defaultdict(dict))
        self.pods_on_node: dict[str, set[tuple[str, str]]] = defaultdict(set)  # node -> (uid, pod)
        self.nodes: dict[str, NodeHealth] = {}
        # Placement fields (labels, taints): which nodes a wave rollout plans over, and groupBy.
        self.node_infos: dict[str, NodeInfo] = {}
        self._listed: set[str] = set()  # which of LISTS have been listed (replace_* called) once

    @property
    def synced(self) -> bool:
        """Every index has been listed once (as Reflector.synced, for the four watches together)."""
        return self._listed >= self.LISTS

    # -- DaemonSets -----------------------------------------------------------------------
    def replace_daemonsets(self, items: list[Obj]) -> None:
        seen = set()
        for obj in items:
            self.daemonset_event("ADDED", obj)
            seen.add(str((obj.get("metadata") or {}).get("uid", "")))
        for uid in list(self.daemonsets):
            if uid not in seen:
                del self.daemonsets[uid]
        self._listed.add("daemonsets")

    def daemonset_event(self, kind: str, obj: Obj) -> None:
        ds = DaemonSetState.from_object(obj)
        if kind == "DELETED":
            self.daemonsets.pop(ds.uid, None)
            return
        now = self._clock()
        tracked = self.daemonsets.get(ds.uid)
        if tracked is None:
            self.daemonsets[ds.uid] = Tracked(ds, ds.progress, now)
        else:
            if tracked.state.paused and not ds.paused:
                self._on_resumed(tracked.state, ds)
            if ds.progress != tracked.progress:
                tracked.progress, tracked.progress_since = ds.progress, now
            tracked.state = ds
        self._on_change(ds.uid)

    # -- ControllerRevisions --------------------------------------------------------------
    def replace_revisions(self, items: list[Obj]) -> None:
        self.revisions.clear()
        for obj in items:
            self.revision_event("ADDED", obj)
        self._listed.add("revisions")

    def revision_event(self, kind: str, obj: Obj) -> None:
        rev = Revision.from_object(obj)
        if rev is None:
            return
        if kind == "DELETED":
            self.revisions[rev.owner_uid].pop(rev.name, None)
        else:
            self.revisions[rev.owner_uid][rev.name] = rev
        self._on_change(rev.owner_uid)

    # -- pods -----------------------------------------------------------------------------
    def replace_pods(self, items: list[Obj]) -> None:
        self.pods.clear()
        self.by_revision.clear()
        self.pods_on_node.clear()
        for obj in items:
            self.pod_event("ADDED", obj)
        self._listed.add("pods")

    def pod_event(self, kind: str, obj: Obj) -> None:
        pod = PodView.from_pod(obj)
        if pod is None:
            return
        uid = pod.owner_uid
        pods, by_revision = self.pods[uid], self.by_revision[uid]
        old = pods.get(pod.name)
        if old is not None:
            if old.node != pod.node:
                self.pods_on_node[old.node].discard((uid, pod.name))
            if old.revision != pod.revision:
                _unindex(by_revision, old)
        if kind == "DELETED":
            pods.pop(pod.name, None)
            _unindex(by_revision, pod)
            self.pods_on_node[pod.node].discard((uid, pod.name))
            if not pods:
                del self.pods[uid], self.by_revision[uid]
        else:
            pods[pod.name] = pod
            by_revision[pod.revision][pod.name] = pod
            if pod.node:
                self.pods_on_node[pod.node].add((uid, pod.name))
        self._on_change(uid)

    # -- nodes ----------------------------------------------------------------------------
    def replace_nodes(self, items: list[Obj]) -> None:
        self.nodes, self.node_infos = {}, {}
        for obj in items:
            health = NodeHealth.from_node(obj)
            self.nodes[health.name] = health
            self.node_infos[health.name] = NodeInfo.from_node(obj)
        self._listed.add("nodes")
        for uid in self.daemonsets:
            self._on_change(uid)

    def node_event(self, kind: str, obj: Obj) -> None:
        health = NodeHealth.from_node(obj)
        old = self.nodes.get(health.name)
        if kind == "DELETED":
            self.nodes.pop(health.name, None)
            self.node_infos.pop(health.name, None)
        else:
            self.nodes[health.name] = health
            self.node_infos[health.name] = NodeInfo.from_node(obj)
        if old is None or old.ready != health.ready:
            for uid, _ in self.pods_on_node.get(health.name, ()):
                self._on_change(uid)

    # -- reading --------------------------------------------------------------------------
    def revisions_of(self, uid: str) -> Collection[Revision]:
        return self.revisions.get(uid, {}).values()

    def pods_on_revision(self, uid: str, revision_hash: str) -> Collection[PodView]:
        return self.by_revision.get(uid, {}).get(revision_hash, {}).values()

    def node_labels(self) -> dict[str, Mapping[str, str]]:
        return {name: info.labels for name, info in self.node_infos.items()}

    def targeted(self, pod_spec: Mapping[str, Any]) -> list[str]:
        """The nodes a DaemonSet with this pod spec runs on, as the DaemonSet controller decides
        (dsguard.scheduling): a wave plan over them does not shift while a pod is being replaced."""
        placement = PodPlacement.from_pod_spec(pod_spec)
        return [name for name, info in self.node_infos.items() if placement.evaluate(info).should_run]

    def in_progress(self) -> set[str]:
        """DaemonSets whose rollout is not complete."""
        return {uid for uid, t in self.daemonsets.items() if not t.state.complete}

    def rolling(self) -> set[str]:
        """DaemonSets with a pod not Ready: its deadline may pass without any event."""
        return {uid for uid, pods in self.pods.items() if any(not p.ready for p in pods.values())}


def _unindex(by_revision: dict[str, dict[str, PodView]], pod: PodView) -> None:
    names = by_revision.get(pod.revision)
    if names is not None:
        names.pop(pod.name, None)
        if not names:
            del by_revision[pod.revision]
