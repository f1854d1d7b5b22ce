"""Fake (kwok) nodes, and the annotations that make kwok simulate failures.

kwok manages only nodes annotated ``kwok.x-k8s.io/node=fake``; it sets their status (Ready,
addresses, capacity) and plays the pods bound to them through the stages in
``localcluster/kwok/stages.yaml``. A node's ``status.nodeInfo`` is written at creation
(creating a Node keeps the status it is given) and kwok's node stage keeps every nodeInfo
field that is already set, so ``kubeletVersion`` stays what the caller chose.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "KWOK_NODE_ANNOTATION",
    "KWOK_NODE_VALUE",
    "NODE_BEHAVIOR_ANNOTATION",
    "NOT_READY_TAINTS",
    "POD_BEHAVIOR_ANNOTATION",
    "POD_BEHAVIOR_NODES_ANNOTATION",
    "POD_TIMING_ANNOTATIONS",
    "Kubectl",
    "NodeBehavior",
    "PodBehavior",
    "create_nodes",
    "delete_nodes",
    "node_manifest",
    "set_node_behavior",
    "wait_nodes_ready",
]

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"
#: Pod annotation (set it in a DaemonSet's spec.template.metadata.annotations).
POD_BEHAVIOR_ANNOTATION = "dsguard.test/behavior"
#: Pod annotation: "n1,n2" limits the behavior to pods on those nodes (the others are healthy).
POD_BEHAVIOR_NODES_ANNOTATION = "dsguard.test/behavior-nodes"
#: Node annotation.
NODE_BEHAVIOR_ANNOTATION = "dsguard.test/node-behavior"
#: Pod annotations tuning the simulated timings (Go duration strings such as "2s").
POD_TIMING_ANNOTATIONS = {
    "start_delay": "dsguard.test/start-delay",
    "run_for": "dsguard.test/run-for",
    "backoff": "dsguard.test/backoff",
    "crash_after": "dsguard.test/crash-after",
    "delete_delay": "dsguard.test/delete-delay",
}


class PodBehavior(StrEnum):
    """Values of the ``dsguard.test/behavior`` pod annotation (no annotation: healthy)."""

    #: Running; containers flap between running+Ready and waiting CrashLoopBackOff,
    #: restartCount rising on each crash.
    CRASHLOOP = "crashloop"
    #: Pending; containers waiting ErrImagePull / ImagePullBackOff.
    IMAGEPULL = "imagepull"
    #: Running, containers running, Ready False.
    NEVER_READY = "never-ready"
    #: Running and Ready for crash-after (default 5s), then like CRASHLOOP.
    READY_THEN_CRASH = "ready-then-crash"


class NodeBehavior(StrEnum):
    """Values of the ``dsguard.test/node-behavior`` node annotation (no annotation: Ready)."""

    #: Ready=False, reason KubeletNotReady.
    NOT_READY = "notready"
    #: All conditions Unknown, reason NodeStatusUnknown.
    UNREACHABLE = "unreachable"


class Kubectl(Protocol):
    """What LocalCluster.kubectl is: runs the built kubectl against one cluster."""

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = ...
    ) -> subprocess.CompletedProcess[str]: ...


Taint = Mapping[str, str]


def node_manifest(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Taint] | None = None,
    kubelet_version: str = "v1.37.2",
    annotations: Mapping[str, str] | None = None,
    unschedulable: bool = False,
    capacity: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Node that kwok will manage, with status.nodeInfo.kubeletVersion set to kubelet_version.

    taints are mappings with "key", "effect" and optionally "value". The usual well-known
    labels (kubernetes.io/hostname, kubernetes.io/os, kubernetes.io/arch, type=kwok) are set
    unless labels overrides them. annotations may carry NODE_BEHAVIOR_ANNOTATION.
    capacity (also used as allocatable) defaults to kwok's 1k cpu / 1Ti memory / 1M pods.
    """
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    all_labels.update(labels or {})
    all_annotations = {
        KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE,
        "node.alpha.kubernetes.io/ttl": "0",
    }
    all_annotations.update(annotations or {})
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = [_taint(t) for t in taints]
    if unschedulable:
        spec["unschedulable"] = True
    resources = dict(capacity) if capacity else {"cpu": "1k", "memory": "1Ti", "pods": "1M"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": all_annotations},
        "spec": spec,
        "status": {
            "allocatable": dict(resources),
            "capacity": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": kubelet_version,
                "containerRuntimeVersion": "containerd://2.0.0-kwok",
                "kernelVersion": "6.1.0-kwok",
                "osImage": "kwok fake node",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        },
    }


