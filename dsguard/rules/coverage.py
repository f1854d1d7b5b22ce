"""Coverage: the DaemonSet must run a pod on every node the policy's coverage selector picks."""

from __future__ import annotations

from typing import Any

from dsguard import daemonset_shape as shape
from dsguard.daemonset import TOLERATIONS_PATH
from dsguard.policy import Policy
from dsguard.rules.context import TEMPLATE, Finding, NodeWalk, RuleContext, name_nodes
from dsguard.scheduling import NodeInfo, PodPlacement
from dsguard.selectors import LabelSelector

RULE = "coverage"
POD_SPEC_PATH = "spec.template.spec"
JUDGES = TEMPLATE
READS: tuple[str, ...] = shape.PLACEMENT


def governs(policy: Policy) -> bool:
    return policy.tolerations is not None and policy.tolerations.coverage is not None


def check(policy: Policy, ctx: RuleContext) -> list[Finding]:
    if policy.tolerations is None or policy.tolerations.coverage is None:
        return []
    selector = policy.tolerations.coverage.node_selector
    # A pass over every node, on every review: memoised with the walk. Selectors compare by value
    # and the findings depend on nothing else.
    return list(ctx.walk.derive((RULE, selector), lambda walk: _findings(selector, walk)))


def _findings(selector: LabelSelector, walk: NodeWalk) -> tuple[Finding, ...]:
    in_scope = 0
    missed: list[str] = []
    missed_nodes: list[NodeInfo] = []
    taints: dict[str, None] = {}  # ordered set of the untolerated taints, for the fix
    for node, placement in walk.placements:  # the review's one walk, not a second evaluation
        if not selector.matches(node.labels):
            continue
        in_scope += 1
        if placement.should_run:
            continue
        missed.append(f"{node.name} ({placement.reason})")
        missed_nodes.append(node)
        for taint in placement.untolerated:
            taints[str(taint)] = None
    if not missed:
        return ()
    scope = f"nodes selected by {selector}" if str(selector) else "nodes"
    fix = "adjust spec.template.spec nodeSelector/affinity"
    if taints:
        fix = f"tolerate {', '.join(taints)} in spec.template.spec.tolerations, or " + fix
    return (
        Finding(
            RULE,
            f"the DaemonSet would run no pod on {len(missed)} of {in_scope} {scope}: "
            f"{name_nodes(missed)}; {fix}",
            field=_field_at_fault(walk.placement, missed_nodes[0], bool(taints)),
            nodes=ExplainedNodes(walk.placement, tuple(missed_nodes)),
        ),
    )


def _field_at_fault(placement: PodPlacement, first: NodeInfo, taints: bool) -> str:
    """Where a reader would fix it: the tolerations when taints keep pods off, else the field of
    the first missed node's first reason (its nodeSelector, affinity term or nodeName)."""
    reasons = () if taints else placement.explain(first).reasons
    return f"{POD_SPEC_PATH}.{reasons[0].field}" if reasons else TOLERATIONS_PATH


class ExplainedNodes:
    """Coverage's missed nodes, explained (PodPlacement.explain) when a report asks (NodeList)."""

    __slots__ = ("nodes", "placement")

    def __init__(self, placement: PodPlacement, nodes: tuple[NodeInfo, ...]) -> None:
        self.placement = placement
        self.nodes = nodes

    def to_dicts(self) -> list[dict[str, Any]]:
        return [self.placement.explain(n).to_dict() for n in self.nodes]
