"""`dsguard upgrade-check --to VERSION`: before a Kubernetes upgrade, the DaemonSets whose images
the policies' version rules say are incompatible with the target version, and the nodes that
would break. docs/upgrade-check.md describes it; the planning is dsguard.upgrade_plan."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
import orjson
import yaml

from dsguard.cli import exits
from dsguard.cli.options import (
    all_namespaces_opt,
    context_opt,
    kubeconfig_opt,
    note_skipped,
    output_opt,
    policy_files_opt,
)
from dsguard.documents import InputError, check_daemonsets, load_documents, load_nodes, load_policies
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules.context import Severity
from dsguard.scheduling import NodeInfo
from dsguard.selectors import LabelSelector
from dsguard.upgrade_plan import (
    DaemonSetReport,
    Manifest,
    Status,
    UpgradePlan,
    parse_node_selector,
    parse_target_version,
    plan_upgrade,
)

if TYPE_CHECKING:
    from dsguard.cluster_snapshot import ClusterSnapshot

NODES_SHOWN = 10


class _TargetVersion(click.ParamType[str]):
    name = "version"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_target_version(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class _NodeSelector(click.ParamType[tuple[str, LabelSelector]]):
    name = "selector"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, LabelSelector]:
        if isinstance(value, tuple):
            return value  # already converted (a default)
        try:
            return str(value), parse_node_selector(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


# Not options.namespace_opt: kubectl's default (the context's namespace) would be wrong here,
# an upgrade hits every namespace.
_namespace_opt = click.option(
    "-n",
    "--namespace",
    default=None,
    help="Only DaemonSets in this namespace; default every namespace (an upgrade hits the whole "
    "cluster). With -f: the namespace of manifests that name none.",
)


@dataclass(frozen=True)
class _Inputs:
    policies: list[Policy]
    manifests: list[Manifest]
    facts: ClusterFacts
    skipped: int
    policy_errors: dict[str, str]


@click.command("upgrade-check")
@click.option(
    "--to",
    "target",
    required=True,
    type=_TargetVersion(),
    help="The Kubernetes version to upgrade to: 1.35.0, v1.35.0, or 1.35 (a minor alone means its .0).",
)
@click.option(
    "-f",
    "--filename",
    "filenames",
    multiple=True,
    help="Check DaemonSet manifests from this file, directory or - (stdin) instead of the cluster's "
    "DaemonSets (repeatable; other kinds are skipped and counted).",
)
@policy_files_opt
@click.option(
    "--nodes",
    "node_files",
    multiple=True,
    help="Use these Nodes instead of the cluster's, e.g. `kubectl get nodes -o yaml` output "
    "(repeatable). With -f and --policy-file no cluster is contacted.",
)
@click.option(
    "--node-selector",
    "node_selector",
    type=_NodeSelector(),
    default=None,
    help="Upgrade only the nodes with these labels (one node pool): key=value[,key2!=value2], as "
    "kubectl -l (equality-based). The other nodes and the apiserver keep their versions.",
)
@kubeconfig_opt
@context_opt
@_namespace_opt
@all_namespaces_opt
@output_opt("text", "json", "yaml", default="text")
def upgrade_check(
    target: str,
    filenames: tuple[str, ...],
    policy_files: tuple[str, ...],
    node_files: tuple[str, ...],
    node_selector: tuple[str, LabelSelector] | None,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    all_namespaces: bool,
    output: str,
) -> None:
    """List the DaemonSets whose images are incompatible with Kubernetes VERSION under the
    DaemonSetPolicies' version rules, and the nodes that would break.

    Upgrades every node and the apiserver to --to (or only the --node-selector nodes), then
    judges each DaemonSet with the webhook's version rule, today and after. Exit 0 when no
    DaemonSet breaks, 1 when any is incompatible at the target (newly or already today), 2 on
    bad input or when the cluster can't be read.
    """
    ns = None if all_namespaces else namespace
    try:
        inputs = _load(filenames, policy_files, node_files, kubeconfig, context, ns)
    except InputError as e:
        raise exits.BadInput(str(e)) from None
    for name, why in sorted(inputs.policy_errors.items()):
        click.echo(f"dsguard upgrade-check: warning: DaemonSetPolicy {name} ignored: {why}", err=True)
    selector = node_selector[1] if node_selector else None
    if selector is not None and not any(selector.matches(n.labels) for n in inputs.facts.nodes):
        raise exits.BadInput(
            f"--node-selector {node_selector[0] if node_selector else ''} "
            f"matches none of the {len(inputs.facts.nodes)} node(s)",
            fix="check the labels (`kubectl get nodes --show-labels`)",
        )
    plan = plan_upgrade(
        inputs.policies,
        inputs.manifests,
        inputs.facts,
        target,
        upgrade=(lambda n: selector.matches(n.labels)) if selector is not None else None,
        node_selector=node_selector[0] if node_selector else None,
    )
    if output == "text":
        _print_text(plan, inputs.skipped)
    else:
        doc = plan_document(plan, inputs.skipped)
        if output == "json":
            click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
    sys.exit(exits.PROBLEM if plan.breaking else exits.OK)


# --- inputs -------------------------------------------------------------------------------------


def _load(
    filenames: Sequence[str],
    policy_files: Sequence[str],
    node_files: Sequence[str],
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
) -> _Inputs:
    """Raises InputError for bad files, exits.BadInput for a cluster that can't be read."""
    policy_set = load_policies(list(policy_files)) if policy_files else None
    policies = policy_set.policies if policy_set else None
    if policy_set:
        note_skipped("--policy-file", policy_set)
    nodes = load_nodes(list(node_files)) if node_files else None
    manifests: list[Manifest] = []
    skipped = 0
    if filenames:
        docs = list(load_documents(list(filenames)))
        check_daemonsets(docs)
        for doc in docs:
            body = doc.body
            if body.get("kind") != "DaemonSet" or not str(body.get("apiVersion", "")).startswith("apps/"):
                skipped += 1
                continue
            manifests.append(Manifest(_in_namespace(body, namespace, doc.source), doc.source))
    if filenames and policies is not None and nodes is not None:
        # Everything from files: no cluster, no API client.
        facts = ClusterFacts(nodes=tuple(sorted(nodes, key=lambda n: n.name)))
        return _Inputs(policies, manifests, facts, skipped, {})
    snapshot = asyncio.run(
        _read_cluster(kubeconfig, context, namespace, policies, nodes, read_daemonsets=not filenames)
    )
    if not filenames:
        manifests = [Manifest(obj) for obj in snapshot.daemonsets]
    return _Inputs(list(snapshot.policies), manifests, snapshot.facts, skipped, dict(snapshot.policy_errors))


