"""Coverage: the DaemonSet must run a pod on every node the policy's coverage selector picks."""

from __future__ import annotations

from dsguard import daemonset_shape as shape
from dsguard.policy import Policy
from dsguard.rules.context import TEMPLATE, Finding, NodeWalk, RuleContext, name_nodes
from dsguard.selectors import LabelSelector

RULE = "coverage"
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
    taints: dict[str, None] = {}  # ordered set of the untolerated taints, for the fix
    for node, placement in walk.placements:  # the review's one walk, not a second evaluation
        if not selector.matches(node.labels):
            continue
        in_scope += 1
        if placement.should_run:
            continue
        missed.append(f"{node.name} ({placement.reason})")
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
        ),
    )
