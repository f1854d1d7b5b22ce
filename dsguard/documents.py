"""Reading Kubernetes YAML from files, directories and stdin, for the offline commands."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsguard.daemonset_shape import MAX_DEPTH, daemonset_shape_errors, too_deep
from dsguard.fielderrors import InvalidSpec
from dsguard.policy import KIND as POLICY_KIND
from dsguard.policy import Policy, parse_policy
from dsguard.scheduling import NodeInfo

_YAML_SUFFIXES = (".yaml", ".yml", ".json")


class InputError(Exception):
    """Bad input a user can fix: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Document:
    source: str  # "file.yaml#2" (1-based document index)
    body: dict[str, Any]
    path: str = ""  # the file as given ("<stdin>" for -)
    # The parser's node of the document: line numbers for CI reports (None when built in code).
    node: yaml.Node | None = field(default=None, compare=False, repr=False)

    def line_of(self, field_path: str) -> int:
        """The 1-based line of `field_path` ("spec.template.spec.containers[0].image") in the
        file: of the deepest part of it the manifest has (a field a mutation would add is
        reported at its parent); 0 when unknown."""
        node = self.node
        if node is None:
            return 0
        line = node.start_mark.line + 1
        for token in _FIELD_TOKENS.findall(field_path):
            if token.startswith("["):
                index = int(token[1:-1])
                if not isinstance(node, yaml.SequenceNode) or index >= len(node.value):
                    break
                node = node.value[index]
                line = node.start_mark.line + 1
                continue
            if not isinstance(node, yaml.MappingNode):
                break
            hit = next(
                ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == token), None
            )
            if hit is None:
                break
            line = hit[0].start_mark.line + 1
            node = hit[1]
        return line


# "spec", "containers", "[0]": field names never hold dots or brackets here (label keys would).
_FIELD_TOKENS = re.compile(r"\[\d+\]|[^.\[\]]+")


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


def _parse_all(name: str, text: str) -> list[tuple[Any, yaml.Node]]:
    """safe_load_all, keeping each document's node (its line numbers) beside its data."""
    loader = yaml.SafeLoader(text)
    try:
        out: list[tuple[Any, yaml.Node]] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:  # check_node() said there is one
                out.append((loader.construct_document(node), node))
        return out
    except yaml.YAMLError as e:
        raise InputError(f"{name}: not valid YAML: {e}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise InputError(f"{name}: nested too deeply to be a Kubernetes object") from None
    finally:
        loader.dispose()


def _item_nodes(node: yaml.Node) -> list[yaml.Node | None]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "items" and isinstance(v, yaml.SequenceNode):
                return list(v.value)
    return []


def load_documents(targets: list[str]) -> Iterator[Document]:
    """Every YAML document; `kind: List` and `*List` kinds are unpacked into their items."""
    for name, text in _files_all(targets):
        for i, (doc, node) in enumerate(_parse_all(name, text), start=1):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise InputError(
                    f"{name}#{i}: expected a Kubernetes object (a mapping), got {type(doc).__name__}"
                )
            kind = str(doc.get("kind", ""))
            if kind.endswith("List") and isinstance(doc.get("items"), list):
                nodes = _item_nodes(node)
                for j, item in enumerate(doc["items"]):
                    if isinstance(item, dict):
                        item_node = nodes[j] if j < len(nodes) else None
                        yield Document(f"{name}#{i}.items[{j}]", item, name, item_node)
            else:
                yield Document(f"{name}#{i}", doc, name, node)


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


@dataclass(frozen=True)
class PolicySet:
    """The DaemonSetPolicies of --policy files and folders, and what else those held."""

    policies: list[Policy]
    # "file#n (Kind)" of every document that is not a DaemonSetPolicy: a folder as teams keep it
    # (kustomization.yaml, a Namespace, the CRD) is read as it is.
    skipped: tuple[str, ...] = ()

    def skipped_note(self) -> str:
        """ "; 1 other document skipped (manifests/kustomization.yaml#1 Kustomization)" or ""."""
        if not self.skipped:
            return ""
        shown = ", ".join(self.skipped[:3]) + (
            f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        )
        return f"{len(self.skipped)} other document(s) skipped ({shown})"


def load_policies(targets: list[str]) -> PolicySet:
    """Every DaemonSetPolicy in targets (files, folders, -); documents of other kinds are skipped
    and counted, a document without a kind is read as a policy (and fails if it is not one)."""
    policies: list[Policy] = []
    skipped: list[str] = []
    errors: list[str] = []
    for doc in load_documents(targets):
        kind = doc.body.get("kind")
        if kind is not None and kind != POLICY_KIND:
            skipped.append(f"{doc.source} {kind}")
            continue
        try:
            policies.append(parse_policy(doc.body, source=doc.source))
        except InvalidSpec as e:
            errors.append(str(e))
    if errors:
        raise InputError("invalid DaemonSetPolicy:\n" + "\n".join(errors))
    if not policies and skipped:
        raise InputError(
            f"{', '.join(targets)}: no {POLICY_KIND} found; {len(skipped)} other document(s) skipped "
            f"({', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''})"
        )
    names = [p.name for p in policies]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"DaemonSetPolicy names must be unique; repeated: {', '.join(dupes)}")
    return PolicySet(policies, tuple(skipped))


def load_nodes(targets: list[str]) -> list[NodeInfo]:
    """Nodes from `kubectl get nodes -o yaml` output or Node manifests."""
    nodes = []
    for doc in load_documents(targets):
        if doc.body.get("kind") != "Node":
            raise InputError(f"{doc.source}: expected kind Node, got {doc.body.get('kind')!r}")
        nodes.append(NodeInfo.from_node(doc.body))
    return nodes
