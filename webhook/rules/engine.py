"""All matching policies applied to one DaemonSet: mutations first, then judgement of the result.

One pure function serves the mutating endpoint (judge=False: only the patch), the validating
endpoint (mutate=False: judge what the apiserver is about to store) and the offline CLI (both at
once). Node placements are memoised across calls (RuleContext), which doesn't change results.

UPDATE: a rule is enforced only when the part of the spec it judges changed, so a DaemonSet that
predates a policy is not blocked from metadata edits (labels, finalizers, deletion) nor from the
guard's pause (updateStrategy -> OnDelete). Template rules (tolerations, coverage, versions) need
spec.template to change; rollout caps need spec.template or spec.updateStrategy to change (a
template change is what starts a rollout). Unenforced violations come back as warnings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.policy import Enforcement, OnExceed, OnMissing, Policy
from webhook.rules import coverage, image_versions, pause_hold, rollout_caps, tolerations
from webhook.rules.context import Finding, ObjectEdit, RuleContext, Severity


@dataclass(frozen=True)
class PolicyFinding:
    policy: str
    enforcement: Enforcement
    rule: str
    message: str

    def __str__(self) -> str:
        return f'DaemonSetPolicy "{self.policy}" ({self.rule}): {self.message}'


@dataclass(frozen=True)
class Evaluation:
    ds: DaemonSetView
    obj: Mapping[str, Any]  # the object after mutations (the input itself when none)
    patch: list[dict[str, Any]] = field(default_factory=list)  # RFC 6902, input -> obj
    policies: tuple[str, ...] = ()  # names of the matching policies
    denials: tuple[PolicyFinding, ...] = ()
    warnings: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()  # what the mutations did
    audits: tuple[PolicyFinding, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.denials

    def denial_message(self) -> str:
        head = f"dsguard: DaemonSet {self.ds.ref} violates {len(self.denials)} policy rule(s):"
        return "\n".join([head, *(f"- {d}" for d in self.denials)])


def matching_policies(policies: Iterable[Policy], ds: DaemonSetView, facts: ClusterFacts) -> list[Policy]:
    ns_labels = facts.namespace_labels(ds.namespace)
    return [
        p
        for p in policies
        if p.match.matches(namespace=ds.namespace, namespace_labels=ns_labels, labels=ds.labels)
    ]


def _spec_part(obj: Mapping[str, Any] | None, key: str) -> object:
    spec = obj.get("spec") if obj is not None else None
    return spec.get(key) if isinstance(spec, Mapping) else None


def _may_mutate(p: Policy) -> bool:
    if p.enforcement is Enforcement.AUDIT:
        return False  # Audit records only; it never changes an object
    adds = (
        p.tolerations is not None
        and p.tolerations.on_missing is OnMissing.ADD
        and bool(p.tolerations.required)
    )
    clamps = p.rollout is not None and p.rollout.on_exceed is OnExceed.CLAMP
    return adds or clamps


def evaluate(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
    mutate: bool = True,
    judge: bool = True,
) -> Evaluation:
    """judge=False skips the judgement (no denials, warnings or audits): for the mutating
    endpoint, which never denies and leaves judging the final object to /validate."""
    held: ObjectEdit | None = None
    hold_notices: list[str] = []
    if mutate and old is not None:
        held = ObjectEdit(obj)
        hold_notices = pause_hold.keep_paused(old, held)
        if hold_notices:
            obj = held.obj  # the policies see (and patch on top of) the held object
        else:
            held = None
    ds = DaemonSetView.from_object(obj, namespace=namespace)
    matched = matching_policies(policies, ds, facts)
    if not matched:
        if held is not None:
            return Evaluation(ds=ds, obj=obj, patch=held.ops, notices=tuple(hold_notices))
        return Evaluation(ds=ds, obj=obj)
    template_changed = old is None or _spec_part(old, "template") != _spec_part(obj, "template")
    strategy_changed = old is None or _spec_part(old, "updateStrategy") != _spec_part(obj, "updateStrategy")
    caps_apply = template_changed or strategy_changed

    final: Mapping[str, Any] = obj
    patch: list[dict[str, Any]] = list(held.ops) if held is not None else []
    notices: list[str] = list(hold_notices)
    mutators = [p for p in matched if _may_mutate(p)] if mutate else []
    if mutators:
        # Copies only the containers it changes, and records the patch as it goes.
        edit = held if held is not None else ObjectEdit(obj)
        work = ds
        for p in mutators:
            if p.tolerations is not None and template_changed and p.tolerations.on_missing is OnMissing.ADD:
                added = tolerations.add_missing(p.tolerations, edit, work)
                if added:
                    notices += added
                    work = DaemonSetView.from_object(edit.obj, namespace=ds.namespace)
        ctx = RuleContext(work, facts)
        for p in mutators:
            if p.rollout is not None and caps_apply:
                clamped = rollout_caps.clamp(p.rollout, edit, ctx)
                if clamped:
                    notices += clamped
                    ctx = RuleContext(DaemonSetView.from_object(edit.obj, namespace=ds.namespace), facts)
        if notices:
            patch = edit.ops
            final = edit.obj
            ds = ctx.ds

    if not judge:
        return Evaluation(
            ds=ds, obj=final, patch=patch, policies=tuple(p.name for p in matched), notices=tuple(notices)
        )
    ctx = RuleContext(ds, facts)
    denials: list[PolicyFinding] = []
    warnings: list[str] = []
    audits: list[PolicyFinding] = []
    for p in matched:
        enforced: list[Finding] = []
        unenforced: list[Finding] = []
        (enforced if template_changed else unenforced).extend(_template_findings(p, ctx))
        if p.rollout is not None:
            (enforced if caps_apply else unenforced).extend(rollout_caps.check(p.rollout, ctx))
        for f in enforced:
            pf = PolicyFinding(p.name, p.enforcement, f.rule, f.message)
            if p.enforcement is Enforcement.AUDIT:
                audits.append(pf)
            elif f.severity is Severity.WARNING or p.enforcement is Enforcement.WARN:
                warnings.append(str(pf))
            elif pf not in denials:
                denials.append(pf)
        for f in unenforced:
            pf = PolicyFinding(p.name, p.enforcement, f.rule, f.message)
            if p.enforcement is Enforcement.AUDIT:
                audits.append(pf)
            else:
                warnings.append(f"{pf} (not enforced: unchanged by this update)")
    return Evaluation(
        ds=ds,
        obj=final,
        patch=patch,
        policies=tuple(p.name for p in matched),
        denials=tuple(denials),
        warnings=tuple(dict.fromkeys(warnings)),
        notices=tuple(notices),
        audits=tuple(audits),
    )


def _template_findings(p: Policy, ctx: RuleContext) -> list[Finding]:
    out: list[Finding] = []
    if p.tolerations is not None:
        out += tolerations.check(p.tolerations, ctx.ds)
        out += coverage.check(p.tolerations, ctx)
    if p.versions is not None:
        out += image_versions.check(p.versions, ctx)
    return out


def findings_by_policy(
    policies: Sequence[Policy], obj: Mapping[str, Any], *, facts: ClusterFacts
) -> list[tuple[Policy, list[Finding]]]:
    """What every matching policy finds wrong with a DaemonSet as it stands, whatever the policy's
    enforcement and whatever changed: the background audit's and `dsguard status`'s view.

    No mutations are applied: a toleration an Add policy would insert on the next apply is still
    missing from the running pods, so it is reported."""
    ds = DaemonSetView.from_object(obj)
    matched = matching_policies(policies, ds, facts)
    if not matched:
        return []
    ctx = RuleContext(ds, facts)
    out: list[tuple[Policy, list[Finding]]] = []
    for p in matched:
        found = _template_findings(p, ctx)
        if p.rollout is not None:
            found += rollout_caps.check(p.rollout, ctx)
        out.append((p, list(dict.fromkeys(found))))
    return out
