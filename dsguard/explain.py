"""`dsguard explain`: node by node, whether a DaemonSet's controller runs a pod there, and if not
why (the taint not tolerated, the nodeSelector or affinity term that fails, with the values), or
that it runs but the taint manager evicts it. Pure: the nodes and pods come from the caller."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsguard.daemonset import DaemonSetView, as_mapping
from dsguard.scheduling import (
    NodeExplanation,
    NodeInfo,
    PodPlacement,
    Toleration,
    daemonset_auto_tolerations,
)


@dataclass(frozen=True)
class PodOnNode:
    """A pod of the DaemonSet found bound (or pinned, while Pending) to a node."""

    name: str
    phase: str
    deleting: bool = False

    def __str__(self) -> str:
        return f"{self.name} ({self.phase}{', deleting' if self.deleting else ''})"


@dataclass(frozen=True)
class DaemonSetExplanation:
    ref: str  # namespace/name
    source: str  # the manifest ("file.yaml#1") or "cluster"
    added_tolerations: tuple[Toleration, ...]  # what the DaemonSet controller gives every pod
    nodes: tuple[NodeExplanation, ...]  # in the nodes' order

    @property
    def running(self) -> int:
        return sum(1 for n in self.nodes if n.runs)

    @property
    def short_lived(self) -> int:
        return sum(1 for n in self.nodes if n.evicted_after is not None)


def explain_daemonset(
    obj: Mapping[str, Any], nodes: Sequence[NodeInfo], *, source: str = ""
) -> DaemonSetExplanation:
    ds = DaemonSetView.from_object(obj)
    placement = PodPlacement.from_pod_spec(ds.pod_spec)
    return DaemonSetExplanation(
        ref=ds.ref,
        source=source,
        added_tolerations=daemonset_auto_tolerations(placement.host_network),
        nodes=tuple(placement.explain(n) for n in nodes),
    )


def _pinned_node(pod: Mapping[str, Any]) -> str:
    """spec.nodeName, else the node a Pending DaemonSet pod is pinned to: the controller's
    matchFields metadata.name term (ReplaceDaemonSetPodNodeNameNodeAffinity)."""
    spec = as_mapping(pod.get("spec"))
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = as_mapping(
        as_mapping(as_mapping(spec.get("affinity")).get("nodeAffinity")).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
    )
    for term in required.get("nodeSelectorTerms") or ():
        for f in as_mapping(term).get("matchFields") or ():
            f = as_mapping(f)
            values = list(f.get("values") or ())
            if f.get("key") == "metadata.name" and f.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return ""


def pods_by_node(pods: Iterable[Mapping[str, Any]], daemonset_uid: str) -> dict[str, PodOnNode]:
    """The DaemonSet's pods (ownerReferences to its uid) by node name."""
    out: dict[str, PodOnNode] = {}
    for pod in pods:
        meta = as_mapping(pod.get("metadata"))
        owners = meta.get("ownerReferences") or ()
        if not any(as_mapping(o).get("uid") == daemonset_uid for o in owners):
            continue
        node = _pinned_node(pod)
        if not node:
            continue
        phase = str(as_mapping(pod.get("status")).get("phase") or "Pending")
        found = PodOnNode(str(meta.get("name") or ""), phase, bool(meta.get("deletionTimestamp")))
        # Two at once (one terminating): show the live one.
        if node not in out or out[node].deleting:
            out[node] = found
    return out


def explanation_document(
    e: DaemonSetExplanation, pods: Mapping[str, PodOnNode] | None = None
) -> dict[str, Any]:
    """-o json: `pods` (from a cluster) adds what each node actually runs now."""
    nodes = []
    for n in e.nodes:
        d = n.to_dict()
        if pods is not None:
            pod = pods.get(n.node)
            d["pod"] = (
                None if pod is None else {"name": pod.name, "phase": pod.phase, "deleting": pod.deleting}
            )
        nodes.append(d)
    return {
        "daemonSet": e.ref,
        "source": e.source,
        "summary": {
            "nodes": len(e.nodes),
            "runs": e.running,
            "doesNotRun": len(e.nodes) - e.running,
            "evictedSoon": e.short_lived,
        },
        "addedTolerations": [t.to_dict() for t in e.added_tolerations],
        "nodes": nodes,
    }
