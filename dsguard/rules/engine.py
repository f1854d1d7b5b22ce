"""All matching policies applied to one DaemonSet: `mutate` (the patch), then `judge` (the verdict
on the result). The mutating endpoint calls mutate, the validating endpoint judge (what the
apiserver is about to store), `dsguard check` both (`evaluate`), the audit and `dsguard status`
`findings_by_policy`. Node placements are memoised across calls (RuleContext), which doesn't
change results.

Every rule is a module with the same signature (`Rule`): `check(policy, ctx)` and, for the rules
that can fix what they find, `mutate(policy, edit, ctx)`; each reads its own section of the
policy and returns nothing when the policy has none.

UPDATE: a rule is enforced only when the part of the spec it judges changed, so a DaemonSet that
predates a policy is not blocked from metadata edits (labels, finalizers, deletion) nor from the
guard's pause (updateStrategy -> OnDelete). Template rules (tolerations, coverage, versions) need
spec.template to change; rollout caps and the minReadySeconds floor need spec.template,
spec.updateStrategy or spec.minReadySeconds to change (a template change is what starts a
rollout). Unenforced violations come back as warnings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from dataclasses import field as dataclass_field
from typing import Any, Protocol

from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.policy import Enforcement, OnExceed, OnMissing, Policy
from dsguard.rules import coverage, image_versions, min_ready, rollout_caps, tolerations
from dsguard.rules.context import (
    TEMPLATE,
    Finding,
    NodeList,
    ObjectEdit,
    PlacementCache,
    RuleContext,
    Severity,
    SpecPart,
)


class Rule(Protocol):
    RULE: str
    JUDGES: SpecPart

    def check(self, policy: Policy, ctx: RuleContext) -> list[Finding]: ...


class MutatingRule(Rule, Protocol):
    def mutate(self, policy: Policy, edit: ObjectEdit, ctx: RuleContext) -> list[str]: ...


# In the order their findings are reported and their mutations applied.
RULES: tuple[Rule, ...] = (tolerations, coverage, image_versions, rollout_caps, min_ready)
MUTATING_RULES: tuple[MutatingRule, ...] = (tolerations, rollout_caps, min_ready)


@dataclass(frozen=True)
class PolicyFinding:
    policy: str
    enforcement: Enforcement
    rule: str
    message: str
    field: str = ""  # the DaemonSet field at fault (Finding.field)
    nodes: NodeList | None = dataclass_field(default=None, compare=False)  # Finding.nodes

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
    warned: tuple[PolicyFinding, ...] = ()  # the findings among `warnings`, as data (CI reports)

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
    clamps = p.rollout is not None and p.rollout.on_exceed is OnExceed.CLAMP  # caps, minReadySeconds
    return adds or clamps


@dataclass(frozen=True)
class _Changed:
    """Which spec parts an UPDATE changed (everything, for a CREATE)."""

    template: bool
    rollout: bool

    @classmethod
    def between(cls, old: Mapping[str, Any] | None, obj: Mapping[str, Any]) -> _Changed:
        template = old is None or _spec_part(old, "template") != _spec_part(obj, "template")
        pacing = old is None or any(
            _spec_part(old, key) != _spec_part(obj, key) for key in ("updateStrategy", "minReadySeconds")
        )
        return cls(template=template, rollout=template or pacing)

    def covers(self, part: SpecPart) -> bool:
        return self.template if part is TEMPLATE else self.rollout


def mutate(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
) -> Evaluation:
    """What the matching policies change in `obj` (tolerations added, caps clamped), as a patch;
    never denies. Only `ds`, `obj`, `patch`, `policies` and `notices` are set."""
    ds = DaemonSetView.from_object(obj, namespace=namespace)
    matched = matching_policies(policies, ds, facts)
    names = tuple(p.name for p in matched)
    mutators = [p for p in matched if _may_mutate(p)]
    if not mutators:
        return Evaluation(ds=ds, obj=obj, policies=names)
    changed = _Changed.between(old, obj)
    # Copies only the containers it changes, and records the patch as it goes.
    edit = ObjectEdit(obj)
    ctx = RuleContext(ds, facts)
    notices: list[str] = []
    for rule in MUTATING_RULES:
        if not changed.covers(rule.JUDGES):
            continue
        for p in mutators:
            done = rule.mutate(p, edit, ctx)
            if done:
                notices += done
                ctx = RuleContext(DaemonSetView.from_object(edit.obj, namespace=ds.namespace), facts)
    if not notices:
        return Evaluation(ds=ds, obj=obj, policies=names)
    return Evaluation(ds=ctx.ds, obj=edit.obj, patch=edit.ops, policies=names, notices=tuple(notices))


def judge(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
) -> Evaluation:
    """The verdict on `obj` as it will be stored: denials, warnings and audit findings by each
    matching policy's enforcement. Never changes the object."""
    ds = DaemonSetView.from_object(obj, namespace=namespace)
    matched = matching_policies(policies, ds, facts)
    if not matched:
        return Evaluation(ds=ds, obj=obj)
    changed = _Changed.between(old, obj)
    ctx = RuleContext(ds, facts)
    denials: list[PolicyFinding] = []
    warnings: list[str] = []
    warned: list[PolicyFinding] = []
    audits: list[PolicyFinding] = []
    for p in matched:
        enforced: list[Finding] = []
        unenforced: list[Finding] = []
        for rule in RULES:
            (enforced if changed.covers(rule.JUDGES) else unenforced).extend(rule.check(p, ctx))
        for f in enforced:
            pf = PolicyFinding(p.name, p.enforcement, f.rule, f.message, f.field, f.nodes)
            if p.enforcement is Enforcement.AUDIT:
                audits.append(pf)
            elif f.severity is Severity.WARNING or p.enforcement is Enforcement.WARN:
                warnings.append(str(pf))
                warned.append(pf)
            elif pf not in denials:
                denials.append(pf)
        for f in unenforced:
            pf = PolicyFinding(p.name, p.enforcement, f.rule, f.message, f.field, f.nodes)
            if p.enforcement is Enforcement.AUDIT:
                audits.append(pf)
            else:
                pf = replace(pf, message=f"{pf.message} (not enforced: unchanged by this update)")
                warnings.append(str(pf))
                warned.append(pf)
    return Evaluation(
        ds=ds,
        obj=obj,
        policies=tuple(p.name for p in matched),
        denials=tuple(denials),
        warnings=tuple(dict.fromkeys(warnings)),
        audits=tuple(audits),
        warned=tuple(dict.fromkeys(warned)),
    )


def evaluate(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
) -> Evaluation:
    """mutate, then judge the result: what the two webhooks together decide (`dsguard check`)."""
    mutated = mutate(policies, obj, facts=facts, namespace=namespace, old=old)
    verdict = judge(policies, mutated.obj, facts=facts, namespace=namespace, old=old)
    return replace(verdict, patch=mutated.patch, notices=mutated.notices)


def findings_by_policy(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    placements: PlacementCache | None = None,
) -> list[tuple[Policy, list[Finding]]]:
    """What every matching policy finds wrong with a DaemonSet as it stands, whatever the policy's
    enforcement and whatever changed: the background audit's and `dsguard status`'s view.
    placements: the node walks' memo (default: the process-wide one).

    No mutations are applied: a toleration an Add policy would insert on the next apply is still
    missing from the running pods, so it is reported."""
    ds = DaemonSetView.from_object(obj)
    matched = matching_policies(policies, ds, facts)
    if not matched:
        return []
    ctx = RuleContext(ds, facts, placements)
    out: list[tuple[Policy, list[Finding]]] = []
    for p in matched:
        found = [f for rule in RULES for f in rule.check(p, ctx)]
        out.append((p, list(dict.fromkeys(found))))
    return out
