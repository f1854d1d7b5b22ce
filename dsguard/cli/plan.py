"""`dsguard plan`: the waves the guard would run for a DaemonSet (which nodes in which wave), from
the cluster (NAMESPACE/NAME) or from manifests (-f ds.yaml --nodes nodes.yaml --policy-file p.yaml),
so a user sees the plan before the first pod is touched. The planning is dsguard.waves."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click
import orjson
import yaml

from dsguard.annotations import WaveInfo, wave_info, waves_in_progress
from dsguard.cli import exits
from dsguard.cli.options import context_opt, kubeconfig_opt, policy_files_opt
from dsguard.daemonset import DaemonSetView, as_mapping
from dsguard.documents import InputError, check_daemonsets, load_documents, load_nodes, load_policies
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy, WavesPolicy, guard_policy_for
from dsguard.rules.engine import matching_policies
from dsguard.waves import Wave, targeted_plan

NODES_SHOWN = 8


def _plan_for(
    obj: Mapping[str, Any], policies: Sequence[Policy], facts: ClusterFacts
) -> tuple[str | None, WavesPolicy | None, tuple[Wave, ...]]:
    ds = DaemonSetView.from_object(obj)
    name, guard = guard_policy_for(matching_policies(policies, ds, facts))
    if guard.waves is None:
        return name, None, ()
    return name, guard.waves, targeted_plan(guard.waves, obj, facts)


def _describe(waves: WavesPolicy) -> str:
    parts = []
    if waves.canary is not None:
        parts.append(f"canary {waves.canary}")
    if waves.group_by:
        parts.append(f"then one wave per {waves.group_by}")
    elif waves.steps:
        parts.append(f"then steps {', '.join(waves.steps)}")
    parts.append(f"bake {waves.bake_seconds}s")
    parts.append(f"approval {waves.approval.value}")
    if waves.max_unavailable is not None:
        parts.append(f"maxUnavailable {waves.max_unavailable}")
    return "; ".join(parts)


def _report(
    ref: str, policy: str | None, waves: WavesPolicy | None, plan: tuple[Wave, ...], info: WaveInfo | None
) -> dict[str, Any]:
    return {
        "daemonset": ref,
        "policy": policy,
        "waves": [
            {
                "index": i + 1,
                "name": w.name,
                "nodes": list(w.nodes),
                "current": info is not None and info.index == i,
            }
            for i, w in enumerate(plan)
        ],
        "settings": _describe(waves) if waves is not None else None,
        "inProgress": info.to_dict() if info is not None else None,
    }


def _print_table(report: Mapping[str, Any]) -> None:
    if report["settings"] is None:
        click.echo(
            f"{report['daemonset']}: no policy with guard.waves governs it; "
            "the DaemonSet controller rolls it out"
        )
        return
    click.echo(f"{report['daemonset']}: waves by DaemonSetPolicy {report['policy']} ({report['settings']})")
    if not report["waves"]:
        click.echo("  no nodes to run on")
    for w in report["waves"]:
        nodes = w["nodes"]
        shown = ", ".join(nodes[:NODES_SHOWN]) + (
            f", ... ({len(nodes) - NODES_SHOWN} more)" if len(nodes) > NODES_SHOWN else ""
        )
        mark = "  <- current" if w["current"] else ""
        click.echo(f"  {w['index']}. {w['name']}: {len(nodes)} node(s): {shown}{mark}")


@click.command()
@click.argument("daemonset", required=False)
@click.option(
    "-f", "--filename", "filenames", multiple=True, help="DaemonSet manifests (files, directories or -)."
)
@click.option("--nodes", "node_files", multiple=True, help="Node list (kubectl get nodes -o yaml) for -f.")
@policy_files_opt
@kubeconfig_opt
@context_opt
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
def plan(
    daemonset: str | None,
    filenames: tuple[str, ...],
    node_files: tuple[str, ...],
    policy_files: tuple[str, ...],
    kubeconfig: str | None,
    context: str | None,
    output: str,
) -> None:
    """The waves the rollout guard would run for a DaemonSet: NAMESPACE/NAME from the cluster, or
    -f manifests with --nodes and --policy-file offline."""
    if bool(daemonset) == bool(filenames):
        raise exits.BadInput(
            "give NAMESPACE/NAME (from the cluster) or -f FILE (offline), not both or neither"
        )
    try:
        reports = (
            _offline(filenames, node_files, policy_files)
            if filenames
            else [_cluster(daemonset or "", policy_files, kubeconfig, context)]
        )
    except InputError as e:
        raise exits.BadInput(str(e)) from None
    if output == "json":
        click.echo(orjson.dumps(reports, option=orjson.OPT_INDENT_2).decode())
    elif output == "yaml":
        yaml.safe_dump(reports, sys.stdout, sort_keys=False)
    else:
        for r in reports:
            _print_table(r)


def _offline(
    filenames: Sequence[str], node_files: Sequence[str], policy_files: Sequence[str]
) -> list[dict[str, Any]]:
    if not policy_files:
        raise exits.BadInput("-f needs --policy-file FILE: the DaemonSetPolicies whose guard.waves to plan")
    policies = load_policies(list(policy_files)).policies
    facts = ClusterFacts(nodes=tuple(load_nodes(list(node_files)))) if node_files else ClusterFacts()
    out = []
    docs = list(load_documents(list(filenames)))
    check_daemonsets(docs)
    for doc in docs:
        if not isinstance(doc.body, Mapping) or doc.body.get("kind") != "DaemonSet":
            continue
        meta = as_mapping(doc.body.get("metadata"))
        ref = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
        name, waves, waves_plan = _plan_for(doc.body, policies, facts)
        out.append(_report(ref, name, waves, waves_plan, None))
    return out


def _cluster(
    ref: str, policy_files: Sequence[str], kubeconfig: str | None, context: str | None
) -> dict[str, Any]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise click.BadParameter(f"{ref!r}: expected NAMESPACE/NAME", param_hint="DAEMONSET")
    static = load_policies(list(policy_files)).policies if policy_files else None
    return asyncio.run(_read_and_plan(namespace, name, static, kubeconfig, context))


async def _read_and_plan(
    namespace: str, name: str, static: Sequence[Policy] | None, kubeconfig: str | None, context: str | None
) -> dict[str, Any]:
    from dsguard.cluster_snapshot import SnapshotError, read_snapshot
    from dsguard.kube import ClientConfigError, api_client

    try:
        api = await api_client(kubeconfig, context)
    except ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=True) from None
    try:
        snap = await read_snapshot(api, namespace=namespace, static_policies=static)
    except SnapshotError as e:
        if e.unreachable:
            raise exits.BadInput(str(e), fix=exits.FIX_UNREACHABLE) from None
        raise exits.BadInput(str(e)) from None
    finally:
        await api.close()
    obj = next((d for d in snap.daemonsets if as_mapping(d.get("metadata")).get("name") == name), None)
    if obj is None:
        raise exits.BadInput(f"DaemonSet {namespace}/{name} not found")
    policy, waves, waves_plan = _plan_for(obj, snap.policies, snap.facts)
    annotations = as_mapping(as_mapping(obj.get("metadata")).get("annotations"))
    info = wave_info(annotations) if waves_in_progress(annotations) else None
    return _report(f"{namespace}/{name}", policy, waves, waves_plan, info)
