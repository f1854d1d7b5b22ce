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

Fields the rules can't read (dsguard.daemonset_shape: a wrong type, an unparseable percentage)
keep only the rules that read them from running: mutate leaves those parts untouched and lists
the fields in `unreadable`; judge reports a policy's rule that can't run as a finding naming the
field and the fix (denied under Enforce), and a bad field no matching policy reads as a warning
(apps/v1 validation is the authority there). With metadata.labels unreadable no policy can be
matched, so nothing runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from dataclasses import field as dataclass_field
from typing import Any, Protocol

from dsguard import daemonset_shape as shape
from dsguard.daemonset import DaemonSetView
from dsguard.daemonset_shape import ShapeError, blocks, daemonset_shape_errors
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
    READS: tuple[str, ...]  # the DaemonSet fields it reads (dsguard.daemonset_shape paths)

    def governs(self, policy: Policy) -> bool: ...

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
    unreadable: tuple[ShapeError, ...] = ()  # fields that kept a matching policy's rule from running

    @property
    def allowed(self) -> bool:
        return not self.denials

    def denial_message(self) -> str:
        head = f"dsguard: DaemonSet {self.ds.ref} violates {len(self.denials)} policy rule(s):"
        return "\n".join([head, *(f"- {d}" for d in self.denials)])


# What matching_policies reads of the DaemonSet (the namespace comes from the request).
MATCH_READS = (shape.LABELS,)


def _shape(obj: Mapping[str, Any], errors: Sequence[ShapeError] | None) -> tuple[ShapeError, ...]:
    return daemonset_shape_errors(obj) if errors is None else tuple(errors)


def _blocked(rule: Rule, errors: Sequence[ShapeError]) -> list[ShapeError]:
    return blocks(errors, rule.READS) if errors else []


def unjudged(error: ShapeError) -> str:
    return f"cannot be judged: {error}"


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
    shape_errors: Sequence[ShapeError] | None = None,
) -> Evaluation:
    """What the matching policies change in `obj` (tolerations added, caps clamped), as a patch;
    never denies. Only `ds`, `obj`, `patch`, `policies`, `notices` and `unreadable` are set.
    shape_errors: daemonset_shape_errors(obj) when the caller has them already."""
    errors = _shape(obj, shape_errors)
    ds = DaemonSetView.from_object(obj, namespace=namespace)
    if errors and (unmatchable := blocks(errors, MATCH_READS)):
        return Evaluation(ds=ds, obj=obj, unreadable=tuple(unmatchable))
    matched = matching_policies(policies, ds, facts)
    names = tuple(p.name for p in matched)
    mutators = [p for p in matched if _may_mutate(p)]
    if not mutators:
        return Evaluation(ds=ds, obj=obj, policies=names)
    unreadable: dict[ShapeError, None] = {}
    changed = _Changed.between(old, obj)
    # Copies only the containers it changes, and records the patch as it goes.
    edit = ObjectEdit(obj)
    ctx = RuleContext(ds, facts)
    notices: list[str] = []
    for rule in MUTATING_RULES:
        if not changed.covers(rule.JUDGES):
            continue
        if blocked := _blocked(rule, errors):
            if any(rule.governs(p) for p in mutators):
                unreadable.update(dict.fromkeys(blocked))
            continue  # left untouched: the apiserver's validation names the problem
        for p in mutators:
            done = rule.mutate(p, edit, ctx)
            if done:
                notices += done
                ctx = RuleContext(DaemonSetView.from_object(edit.obj, namespace=ds.namespace), facts)
    if not notices:
        return Evaluation(ds=ds, obj=obj, policies=names, unreadable=tuple(unreadable))
    return Evaluation(
        ds=ctx.ds,
        obj=edit.obj,
        patch=edit.ops,
        policies=names,
        notices=tuple(notices),
        unreadable=tuple(unreadable),
    )


def judge(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
    shape_errors: Sequence[ShapeError] | None = None,
) -> Evaluation:
    """The verdict on `obj` as it will be stored: denials, warnings and audit findings by each
    matching policy's enforcement. Never changes the object."""
    errors = _shape(obj, shape_errors)
    ds = DaemonSetView.from_object(obj, namespace=namespace)
    if errors and (unmatchable := blocks(errors, MATCH_READS)) and policies:
        # Which policies govern it is unknown: fail closed ("*": any of them), naming the field.
        denial = PolicyFinding(
            "*", Enforcement.ENFORCE, "match", unjudged(unmatchable[0]), field=unmatchable[0].path
        )
        return Evaluation(ds=ds, obj=obj, denials=(denial,), unreadable=tuple(unmatchable))
    matched = matching_policies(policies, ds, facts)
    if not matched:
        return Evaluation(ds=ds, obj=obj)
    changed = _Changed.between(old, obj)
    ctx = RuleContext(ds, facts)
    denials: list[PolicyFinding] = []
    warnings: list[str] = []
    warned: list[PolicyFinding] = []
    audits: list[PolicyFinding] = []
    unreadable: dict[ShapeError, None] = {}
    for p in matched:
        enforced: list[Finding] = []
        unenforced: list[Finding] = []
        for rule in RULES:
            found = _check_readable(rule, p, ctx, errors, unreadable)
            (enforced if changed.covers(rule.JUDGES) else unenforced).extend(found)
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
    for e in errors:
        if e not in unreadable:  # no matching policy reads it: apps/v1 validation is the authority
            warnings.append(f"{e} (apps/v1 validation rejects it; dsguard's policies don't read it)")
    return Evaluation(
        ds=ds,
        obj=obj,
        policies=tuple(p.name for p in matched),
        denials=tuple(denials),
        warnings=tuple(dict.fromkeys(warnings)),
        audits=tuple(audits),
        warned=tuple(dict.fromkeys(warned)),
        unreadable=tuple(unreadable),
    )


def _check_readable(
    rule: Rule,
    policy: Policy,
    ctx: RuleContext,
    errors: Sequence[ShapeError],
    unreadable: dict[ShapeError, None],
) -> list[Finding]:
    """rule.check, or, when a field it reads is unreadable and the policy has that rule, one
    finding per such field (rules not reading it still run)."""
    blocked = _blocked(rule, errors)
    if not blocked:
        return rule.check(policy, ctx)
    if not rule.governs(policy):
        return []
    unreadable.update(dict.fromkeys(blocked))
    return [Finding(rule.RULE, unjudged(e), field=e.path) for e in blocked]


def evaluate(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    *,
    facts: ClusterFacts,
    namespace: str = "",
    old: Mapping[str, Any] | None = None,
    shape_errors: Sequence[ShapeError] | None = None,
) -> Evaluation:
    """mutate, then judge the result: what the two webhooks together decide (`dsguard check`)."""
    mutated = mutate(policies, obj, facts=facts, namespace=namespace, old=old, shape_errors=shape_errors)
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
    errors = daemonset_shape_errors(obj)
    ds = DaemonSetView.from_object(obj)
    if errors and blocks(errors, MATCH_READS):
        return []  # stored objects passed apps/v1 validation: not reached from the apiserver
    matched = matching_policies(policies, ds, facts)
    if not matched:
        return []
    ctx = RuleContext(ds, facts, placements)
    out: list[tuple[Policy, list[Finding]]] = []
    unreadable: dict[ShapeError, None] = {}
    for p in matched:
        found = [f for rule in RULES for f in _check_readable(rule, p, ctx, errors, unreadable)]
        out.append((p, list(dict.fromkeys(found))))
    return out
