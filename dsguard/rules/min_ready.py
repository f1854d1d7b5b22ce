"""A floor under spec.minReadySeconds (the policy's rollout.minReadySeconds).

The DaemonSet controller counts a new pod available, and replaces the next one, as soon as it has
been Ready for minReadySeconds (default 0). An agent that is Ready for a few seconds and then
crashes is counted available and the rollout moves on; a floor makes the controller wait long
enough for such a crash to show (docs/policy.md, what it buys). Clamp raises a lower value to the
floor; Deny denies it.
"""

from __future__ import annotations

from dsguard import daemonset_shape as shape
from dsguard.policy import OnExceed, Policy
from dsguard.rules.context import ROLLOUT, Finding, ObjectEdit, RuleContext

RULE = "rollout"
JUDGES = ROLLOUT
PATH = shape.MIN_READY_SECONDS
READS: tuple[str, ...] = (PATH,)


def governs(policy: Policy) -> bool:
    return policy.rollout is not None and policy.rollout.min_ready_seconds is not None


def _floor(policy: Policy, ctx: RuleContext) -> int | None:
    floor = policy.rollout.min_ready_seconds if policy.rollout is not None else None
    if floor is None or ctx.ds.min_ready_seconds >= floor:
        return None
    return floor


def check(policy: Policy, ctx: RuleContext) -> list[Finding]:
    floor = _floor(policy, ctx)
    if floor is None:
        return []
    msg = (
        f"{PATH}: {ctx.ds.min_ready_seconds} is under the floor {floor}: the DaemonSet controller would "
        f"count a new pod available before it has been Ready {floor}s; set it to at least {floor}"
    )
    if policy.rollout is not None and policy.rollout.on_exceed is OnExceed.CLAMP:
        msg += " (the mutating webhook should have raised it: check that it is installed)"
    return [Finding(RULE, msg, field=PATH)]


def mutate(policy: Policy, edit: ObjectEdit, ctx: RuleContext) -> list[str]:
    floor = _floor(policy, ctx)
    if floor is None or policy.rollout is None or policy.rollout.on_exceed is not OnExceed.CLAMP:
        return []
    edit.set(["spec"], "minReadySeconds", floor)
    return [f"dsguard raised {PATH} from {ctx.ds.min_ready_seconds} to the floor {floor}"]