def _in_namespace(body: dict[str, Any], namespace: str | None, source: str) -> dict[str, Any]:
    """kubectl's -n with -f: fills in a missing namespace, refuses a different one."""
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    assert isinstance(meta, dict)
    own = meta.get("namespace")
    if namespace is None or own == namespace:
        return body
    if own:
        raise InputError(
            f"{source}: the namespace from the manifest ({own!r}) does not match -n {namespace!r}"
        )
    return {**body, "metadata": {**meta, "namespace": namespace}}


async def _read_cluster(
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    policies: list[Policy] | None,
    nodes: list[NodeInfo] | None,
    *,
    read_daemonsets: bool,
) -> ClusterSnapshot:
    import aiohttp

    from dsguard import kube
    from dsguard.cluster_snapshot import SnapshotError, read_snapshot

    try:
        api = await kube.api_client(kubeconfig, context)
    except kube.ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=True) from None
    try:
        return await read_snapshot(
            api,
            namespace=namespace,
            static_policies=policies,
            static_nodes=nodes,
            read_daemonsets=read_daemonsets,
        )
    except SnapshotError as e:
        raise exits.BadInput(str(e), fix=exits.FIX_UNREACHABLE if e.unreachable else None) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise exits.BadInput(f"reading the cluster failed: {e}", fix=exits.FIX_UNREACHABLE) from None
    finally:
        await api.close()


# --- output -------------------------------------------------------------------------------------


def _nodes_text(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NODES_SHOWN])
    rest = len(names) - NODES_SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown


