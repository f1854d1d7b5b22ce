"""Which pods of a rollout are failing, from the few pod and node fields the guard keeps.

Pure: PodView and NodeHealth are built from the API's JSON once per watch event, and
`failure_reason` decides with a clock passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dsguard.daemonset import as_mapping, is_mapping
from dsguard.policy import GuardPolicy

REVISION_LABEL = "controller-revision-hash"

# Waiting reasons from the kubelet that mean the container won't run as it is.
FAILING_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "RunContainerError",
        "InvalidImageName",
    }
)

# Taints that say a node is on its way out: a node being scaled down, replaced or shut down goes
# NotReady for that, not for the agent the rollout just put on it.
RETIRING_TAINTS = frozenset(
    {
        "ToBeDeletedByClusterAutoscaler",  # cluster-autoscaler, scaling the node down
        "karpenter.sh/disrupted",  # Karpenter v1, draining the node to remove or replace it
        "karpenter.sh/disruption",  # Karpenter v1beta1 (value "disrupting")
        "node.cloudprovider.kubernetes.io/shutdown",  # the cloud provider reports it shut down
        "node.kubernetes.io/unschedulable",  # cordoned (the taint that mirrors spec.unschedulable)
    }
)


def parse_time(value: object) -> float | None:
    """RFC 3339 as the API writes it (2026-11-22T18:00:00Z) to epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def controller_owner(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference of the DaemonSet controlling an object (pod or ControllerRevision), if any."""
    for o in meta.get("ownerReferences") or ():
        if is_mapping(o) and o.get("controller") and o.get("kind") == "DaemonSet":
            return o
    return None


@dataclass(frozen=True, slots=True)
class PodView:
    namespace: str
    name: str
    owner_uid: str  # the controlling DaemonSet's uid
    node: str
    revision: str  # the controller-revision-hash label
    phase: str
    ready: bool
    restarts: int
    waiting: tuple[str, ...]  # waiting reasons of init and app containers
    created: float
    started: float | None
    deleting: bool
    uid: str = ""
    ready_since: float | None = None  # lastTransitionTime of the Ready condition, while Ready

    def available(self, min_ready_seconds: int, now: float) -> bool:
        """Ready for at least minReadySeconds, as the DaemonSet controller counts it
        (podutil.IsPodAvailable); not while being deleted."""
        if self.deleting or not self.ready:
            return False
        if min_ready_seconds <= 0:
            return True
        return self.ready_since is not None and self.ready_since + min_ready_seconds <= now

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodView | None:
        """None for pods no DaemonSet controls: the guard doesn't keep them."""
        meta = as_mapping(pod.get("metadata"))
        owner = controller_owner(meta)
        if owner is None:
            return None
        spec = as_mapping(pod.get("spec"))
        status = as_mapping(pod.get("status"))
        ready = False
        ready_since = None
        for c in status.get("conditions") or ():
            if is_mapping(c) and c.get("type") == "Ready" and c.get("status") == "True":
                ready = True
                ready_since = parse_time(c.get("lastTransitionTime"))
        restarts = 0
        waiting: list[str] = []
        for field in ("initContainerStatuses", "containerStatuses"):
            for cs in status.get(field) or ():
                if not is_mapping(cs):
                    continue
                restarts += int(cs.get("restartCount") or 0)
                reason = as_mapping(as_mapping(cs.get("state")).get("waiting")).get("reason")
                if reason:
                    waiting.append(str(reason))
        labels = as_mapping(meta.get("labels"))
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            owner_uid=str(owner.get("uid", "")),
            node=str(spec.get("nodeName") or ""),
            revision=str(labels.get(REVISION_LABEL, "")),
            phase=str(status.get("phase", "")),
            ready=ready,
            restarts=restarts,
            waiting=tuple(waiting),
            created=parse_time(meta.get("creationTimestamp")) or 0.0,
            started=parse_time(status.get("startTime")),
            deleting=meta.get("deletionTimestamp") is not None,
            uid=str(meta.get("uid", "")),
            ready_since=ready_since,
        )


@dataclass(frozen=True, slots=True)
class NodeHealth:
    name: str
    ready: bool
    since: float | None  # lastTransitionTime of the Ready condition
    # False while the node has no Ready condition at all: it has just joined and its kubelet has
    # not posted a status yet (a node made by hand or by kwok lacks one for a moment too).
    reported: bool = True
    # Cordoned, being deleted, or tainted as scaled down / shut down (RETIRING_TAINTS): its
    # NotReady is the retirement's, not the new pod's.
    retiring: bool = False

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeHealth:
        meta = as_mapping(node.get("metadata"))
        spec = as_mapping(node.get("spec"))
        retiring = (
            spec.get("unschedulable") is True
            or meta.get("deletionTimestamp") is not None
            or any(is_mapping(t) and t.get("key") in RETIRING_TAINTS for t in spec.get("taints") or ())
        )
        name = str(meta.get("name", ""))
        for c in as_mapping(node.get("status")).get("conditions") or ():
            if is_mapping(c) and c.get("type") == "Ready":
                ready, since = c.get("status") == "True", parse_time(c.get("lastTransitionTime"))
                return cls(name, ready, since, retiring=retiring)
        return cls(name, False, None, reported=False, retiring=retiring)


