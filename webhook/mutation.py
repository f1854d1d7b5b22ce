"""What /mutate answers: the guard's holds and the policies' mutations, as one patch.

In order: the pause hold (a re-apply must not undo a guard pause), the policies' mutations
(tolerations added, caps clamped), then the wave takeover (which records the strategy as the
policies left it, so a clamped maxUnavailable is what the guard restores). Each step edits the
result of the one before; the JSON patches apply in sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules import engine
from dsguard.rules.context import ObjectEdit
from webhook.pause_hold import keep_paused
from webhook.wave_takeover import take_over


def hold_then_mutate(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
) -> engine.Evaluation:
    if old is None:  # CREATE: nothing to hold, no rollout to take over
        return engine.mutate(policies, obj, facts=facts, namespace=namespace)
    held = ObjectEdit(obj)
    notices = keep_paused(old, held)
    result = engine.mutate(policies, held.obj, facts=facts, namespace=namespace, old=old)
    taken = ObjectEdit(result.obj)
    notices += result.notices
    notices += take_over(policies, taken, old, facts=facts, namespace=namespace)
    patch = held.ops + result.patch + taken.ops
    if not patch:
        return result
    return replace(result, obj=taken.obj, patch=patch, notices=tuple(notices))