_LABELS = {
    Status.BREAKS: ("BREAKS", "red"),
    Status.ALREADY_BROKEN: ("ALREADY BROKEN", "yellow"),
    Status.CANNOT_CHECK: ("CANNOT CHECK", "yellow"),
}


def _print_block(r: DaemonSetReport) -> None:
    label, color = _LABELS[r.status]
    where = f" ({r.source})" if r.source else ""
    click.echo(f"{click.style(label, fg=color, bold=True)} DaemonSet {r.ref}{where}")
    click.echo(f"  images: {', '.join(dict.fromkeys(i.image for i in r.images))}")
    for f in r.findings:
        mark = "✗" if f.severity is Severity.VIOLATION else "?"
        when = "" if f.severity is not Severity.VIOLATION else (" [new]" if f.new else " [already today]")
        click.echo(f'  {mark} DaemonSetPolicy "{f.policy}"{when}: {f.message}')
    broken = r.broken_nodes
    if broken:
        click.echo(f"  nodes that would break ({len(broken)}): {_nodes_text(broken)}")
        new = r.newly_broken_nodes
        if r.status is Status.BREAKS and new and len(new) != len(broken):
            click.echo(f"    of which broken by the upgrade ({len(new)}): {_nodes_text(new)}")


def _print_text(plan: UpgradePlan, skipped: int) -> None:
    for r in plan.daemonsets:
        if r.status is not Status.OK:
            _print_block(r)
    where = f"on {len(plan.nodes_upgraded)} node(s)"
    if plan.node_selector is not None:
        where += f" matching {plan.node_selector} (of {plan.nodes_total}; the apiserver is not upgraded)"
    breaking = len(plan.breaking)
    line = f"{len(plan.daemonsets)} DaemonSet(s) checked against Kubernetes {plan.target} {where}: "
    line += f"{breaking} break"
    if breaking:
        line += (
            f" ({plan.counts.get(Status.BREAKS, 0)} newly, "
            f"{plan.counts.get(Status.ALREADY_BROKEN, 0)} already broken today)"
        )
    if plan.counts.get(Status.CANNOT_CHECK):
        line += f"; {plan.counts[Status.CANNOT_CHECK]} cannot be checked (no version tag)"
    if plan.not_governed:
        line += f"; {plan.not_governed} not governed by a version rule"
    if skipped:
        line += f"; {skipped} other document(s) skipped"
    click.echo(line)


def plan_document(plan: UpgradePlan, skipped: int = 0) -> dict[str, Any]:
    """The -o json / -o yaml document (docs/upgrade-check.md, "Output")."""
    return {
        "target": plan.target,
        "nodeSelector": plan.node_selector,
        "apiserverUpgraded": plan.apiserver_upgraded,
        "nodesUpgraded": len(plan.nodes_upgraded),
        "nodesTotal": plan.nodes_total,
        "daemonSets": [
            {
                "namespace": r.namespace,
                "name": r.name,
                "source": r.source,
                "status": r.status.value,
                "policies": list(r.policies),
                "images": [{"container": i.container, "path": i.path, "image": i.image} for i in r.images],
                "nodes": list(r.broken_nodes),
                "newlyBrokenNodes": list(r.newly_broken_nodes),
                "findings": [
                    {
                        "policy": f.policy,
                        "container": f.image.container,
                        "path": f.image.path,
                        "image": f.image.image,
                        "kind": f.kind.value,
                        "severity": f.severity.value,
                        "new": f.new,
                        "message": f.message,
                        "nodes": list(f.nodes),
                    }
                    for f in r.findings
                ],
            }
            for r in plan.daemonsets
        ],
        "summary": {
            "checked": len(plan.daemonsets),
            "breaking": len(plan.breaking),  # breaks + alreadyBroken: exit 1 when > 0
            **{_camel(s.value): plan.counts.get(s, 0) for s in Status},
            "notGoverned": plan.not_governed,
            "skippedDocuments": skipped,
        },
    }


def _camel(text: str) -> str:
    head, *rest = text.split("-")
    return head + "".join(w.capitalize() for w in rest)
