"""Background audit, pure part: what every DaemonSet already in the cluster violates, per policy,
and the DaemonSetPolicy `status` and Events that report it.

Admission only judges a DaemonSet when it changes. The cluster changes under DaemonSets that
don't: a new tainted node pool, a node upgraded to a kubelet an agent doesn't support, a new or
stricter policy. The audit judges every governed DaemonSet as it stands (all rules, whatever
the policy's enforcement; see engine.findings_by_policy) whenever policies, nodes, namespaces or
DaemonSet specs change; `IncrementalAudit` re-judges only the DaemonSets a change can affect and
gives what `audit` would. No I/O here: guard/audit_loop.py watches, writes and records.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules.context import Finding, PlacementCache, Severity
from dsguard.rules.engine import findings_by_policy, matching_policies
from dsguard.scheduling import NodeInfo, PodPlacement
from dsguard.selectors import LabelSelector

# The status stays small whatever the cluster holds (etcd objects are capped at 1.5 MiB, and
# `kubectl get -o yaml` should stay readable): the count is exact, the list is not.
MAX_LISTED = 20
MAX_MESSAGE = 1024

READY = "Ready"
COMPLIANT = "Compliant"


@dataclass(frozen=True, order=True)
class Violation:
    namespace: str
    name: str
    policy: str
    rule: str
    message: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PolicyAudit:
    policy: str
    matched: tuple[str, ...]  # namespace/name of every DaemonSet the policy governs, sorted
    violations: tuple[Violation, ...]  # sorted by DaemonSet, then rule

    @property
    def violating(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.ref for v in self.violations))


def _ref(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


# Told every DaemonSet judged and what each matching policy found (policy reports read it).
OnJudged = Callable[[Mapping[str, Any], Sequence[tuple[Policy, Sequence[Finding]]]], None]


@dataclass(frozen=True)
class DaemonSetFindings:
    """What the audit found of one DaemonSet: the policies governing it and its violations of
    them (sorted). The per-DaemonSet output the status, the Events and PolicyReports read."""

    namespace: str
    name: str
    matched: tuple[str, ...]  # names of the policies governing it, in policy order
    violations: tuple[Violation, ...]


def judge_daemonset(
    policies: Sequence[Policy],
    obj: Mapping[str, Any],
    facts: ClusterFacts,
    *,
    on_judged: OnJudged | None = None,
    placements: PlacementCache | None = None,
) -> DaemonSetFindings:
    namespace, name = _ref(obj)
    matched: list[str] = []
    found: set[Violation] = set()
    judged = findings_by_policy(policies, obj, facts=facts, placements=placements)
    if on_judged is not None:
        on_judged(obj, judged)
    for policy, findings in judged:
        matched.append(policy.name)
        found.update(
            Violation(namespace, name, policy.name, f.rule, f.message)
            for f in findings
            if f.severity is Severity.VIOLATION
        )
    return DaemonSetFindings(namespace, name, tuple(matched), tuple(sorted(found)))


def collect(policies: Sequence[Policy], findings: Iterable[DaemonSetFindings]) -> dict[str, PolicyAudit]:
    """Per-DaemonSet findings -> every policy's audit (as `audit` builds it)."""
    matched: dict[str, list[str]] = {p.name: [] for p in policies}
    found: dict[str, list[Violation]] = {p.name: [] for p in policies}
    for f in findings:
        for policy in f.matched:
            matched[policy].append(f"{f.namespace}/{f.name}")
        for v in f.violations:
            found[v.policy].append(v)
    return {p: PolicyAudit(p, tuple(sorted(matched[p])), tuple(sorted(set(found[p])))) for p in matched}


def audit(
    policies: Sequence[Policy],
    daemonsets: Iterable[Mapping[str, Any]],
    facts: ClusterFacts,
    *,
    on_judged: OnJudged | None = None,
) -> dict[str, PolicyAudit]:
    """Every policy (governing DaemonSets or not) -> its audit, every DaemonSet judged. Warnings
    (e.g. an untagged image under unknownVersion: Warn) are not violations."""
    return collect(
        policies, (judge_daemonset(policies, obj, facts, on_judged=on_judged) for obj in daemonsets)
    )


# More changed nodes than this share of the cluster (a pool joining, a relist): judge everything.
_FULL_AUDIT_NODE_SHARE = 0.02
# The audit's own node walks (one per distinct placement, a (node, placement) pair per node, ~70
# bytes): up to 1,024 walks and 1.5 million pairs, ~100 MiB (300 placements at 5,000 nodes).
_WALKS = 1024
_WALKED_PAIRS = 1_500_000


@dataclass
class _Judged:
    obj: Mapping[str, Any]
    findings: DaemonSetFindings
    namespace_labels: Mapping[str, str]
    placement: PodPlacement | None = None  # built on the first node change that asks


