"""Required tolerations: every required toleration must be covered by one of the pod template's."""

from __future__ import annotations

from collections.abc import Sequence

from dsguard import daemonset_shape as shape
from dsguard.daemonset import TOLERATIONS_PATH, DaemonSetView
from dsguard.policy import OnMissing, Policy
from dsguard.rules.context import TEMPLATE, Finding, ObjectEdit, RuleContext
from dsguard.scheduling import Toleration

RULE = "tolerations"
JUDGES = TEMPLATE
READS: tuple[str, ...] = (shape.TOLERATIONS,)
_POD_SPEC = ("spec", "template", "spec")


def governs(policy: Policy) -> bool:
    return policy.tolerations is not None and bool(policy.tolerations.required)


def present_tolerations(ds: DaemonSetView) -> list[Toleration]:
    raw = ds.pod_spec.get("tolerations")
    if not isinstance(raw, list):
        return []
    return [Toleration.from_dict(t) for t in raw if isinstance(t, dict)]


def missing(required: Sequence[Toleration], present: Sequence[Toleration]) -> list[Toleration]:
    return [r for r in required if not any(t.covers(r) for t in present)]


def check(policy: Policy, ctx: RuleContext) -> list[Finding]:
    section = policy.tolerations
    if section is None:
        return []
    absent = missing(section.required, present_tolerations(ctx.ds))
    if not absent:
        return []
    listed = "; ".join(f"{{{_yaml_inline(t)}}}" for t in absent)
    if section.on_missing is OnMissing.ADD:
        fix = (
            "the mutating webhook should have added them: "
            "check that dsguard's MutatingWebhookConfiguration is installed"
        )
    else:
        fix = f"add them to {TOLERATIONS_PATH}, or set the policy's tolerations.onMissing: Add"
    return [
        Finding(
            RULE,
            f"{TOLERATIONS_PATH}: missing required toleration(s) {listed}; {fix}",
            field=TOLERATIONS_PATH,
        )
    ]


def mutate(policy: Policy, edit: ObjectEdit, ctx: RuleContext) -> list[str]:
    """onMissing: Add appends the missing required tolerations to the edited pod template;
    returns notices. ctx.ds is the view of edit.obj as it stands."""
    section = policy.tolerations
    if section is None or section.on_missing is not OnMissing.ADD:
        return []
    absent = missing(section.required, present_tolerations(ctx.ds))
    if not absent:
        return []
    edit.append(_POD_SPEC, "tolerations", [t.to_dict() for t in absent])
    return [
        f"dsguard added toleration(s) to {TOLERATIONS_PATH}: " + "; ".join(_yaml_inline(t) for t in absent)
    ]


def _yaml_inline(t: Toleration) -> str:
    return ", ".join(f"{k}: {v}" for k, v in t.to_dict().items())
