"""Per-review context shared by the rules: the DaemonSet and the nodes it would run on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.scheduling import NodeInfo, PodPlacement


class Severity(StrEnum):
    VIOLATION = "violation"  # denied, warned or recorded according to the policy's enforcement
    WARNING = "warning"  # never denies (e.g. unknownVersion: Warn)


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    severity: Severity = Severity.VIOLATION


class RuleContext:
    """Placement is computed once per review and reused by coverage, caps and versions."""

    def __init__(self, ds: DaemonSetView, facts: ClusterFacts) -> None:
        self.ds = ds
        self.facts = facts

    @cached_property
    def placement(self) -> PodPlacement:
        return PodPlacement.from_pod_spec(self.ds.pod_spec)

    @cached_property
    def targeted(self) -> tuple[NodeInfo, ...]:
        """Nodes where the DaemonSet controller would run a pod (NodeShouldRunDaemonPod)."""
        evaluate = self.placement.evaluate
        return tuple(n for n in self.facts.nodes if evaluate(n).should_run)


def name_nodes(names: list[str], limit: int = 10) -> str:
    """First `limit` names and a count of the rest, so a 5,000-node message stays readable."""
    shown = ", ".join(names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
