"""Image versions compatible with the kubelet versions of the nodes the DaemonSet targets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from types import MappingProxyType
from typing import Any

from dsguard import daemonset_shape as shape
from dsguard.daemonset import ContainerImage
from dsguard.policy import Compatibility, Policy, UnknownVersion, VersionPolicy
from dsguard.rules.context import (
    TEMPLATE,
    Finding,
    NodeStep,
    NodeWalk,
    RuleContext,
    Severity,
    name_nodes,
    splice,
)
from dsguard.versions import ImageRef, Version, image_pattern_matches

RULE = "versions"
JUDGES = TEMPLATE
NO_NODES = "(no nodes known: the apiserver version)"
READS: tuple[str, ...] = (*shape.IMAGES, *shape.PLACEMENT)


def governs(policy: Policy) -> bool:
    return policy.versions is not None


def _nodes_by_kubelet(ctx: RuleContext) -> Mapping[str, Sequence[str]]:
    """Kubelet version -> node names; with no nodes known, the apiserver's version stands in."""
    if not ctx.facts.nodes:
        return {ctx.facts.server_version: ()} if ctx.facts.server_version else {}
    # A pass over every targeted node, on every review: memoised with the walk, and patched
    # rather than passed again when a node changes (PlacementCache.advance).
    return ctx.walk.derive(RULE, _targeted_by_kubelet, _patch_groups)


