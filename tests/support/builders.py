"""Kubernetes objects for tests, as plain dicts: DaemonSets, DaemonSetPolicies, Nodes.

Every option left at None leaves its field out of the object (so a test gets exactly the object it
asks for: an absent field and an empty one are not the same to a JSON patch or a rule). Mappings
and lists passed in are deep-copied: a test may change what it built without changing its inputs.

    daemonset("agent", "logging", tolerations=[INFRA], max_unavailable=1)
    policy("p", {"tolerations": {...}}, namespaces=["logging"])  # spec.match.namespaces first
    parsed_policy("p", spec)  # the same, through dsguard.policy.parse_policy
    node("n1", kubelet="v1.33.2", hostname_label=True, ready=True)
    node_info("n1", kubelet="v1.33.2", taints=[Taint("dedicated", "infra", "NoSchedule")])
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from dsguard.policy import Policy, parse_policy
from dsguard.scheduling import NodeInfo, Taint

Obj = dict[str, Any]

IMAGE = "registry.example.com/agent:1.0"
POLICY_API_VERSION = "dsguard.io/v1alpha1"
HOSTNAME_LABEL = "kubernetes.io/hostname"


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


def daemonset(
    name: str = "agent",
    namespace: str | None = "default",
    *,
    image: str = IMAGE,
    container: str = "agent",
    images: Sequence[str] | None = None,
    init_images: Sequence[str] | None = None,
    containers: Sequence[Mapping[str, Any]] | None = None,
    app: str | None = None,
    labels: Mapping[str, str] | None = None,
    app_label: bool = False,
    annotations: Mapping[str, str] | None = None,
    uid: str | None = None,
    resource_version: str | None = None,
    generation: int | None = None,
    template_metadata: bool = True,
    template_annotations: Mapping[str, str] | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    host_network: bool = False,
    update_strategy: Mapping[str, Any] | None = None,
    max_unavailable: int | str | None = None,
    max_surge: int | str | None = None,
    status: Mapping[str, Any] | None = None,
) -> Obj:
    """An apps/v1 DaemonSet whose selector and pod template label are app=`app` (default: name).

    labels: the DaemonSet's own; app_label labels it app=`app` too, as its pods. uid may name
    {name} and {namespace} (str.format: "uid-{namespace}-{name}").
    Its pod runs one container `container` with `image`; or one per `images` (named c0, c1, ...,
    and init containers init0, ... of `init_images`); or `containers` as given.
    update_strategy is used as given; else max_unavailable (and max_surge) make a RollingUpdate
    strategy; else there is none. template_metadata=False leaves out the template's metadata
    (labels and all). namespace None: none (as in a manifest that `kubectl apply -n` places)."""
    app = name if app is None else app
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if uid is not None:
        meta["uid"] = uid.format(name=name, namespace=namespace)
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    if generation is not None:
        meta["generation"] = generation
    if labels is not None or app_label:
        meta["labels"] = {**({"app": app} if app_label else {}), **_copy(dict(labels or {}))}
    if annotations is not None:
        meta["annotations"] = _copy(dict(annotations))

    pod: Obj = {}
    if node_selector is not None:
        pod["nodeSelector"] = _copy(dict(node_selector))
    if tolerations is not None:
        pod["tolerations"] = _copy(list(tolerations))
    if host_network:
        pod["hostNetwork"] = True
    if init_images is not None:
        pod["initContainers"] = numbered_containers("init", init_images)
    if containers is not None:
        pod["containers"] = _copy(list(containers))
    elif images is not None:
        pod["containers"] = numbered_containers("c", images)
    else:
        pod["containers"] = [{"name": container, "image": image}]

    template: Obj = {}
    if template_metadata:
        template["metadata"] = {"labels": {"app": app}}
        if template_annotations is not None:
            template["metadata"]["annotations"] = _copy(dict(template_annotations))
    template["spec"] = pod

    spec: Obj = {"selector": {"matchLabels": {"app": app}}}
    if update_strategy is not None:
        spec["updateStrategy"] = _copy(dict(update_strategy))
    elif max_unavailable is not None or max_surge is not None:
        rolling: Obj = {}
        if max_unavailable is not None:
            rolling["maxUnavailable"] = max_unavailable
        if max_surge is not None:
            rolling["maxSurge"] = max_surge
        spec["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling}
    spec["template"] = template

    obj: Obj = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": spec}
    if status is not None:
        obj["status"] = _copy(dict(status))
    return obj


def numbered_containers(prefix: str, images: Sequence[str]) -> list[Obj]:
    """[{"name": f"{prefix}0", "image": images[0]}, ...]."""
    return [{"name": f"{prefix}{i}", "image": image} for i, image in enumerate(images)]


def policy(
    name: str = "p",
    spec: Mapping[str, Any] | None = None,
    *,
    namespaces: Sequence[str] | None = None,
    generation: int | None = None,
    resource_version: str | None = None,
    status: Mapping[str, Any] | None = None,
) -> Obj:
    """A DaemonSetPolicy (cluster-scoped) with `spec`. namespaces: a spec.match.namespaces put
    first (a `match` in spec replaces it)."""
    body: Obj = _copy(dict(spec or {}))
    if namespaces is not None:
        body = {"match": {"namespaces": list(namespaces)}, **body}
    meta: Obj = {"name": name}
    if generation is not None:
        meta["generation"] = generation
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    obj: Obj = {"apiVersion": POLICY_API_VERSION, "kind": "DaemonSetPolicy", "metadata": meta, "spec": body}
    if status is not None:
        obj["status"] = _copy(dict(status))
    return obj


def parsed_policy(name: str = "p", spec: Mapping[str, Any] | None = None, **options: Any) -> Policy:
    """policy(name, spec, **options) through dsguard.policy.parse_policy."""
    return parse_policy(policy(name, spec, **options))


def node(
    name: str = "node",
    *,
    labels: Mapping[str, str] | None = None,
    hostname_label: bool = False,
    taints: Sequence[Mapping[str, Any] | Taint] | None = None,
    kubelet: str | None = None,
    ready: bool | None = None,
    heartbeat: str | None = None,
    since: str | None = None,
    typed: bool = True,
) -> Obj:
    """A v1 Node as the apiserver serves it.

    hostname_label adds kubernetes.io/hostname=name to `labels` (as a kubelet does). taints:
    dicts, or dsguard Taints (to_dict). kubelet: status.nodeInfo.kubeletVersion. ready: a Ready
    condition, True or False, with `heartbeat` (lastHeartbeatTime) and `since`
    (lastTransitionTime) if given. typed=False leaves out apiVersion and kind."""
    meta: Obj = {"name": name}
    if labels is not None or hostname_label:
        meta["labels"] = {**_copy(dict(labels or {})), **({HOSTNAME_LABEL: name} if hostname_label else {})}
    obj: Obj = {"apiVersion": "v1", "kind": "Node"} if typed else {}
    obj["metadata"] = meta
    if taints is not None:
        obj["spec"] = {"taints": [t.to_dict() if isinstance(t, Taint) else _copy(t) for t in taints]}
    status: Obj = {}
    if kubelet is not None:
        status["nodeInfo"] = {"kubeletVersion": kubelet}
    if ready is not None:
        condition: Obj = {"type": "Ready", "status": "True" if ready else "False"}
        if heartbeat is not None:
            condition["lastHeartbeatTime"] = heartbeat
        if since is not None:
            condition["lastTransitionTime"] = since
        status["conditions"] = [condition]
    if status:
        obj["status"] = status
    return obj


def node_info(
    name: str = "node",
    *,
    labels: Mapping[str, str] | None = None,
    hostname_label: bool = False,
    taints: Sequence[Mapping[str, Any] | Taint] | None = (),
    kubelet: str = "v1.33.2",
) -> NodeInfo:
    """What the rules see of node(...): NodeInfo.from_node of it."""
    return NodeInfo.from_node(
        node(name, labels=labels, hostname_label=hostname_label, taints=taints, kubelet=kubelet)
    )