class IncrementalAudit:
    """The audit of the same inputs as `audit`, re-judging only the DaemonSets a change can
    affect since the previous run; its results equal `audit`'s (a property test holds it to that).

    What each rule reads decides what a change can affect (dsguard/rules): a DaemonSet's
    findings depend on its own object, its namespace's labels, the policies matching it, and of
    the nodes only on those its pods target (caps count them, versions read their kubelets) and
    those a matching policy's coverage selector picks (coverage), or on the apiserver version
    when there are no nodes. So:

    * a DaemonSet added or changed: that DaemonSet; deleted: forgotten;
    * a policy added, changed or deleted: the DaemonSets it matched or matches now;
    * a namespace's labels: the DaemonSets in it;
    * a node added or deleted: the DaemonSets whose pods would run on it (NodeShouldRunDaemonPod)
      or whose coverage selector picks it; a node changed: those where its targeting changes, its
      kubelet changes under a versions rule while targeted, or a coverage selector's pick of it
      or the placement there changes (a label or taint no rule reads changes nothing);
    * the apiserver version, no nodes <-> some nodes, or more than 2% of the nodes at once:
      everything.

    A DaemonSet judged again reads its node walk (where its pods go on every node) and what the
    rules derive from it (coverage's picks, versions' kubelet groups) from the audit's own memo,
    which a node change patches for that node (PlacementCache.advance: a bisect and slices per
    distinct placement) instead of walking every node again; patch_walks=False walks again (the
    benchmark's baseline).

    Memory: one DaemonSetFindings per DaemonSet and its placement, and the walks, bounded
    (_WALKS, _WALKED_PAIRS: ~100 MiB; past that, the least recently used are walked again).
    """

    def __init__(self, *, patch_walks: bool = True) -> None:
        self.placements = PlacementCache(maxsize=_WALKS, max_placements=_WALKED_PAIRS)
        self.patch_walks = patch_walks
        self._policies: dict[str, Policy] = {}
        self._facts: ClusterFacts | None = None
        self._nodes: dict[str, NodeInfo] = {}
        self._judged: dict[tuple[str, str], _Judged] = {}
        self.rejudged = 0  # DaemonSets judged by the last run

    @property
    def findings(self) -> Mapping[tuple[str, str], DaemonSetFindings]:
        """(namespace, name) -> the last run's findings of every DaemonSet."""
        return {k: j.findings for k, j in self._judged.items()}

    def run(
        self,
        policies: Sequence[Policy],
        daemonsets: Mapping[tuple[str, str], Mapping[str, Any]],
        facts: ClusterFacts,
        *,
        full: bool = False,
        on_judged: OnJudged | None = None,
    ) -> dict[str, PolicyAudit]:
        """daemonsets: (namespace, name) -> the object (`default` for no namespace, as `_ref`).
        full: judge every DaemonSet again (a resync's safety net). on_judged: told of every
        DaemonSet judged again (only those: its readers keep results per DaemonSet)."""
        by_name = {p.name: p for p in policies}
        previous = self._facts
        nodes = self._nodes if previous is not None and previous.nodes is facts.nodes else None
        if nodes is None:
            nodes = {n.name: n for n in facts.nodes}
        full = (
            full
            or previous is None
            or previous.server_version != facts.server_version
            or bool(previous.nodes) != bool(facts.nodes)
        )
        dirty: set[tuple[str, str]] = set()
        for key in list(self._judged):
            if key not in daemonsets:
                del self._judged[key]
        if full:
            dirty.update(daemonsets)
        else:
            changed_policies = {
                name for name in by_name.keys() | self._policies.keys()
                if by_name.get(name) != self._policies.get(name)
            }  # fmt: skip
            changed_nodes = self._changed_nodes(nodes, facts)
            if len(changed_nodes) > max(1, _FULL_AUDIT_NODE_SHARE * len(facts.nodes)):
                dirty.update(daemonsets)
            elif self.patch_walks and previous is not None and previous.nodes is not facts.nodes:
                # Also with no change: an equal new node list must not drop the walks.
                self.placements.advance(previous.nodes, facts.nodes, changed_nodes)
            for key, obj in daemonsets.items():
                if key in dirty:
                    continue
                judged = self._judged.get(key)
                if (
                    judged is None
                    or judged.obj != obj
                    or judged.namespace_labels != facts.namespace_labels(key[0])
                    or self._policy_affects(changed_policies, by_name, judged, obj, facts)
                    or self._nodes_affect(changed_nodes, judged, by_name)
                ):
                    dirty.add(key)
        for key in dirty:
            obj = daemonsets[key]
            findings = judge_daemonset(policies, obj, facts, on_judged=on_judged, placements=self.placements)
            before = self._judged.get(key)
            placement = before.placement if before is not None and before.obj is obj else None
            self._judged[key] = _Judged(obj, findings, facts.namespace_labels(key[0]), placement)
        self.rejudged = len(dirty)
        self._policies = by_name
        self._facts = facts
        self._nodes = nodes
        return collect(policies, (j.findings for j in self._judged.values()))

    def _changed_nodes(
        self, nodes: Mapping[str, NodeInfo], facts: ClusterFacts
    ) -> list[tuple[NodeInfo | None, NodeInfo | None]]:
        """(old, new) of every node added, changed or deleted since the previous run."""
        assert self._facts is not None
        if self._facts.nodes is facts.nodes:
            return []
        old = self._nodes
        out: list[tuple[NodeInfo | None, NodeInfo | None]] = []
        for name, node in nodes.items():
            before = old.get(name)
            if before is not node and before != node:
                out.append((before, node))
        out.extend((node, None) for name, node in old.items() if name not in nodes)
        return out

    @staticmethod
    def _policy_affects(
        changed: set[str],
        by_name: Mapping[str, Policy],
        judged: _Judged,
        obj: Mapping[str, Any],
        facts: ClusterFacts,
    ) -> bool:
        if not changed:
            return False
        if any(name in changed for name in judged.findings.matched):
            return True
        candidates = [by_name[name] for name in changed if name in by_name]
        return bool(candidates) and bool(matching_policies(candidates, DaemonSetView.from_object(obj), facts))

    @staticmethod
    def _nodes_affect(
        changed: Sequence[tuple[NodeInfo | None, NodeInfo | None]],
        judged: _Judged,
        by_name: Mapping[str, Policy],
    ) -> bool:
        if not changed or not judged.findings.matched:
            return False
        if judged.placement is None:
            judged.placement = PodPlacement.from_pod_spec(DaemonSetView.from_object(judged.obj).pod_spec)
        selectors: list[LabelSelector] = []
        reads_kubelets = False
        for name in judged.findings.matched:
            policy = by_name.get(name)
            if policy is None:
                return True
            if policy.tolerations is not None and policy.tolerations.coverage is not None:
                selectors.append(policy.tolerations.coverage.node_selector)
            reads_kubelets = reads_kubelets or policy.versions is not None
        evaluate = judged.placement.evaluate
        for old, new in changed:
            if old is None or new is None:  # joined or left: counted if targeted or in scope
                node = old or new
                assert node is not None
                if evaluate(node).should_run or any(s.matches(node.labels) for s in selectors):
                    return True
                continue
            before, after = evaluate(old), evaluate(new)
            if before.should_run != after.should_run:  # caps count targeted nodes
                return True
            if before.should_run and reads_kubelets and old.kubelet_version != new.kubelet_version:
                return True  # versions read the targeted nodes' kubelets
            for s in selectors:  # coverage: the nodes in scope, and why a pod wouldn't run there
                in_before, in_after = s.matches(old.labels), s.matches(new.labels)
                if in_before != in_after or (in_before and before != after):
                    return True
        return False


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed_violations(result: PolicyAudit) -> list[dict[str, Any]]:
    """One entry per violating DaemonSet (rules and messages joined), the first MAX_LISTED."""
    by_ds: dict[tuple[str, str], list[Violation]] = {}
    for v in result.violations:
        by_ds.setdefault((v.namespace, v.name), []).append(v)
    return [
        {
            "namespace": ns,
            "name": name,
            "rules": sorted({v.rule for v in vs}),
            "message": _clip("; ".join(f"{v.rule}: {v.message}" for v in vs)),
        }
        for (ns, name), vs in list(by_ds.items())[:MAX_LISTED]
    ]