def _targeted_by_kubelet(walk: NodeWalk) -> Mapping[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for node in walk.targeted:
        if node.kubelet_version:
            groups[node.kubelet_version].append(node.name)
    return MappingProxyType({k: tuple(v) for k, v in groups.items()})


def _patch_groups(groups: Mapping[str, tuple[str, ...]], step: NodeStep) -> Mapping[str, tuple[str, ...]]:
    """The groups after one node step: its name out of its old group, into its new one (node
    order is name order). Groups stay in the order of their first node, as the pass makes them."""
    old = step.old[0] if step.old is not None and step.old[1].should_run else None
    new = step.new[0] if step.new is not None and step.new[1].should_run else None
    if (old.kubelet_version if old else "") == (new.kubelet_version if new else ""):
        return groups  # names in a group, not nodes: nothing to patch (or not targeted)
    out = dict(groups)
    if old is not None and old.kubelet_version:
        names = splice(out[old.kubelet_version], old.name, _same, True, ())
        if names:
            out[old.kubelet_version] = names
        else:
            del out[old.kubelet_version]
    if new is not None and new.kubelet_version:
        out[new.kubelet_version] = splice(
            out.get(new.kubelet_version, ()), new.name, _same, False, (new.name,)
        )
    return MappingProxyType(dict(sorted(out.items(), key=lambda kv: kv[1][0])))


def _same(name: str) -> str:
    return name


class FindingKind(StrEnum):
    INCOMPATIBLE = "incompatible"  # a version tag outside a compatibility entry's range
    UNKNOWN_VERSION = "unknown-version"  # a governed image whose tag is not a version
    INVALID_IMAGE = "invalid-image"  # not an image reference at all


class KubeletNodes:
    """A version finding's nodes with their kubelet versions, listed when a report asks (NodeList)."""

    __slots__ = ("groups",)

    def __init__(self, groups: tuple[tuple[str, Sequence[str]], ...]) -> None:
        self.groups = groups  # (kubelet version, node names): the memoised groups, not copies

    def to_dicts(self) -> list[dict[str, Any]]:
        seen: dict[str, str] = {}
        for kubelet, names in self.groups:
            for n in names:
                seen.setdefault(n, kubelet)
        return [{"node": n, "kubeletVersion": k} for n, k in seen.items()]


@dataclass(frozen=True)
class VersionVerdict:
    """One thing the rule has to say about one image, with the nodes it concerns as data (the
    upgrade check reads those; the webhook reads the message). `reported` is False only for an
    unknown version under `unknownVersion: Allow`, where the rule stays silent."""

    image: ContainerImage
    kind: FindingKind
    severity: Severity = Severity.VIOLATION
    reported: bool = True
    nodes: tuple[str, ...] = ()  # targeted nodes where the image is incompatible (none: no nodes known)
    kubelets: tuple[str, ...] = ()  # their kubelet versions, sorted; the apiserver's when no nodes
    compatibility: Compatibility | None = None  # the entry violated (INCOMPATIBLE)
    pattern: str = ""  # the first rule's image pattern matching the image
    error: str = ""  # why the reference doesn't parse (INVALID_IMAGE)
    kubelet_groups: tuple[tuple[str, Sequence[str]], ...] = ()  # (kubelet version, its nodes) of `nodes`

    @property
    def message(self) -> str:
        img = self.image
        if self.kind is FindingKind.INVALID_IMAGE:
            return f"{img.path}: {self.error}"
        if self.kind is FindingKind.UNKNOWN_VERSION:
            return (
                f"{img.path}: {img.image} has no version tag, so its compatibility with the nodes' "
                f"kubelet versions cannot be checked (policy rule for {self.pattern}); use a version tag "
                "such as :1.2.3"
            )
        compat = self.compatibility
        assert compat is not None, "an INCOMPATIBLE verdict names its compatibility entry"
        names = list(self.nodes) or [NO_NODES]
        return (
            f"{img.path}: {img.image} is not compatible with {len(names)} node(s) running kubelet "
            f'{", ".join(self.kubelets)} ({name_nodes(names)}): on kubernetes "{compat.kubernetes}" the '
            f'policy allows versions "{compat.versions}"; use a version that satisfies it, or keep '
            "the DaemonSet off those nodes with a nodeSelector or node affinity"
        )

    def finding(self) -> Finding:
        return Finding(
            RULE,
            self.message,
            self.severity,
            field=self.image.path,
            nodes=KubeletNodes(self.kubelet_groups) if self.kubelet_groups else None,
        )


def check(policy: Policy, ctx: RuleContext) -> list[Finding]:
    if policy.versions is None:
        return []
    return [v.finding() for v in verdicts(policy.versions, ctx) if v.reported]


def verdicts(policy: VersionPolicy, ctx: RuleContext) -> list[VersionVerdict]:
    """Every image of the DaemonSet a rule of `policy` governs, judged against the kubelet
    versions of the nodes it targets, in image order."""
    out: list[VersionVerdict] = []
    groups: Mapping[str, Sequence[str]] | None = None
    for img in ctx.ds.images():
        try:
            ref = ImageRef.parse(img.image)
        except ValueError as e:
            out.append(VersionVerdict(img, FindingKind.INVALID_IMAGE, error=str(e)))
            continue
        rules = [r for r in policy.rules if image_pattern_matches(r.image, ref)]
        if not rules:
            continue
        version = ref.version
        if version is None:
            unknown = policy.unknown_version
            out.append(
                VersionVerdict(
                    img,
                    FindingKind.UNKNOWN_VERSION,
                    Severity.VIOLATION if unknown is UnknownVersion.DENY else Severity.WARNING,
                    reported=unknown is not UnknownVersion.ALLOW,
                    pattern=rules[0].image,
                )
            )
            continue
        # Whether the image's version is outside an entry's versions doesn't depend on the kubelet:
        # judged once per entry, not once per entry and kubelet version.
        outside = [
            compat for rule in rules for compat in rule.compatibility if not compat.versions.contains(version)
        ]
        if not outside:
            continue
        if groups is None:
            groups = _nodes_by_kubelet(ctx)
        # (compatibility entry) -> [(kubelet version, nodes)] it is violated on
        broken: dict[Compatibility, list[tuple[str, Sequence[str]]]] = defaultdict(list)
        for kubelet, names in groups.items():
            kv = Version.parse(kubelet)
            if kv is None:
                continue
            for compat in outside:
                if compat.kubernetes.contains(kv):
                    broken[compat].append((kubelet, names))
        for compat, where in broken.items():
            out.append(
                VersionVerdict(
                    img,
                    FindingKind.INCOMPATIBLE,
                    # Groups are disjoint (a node has one kubelet): a kubelet met under two equal
                    # entries is one group, and the nodes the groups' names joined.
                    nodes=tuple(chain.from_iterable(dict(where).values())),
                    kubelet_groups=tuple(where),
                    kubelets=tuple(sorted({k for k, _ in where})),
                    compatibility=compat,
                    pattern=rules[0].image,
                )
            )
    return out