def _keep(src: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: src[k] for k in keys if k in src}


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """Just the fields PodView.from_pod reads (None for a pod no DaemonSet controls), so a list
    of thousands of pods isn't held whole while it is read. from_pod(slim_pod(p)) == from_pod(p)."""
    meta = as_mapping(pod.get("metadata"))
    owner = controller_owner(meta)
    if owner is None:
        return None
    labels = as_mapping(meta.get("labels"))
    status = as_mapping(pod.get("status"))
    slim_status = _keep(status, "phase", "startTime")
    slim_status["conditions"] = [
        _keep(c, "type", "status", "lastTransitionTime")
        for c in status.get("conditions") or ()
        if is_mapping(c) and c.get("type") == "Ready"
    ]
    for field in ("initContainerStatuses", "containerStatuses"):
        statuses = []
        for cs in status.get(field) or ():
            if not is_mapping(cs):
                continue
            waiting = as_mapping(as_mapping(cs.get("state")).get("waiting"))
            state = {"waiting": _keep(waiting, "reason")} if waiting else {}
            statuses.append({**_keep(cs, "restartCount"), "state": state})
        slim_status[field] = statuses
    return {
        "metadata": {
            **_keep(meta, "namespace", "name", "uid", "creationTimestamp", "deletionTimestamp"),
            "ownerReferences": [{**_keep(owner, "kind", "controller", "uid")}],
            "labels": _keep(labels, REVISION_LABEL),
        },
        "spec": _keep(as_mapping(pod.get("spec")), "nodeName"),
        "status": slim_status,
    }


def slim_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """Just the fields NodeHealth.from_node reads; from_node(slim_node(n)) == from_node(n)."""
    conditions = as_mapping(node.get("status")).get("conditions") or ()
    spec = as_mapping(node.get("spec"))
    slim_spec = _keep(spec, "unschedulable")
    retiring_taints = [
        t for t in spec.get("taints") or () if is_mapping(t) and t.get("key") in RETIRING_TAINTS
    ]
    if retiring_taints:
        slim_spec["taints"] = [_keep(t, "key", "effect") for t in retiring_taints]
    return {
        "metadata": _keep(as_mapping(node.get("metadata")), "name", "deletionTimestamp"),
        "spec": slim_spec,
        "status": {
            "conditions": [
                _keep(c, "type", "status", "lastTransitionTime")
                for c in conditions
                if is_mapping(c) and c.get("type") == "Ready"
            ]
        },
    }


def slim_node_with_placement(node: Mapping[str, Any]) -> dict[str, Any]:
    """slim_node plus the placement fields NodeInfo.from_node reads (labels, taints, kubelet
    version), for readers of both (the auditing guard, `dsguard status --watch`): from_node of
    either class gives the same on it as on the whole Node."""
    slim = slim_node(node)
    meta = as_mapping(node.get("metadata"))
    spec = as_mapping(node.get("spec"))
    node_info = as_mapping(as_mapping(node.get("status")).get("nodeInfo"))
    slim["metadata"] = {**slim["metadata"], "labels": meta.get("labels") or {}}
    slim["spec"] = {**slim["spec"], "taints": spec.get("taints") or []}
    slim["status"]["nodeInfo"] = {"kubeletVersion": node_info.get("kubeletVersion", "")}
    return slim


def failure_reason(pod: PodView, node: NodeHealth | None, guard: GuardPolicy, now: float) -> str | None:
    """Why an updated pod counts as failing, or None while it is healthy (or still within its deadline)."""
    if pod.deleting:
        return None
    for reason in pod.waiting:
        if reason in FAILING_WAITING_REASONS:
            return reason
    if pod.phase == "Failed":
        return "Failed"
    if pod.restarts >= guard.max_restarts:
        return f"restarted {pod.restarts} times"
    # An agent that takes its node down (CNI, storage) shows up on the node, not the pod: the pod
    # may even stay Ready in the API because the kubelet that would report otherwise is gone.
    # Only a pod the kubelet started (startTime) can have done that, and only to a node that had
    # reported: a node joining mid-rollout gets its pod at once, before its kubelet posts Ready
    # (real kubelets post NotReady first), and must not count as a failure of the rollout. A node
    # that is retiring (cordoned, scaled down, shut down) goes NotReady for that.
    if (
        node is not None
        and node.reported
        and not node.retiring
        and not node.ready
        and pod.node
        and pod.started is not None
        and (node.since is None or node.since >= pod.started)
    ):
        return f"node {pod.node} NotReady since the new pod started"
    if not pod.ready and now - pod.created >= guard.ready_deadline_seconds:
        if node is not None and not node.ready:
            # A node that was down, retiring or not yet reporting before the pod could start: the
            # pod cannot become Ready there, whatever its image, so its deadline proves nothing.
            return None
        return (
            f"not Ready {int(now - pod.created)}s after creation (deadline {guard.ready_deadline_seconds}s)"
        )
    return None


def reason_kind(reason: str) -> str:
    """failure_reason without its details, for counting: "restarted 4 times" -> "restarted"."""
    if reason.startswith("restarted"):
        return "restarted"
    if reason.startswith("not Ready"):
        return "not Ready"
    if reason.startswith("node "):
        return "node NotReady"
    return reason


def next_deadline(pod: PodView, guard: GuardPolicy) -> float | None:
    """When a not-yet-Ready pod would cross readyDeadlineSeconds, so the guard can wake up then."""
    if pod.ready or pod.deleting:
        return None
    return pod.created + guard.ready_deadline_seconds
