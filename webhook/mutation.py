"""What /mutate answers: the guard's holds and the policies' mutations, as one patch.

In order: the pause hold (a re-apply must not undo a guard pause), the policies' mutations
(tolerations added, caps clamped), then the wave takeover (which records the strategy as the
policies left it, so a clamped maxUnavailable is what the guard restores). Each step edits the
result of the one before; the JSON patches apply in sequence.

A step whose fields can't be read (dsguard.daemonset_shape) is skipped, leaving that part of the
object untouched; the fields are listed in `unreadable` for the warning, and the apiserver's own
validation names the problem to the user. The other steps still run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dsguard import daemonset_shape as shape
from dsguard.daemonset_shape import ShapeError, blocks, daemonset_shape_errors
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules import engine
from dsguard.rules.context import ObjectEdit
from webhook.pause_hold import keep_paused
from webhook.wave_takeover import take_over

# What keep_paused and take_over read of the new object and of the stored one.
HOLD_READS = (shape.ANNOTATIONS, shape.UPDATE_STRATEGY)
TAKEOVER_READS = (*HOLD_READS, *engine.MATCH_READS)


def _old(errors: Sequence[ShapeError]) -> list[ShapeError]:
    return [ShapeError(f"oldObject.{e.path}", e.problem, e.fix) for e in errors]


def hold_then_mutate(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
    errors: Sequence[ShapeError] | None = None,
    old_errors: Sequence[ShapeError] | None = None,
) -> engine.Evaluation:
    """errors, old_errors: daemonset_shape_errors of obj and old, when the caller has them."""
    errors = daemonset_shape_errors(obj) if errors is None else tuple(errors)
    if old is None:  # CREATE: nothing to hold, no rollout to take over
        return engine.mutate(policies, obj, facts=facts, namespace=namespace, shape_errors=errors)
    old_errors = daemonset_shape_errors(old) if old_errors is None else tuple(old_errors)
    unreadable: dict[ShapeError, None] = {}
    held = ObjectEdit(obj)
    notices: list[str] = []
    hold_blocked = blocks(errors, HOLD_READS) + _old(blocks(old_errors, HOLD_READS))
    if hold_blocked:
        unreadable.update(dict.fromkeys(hold_blocked))
    else:
        notices += keep_paused(old, held)
    # keep_paused only ever writes the stored (readable) strategy: obj's shape errors still hold.
    result = engine.mutate(policies, held.obj, facts=facts, namespace=namespace, old=old, shape_errors=errors)
    unreadable.update(dict.fromkeys(result.unreadable))
    taken = ObjectEdit(result.obj)
    notices += result.notices
    takeover_blocked = blocks(errors, TAKEOVER_READS) + _old(blocks(old_errors, HOLD_READS))
    if takeover_blocked:
        unreadable.update(dict.fromkeys(takeover_blocked))
    else:
        # result.ds is the view of result.obj (the policies' edits never touch the labels).
        notices += take_over(policies, taken, old, facts=facts, namespace=namespace, ds=result.ds)
    patch = held.ops + result.patch + taken.ops
    if not patch:
        return replace(result, unreadable=tuple(unreadable))
    return replace(result, obj=taken.obj, patch=patch, notices=tuple(notices), unreadable=tuple(unreadable))
