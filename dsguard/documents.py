"""Reading Kubernetes YAML from files, directories and stdin, for the offline commands."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dsguard.daemonset_shape import MAX_DEPTH, daemonset_shape_errors, too_deep
from dsguard.fielderrors import InvalidSpec
from dsguard.policy import Policy, parse_policy
from dsguard.scheduling import NodeInfo

_YAML_SUFFIXES = (".yaml", ".yml", ".json")


class InputError(Exception):
    """Bad input a user can fix: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Document:
    source: str  # "file.yaml#2" (1-based document index)
    body: dict[str, Any]


def _files(target: str) -> Iterator[tuple[str, str]]:
    if target == "-":
        yield "<stdin>", sys.stdin.read()
        return
    path = Path(target)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in _YAML_SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"{target}: directory has no .yaml, .yml or .json files")
        for p in found:
            yield str(p), p.read_text()
    elif path.is_file():
        yield str(path), path.read_text()
    else:
        raise InputError(f"{target}: no such file or directory")


def load_documents(targets: list[str]) -> Iterator[Document]:
    """Every YAML document; `kind: List` and `*List` kinds are unpacked into their items."""
    for name, text in _files_all(targets):
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            raise InputError(f"{name}: not valid YAML: {e}") from None
        except RecursionError:  # PyYAML composes nested nodes recursively
            raise InputError(f"{name}: nested too deeply to be a Kubernetes object") from None
        for i, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise InputError(
                    f"{name}#{i}: expected a Kubernetes object (a mapping), got {type(doc).__name__}"
                )
            kind = str(doc.get("kind", ""))
            if kind.endswith("List") and isinstance(doc.get("items"), list):
                for j, item in enumerate(doc["items"]):
                    if isinstance(item, dict):
                        yield Document(f"{name}#{i}.items[{j}]", item)
            else:
                yield Document(f"{name}#{i}", doc)


def _files_all(targets: list[str]) -> Iterator[tuple[str, str]]:
    for t in targets:
        try:
            yield from _files(t)
        except OSError as e:
            raise InputError(f"{t}: {e.strerror or e}") from None


def is_daemonset(body: dict[str, Any]) -> bool:
    return body.get("kind") == "DaemonSet" and str(body.get("apiVersion", "")).startswith("apps/")


def check_daemonsets(docs: Iterable[Document]) -> None:
    """InputError naming the file, the DaemonSet, the field and the fix for every field the rules
    can't read (dsguard.daemonset_shape, the webhook's boundary): the apiserver refuses them too."""
    problems: list[str] = []
    for doc in docs:
        body = doc.body
        if not is_daemonset(body):
            continue
        if too_deep(body):
            problems.append(f"{doc.source}: nests more than {MAX_DEPTH} levels deep; fix: give a DaemonSet")
            continue
        meta = body.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        names = meta.get("namespace"), meta.get("name")
        ref = "/".join(n if isinstance(n, str) else "?" for n in names) if names[1] else "(no name)"
        problems += [f"{doc.source}: DaemonSet {ref}: {e}" for e in daemonset_shape_errors(body)]
    if problems:
        raise InputError("\n".join(problems))


def load_policies(targets: list[str]) -> list[Policy]:
    policies: list[Policy] = []
    errors: list[str] = []
    for doc in load_documents(targets):
        try:
            policies.append(parse_policy(doc.body, source=doc.source))
        except InvalidSpec as e:
            errors.append(str(e))
    if errors:
        raise InputError("invalid DaemonSetPolicy:\n" + "\n".join(errors))
    names = [p.name for p in policies]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"DaemonSetPolicy names must be unique; repeated: {', '.join(dupes)}")
    return policies


def load_nodes(targets: list[str]) -> list[NodeInfo]:
    """Nodes from `kubectl get nodes -o yaml` output or Node manifests."""
    nodes = []
    for doc in load_documents(targets):
        if doc.body.get("kind") != "Node":
            raise InputError(f"{doc.source}: expected kind Node, got {doc.body.get('kind')!r}")
        nodes.append(NodeInfo.from_node(doc.body))
    return nodes
