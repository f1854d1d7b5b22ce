"""`dsguard check -o sarif` and `-o junit`: the check's verdicts in the formats CI systems read.

SARIF 2.1.0 (code scanning: GitHub, GitLab, Azure DevOps): one result per finding, at the manifest
file and the line of the field at fault. JUnit XML (every CI's test report view): one test suite
per DaemonSet, one test case per DaemonSet and policy, failing with the policy's messages.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dsguard.documents import Document
from dsguard.rules.engine import Evaluation, PolicyFinding

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
DOCS = "docs/policy.md"

# rule id -> (short description, help). The ids are the rules' names (RULE in dsguard/rules/*).
RULE_HELP: dict[str, tuple[str, str]] = {
    "tolerations": (
        "The pod template lacks a toleration the DaemonSetPolicy requires",
        "The DaemonSetPolicy's spec.tolerations.required lists tolerations every matching DaemonSet "
        "must carry (so its pods run on tainted pools). Add them to spec.template.spec.tolerations, "
        "or let the mutating webhook add them (tolerations.onMissing: Add).",
    ),
    "coverage": (
        "The DaemonSet would run no pod on nodes it must cover",
        "The DaemonSetPolicy's spec.tolerations.coverage.nodeSelector picks nodes that must each run "
        "a pod. A taint the pod template does not tolerate, or a nodeSelector / node affinity term "
        "that does not match, keeps the DaemonSet controller off them. `dsguard explain` shows every "
        "node and why.",
    ),
    "versions": (
        "An agent image version is incompatible with the nodes' kubelet versions",
        "The DaemonSetPolicy's spec.versions.rules say which image versions run on which Kubernetes "
        "versions. Use an image version the rule allows for the kubelets the DaemonSet lands on, or "
        "keep it off those nodes with a nodeSelector or node affinity.",
    ),
    "rollout": (
        "The rollout is faster than the DaemonSetPolicy allows",
        "The DaemonSetPolicy's spec.rollout caps spec.updateStrategy.rollingUpdate.maxUnavailable "
        "and maxSurge and sets a floor for spec.minReadySeconds, so a bad build cannot reach many "
        "nodes at once. Lower the caps (or let the mutating webhook clamp them: onExceed: Clamp).",
    ),
}


@dataclass(frozen=True)
class Checked:
    """One DaemonSet manifest and its verdict."""

    doc: Document
    ev: Evaluation


def _version() -> str:
    try:
        return metadata.version("dsguard")
    except metadata.PackageNotFoundError:  # run from a checkout without install
        return "0.0.0"


def _uri(path: str) -> str | None:
    """A relative path stays relative (code scanning resolves it against the checkout); an
    absolute one becomes a file: URI; stdin has none."""
    if not path or path == "<stdin>":
        return None
    p = Path(path)
    return p.as_uri() if p.is_absolute() else quote(p.as_posix())  # a space is %20 in a URI


def _findings(ev: Evaluation) -> list[tuple[str, PolicyFinding]]:
    """(SARIF level, finding): denials are errors, warnings warnings, Audit findings notes."""
    return [
        *(("error", f) for f in ev.denials),
        *(("warning", f) for f in ev.warned),
        *(("note", f) for f in ev.audits),
    ]


def sarif(checked: Sequence[Checked]) -> dict[str, Any]:
    rule_ids = list(RULE_HELP)
    results: list[dict[str, Any]] = []
    for c in checked:
        ref = c.ev.ds.ref
        uri = _uri(c.doc.path)
        for level, f in _findings(c.ev):
            location: dict[str, Any] = {
                "logicalLocations": [{"name": c.ev.ds.name, "fullyQualifiedName": f"DaemonSet/{ref}"}]
            }
            if uri is not None:
                physical: dict[str, Any] = {"artifactLocation": {"uri": uri}}
                line = c.doc.line_of(f.field)
                if line > 0:
                    physical["region"] = {"startLine": line}
                location["physicalLocation"] = physical
            fingerprint = hashlib.sha256(f"{ref}\0{f.policy}\0{f.rule}\0{f.field}".encode()).hexdigest()
            result: dict[str, Any] = {
                "ruleId": f.rule,
                "level": level,
                "message": {"text": f'DaemonSet {ref}: DaemonSetPolicy "{f.policy}": {f.message}'},
                "locations": [location],
                # Stable across edits that move lines: the same finding stays the same alert.
                "partialFingerprints": {"dsguardFinding/v1": fingerprint},
                "properties": {"policy": f.policy, "daemonset": ref, "field": f.field},
            }
            if f.rule in RULE_HELP:
                result["ruleIndex"] = rule_ids.index(f.rule)
            results.append(result)
    rules = [
        {
            "id": rule,
            "name": rule.capitalize(),
            "shortDescription": {"text": short},
            "fullDescription": {"text": text},
            "help": {"text": f"{text} See {DOCS}.", "markdown": f"{text} See `{DOCS}`."},
            "defaultConfiguration": {"level": "error"},
            "properties": {"tags": ["kubernetes", "daemonset"]},
        }
        for rule, (short, text) in RULE_HELP.items()
    ]
    artifacts = sorted({u for c in checked if (u := _uri(c.doc.path)) is not None})
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "dsguard",
                        "version": _version(),
                        "semanticVersion": _version(),
                        "rules": rules,
                    }
                },
                "artifacts": [{"location": {"uri": u}} for u in artifacts],
                "results": results,
                "columnKind": "unicodeCodePoints",
            }
        ],
    }


def junit(checked: Sequence[Checked]) -> str:
    """JUnit XML: a suite per DaemonSet (its file in `file`), a case per matching policy (or one
    passing case when no policy matches it)."""
    root = ET.Element("testsuites", name="dsguard check")
    total = failed = 0
    for c in checked:
        ref = c.ev.ds.ref
        suite = ET.SubElement(root, "testsuite", name=f"DaemonSet {ref}", file=c.doc.path or c.doc.source)
        cases = 0
        failures = 0
        for policy in c.ev.policies or ("(no DaemonSetPolicy matches)",):
            cases += 1
            case = ET.SubElement(suite, "testcase", name=policy, classname=f"DaemonSet {ref}", time="0")
            denied = [f for f in c.ev.denials if f.policy == policy]
            if denied:
                failures += 1
                lines = [f"line {c.doc.line_of(f.field)}: {f.message}" for f in denied]
                failure = ET.SubElement(
                    case,
                    "failure",
                    type=",".join(dict.fromkeys(f.rule for f in denied)),
                    message=denied[0].message,
                )
                failure.text = f"{c.doc.source}\n" + "\n".join(lines)
            other = [f"warning ({f.rule}): {f.message}" for f in c.ev.warned if f.policy == policy]
            other += [f"audit ({f.rule}): {f.message}" for f in c.ev.audits if f.policy == policy]
            if other:
                ET.SubElement(case, "system-out").text = "\n".join(other)
        suite.set("tests", str(cases))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("time", "0")
        total += cases
        failed += failures
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _XML_ILLEGAL.sub(
        "\ufffd", ET.tostring(root, encoding="unicode")
    )


# Characters XML 1.0 forbids (a YAML string can hold them, escaped): ElementTree writes them as
# they are, and no JUnit reader would parse the report.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
