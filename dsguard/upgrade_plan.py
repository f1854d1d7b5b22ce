"""What a Kubernetes upgrade does to the DaemonSets the policies' version rules govern: pure
planning for `dsguard upgrade-check` (no I/O; the command reads the cluster or the files).

The upgrade is modelled as facts: the selected nodes (all, or one pool) run the target kubelet,
and without a node selector the apiserver runs the target too. Each DaemonSet matched by a
policy with a `versions` section (whatever its enforcement: compatibility is a fact about the
image, even for an Audit policy) is judged by dsguard.rules.image_versions against the facts
today and after the upgrade, through the rule's own verdicts (image_versions.verdicts): the
same messages as the webhook, and which nodes break as data, never read back out of a message.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from dsguard.daemonset import ContainerImage, DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules.context import RuleContext, Severity
from dsguard.rules.engine import matching_policies
from dsguard.rules.image_versions import FindingKind, VersionVerdict
from dsguard.rules.image_versions import verdicts as version_verdicts
from dsguard.scheduling import NodeInfo
from dsguard.selectors import (
    DOES_NOT_EXIST,
    EXISTS,
    IN,
    NOT_IN,
    LabelSelector,
    Requirement,
    label_value_errors,
    qualified_name_errors,
)

__all__ = [
    "DaemonSetReport",
    "FindingKind",
    "FindingReport",
    "Manifest",
    "Status",
    "UpgradePlan",
    "VersionVerdict",
    "parse_node_selector",
    "parse_target_version",
    "plan_upgrade",
    "upgraded_facts",
    "version_verdicts",
]

# --- input parsing ------------------------------------------------------------------------------

_TARGET_RE = re.compile(r"[vV]?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?(-(?:alpha|beta|rc)(?:\.[0-9]+)?)?", re.ASCII)


def parse_target_version(text: str) -> str:
    """The Kubernetes version an upgrade goes to, as a kubelet reports it: `1.35.0`, `v1.35.0`
    and `1.35` (a minor alone means its .0) all give `v1.35.0`; pre-releases such as
    `v1.36.0-rc.1` are kept. ValueError, with what was expected, for anything else."""
    m = _TARGET_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"{text!r} is not a Kubernetes version: expected MAJOR.MINOR[.PATCH] such as 1.35.0, "
            "v1.35.0 or 1.35 (which means 1.35.0)"
        )
    major, minor, patch, pre = m.groups()
    return f"v{int(major)}.{int(minor)}.{int(patch or 0)}{pre or ''}"


def parse_node_selector(text: str) -> LabelSelector:
    """An equality-based label selector as kubectl's -l takes it: `key=value`, `key==value`,
    `key!=value`, `key` (exists) and `!key` (absent), comma-separated, all must hold.
    Set-based requirements (`in`, `notin`) are not supported. ValueError naming the bad part."""
    if not text.strip():
        raise ValueError("the node selector is empty: expected key=value[,key2=value2]")
    if "(" in text or ")" in text:
        raise ValueError(
            f"{text!r}: set-based requirements (in, notin) are not supported; "
            "use key=value, key!=value, key or !key, comma-separated"
        )
    labels: dict[str, str] = {}
    exprs: list[Requirement] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"{text!r}: empty requirement (two commas, or a trailing comma)")
        for op in ("!=", "==", "="):
            if op in part:
                key, _, value = part.partition(op)
                key, value = key.strip(), value.strip()
                break
        else:
            op, key, value = ("!", part[1:].strip(), "") if part.startswith("!") else ("", part, "")
        problems = [f"key {key!r}: {m}" for m in qualified_name_errors(key)]
        if op in ("!=", "==", "="):
            problems += [f"value {value!r}: {m}" for m in label_value_errors(value)]
            if "=" in value or "!" in value:
                problems.append(f"value {value!r} must not contain '=' or '!'")
        if problems:
            raise ValueError(f"{text!r}: bad requirement {part!r}: {'; '.join(problems)}")
        if op in ("==", "="):
            if labels.get(key, value) != value:
                exprs.append(Requirement(key, IN, (value,)))  # k=a,k=b: matches nothing, as kubectl
            else:
                labels[key] = value
        elif op == "!=":
            exprs.append(Requirement(key, NOT_IN, (value,)))
        else:
            exprs.append(Requirement(key, DOES_NOT_EXIST if op == "!" else EXISTS, ()))
    return LabelSelector(match_labels=tuple(sorted(labels.items())), match_expressions=tuple(exprs))


# --- the upgraded cluster -----------------------------------------------------------------------

NodePredicate = Callable[[NodeInfo], bool]


def upgraded_facts(facts: ClusterFacts, target: str, upgrade: NodePredicate | None = None) -> ClusterFacts:
    """facts after the upgrade: every node `upgrade` selects (all when None) runs kubelet
    `target`; the apiserver runs `target` too, unless only some nodes are upgraded (a node
    pool), in which case the control plane is left as it is."""
    nodes = tuple(
        replace(n, kubelet_version=target) if upgrade is None or upgrade(n) else n for n in facts.nodes
    )
    server = target if upgrade is None else facts.server_version
    return replace(facts, nodes=nodes, server_version=server)


# --- the plan -----------------------------------------------------------------------------------


class Status(StrEnum):
    OK = "ok"
    BREAKS = "breaks"  # incompatible at the target where it is not today
    ALREADY_BROKEN = "already-broken"  # incompatible at the target, and already so today
    CANNOT_CHECK = "cannot-check"  # a governed image has no version tag (and nothing breaks)


@dataclass(frozen=True)
class Manifest:
    """A DaemonSet object and where it was read from (a file#document for -f)."""

    obj: Mapping[str, Any]
    source: str | None = None


@dataclass(frozen=True)
class FindingReport:
    policy: str
    image: ContainerImage
    kind: FindingKind
    severity: Severity
    message: str  # image_versions' own message (ours for an Allow'ed unknown version)
    nodes: tuple[str, ...]  # nodes where the image is incompatible at the target
    new_nodes: tuple[str, ...]  # of those, the ones where it is compatible today
    new: bool  # not found today: the upgrade causes it


@dataclass(frozen=True)
class DaemonSetReport:
    namespace: str
    name: str
    source: str | None
    images: tuple[ContainerImage, ...]
    policies: tuple[str, ...]  # the matching policies with a versions section
    status: Status
    findings: tuple[FindingReport, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def broken_nodes(self) -> tuple[str, ...]:
        """Nodes where some image is incompatible at the target, in first-seen order."""
        return tuple(
            dict.fromkeys(n for f in self.findings if f.severity is Severity.VIOLATION for n in f.nodes)
        )

    @property
    def newly_broken_nodes(self) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(n for f in self.findings if f.severity is Severity.VIOLATION for n in f.new_nodes)
        )

    @property
    def breaks(self) -> bool:
        return self.status in (Status.BREAKS, Status.ALREADY_BROKEN)


@dataclass(frozen=True)
class UpgradePlan:
    target: str
    node_selector: str | None  # None: every node and the apiserver are upgraded
    nodes_upgraded: tuple[str, ...]
    nodes_total: int
    apiserver_upgraded: bool
    daemonsets: tuple[DaemonSetReport, ...]  # those governed by a version rule
    not_governed: int  # DaemonSets no policy with a versions section matches
    counts: Mapping[Status, int] = field(default_factory=dict)

    @property
    def breaking(self) -> tuple[DaemonSetReport, ...]:
        return tuple(d for d in self.daemonsets if d.breaks)


def _subject(item: Mapping[str, Any] | Manifest) -> Manifest:
    return item if isinstance(item, Manifest) else Manifest(item)


def plan_upgrade(
    policies: Sequence[Policy],
    daemonsets: Iterable[Mapping[str, Any] | Manifest],
    facts: ClusterFacts,
    target: str,
    *,
    upgrade: NodePredicate | None = None,
    node_selector: str | None = None,
) -> UpgradePlan:
    """Judge every DaemonSet against `facts` now and after upgrading to `target` (a version
    from parse_target_version) the nodes `upgrade` selects (all when None; `node_selector` is
    its text, for the report)."""
    after = upgraded_facts(facts, target, upgrade)
    subjects = [_subject(d) for d in daemonsets]
    views = [DaemonSetView.from_object(s.obj) for s in subjects]
    governed = [
        (s, v, [p for p in matching_policies(policies, v, facts) if p.versions is not None])
        for s, v in zip(subjects, views, strict=True)
    ]
    governed = [g for g in governed if g[2]]
    # Every DaemonSet against today's facts first, then against the upgraded ones: the placement
    # memo keeps one facts snapshot at a time, so alternating would walk the nodes twice as often.
    today = [_judge(v, ps, facts) for _, v, ps in governed]
    upgraded = [_judge(v, ps, after) for _, v, ps in governed]
    reports = [
        _report(s, v, ps, now, then, target)
        for (s, v, ps), now, then in zip(governed, today, upgraded, strict=True)
    ]
    reports.sort(key=lambda r: (r.namespace, r.name, r.source or ""))
    counts = {st: sum(1 for r in reports if r.status is st) for st in Status}
    upgraded_nodes = tuple(n.name for n in facts.nodes if upgrade is None or upgrade(n))
    return UpgradePlan(
        target=target,
        node_selector=node_selector,
        nodes_upgraded=upgraded_nodes,
        nodes_total=len(facts.nodes),
        apiserver_upgraded=upgrade is None,
        daemonsets=tuple(reports),
        not_governed=len(subjects) - len(governed),
        counts=counts,
    )


_Judged = list[tuple[Policy, list[VersionVerdict]]]


def _judge(ds: DaemonSetView, policies: Sequence[Policy], facts: ClusterFacts) -> _Judged:
    ctx = RuleContext(ds, facts)
    out: _Judged = []
    for p in policies:
        assert p.versions is not None
        out.append((p, version_verdicts(p.versions, ctx)))
    return out


def _report(
    subject: Manifest,
    ds: DaemonSetView,
    policies: Sequence[Policy],
    today: _Judged,
    after: _Judged,
    target: str,
) -> DaemonSetReport:
    # What is wrong today, per (policy, image path): the broken nodes, and the kinds of finding.
    nodes_now: dict[tuple[str, str], set[str]] = defaultdict(set)
    kinds_now: set[tuple[str, str, FindingKind]] = set()
    for p, verdicts in today:
        for v in verdicts:
            nodes_now[p.name, v.image.path].update(v.nodes)
            kinds_now.add((p.name, v.image.path, v.kind))
    reports: list[FindingReport] = []
    for p, verdicts in after:
        for v in verdicts:
            before = nodes_now.get((p.name, v.image.path), set())
            new_nodes = tuple(n for n in v.nodes if n not in before)
            known = (p.name, v.image.path, v.kind) in kinds_now
            reports.append(
                FindingReport(
                    policy=p.name,
                    image=v.image,
                    kind=v.kind,
                    severity=v.severity,
                    message=v.message if v.reported else _unchecked_message(v, target),
                    nodes=v.nodes,
                    new_nodes=new_nodes,
                    new=bool(new_nodes) or (not known),
                )
            )
    violations = [f for f in reports if f.severity is Severity.VIOLATION]
    if any(f.new for f in violations):
        status = Status.BREAKS
    elif violations:
        status = Status.ALREADY_BROKEN
    elif reports:
        status = Status.CANNOT_CHECK
    else:
        status = Status.OK
    return DaemonSetReport(
        namespace=ds.namespace,
        name=ds.name,
        source=subject.source,
        images=tuple(ds.images()),
        policies=tuple(p.name for p in policies),
        status=status,
        findings=tuple(reports),
    )


def _unchecked_message(v: VersionVerdict, target: str) -> str:
    return (
        f"{v.image.path}: {v.image.image} has no version tag, so its compatibility with Kubernetes "
        f"{target} cannot be checked (policy rule for {v.pattern}, unknownVersion: Allow)"
    )
