"""`dsguard check`: the webhook's rules on manifests, offline, and its printer."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from dsguard.cli import exits
from dsguard.documents import (
    InputError,
    check_daemonsets,
    is_daemonset,
    load_documents,
    load_nodes,
    load_policies,
)
from dsguard.facts import ClusterFacts


@click.command()
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    required=True,
    type=str,
    help="DaemonSetPolicy file or directory (repeatable).",
)
@click.option(
    "--nodes",
    "node_files",
    multiple=True,
    type=str,
    help="Nodes to judge against, e.g. `kubectl get nodes -o yaml` output (repeatable).",
)
@click.option(
    "--kubernetes-version",
    default=None,
    help="The apiserver version, used by version rules when no nodes are given.",
)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.argument("manifests", nargs=-1, required=True)
def check(
    policy_files: tuple[str, ...],
    node_files: tuple[str, ...],
    kubernetes_version: str | None,
    output: str,
    manifests: tuple[str, ...],
) -> None:
    """Judge DaemonSet manifests offline with the webhook's rules (MANIFEST: file, directory or -).

    Exit 0 when all are allowed, 1 when any is denied, 2 on bad input.
    """
    from dsguard.rules.engine import evaluate

    try:
        policies = load_policies(list(policy_files))
    except InputError as e:
        raise exits.bad_file("--policy", e, fix=exits.FIX_POLICY_FILE) from None
    try:
        nodes = load_nodes(list(node_files)) if node_files else []
    except InputError as e:
        raise exits.bad_file("--nodes", e, fix=exits.FIX_NODES_FILE) from None
    try:
        docs = list(load_documents(list(manifests)))
    except InputError as e:
        raise exits.BadInput(str(e)) from None
    try:
        check_daemonsets(docs)
    except InputError as e:
        raise exits.BadInput(str(e)) from None
    facts = ClusterFacts(nodes=tuple(nodes), server_version=kubernetes_version)
    results: list[dict[str, Any]] = []
    skipped = 0
    for doc in docs:
        body = doc.body
        if not is_daemonset(body):
            skipped += 1
            continue
        ev = evaluate(policies, body, facts=facts)
        results.append(
            {
                "kind": "DaemonSet",
                "namespace": ev.ds.namespace,
                "name": ev.ds.name,
                "source": doc.source,
                "allowed": ev.allowed,
                "policies": list(ev.policies),
                "violations": [
                    {"policy": d.policy, "rule": d.rule, "message": d.message} for d in ev.denials
                ],
                "warnings": [*ev.notices, *ev.warnings],
                "audit": [{"policy": a.policy, "rule": a.rule, "message": a.message} for a in ev.audits],
                "patch": ev.patch,
            }
        )
    if output == "json":
        click.echo(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_text(results, skipped)
    sys.exit(exits.PROBLEM if any(not r["allowed"] for r in results) else exits.OK)


def _print_text(results: list[dict[str, Any]], skipped: int) -> None:
    for r in results:
        verdict = (
            click.style("ALLOWED", fg="green") if r["allowed"] else click.style("DENIED", fg="red", bold=True)
        )
        click.echo(f"{verdict} DaemonSet {r['namespace']}/{r['name']} ({r['source']})")
        for v in r["violations"]:
            click.echo(f'  ✗ DaemonSetPolicy "{v["policy"]}" ({v["rule"]}): {v["message"]}')
        for w in r["warnings"]:
            click.echo(f"  ! {w}")
        for a in r["audit"]:
            click.echo(f'  · audit: DaemonSetPolicy "{a["policy"]}" ({a["rule"]}): {a["message"]}')
        for op in r["patch"]:
            value = f" {orjson.dumps(op['value']).decode()}" if "value" in op else ""
            click.echo(f"  ~ patch: {op['op']} {op['path']}{value}")
    denied = sum(1 for r in results if not r["allowed"])
    click.echo(
        f"{len(results)} DaemonSet(s) checked: {len(results) - denied} allowed, {denied} denied"
        + (f"; {skipped} other document(s) skipped" if skipped else "")
    )
