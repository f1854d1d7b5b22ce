"""`dsguard explain`: why a DaemonSet runs (or doesn't) on each node. Options and output only;
the decision is dsguard.scheduling's (NodeShouldRunDaemonPod), the report dsguard.explain's."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import click
import orjson

from dsguard.cli import exits
from dsguard.cli.options import context_opt, kubeconfig_opt, output_opt
from dsguard.daemonset import as_mapping
from dsguard.documents import InputError, load_documents, load_nodes
from dsguard.explain import (
    DaemonSetExplanation,
    PodOnNode,
    explain_daemonset,
    explanation_document,
    pods_by_node,
)
from dsguard.scheduling import NodeInfo


@click.command()
@click.argument("daemonset", required=False, metavar="[NAMESPACE/NAME]")
@click.option(
    "-f",
    "--filename",
    "filenames",
    multiple=True,
    help="DaemonSet manifests (file, directory or -) instead of NAMESPACE/NAME (repeatable).",
)
@click.option(
    "--nodes",
    "node_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Nodes, e.g. `kubectl get nodes -o yaml` output (repeatable); default the cluster's.",
)
@kubeconfig_opt
@context_opt
@output_opt("table", "json", default="table")
def explain(
    daemonset: str | None,
    filenames: tuple[str, ...],
    node_files: tuple[str, ...],
    kubeconfig: str | None,
    context: str | None,
    output: str,
) -> None:
    """Every node: does the DaemonSet controller run the DaemonSet's pod there, and if not why
    (the taint not tolerated, the nodeSelector or node affinity term that fails, with the node's
    values); a pod that runs but is evicted after a NoExecute taint's tolerationSeconds is flagged.
    From the cluster (NAMESPACE/NAME) the pod each node has now is shown beside it.

    Exit 0; 2 on bad input (no such DaemonSet, unreadable files, cluster unreachable).
    """
    if bool(daemonset) == bool(filenames):
        raise click.UsageError(
            "give NAMESPACE/NAME (from the cluster) or -f FILE (a manifest), not both or neither"
        )
    try:
        nodes = load_nodes(list(node_files)) if node_files else None
    except InputError as e:
        raise exits.bad_file("--nodes", e, fix=exits.FIX_NODES_FILE) from None
    if filenames:
        try:
            docs = [d for d in load_documents(list(filenames)) if _is_daemonset(d.body)]
        except InputError as e:
            raise exits.BadInput(str(e)) from None
        if not docs:
            raise exits.BadInput(f"{', '.join(filenames)}: no apps/v1 DaemonSet found")
        if nodes is None:
            nodes = asyncio.run(_read_nodes(kubeconfig, context))
        found: list[tuple[DaemonSetExplanation, dict[str, PodOnNode] | None]] = [
            (explain_daemonset(d.body, nodes, source=d.source), None) for d in docs
        ]
    else:
        assert daemonset is not None
        namespace, sep, name = daemonset.partition("/")
        if not sep or not namespace or not name:
            raise click.BadParameter(f"{daemonset!r}: expected NAMESPACE/NAME", param_hint="NAMESPACE/NAME")
        found = [asyncio.run(_from_cluster(namespace, name, nodes, kubeconfig, context))]
    if output == "json":
        docs_out = [explanation_document(ex, pods) for ex, pods in found]
        click.echo(orjson.dumps(docs_out if filenames else docs_out[0], option=orjson.OPT_INDENT_2).decode())
        return
    for i, (ex, pods) in enumerate(found):
        if i:
            click.echo()
        _print_table(ex, pods)


def _is_daemonset(body: Mapping[str, Any]) -> bool:
    return body.get("kind") == "DaemonSet" and str(body.get("apiVersion", "")).startswith("apps/")


# --- the cluster ---------------------------------------------------------------------------------


async def _read_nodes(kubeconfig: str | None, context: str | None) -> list[NodeInfo]:
    from dsguard import kube

    api = await _client(kubeconfig, context)
    try:
        raw = await kube.list_explained("nodes", kube.list_scoped(api, "nodes", None))
    except kube.ListError as e:
        raise exits.BadInput(str(e), fix=exits.FIX_UNREACHABLE if e.unreachable else None) from None
    finally:
        await api.close()
    return sorted(map(NodeInfo.from_node, raw), key=lambda n: n.name)


async def _client(kubeconfig: str | None, context: str | None) -> Any:
    from dsguard import kube

    try:
        return await kube.api_client(kubeconfig, context)
    except kube.ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=True) from None


async def _from_cluster(
    namespace: str, name: str, nodes: list[NodeInfo] | None, kubeconfig: str | None, context: str | None
) -> tuple[DaemonSetExplanation, dict[str, PodOnNode]]:
    from dsguard import kube

    api = await _client(kubeconfig, context)
    try:
        lists = [
            kube.list_explained(
                "daemonsets",
                kube.list_scoped(api, "daemonsets", namespace, field_selector=f"metadata.name={name}"),
            ),
            kube.list_explained("pods", kube.list_scoped(api, "pods", namespace)),
        ]
        if nodes is None:
            lists.append(kube.list_explained("nodes", kube.list_scoped(api, "nodes", None)))
        results = await asyncio.gather(*lists)
    except kube.ListError as e:
        raise exits.BadInput(str(e), fix=exits.FIX_UNREACHABLE if e.unreachable else None) from None
    finally:
        await api.close()
    if not results[0]:
        raise exits.BadInput(
            f"DaemonSet {namespace}/{name} not found", fix=f"`kubectl get daemonsets -n {namespace}`"
        )
    obj = results[0][0]
    if nodes is None:
        nodes = sorted(map(NodeInfo.from_node, results[2]), key=lambda n: n.name)
    uid = str(as_mapping(obj.get("metadata")).get("uid") or "")
    return explain_daemonset(obj, nodes, source="cluster"), pods_by_node(results[1], uid)


# --- output --------------------------------------------------------------------------------------


def _print_table(e: DaemonSetExplanation, pods: Mapping[str, PodOnNode] | None) -> None:
    head = f"DaemonSet {e.ref}" + (f" ({e.source})" if e.source and e.source != "cluster" else "")
    summary = f"runs on {e.running} of {len(e.nodes)} node(s)"
    if e.short_lived:
        summary += f", {e.short_lived} of them evicted soon after start (NoExecute tolerationSeconds)"
    click.echo(f"{click.style(head, bold=True)}: {summary}")
    click.echo(
        "The DaemonSet controller adds to every pod: " + ", ".join(str(t) for t in e.added_tolerations)
    )
    rows: list[Sequence[str]] = []
    for n in e.nodes:
        if n.runs and n.evicted_after is not None:
            runs = f"yes, evicted after {n.evicted_after}s"
        else:
            runs = "yes" if n.runs else "no"
        why = "; ".join(r.message for r in n.reasons) or "-"
        row = [n.node, runs]
        if pods is not None:
            pod = pods.get(n.node)
            row.append(str(pod) if pod else "-")
        rows.append([*row, why])
    header = ["NODE", "RUNS", *(["POD NOW"] if pods is not None else []), "WHY NOT / WARNING"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        line = "  ".join([*cells, r[-1]])
        click.echo(click.style(line, bold=True) if r is header else line)
    if not e.nodes:
        click.echo("(no nodes to explain)")
