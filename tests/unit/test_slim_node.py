"""The guard's one node watch, when it audits, keeps what both readers need of a Node."""

from __future__ import annotations

from typing import Any

import pytest

from dsguard.pod_health import NodeHealth, slim_node, slim_node_with_placement
from dsguard.scheduling import NodeInfo

FULL: dict[str, Any] = {
    "metadata": {
        "name": "gpu-0",
        "labels": {"pool": "gpu", "kubernetes.io/hostname": "gpu-0"},
        "annotations": {"kwok.x-k8s.io/node": "fake"},
        "managedFields": [{"manager": "kubelet"}],
    },
    "spec": {
        "taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {
                "key": "node.kubernetes.io/not-ready",
                "effect": "NoExecute",
                "timeAdded": "2026-01-01T00:00:00Z",
            },
        ],
        "unschedulable": True,
        "podCIDR": "10.0.0.0/24",
    },
    "status": {
        "nodeInfo": {"kubeletVersion": "v1.32.6", "osImage": "x"},
        "images": [{"names": ["a"], "sizeBytes": 1}] * 50,
        "conditions": [
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "r"},
        ],
    },
}


@pytest.mark.parametrize(
    "node",
    [
        FULL,
        {"metadata": {"name": "bare"}},
        {"metadata": {"name": "n", "labels": None}, "spec": {"taints": None}, "status": {"conditions": None}},
    ],
)
def test_both_readers_see_the_same(node: dict[str, Any]) -> None:
    view = slim_node_with_placement(node)
    assert NodeInfo.from_node(view) == NodeInfo.from_node(node)
    assert NodeHealth.from_node(view) == NodeHealth.from_node(node)
    assert NodeHealth.from_node(slim_node(node)) == NodeHealth.from_node(node)


READY = {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}


@pytest.mark.parametrize(
    ("spec", "meta", "retiring"),
    [
        ({}, {}, False),
        ({"unschedulable": False, "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}, {}, False),
        ({"unschedulable": True}, {}, True),  # kubectl cordon / drain
        (
            {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1733", "effect": "NoSchedule"}]},
            {},
            True,
        ),
        ({"taints": [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]}, {}, True),
        (
            {"taints": [{"key": "karpenter.sh/disruption", "value": "disrupting", "effect": "NoSchedule"}]},
            {},
            True,
        ),
        (
            {"taints": [{"key": "node.cloudprovider.kubernetes.io/shutdown", "effect": "NoSchedule"}]},
            {},
            True,
        ),
        ({}, {"deletionTimestamp": "2026-01-01T00:00:00Z"}, True),
        ({"taints": ["not a taint", None]}, {}, False),  # a malformed entry is no taint
    ],
)
def test_a_retiring_node_is_known_from_either_view(
    spec: dict[str, Any], meta: dict[str, Any], retiring: bool
) -> None:
    node = {"metadata": {"name": "n", **meta}, "spec": spec, "status": READY}
    assert NodeHealth.from_node(node).retiring is retiring
    assert NodeHealth.from_node(slim_node(node)) == NodeHealth.from_node(node)
    assert NodeHealth.from_node(slim_node_with_placement(node)) == NodeHealth.from_node(node)


def test_it_drops_the_bulk() -> None:
    view = slim_node_with_placement(FULL)
    assert "images" not in view["status"] and "managedFields" not in view["metadata"]
    assert len(str(view)) < len(str(FULL)) / 4
