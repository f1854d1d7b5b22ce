"""Hand a template change to the guard's wave rollout before the DaemonSet controller starts one.

For a DaemonSet whose guard policy has `waves`, the guard drives the rollout (dsguard/waves.py).
If the DaemonSet controller saw the new template under RollingUpdate it would start replacing
pods at once, before the guard's canary. So on an UPDATE that changes spec.template, /mutate sets
`updateStrategy: OnDelete` and records the user's strategy in dsguard.io/original-update-strategy
(as a pause does); the guard restores it when the wave rollout completes. While a wave rollout is
in progress, a re-apply of the same template (GitOps self-heal, kubectl apply) that writes the
manifest's strategy back gets OnDelete again; the strategy it brought becomes the one restored.

Left alone: a CREATE (a first revision is not a rollout), a user's own OnDelete, the guard's own
rollback and completion (both restore the user's strategy), and DaemonSets no waves policy governs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dsguard.annotations import ORIGINAL_STRATEGY, ROLLED_BACK_REVISION, encode_strategy, waves_in_progress
from dsguard.daemonset import ON_DELETE, DaemonSetView, annotations_of, as_mapping, spec_of
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy, guard_policy_for
from dsguard.rules.context import ObjectEdit
from dsguard.rules.engine import matching_policies

ON_DELETE_STRATEGY: dict[str, Any] = {"type": ON_DELETE}


def _strategy_type(strategy: object) -> str:
    return str(as_mapping(strategy).get("type") or "RollingUpdate")


def take_over(
    policies: Sequence[Policy],
    edit: ObjectEdit,
    old: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    ds: DaemonSetView | None = None,
) -> list[str]:
    """Set OnDelete on `edit` when the guard is to drive this update in waves; returns the
    notice for the user (empty when nothing was done). ds: the view of edit.obj when the caller
    has it (only its namespace and labels are read: which policies match)."""
    new = edit.obj
    strategy = spec_of(new).get("updateStrategy")
    if _strategy_type(strategy) == ON_DELETE:
        return []  # the user's own OnDelete, or already held
    if annotations_of(new).get(ROLLED_BACK_REVISION) != annotations_of(old).get(ROLLED_BACK_REVISION):
        return []  # the guard's rollback: it restores the user's strategy on purpose
    template_changed = spec_of(new).get("template") != spec_of(old).get("template")
    # In progress before and after: the guard's completion (which drops dsguard.io/waves-revision
    # as it restores the strategy) is let through.
    in_progress = (
        waves_in_progress(annotations_of(old))
        and waves_in_progress(annotations_of(new))
        and _strategy_type(spec_of(old).get("updateStrategy")) == ON_DELETE
    )
    if not template_changed and not in_progress:
        return []
    ds = ds or DaemonSetView.from_object(new, namespace=namespace)
    _, guard = guard_policy_for(matching_policies(policies, ds, facts))
    if guard.waves is None:
        return []
    edit.set(["metadata", "annotations"], ORIGINAL_STRATEGY, encode_strategy(as_mapping(strategy)))
    edit.set(["spec"], "updateStrategy", dict(ON_DELETE_STRATEGY))
    if template_changed:
        return [
            f"dsguard set spec.updateStrategy to OnDelete: the rollout guard rolls this change out in "
            f"waves (canary first); your {_strategy_type(strategy)} strategy is kept in {ORIGINAL_STRATEGY} "
            "and restored when the rollout completes. `dsguard status` shows the waves"
        ]
    return [
        f"dsguard kept spec.updateStrategy OnDelete: DaemonSet {ds.ref} is being rolled out in waves by "
        f"the rollout guard; the strategy applied ({_strategy_type(strategy)}) is kept in "
        f"{ORIGINAL_STRATEGY} and restored when the rollout completes"
    ]
