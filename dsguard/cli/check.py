"""`dsguard check`: the webhook's rules on manifests, offline, and its printer."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from dsguard.cli import ci_reports, exits
from dsguard.cli.ci_reports import Checked
from dsguard.cli.options import note_skipped
from dsguard.documents import (
    InputError,
    check_daemonsets,
    is_daemonset,
    load_documents,
    load_nodes,
    load_policies,
)
from dsguard.facts import ClusterFacts
from dsguard.rules.engine import PolicyFinding


@click.command()
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    required=True,
    type=str,
    envvar="DSGUARD_POLICY",
    help="DaemonSetPolicy file or directory (repeatable; or $DSGUARD_POLICY, space-separated).",
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
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json", "sarif", "junit"]),
    default="text",
    show_default=True,
    help="sarif: SARIF 2.1.0 for code scanning (each finding at its manifest line); junit: JUnit XML.",
)
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
        policy_set = load_policies(list(policy_files))
    except InputError as e:
        raise exits.bad_file("--policy", e, fix=exits.FIX_POLICY_FILE) from None
    policies = policy_set.policies
    note_skipped("--policy", policy_set)
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
    checked: list[Checked] = []
    skipped = 0
    for doc in docs:
        body = doc.body
        if not is_daemonset(body):
            skipped += 1
            continue
        checked.append(Checked(doc, evaluate(policies, body, facts=facts)))
    if output == "sarif":
        click.echo(orjson.dumps(ci_reports.sarif(checked), option=orjson.OPT_INDENT_2).decode())
    elif output == "junit":
        click.echo(ci_reports.junit(checked))
    else:
        results = [_result(c) for c in checked]
        if output == "json":
            click.echo(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        else:
            _print_text(results, skipped)
    sys.exit(exits.PROBLEM if any(not c.ev.allowed for c in checked) else exits.OK)


def _finding(c: Checked, f: PolicyFinding) -> dict[str, Any]:
    d = {
        "policy": f.policy,
        "rule": f.rule,
        "message": f.message,
        "field": f.field,
        "line": c.doc.line_of(f.field),
    }
    if f.nodes is not None:  # every node, where the message names the first 10
        d["nodes"] = f.nodes.to_dicts()
    return d


def _result(c: Checked) -> dict[str, Any]:
    ev = c.ev
    return {
        "kind": "DaemonSet",
        "namespace": ev.ds.namespace,
        "name": ev.ds.name,
        "source": c.doc.source,
        "allowed": ev.allowed,
        "policies": list(ev.policies),
        "violations": [_finding(c, d) for d in ev.denials],
        "warnings": [*ev.notices, *ev.warnings],
        "audit": [_finding(c, a) for a in ev.audits],
        "patch": ev.patch,
    }


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
