"""kwok nodes for the cluster tests: each test's own, labelled with its group (its namespace), so
DaemonSets that select the group never see another test's nodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from localcluster.cluster import LocalCluster
from localcluster.nodes import create_nodes, delete_nodes, node_manifest, wait_nodes_ready

#: Every test node carries GROUP_LABEL=<group>; a test's DaemonSets select it (nodeSelector).
GROUP_LABEL = "dsguard.test/group"


def in_group(group: str) -> dict[str, str]:
    """The nodeSelector of a DaemonSet on one test's nodes only."""
    return {GROUP_LABEL: group}


class KwokNodes:
    """Creates kwok nodes for one test; names are ``<group>-<suffix><i>``. cleanup() deletes them
    (and force-deletes the pods still bound to them)."""

    def __init__(self, cluster: LocalCluster, group: str) -> None:
        self.cluster = cluster
        self.group = group
        self.names: list[str] = []

    def __call__(
        self,
        count: int = 1,
        *,
        suffix: str = "n",
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] | None = None,
        kubelet_version: str = "v1.37.2",
        annotations: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> list[str]:
        start = len(self.names)
        names = [f"{self.group}-{suffix}{start + i}" for i in range(count)]
        manifests = [
            node_manifest(
                n,
                labels={GROUP_LABEL: self.group, **(labels or {})},
                taints=taints,
                kubelet_version=kubelet_version,
                annotations=annotations,
            )
            for n in names
        ]
        create_nodes(self.cluster.kubectl, manifests)
        self.names += names
        if wait:
            wait_nodes_ready(self.cluster.kubectl, names, timeout=60)
        return names

    def cleanup(self) -> None:
        delete_nodes(self.cluster.kubectl, self.names)
