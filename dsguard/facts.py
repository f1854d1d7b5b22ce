"""What the rules know about the cluster: nodes, namespace labels, the apiserver version.

A frozen snapshot: the webhook's watched cache swaps in a new one on change, the offline CLI
builds one from files. Rules never call the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dsguard.scheduling import NodeInfo

# The apiserver labels every namespace with its own name (NamespaceDefaultLabelName, 1.21+).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class ClusterFacts:
    nodes: tuple[NodeInfo, ...] = ()
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    server_version: str | None = None

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        labels = self.namespaces.get(namespace)
        if labels is None:
            return {NAMESPACE_NAME_LABEL: namespace}
        return labels
