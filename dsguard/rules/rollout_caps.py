"""Caps on rollingUpdate.maxUnavailable / maxSurge, resolved against the targeted node count.

Percentages round up, as the DaemonSet controller's unavailableCount/surgeCount do
(pkg/controller/daemon/update.go). Clamping must leave a spec that apps/v1 validation accepts:
exactly one of maxUnavailable and maxSurge non-zero (ValidateRollingUpdateDaemonSet).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsguard import daemonset_shape as shape
from dsguard.daemonset import ROLLING_UPDATE, ROLLING_UPDATE_PATH
from dsguard.intstr import IntOrPercent, is_zero, number_as_written, scaled_value
from dsguard.policy import OnExceed, Policy, RolloutPolicy
from dsguard.rules.context import ROLLOUT, Finding, ObjectEdit, RuleContext

RULE = "rollout"
JUDGES = ROLLOUT
READS: tuple[str, ...] = (shape.UPDATE_STRATEGY, *shape.PLACEMENT)  # the caps scale with the targeted nodes
_ROLLING_UPDATE = ("spec", "updateStrategy", "rollingUpdate")
_MEANING = {"maxUnavailable": "unavailable", "maxSurge": "surged"}


@dataclass(frozen=True)
class _Excess:
    field: str
    value: IntOrPercent
    cap: IntOrPercent
    resolved_value: int
    resolved_cap: int


def governs(policy: Policy) -> bool:
    r = policy.rollout
    return r is not None and (r.max_unavailable is not None or r.max_surge is not None)


def show(value: IntOrPercent) -> str:
    """As written in YAML: 3 or "10%"."""
    return f'"{value}"' if isinstance(value, str) else str(value)


def _excesses(policy: RolloutPolicy, ctx: RuleContext) -> list[_Excess]:
    ds = ctx.ds
    if ds.strategy_type != ROLLING_UPDATE:
        return []  # OnDelete (also how the guard pauses) replaces pods only when someone deletes them
    total = len(ctx.targeted)
    out = []
    for field, value, cap in (
        ("maxUnavailable", ds.max_unavailable, policy.max_unavailable),
        ("maxSurge", ds.max_surge, policy.max_surge),
    ):
        if cap is None:
            continue
        v, c = _resolve(value, cap, total)
        if v > c:
            out.append(_Excess(field, value, cap, v, c))
    return out


def _resolve(value: IntOrPercent, cap: IntOrPercent, total: int) -> tuple[int, int]:
    """Both as node counts. With no targeted node (none known offline, or a DaemonSet whose nodes
    don't exist yet) a percentage has no scale: the same kinds compare as written, and in a mixed
    pair a non-zero percentage counts as one node, what it rounds up to on the smallest cluster."""
    if total > 0:
        return scaled_value(value, total, round_up=True), scaled_value(cap, total, round_up=True)
    if isinstance(value, str) == isinstance(cap, str):
        return number_as_written(value), number_as_written(cap)
    return scaled_value(value, 1, round_up=True), scaled_value(cap, 1, round_up=True)


def _clamped(ctx: RuleContext, excesses: list[_Excess]) -> tuple[IntOrPercent, IntOrPercent]:
    values = {"maxUnavailable": ctx.ds.max_unavailable, "maxSurge": ctx.ds.max_surge}
    for e in excesses:
        values[e.field] = e.cap
    return values["maxUnavailable"], values["maxSurge"]


def check(policy: Policy, ctx: RuleContext) -> list[Finding]:
    section = policy.rollout
    if section is None:
        return []
    excesses = _excesses(section, ctx)
    total = len(ctx.targeted)
    findings = []
    for e in excesses:
        if total:
            msg = (
                f"{ROLLING_UPDATE_PATH}.{e.field}: {show(e.value)} lets {e.resolved_value} of {total} "
                f"targeted nodes be {_MEANING[e.field]} at once, over the cap {show(e.cap)} "
                f"({e.resolved_cap} of {total}); set it to at most {e.resolved_cap}"
            )
        else:
            msg = (
                f"{ROLLING_UPDATE_PATH}.{e.field}: {show(e.value)} is over the cap {show(e.cap)} (no "
                f"targeted nodes known, so compared as written); set it to at most {show(e.cap)}"
            )
        if section.on_exceed is OnExceed.CLAMP:
            unavailable, surge = _clamped(ctx, excesses)
            if is_zero(unavailable) and is_zero(surge):
                msg += (
                    " (Clamp cannot do it: maxUnavailable and maxSurge would both be 0, which apps/v1 "
                    "rejects; make the other one non-zero)"
                )
            else:
                msg += " (the mutating webhook should have clamped it: check that it is installed)"
        findings.append(Finding(RULE, msg, field=f"{ROLLING_UPDATE_PATH}.{e.field}"))
    return findings


def mutate(policy: Policy, edit: ObjectEdit, ctx: RuleContext) -> list[str]:
    """onExceed: Clamp lowers values over their cap to the cap itself (as written, so a percent
    cap keeps scaling); returns notices. ctx.ds is the view of edit.obj as it stands."""
    section = policy.rollout
    if section is None or section.on_exceed is not OnExceed.CLAMP:
        return []
    excesses = _excesses(section, ctx)
    if not excesses:
        return []
    unavailable, surge = _clamped(ctx, excesses)
    if is_zero(unavailable) and is_zero(surge):
        return []  # invalid for apps/v1; check() denies with the explanation
    notices = []
    for e in excesses:
        edit.set(_ROLLING_UPDATE, e.field, e.cap)
        notices.append(
            f"dsguard clamped {ROLLING_UPDATE_PATH}.{e.field} from {show(e.value)} to the cap {show(e.cap)}"
        )
    return notices
