"""dsguard's Helm chart installed in a LocalCluster with a real node: the values that pin it there,
and its webhook pods' /metrics (the demo, the in-cluster tests and the admission bench)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localcluster.cluster import LocalCluster
from localcluster.image import BuiltImage
from localcluster.realnode import NODE_NAME

__all__ = [
    "CHART",
    "COMPONENTS",
    "NAMESPACE",
    "WEBHOOK_PORT",
    "pin_values",
    "pod_ready",
    "webhook_pod_metrics",
]

CHART = Path(__file__).resolve().parents[1] / "manifests" / "helm" / "dsguard"
#: The chart's Deployments, each with its own nodeSelector value.
COMPONENTS = ("webhook", "guard", "certs")
NAMESPACE = "dsguard"  # the release namespace the docs use
WEBHOOK_PORT = 8443  # the webhook container's port: HTTPS, /metrics beside /mutate and /validate
WEBHOOK_SELECTOR = "app.kubernetes.io/name=dsguard,app.kubernetes.io/component=webhook"


def pin_values(image: BuiltImage) -> list[str]:
    """The only values a user sets here: the image, and every Deployment pinned to the real node
    (kwok's fake pod IPs would land in the Service's endpoints otherwise)."""
    repo, tag = image.ref.rsplit(":", 1)
    pin = json.dumps({"kubernetes.io/hostname": NODE_NAME})
    args = ["--set", f"image.repository={repo}", "--set", f"image.tag={tag}"]
    return args + [a for comp in COMPONENTS for a in ("--set-json", f"{comp}.nodeSelector={pin}")]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def webhook_pod_metrics(cluster: LocalCluster, namespace: str = NAMESPACE) -> dict[str, str]:
    """Each Ready webhook pod's /metrics text by pod name, through the apiserver's pod proxy
    (HTTPS to the pod; "" when a pod doesn't answer)."""
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", WEBHOOK_SELECTOR)["items"]
    out: dict[str, str] = {}
    for pod in pods:
        if not pod_ready(pod) or pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["name"]
        path = f"/api/v1/namespaces/{namespace}/pods/https:{name}:{WEBHOOK_PORT}/proxy/metrics"
        proc = cluster.kubectl("get", "--raw", path, check=False)
        out[name] = proc.stdout if proc.returncode == 0 else ""
    return out
