"""Coverage: the DaemonSet must run a pod on every node the policy's coverage selector picks."""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from dsguard import daemonset_shape as shape
from dsguard.daemonset import TOLERATIONS_PATH
from dsguard.policy import Policy
from dsguard.rules.context import (
    RECOMPUTE,
    TEMPLATE,
    Finding,
    NodeStep,
    NodeWalk,
    Pair,
    RuleContext,
    name_nodes,
    splice,
)
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
    # A pass over every node, on every review: memoised with the walk, and patched rather than
    # passed again when a node changes (PlacementCache.advance). Selectors compare by value and
    # the findings depend on nothing else.
    found: tuple[Finding, ...] = ctx.walk.derive(
        (RULE, "findings", selector),
        lambda w: _findings(selector, w, _scope_of(selector, w)),
        lambda kept, step: _patch_findings(selector, kept, step),
    )
    return list(found)


def _patch_findings(
    selector: LabelSelector, found: tuple[Finding, ...], step: NodeStep
) -> tuple[Finding, ...]:
    """The findings stay as they are when the node is out of scope before and after, or in scope
    with a pod before and after; else they are built again (missed nodes are named with why)."""
    old, new = step.old, step.new
    if old is None or new is None:
        return RECOMPUTE  # type: ignore[no-any-return]
    in_old, in_new = selector.matches(old[0].labels), selector.matches(new[0].labels)
    if in_old == in_new and (not in_old or (old[1].should_run and new[1].should_run)):
        return found
    return RECOMPUTE  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Scope:
    """The nodes a coverage selector picks, counted, and those of them without a pod."""

    in_scope: int
    missed: tuple[Pair, ...]  # in node order


def _scope_of(selector: LabelSelector, walk: NodeWalk) -> _Scope:
    return walk.derive(
        (RULE, selector), lambda w: _scope(selector, w), lambda s, step: _patch_scope(selector, s, step)
    )


def _scope(selector: LabelSelector, walk: NodeWalk) -> _Scope:
    in_scope = 0
    missed: list[Pair] = []
    for pair in walk.placements:  # the review's one walk, not a second evaluation
        if not selector.matches(pair[0].labels):
            continue
        in_scope += 1
        if not pair[1].should_run:
            missed.append(pair)
    return _Scope(in_scope, tuple(missed))


def _patch_scope(selector: LabelSelector, scope: _Scope, step: NodeStep) -> _Scope:
    in_scope, missed = scope.in_scope, scope.missed
    for pair, sign in ((step.old, -1), (step.new, 1)):
        if pair is None or not selector.matches(pair[0].labels):
            continue
        in_scope += sign
        if not pair[1].should_run:
            removed = sign < 0
            missed = splice(missed, pair[0].name, _pair_name, removed, () if removed else (pair,))
    return _Scope(in_scope, missed)


def _pair_name(pair: Pair) -> str:
    return pair[0].name


def _findings(selector: LabelSelector, walk: NodeWalk, picked: _Scope) -> tuple[Finding, ...]:
    missed = picked.missed
    if not missed:
        return ()
    # The message names the first 10 (name_nodes): only those are formatted.
    shown = [f"{node.name} ({placement.reason})" for node, placement in missed[:_NAMED]]
    taints = _untolerated(selector, walk, picked)
    scope = f"nodes selected by {selector}" if str(selector) else "nodes"
    fix = "adjust spec.template.spec nodeSelector/affinity"
    if taints:
        fix = f"tolerate {', '.join(taints)} in spec.template.spec.tolerations, or " + fix
    return (
        Finding(
            RULE,
            f"the DaemonSet would run no pod on {len(missed)} of {picked.in_scope} {scope}: "
            f"{name_nodes(shown, _NAMED, total=len(missed))}; {fix}",
            field=_field_at_fault(walk.placement, missed[0][0], bool(taints)),
            nodes=ExplainedNodes(walk.placement, tuple(map(itemgetter(0), missed))),
        ),
    )


_NAMED = 10


def _untolerated(selector: LabelSelector, walk: NodeWalk, picked: _Scope) -> tuple[str, ...]:
    """The taints keeping pods off the missed nodes, in order of first appearance: kept across a
    node step that leaves the missed nodes as they are."""
    return walk.derive(
        (RULE, "taints", selector),
        lambda w: tuple(dict.fromkeys(str(t) for _, p in picked.missed for t in p.untolerated)),
        lambda kept, step: RECOMPUTE if _touches_missed(selector, step) else kept,
    )


def _touches_missed(selector: LabelSelector, step: NodeStep) -> bool:
    return any(
        pair is not None and not pair[1].should_run and selector.matches(pair[0].labels)
        for pair in (step.old, step.new)
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
