"""Image versions compatible with the kubelet versions of the nodes the DaemonSet targets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from dsguard.policy import Compatibility, UnknownVersion, VersionPolicy
from dsguard.versions import ImageRef, Version, image_pattern_matches
from webhook.rules.context import Finding, NodeWalk, RuleContext, Severity, name_nodes

RULE = "versions"


def _nodes_by_kubelet(ctx: RuleContext) -> Mapping[str, Sequence[str]]:
    """Kubelet version -> node names; with no nodes known, the apiserver's version stands in."""
    if not ctx.facts.nodes:
        return (
            {ctx.facts.server_version: ["(no nodes known: the apiserver version)"]}
            if ctx.facts.server_version
            else {}
        )
    # A pass over every targeted node, on every review: memoised with the walk.
    return ctx.walk.derive(RULE, _targeted_by_kubelet)


def _targeted_by_kubelet(walk: NodeWalk) -> Mapping[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for node in walk.targeted:
        if node.kubelet_version:
            groups[node.kubelet_version].append(node.name)
    return MappingProxyType({k: tuple(v) for k, v in groups.items()})


def check(policy: VersionPolicy, ctx: RuleContext) -> list[Finding]:
    findings: list[Finding] = []
    groups: Mapping[str, Sequence[str]] | None = None
    for img in ctx.ds.images():
        try:
            ref = ImageRef.parse(img.image)
        except ValueError as e:
            findings.append(Finding(RULE, f"{img.path}: {e}"))
            continue
        rules = [r for r in policy.rules if image_pattern_matches(r.image, ref)]
        if not rules:
            continue
        version = ref.version
        if version is None:
            findings.extend(_unknown(policy, img.path, img.image, rules[0].image))
            continue
        if groups is None:
            groups = _nodes_by_kubelet(ctx)
        # (compatibility entry) -> [(kubelet version, nodes)] it is violated on
        broken: dict[Compatibility, list[tuple[str, Sequence[str]]]] = defaultdict(list)
        for kubelet, names in groups.items():
            kv = Version.parse(kubelet)
            if kv is None:
                continue
            for rule in rules:
                for compat in rule.compatibility:
                    if compat.kubernetes.contains(kv) and not compat.versions.contains(version):
                        broken[compat].append((kubelet, names))
        for compat, where in broken.items():
            names = [n for _, ns in where for n in ns]
            kubelets = ", ".join(sorted({k for k, _ in where}))
            findings.append(
                Finding(
                    RULE,
                    f"{img.path}: {img.image} is not compatible with {len(names)} node(s) running kubelet "
                    f'{kubelets} ({name_nodes(names)}): on kubernetes "{compat.kubernetes}" the policy '
                    f'allows versions "{compat.versions}"; use a version that satisfies it, or keep '
                    "the DaemonSet off those nodes with a nodeSelector or node affinity",
                )
            )
    return findings


def _unknown(policy: VersionPolicy, path: str, image: str, pattern: str) -> list[Finding]:
    if policy.unknown_version is UnknownVersion.ALLOW:
        return []
    msg = (
        f"{path}: {image} has no version tag, so its compatibility with the nodes' kubelet versions "
        f"cannot be checked (policy rule for {pattern}); use a version tag such as :1.2.3"
    )
    severity = Severity.VIOLATION if policy.unknown_version is UnknownVersion.DENY else Severity.WARNING
    return [Finding(RULE, msg, severity)]