def _taint(t: Taint) -> dict[str, str]:
    if "key" not in t or "effect" not in t:
        raise ValueError(f"a taint needs 'key' and 'effect': {dict(t)!r}")
    if t["effect"] not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"bad taint effect {t['effect']!r}")
    out = {"key": t["key"], "effect": t["effect"]}
    if t.get("value"):
        out["value"] = t["value"]
    return out


def create_nodes(kubectl: Kubectl, nodes: Iterable[Mapping[str, Any]], *, chunk: int = 500) -> list[str]:
    """Create nodes (manifests from node_manifest) with one ``kubectl create`` per chunk.

    ``create`` rather than ``apply --server-side``: a plain create keeps the status given in
    the manifest (server-side apply resets status on the main resource), which is how
    nodeInfo.kubeletVersion gets there before kwok first sees the node. Returns the names.
    """
    items = [dict(n) for n in nodes]
    names: list[str] = []
    for start in range(0, len(items), chunk):
        batch = items[start : start + chunk]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": batch})
        kubectl("create", "-f", "-", "-o", "name", input=doc, timeout=120)
        names += [str(n["metadata"]["name"]) for n in batch]
    return names


def delete_nodes(kubectl: Kubectl, names: Sequence[str], *, force_pods: bool = True) -> None:
    """Delete nodes, then force-delete any pods still bound to them.

    Without a kubelet (kwok stops managing a node once it is gone) such pods would otherwise
    wait for the pod garbage collector, and keep their namespace terminating meanwhile. One list
    and one delete per namespace, whatever the node count.
    """
    if not names:
        return
    kubectl("delete", "node", "--ignore-not-found", "--wait=false", *names, timeout=120)
    if not force_pods:
        return
    gone = set(names)
    listed = kubectl("get", "pods", "--all-namespaces", "-o", "json", check=False, timeout=120)
    if listed.returncode != 0:
        return
    by_namespace: dict[str, list[str]] = {}
    for pod in json.loads(listed.stdout).get("items") or ():
        if (pod.get("spec") or {}).get("nodeName") in gone:
            meta = pod["metadata"]
            by_namespace.setdefault(meta["namespace"], []).append(meta["name"])
    for namespace, pods in sorted(by_namespace.items()):
        kubectl(
            "delete", "pods", "-n", namespace, *pods,
            "--grace-period=0", "--force", "--ignore-not-found", "--wait=false",
            check=False, timeout=60,
        )  # fmt: skip


def set_node_behavior(kubectl: Kubectl, name: str, behavior: NodeBehavior | str | None) -> None:
    """Set (or with None remove) the node-behavior annotation; kwok reacts within a second."""
    if behavior is None:
        kubectl("annotate", "node", name, f"{NODE_BEHAVIOR_ANNOTATION}-")
    else:
        kubectl("annotate", "node", name, "--overwrite", f"{NODE_BEHAVIOR_ANNOTATION}={behavior}")


#: Taints the node-lifecycle controller puts on nodes that are not Ready (including nodes that
#: have not reported yet) and removes once they are.
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _ready_status(node: Mapping[str, Any]) -> str | None:
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


def _settled(node: Mapping[str, Any], status: str) -> bool:
    if _ready_status(node) != status:
        return False
    if status != "True":
        return True
    taints = node.get("spec", {}).get("taints") or []
    return not any(t.get("key") in NOT_READY_TAINTS for t in taints)


def wait_nodes_ready(
    kubectl: Kubectl,
    names: Sequence[str],
    *,
    timeout: float = 60.0,
    status: str = "True",
    interval: float = 0.5,
) -> list[dict[str, Any]]:
    """Poll until every named node's Ready condition has the given status; return the nodes.

    For status "True" this also waits until the node-lifecycle controller has removed the
    node.kubernetes.io/not-ready and unreachable taints (a new node gets not-ready:NoSchedule
    before its first Ready status; DaemonSet pods don't tolerate it). Raises TimeoutError
    naming the nodes that did not get there.
    """
    wanted = set(names)
    deadline = time.monotonic() + timeout
    last: dict[str, str | None] = {}
    while True:
        proc = kubectl("get", "nodes", "-o", "json", timeout=60)
        items = [n for n in json.loads(proc.stdout)["items"] if n["metadata"]["name"] in wanted]
        last = {n["metadata"]["name"]: _ready_status(n) for n in items}
        done = {n["metadata"]["name"] for n in items if _settled(n, status)}
        if done == wanted:
            return items
        if time.monotonic() >= deadline:
            pending = {n: last.get(n, "<missing>") for n in sorted(wanted - done)}
            raise TimeoutError(
                f"nodes not Ready={status} (or still tainted not-ready) after {timeout:.0f}s: {pending}"
            )
        time.sleep(interval)
