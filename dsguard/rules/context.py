"""Per-review context shared by the rules: the DaemonSet, the nodes it would run on, and the
copy-on-write edits the mutating rules make to it."""

from __future__ import annotations

import math
import operator
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field  # `field` is also a Finding field's name
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol, TypeVar

import orjson

from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.scheduling import NodeInfo, Placement, PodPlacement


class Severity(StrEnum):
    VIOLATION = "violation"  # denied, warned or recorded according to the policy's enforcement
    WARNING = "warning"  # never denies (e.g. unknownVersion: Warn)


class SpecPart(StrEnum):
    """What part of the spec a rule judges: on UPDATE, a rule is enforced only when it changed."""

    TEMPLATE = "template"  # spec.template
    ROLLOUT = "rollout"  # spec.template or spec.updateStrategy (a template change starts a rollout)


TEMPLATE = SpecPart.TEMPLATE
ROLLOUT = SpecPart.ROLLOUT


class NodeList(Protocol):
    """Every node a finding is about, as data (`dsguard check -o json`), built only when asked:
    a review on a 5,000-node cluster must not pay for a list nobody reads."""

    def to_dicts(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    severity: Severity = Severity.VIOLATION
    # The DaemonSet field at fault, e.g. "spec.template.spec.containers[0].image": where CI
    # reports (SARIF) point, on the line the manifest has it.
    field: str = ""
    # Every node the finding is about (the message names the first 10): coverage's nodes without
    # a pod and why, versions' nodes and kubelets. Not part of its identity.
    nodes: NodeList | None = dataclass_field(default=None, compare=False)


# -- placements: one walk over the nodes per pod spec and facts snapshot ------------------------


T = TypeVar("T")
_DERIVED_LIMIT = 64


Pair = tuple[NodeInfo, Placement]


@dataclass(frozen=True)
class NodeStep:
    """One node changed (old and new), joined (no old) or left (no new), with where one walk's
    pod spec places it: what a derived result's patch reads (NodeWalk.derive)."""

    old: Pair | None
    new: Pair | None


def _pair_name(pair: Pair) -> str:
    return pair[0].name


def _node_name(node: NodeInfo) -> str:
    return node.name


S = TypeVar("S")


def splice(
    items: tuple[S, ...], name: str, key: Callable[[S], str], old: bool, new: tuple[S, ...]
) -> tuple[S, ...]:
    """items (sorted by key, names unique) with the item named `name` (if old) replaced by new
    (none or one item): a bisect and two slices, not a pass."""
    i = bisect_left(items, name, key=key)
    end = i + 1 if old else i
    if old and (i >= len(items) or key(items[i]) != name):
        raise KeyError(name)
    return items[:i] + new + items[end:]


# What a patch returns when the derived result must be computed again on its next use.
RECOMPUTE: Any = object()


@dataclass(frozen=True)
class NodeWalk:
    """Where one pod spec's pods go on every node of one facts snapshot. The lists are never
    changed but by PlacementCache.advance, which moves a walk to the next node list in place."""

    placement: PodPlacement
    placements: list[Pair]  # in facts.nodes order
    targeted: list[NodeInfo]  # the nodes that should run a pod
    _derived: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    # key -> how to patch the derived result for one node step (derive's `patch`)
    _patches: dict[Hashable, Callable[[Any, NodeStep], Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, facts: ClusterFacts, pod_spec: Mapping[str, Any]) -> NodeWalk:
        placement = PodPlacement.from_pod_spec(pod_spec)
        evaluate = placement.evaluate
        pairs = [(n, evaluate(n)) for n in facts.nodes]
        return cls(placement, pairs, [n for n, p in pairs if p.should_run])

    def derive(
        self,
        key: Hashable,
        compute: Callable[[NodeWalk], T],
        patch: Callable[[T, NodeStep], T] | None = None,
    ) -> T:
        """compute(self), memoised with the walk: a per-node pass a rule needs on every review
        (e.g. which nodes a coverage selector picks) is then paid once per snapshot and spec.
        key must name everything compute reads besides the walk, and the result must not be
        mutated. patch(result, step): the result after one node step (`advance`), equal to what
        compute would give then, or RECOMPUTE; without it the result is computed again."""
        if key in self._derived:
            result: T = self._derived[key]
            return result
        result = compute(self)
        if len(self._derived) < _DERIVED_LIMIT:  # keys come from policies: a handful in practice
            self._derived[key] = result
            if patch is not None:
                self._patches[key] = patch
        return result

    def advance(self, old: NodeInfo | None, new: NodeInfo | None) -> None:
        """Move this walk, in place, to the node list with one node changed (old and new, the same
        name), joined (no old) or left (no new), for node lists sorted by name: bisects, a slot
        set or a list insert/delete (a memmove), one evaluation, the derived results patched.
        KeyError if old is not where it should be (the walk is then unusable)."""
        node = new if new is not None else old
        assert node is not None, "a step changes a node"
        name = node.name
        placements, targeted = self.placements, self.targeted
        i = bisect_left(placements, name, key=_pair_name)
        before = placements[i] if old is not None and i < len(placements) else None
        if old is not None and (before is None or before[0] != old):
            raise KeyError(name)
        after = (new, self.placement.evaluate(new)) if new is not None else None
        _put(placements, i, before is not None, after)
        was = before is not None and before[1].should_run
        now = after is not None and after[1].should_run
        if was or now:
            j = bisect_left(targeted, name, key=_node_name)
            if was and (j >= len(targeted) or targeted[j] != old):
                raise KeyError(name)
            _put(targeted, j, was, new if now else None)
        step = NodeStep(before, after)
        for key, patch in list(self._patches.items()):
            result = patch(self._derived[key], step)
            if result is RECOMPUTE:
                del self._derived[key], self._patches[key]
            else:
                self._derived[key] = result
        for key in [k for k in self._derived if k not in self._patches]:
            del self._derived[key]


def _put(items: list[Any], i: int, replace: bool, item: Any) -> None:
    """items[i] replaced by item (replace), or item inserted at i; None: deleted (or nothing)."""
    if replace:
        if item is None:
            del items[i]
        else:
            items[i] = item
    elif item is not None:
        items.insert(i, item)


_PLACEMENT_FIELDS = ("tolerations", "nodeSelector", "nodeName", "hostNetwork")
_AFFINITY = "affinity"
_NODE_AFFINITY = "nodeAffinity"
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
# Anything orjson would render like another value (datetimes, subclasses of str/int/dict/list,
# dataclasses) goes to `default`, which refuses it: such a spec is walked uncached.
_KEY_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _refuse(value: object) -> Any:
    raise TypeError(f"no canonical form for {type(value).__name__}")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def placement_key(pod_spec: Mapping[str, Any]) -> bytes | None:
    """What PodPlacement.from_pod_spec reads of a pod spec, canonicalized; None when that has no
    exact JSON form. Only present fields are keyed, each level under its own name: telling apart
    specs that place alike costs a miss, never a wrong answer."""
    parts = {k: pod_spec[k] for k in _PLACEMENT_FIELDS if k in pod_spec}
    affinity = pod_spec.get(_AFFINITY)
    if isinstance(affinity, Mapping):
        node_affinity = affinity.get(_NODE_AFFINITY)
        if isinstance(node_affinity, Mapping):
            if _REQUIRED in node_affinity:
                parts[_REQUIRED] = node_affinity[_REQUIRED]
        elif node_affinity is not None:
            parts[_NODE_AFFINITY] = node_affinity
    elif affinity is not None:
        parts[_AFFINITY] = affinity
    try:
        key = orjson.dumps(parts, default=_refuse, option=_KEY_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError: also non-str keys, ints over 64 bits
        return None
    # orjson writes NaN and ±Infinity as null (YAML has .nan and .inf): rare, so look only then.
    if b"null" in key and _has_non_finite(parts):
        return None
    return key


class PlacementCache:
    """A pure memo of NodeWalks across reviews, for the current node list only.

    A walk depends on the nodes alone, not on namespaces or the apiserver version, and the
    watched cache keeps the same nodes tuple across snapshots until a node changes: so a new
    snapshot made for a namespace change (every CI namespace created or deleted) keeps the walks.
    The tuple is held strongly: while it is the key, no other tuple can get its address, so a
    new node list can never be taken for the old one. The lock keeps the LRU consistent if the
    offline CLI or a test calls from threads; walks themselves run outside it.
    """

    def __init__(self, maxsize: int = 256, max_placements: int = 500_000) -> None:
        self.maxsize = maxsize
        # A walk holds a (node, placement) pair per node, ~70 bytes: on a 5,000-node cluster 256
        # walks would pin ~85 MiB, so fewer are kept there (this bounds the total near 35 MiB).
        self.max_placements = max_placements
        self._nodes: tuple[NodeInfo, ...] | None = None
        self._walks: OrderedDict[bytes, NodeWalk] = OrderedDict()
        self._sorted: tuple[NodeInfo, ...] | None = None  # a node list known sorted by name
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def walk(self, facts: ClusterFacts, pod_spec: Mapping[str, Any]) -> NodeWalk:
        key = placement_key(pod_spec)
        if key is None:
            return NodeWalk.of(facts, pod_spec)
        with self._lock:
            if self._nodes is not facts.nodes:
                self._walks.clear()
                self._nodes = facts.nodes
                self._sorted = None
            found = self._walks.get(key)
            if found is not None:
                self._walks.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        walk = NodeWalk.of(facts, pod_spec)
        with self._lock:
            # Another node list (or a clear) may have come meanwhile: never file under it.
            if self._nodes is facts.nodes:
                self._walks[key] = walk
                limit = max(1, min(self.maxsize, self.max_placements // max(1, len(facts.nodes))))
                while len(self._walks) > limit:
                    self._walks.popitem(last=False)
        return walk

    def advance(
        self,
        old_nodes: tuple[NodeInfo, ...],
        new_nodes: tuple[NodeInfo, ...],
        changes: Sequence[tuple[NodeInfo | None, NodeInfo | None]],
    ) -> bool:
        """Carry the walks of old_nodes over to new_nodes, patched for the (old, new) node
        changes that make one the other (NodeWalk.advance) rather than walked again: a node
        change then costs each kept walk bisects and a list edit, not a pass over every node.
        Only for node lists sorted by name (as the watched cache keeps them), and only if the
        changes give exactly new_nodes; otherwise the walks are dropped. Returns whether they
        were kept. The walks move in place: one handed out before describes new_nodes after, so
        only a cache whose walks are read between advances (the audit's own) may use this."""
        with self._lock:
            kept = self._advance(old_nodes, new_nodes, changes)
            if not kept:
                self._walks.clear()
                self._nodes = new_nodes
                self._sorted = None
            return kept

    def _advance(
        self,
        old_nodes: tuple[NodeInfo, ...],
        new_nodes: tuple[NodeInfo, ...],
        changes: Sequence[tuple[NodeInfo | None, NodeInfo | None]],
    ) -> bool:
        if self._nodes is not old_nodes or len(changes) > _MAX_STEPS:
            return False
        if self._sorted is not old_nodes:
            names = [n.name for n in old_nodes]
            if not all(map(operator.lt, names, names[1:])):
                return False
        nodes = old_nodes
        try:
            for old, new in changes:
                if old is not None and new is not None and old.name != new.name:
                    return False
                node = new if new is not None else old
                if node is None:
                    return False
                name = node.name
                if old is not None:  # `splice` checks the name; the node there must equal old
                    i = bisect_left(nodes, name, key=_node_name)
                    if nodes[i] != old:
                        return False
                nodes = splice(nodes, name, _node_name, old is not None, (new,) if new is not None else ())
            # Equal, not only alike: the result is new_nodes (so new_nodes is sorted too).
            if nodes != new_nodes:
                return False
            for walk in self._walks.values():
                for old, new in changes:
                    walk.advance(old, new)
        except (KeyError, IndexError):
            return False
        self._nodes = new_nodes
        self._sorted = new_nodes
        return True

    def clear(self) -> None:
        with self._lock:
            self._walks.clear()
            self._nodes = None
            self._sorted = None

    def __len__(self) -> int:
        return len(self._walks)


PLACEMENTS = PlacementCache()
_MAX_STEPS = 64  # node changes patched in one advance; past that, walking again is as cheap


class RuleContext:
    """Placement is computed once per pod spec and facts snapshot, and reused by coverage, caps
    and versions within a review and across reviews."""

    def __init__(
        self, ds: DaemonSetView, facts: ClusterFacts, placements: PlacementCache | None = None
    ) -> None:
        self.ds = ds
        self.facts = facts
        self._placements = PLACEMENTS if placements is None else placements

    @cached_property
    def walk(self) -> NodeWalk:
        return self._placements.walk(self.facts, self.ds.pod_spec)

    @property
    def placement(self) -> PodPlacement:
        return self.walk.placement

    @property
    def placements(self) -> Sequence[tuple[NodeInfo, Placement]]:
        """(node, NodeShouldRunDaemonPod) for every node, in facts order."""
        return self.walk.placements

    @property
    def targeted(self) -> Sequence[NodeInfo]:
        """Nodes where the DaemonSet controller would run a pod (NodeShouldRunDaemonPod)."""
        return self.walk.targeted


def name_nodes(names: Sequence[str], limit: int = 10, *, total: int | None = None) -> str:
    """First `limit` names and a count of the rest, so a 5,000-node message stays readable.
    total: how many there are, when `names` holds only the first ones."""
    shown = ", ".join(names[:limit])
    rest = (len(names) if total is None else total) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


# -- mutations: copy-on-write edits recorded as RFC 6902 ops -------------------------------------


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _clone(value: Any) -> Any:
    # Patch values must not alias the edited object, which later edits may change in place.
    return orjson.loads(orjson.dumps(value)) if isinstance(value, dict | list) else value


class ObjectEdit:
    """Edits of an object that never touch it: each container on an edited path is copied once,
    everything else is shared with the input. Every edit is recorded as the RFC 6902 op that
    makes it, so the patch is input -> obj when applied in order, with no diff of the whole."""

    def __init__(self, original: Mapping[str, Any]) -> None:
        self.obj: dict[str, Any] = dict(original)
        self.ops: list[dict[str, Any]] = []
        # Containers made here (by id; the values keep ids from being recycled): safe to change.
        self._owned: dict[int, Any] = {id(self.obj): self.obj}

    def _own(self, value: Any) -> Any:
        self._owned[id(value)] = value
        return value

    def _descend(self, keys: Sequence[str]) -> tuple[dict[str, Any], int]:
        """The writable mapping at the deepest existing level of keys, and its depth."""
        node = self.obj
        for depth, key in enumerate(keys):
            child = node.get(key)
            if not isinstance(child, Mapping):
                return node, depth
            mine = self._owned.get(id(child))  # the child itself, when this edit made it
            if mine is None:
                mine = node[key] = self._own(dict(child))
            node = mine
        return node, len(keys)

    def set(self, keys: Sequence[str], field: str, value: Any) -> None:
        """obj[keys...][field] = value, creating (or replacing non-mapping) parents on the way."""
        node, depth = self._descend(keys)
        path = "".join("/" + _pointer_token(k) for k in keys[:depth])
        name, new = field, value
        if depth < len(keys):  # one op creates the missing tail of the path with the value in it
            name = keys[depth]
            new = {field: value}
            for key in reversed(keys[depth + 1 :]):
                new = {key: new}
        op = "replace" if name in node else "add"
        self.ops.append({"op": op, "path": f"{path}/{_pointer_token(name)}", "value": _clone(new)})
        node[name] = self._own_tree(_clone(new))

    def append(self, keys: Sequence[str], field: str, items: Sequence[Any]) -> None:
        """Append items to the list obj[keys...][field], creating it (and parents) if absent."""
        node, depth = self._descend(keys)
        current = node.get(field) if depth == len(keys) else None
        if not isinstance(current, list):
            self.set(keys, field, list(items))
            return
        if id(current) not in self._owned:
            current = node[field] = self._own(list(current))
        path = "".join("/" + _pointer_token(k) for k in (*keys, field))
        for item in items:
            self.ops.append({"op": "add", "path": f"{path}/{len(current)}", "value": _clone(item)})
            current.append(item)

    def _own_tree(self, value: Any) -> Any:
        # A fresh clone: later edits on the same path may change its containers in place.
        if isinstance(value, dict):
            for v in value.values():
                self._own_tree(v)
            return self._own(value)
        if isinstance(value, list):
            return self._own(value)
        return value