def _condition(
    type_: str, status: str, reason: str, message: str, previous: Mapping[str, Any], now: str, generation: int
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status does."""
    before = next(
        (c for c in previous.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == type_),
        None,
    )
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": _clip(message, 32768),
        "observedGeneration": generation,
        "lastTransitionTime": since or now,
    }


def policy_status(
    result: PolicyAudit | None,
    *,
    error: str | None,
    enforced: bool,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    """The DaemonSetPolicy status for one audit. `error`: why the latest spec was rejected;
    `enforced`: whether a (previous) valid version is still enforced; `previous`: the stored status."""
    if error is None:
        ready = _condition(
            READY, "True", "Valid", "the policy is valid and enforced", previous, now, generation
        )
    else:
        detail = "still enforcing its previous valid version" if enforced else "not enforced until fixed"
        ready = _condition(READY, "False", "InvalidSpec", f"{error} ({detail})", previous, now, generation)
    status: dict[str, Any] = {"observedGeneration": generation, "auditedAt": now}
    if result is None:
        compliant = _condition(
            COMPLIANT, "Unknown", "NotAudited", "the policy is not enforced, so it is not audited",
            previous, now, generation,
        )  # fmt: skip
        status.update(
            matchedDaemonSets=0, violationCount=0, violations=[], unlistedViolations=0,
            conditions=[ready, compliant],
        )  # fmt: skip
        return status
    violating = result.violating
    if violating:
        listed = listed_violations(result)
        more = len(violating) - len(listed)
        message = (
            f"{len(violating)} of {len(result.matched)} governed DaemonSet(s) violate this policy: "
            + ", ".join(violating[:5])
            + (f" and {len(violating) - 5} more" if len(violating) > 5 else "")
        )
        compliant = _condition(COMPLIANT, "False", "ViolationsFound", message, previous, now, generation)
    else:
        listed, more = [], 0
        message = f"all {len(result.matched)} governed DaemonSet(s) comply"
        compliant = _condition(COMPLIANT, "True", "NoViolations", message, previous, now, generation)
    status.update(
        matchedDaemonSets=len(result.matched),
        violationCount=len(violating),
        violations=listed,
        unlistedViolations=more,  # always written: a merge patch keeps keys it doesn't mention
        conditions=[ready, compliant],
    )
    return status


def status_changed(new: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether writing `new` changes anything but the audit time (so a steady cluster costs no writes)."""
    ignore = ("auditedAt",)
    return {k: v for k, v in new.items() if k not in ignore} != {
        k: v for k, v in stored.items() if k not in ignore
    }


ViolationKey = tuple[str, str, str, str]  # (policy, namespace, name, rule)


@dataclass(frozen=True)
class Announced:
    """What an Event last said of a violation, and when (monotonic seconds)."""

    messages: tuple[str, ...] | None  # None: known from a stored status (a restart), not its words
    at: float


def known_violations(stored: Mapping[str, Any], policy: str) -> dict[ViolationKey, Announced]:
    """Violations already reported in a stored status: a restarted guard doesn't announce them
    again (nor their details, which the status holds cut short). Only the listed ones are known
    (the list is bounded)."""
    out: dict[ViolationKey, Announced] = {}
    for entry in stored.get("violations") or ():
        if isinstance(entry, Mapping):
            for rule in entry.get("rules") or ():
                key = (policy, str(entry.get("namespace")), str(entry.get("name")), str(rule))
                out[key] = Announced(None, -float("inf"))
    return out


@dataclass(frozen=True)
class EventPlan:
    """Events to record on DaemonSets after an audit."""

    new: tuple[Violation, ...]  # Warning PolicyViolation, one per (DaemonSet, policy, rule)
    # Warning PolicyViolation again: a violation whose details changed (a coverage gap that grew,
    # another node too old for the image), with all its messages now
    changed: tuple[tuple[ViolationKey, tuple[str, ...]], ...]
    resolved: tuple[ViolationKey, ...]  # Normal PolicyViolationResolved


def plan_events(
    results: Mapping[str, PolicyAudit],
    before: Mapping[ViolationKey, Announced],
    present: Collection[tuple[str, str]],
    *,
    now: float = 0.0,
    change_interval: float = 300.0,
) -> tuple[EventPlan, dict[ViolationKey, Announced]]:
    """What changed since the previous audit (`before`), and the new `before` for the next one.
    `present`: (namespace, name) of the DaemonSets that exist: a deleted one gets no Event.

    A violation whose messages changed is announced again once `change_interval` seconds have
    passed since its last Event (a changing gap in a scaling fleet would otherwise make an Event
    per node); until then it keeps what was last said, so a later audit announces the change."""
    first: dict[ViolationKey, Violation] = {}
    messages: dict[ViolationKey, list[str]] = {}
    for result in results.values():
        for v in result.violations:
            key = (v.policy, v.namespace, v.name, v.rule)
            first.setdefault(key, v)
            messages.setdefault(key, []).append(v.message)
    after: dict[ViolationKey, Announced] = {}
    new: list[Violation] = []
    changed: list[tuple[ViolationKey, tuple[str, ...]]] = []
    for key in sorted(first):
        said, prev = tuple(messages[key]), before.get(key)
        if prev is None:
            new.append(first[key])
            after[key] = Announced(said, now)
        elif prev.messages is None:  # its words unknown after a restart: taken as they are now
            after[key] = Announced(said, prev.at)
        elif prev.messages != said and now - prev.at >= change_interval:
            changed.append((key, said))
            after[key] = Announced(said, now)
        else:
            after[key] = prev
    # A deleted policy's or DaemonSet's violations are forgotten, not announced as resolved.
    resolved = tuple(
        sorted(k for k in before if k not in first and k[0] in results and (k[1], k[2]) in present)
    )
    return EventPlan(tuple(new), tuple(changed), resolved), after
