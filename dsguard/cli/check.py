"""`dsguard check`: the webhook's rules on manifests, offline, and its printer."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from dsguard.cli import exits
from dsguard.daemonset import DaemonSetView
from dsguard.daemonset_shape import MAX_DEPTH, daemonset_shape_errors, too_deep
from dsguard.documents import Document, InputError, load_documents, load_nodes, load_policies
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
    _check_shapes(docs)
    facts = ClusterFacts(nodes=tuple(nodes), server_version=kubernetes_version)
    results: list[dict[str, Any]] = []
    skipped = 0
    for doc in docs:
        body = doc.body
        if not _is_daemonset(body):
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


def _is_daemonset(body: dict[str, Any]) -> bool:
    return body.get("kind") == "DaemonSet" and str(body.get("apiVersion", "")).startswith("apps/")


def _check_shapes(docs: list[Document]) -> None:
    """Exit 2 naming the file, the DaemonSet, the field and the fix for a field the rules can't
    read (the webhook's boundary, dsguard.daemonset_shape): the apiserver would refuse it too."""
    problems: list[str] = []
    fixes: list[str] = []
    for doc in docs:
        if not _is_daemonset(doc.body):
            continue
        if too_deep(doc.body):
            problems.append(f"{doc.source}: nests more than {MAX_DEPTH} levels deep")
            fixes.append("give a DaemonSet manifest")
            continue
        errors = daemonset_shape_errors(doc.body)
        if errors:
            ref = DaemonSetView.from_object(doc.body).ref
            problems += [f"{doc.source}: DaemonSet {ref}: {e.path}: {e.problem}" for e in errors]
            fixes += [e.fix for e in errors]
    if problems:
        raise exits.BadInput("; ".join(problems), fix="; ".join(dict.fromkeys(fixes)))


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
