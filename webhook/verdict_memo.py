"""A memo of the rules' evaluations, for the reviews that repeat: GitOps controllers re-apply the
same DaemonSets every few minutes, and every apply is a /mutate and a /validate review.

An evaluation is a pure function of the endpoint, the operation, the namespace, the object (and
the old object of an UPDATE), the policies in force and the facts snapshot (nodes, namespace
labels, apiserver version). The first four are the key, as the bytes the request carried them
in (re-encoded: the review's uid is not part of it). The last two are snapshots the watched cache
replaces (new objects) whenever anything the rules read changes: the memo is emptied as soon as
either is not the one it was filled under, so it never answers from an older cluster or policy
set. What a review records (audit findings, denial logs) is still done per review by the caller.

An entry keeps what an answer is made of (patch, notices, verdict, findings, the DaemonSet's
namespace and name), not the object: a memo of whole decoded DaemonSets kept 256 object graphs
alive for the garbage collector to walk.

Bounded: at most `maxsize` entries of at most `max_entry_bytes` each (bigger objects are judged
every time), least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import orjson

from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules.engine import Evaluation

Key = tuple[str, str, str, bytes, bytes]
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def slim(result: Evaluation) -> Evaluation:
    """The evaluation without the objects it was computed from: what an answer reads of it."""
    return replace(result, obj=_EMPTY, ds=replace(result.ds, labels=_EMPTY, pod_spec=_EMPTY))


class VerdictMemo:
    def __init__(self, maxsize: int = 256, max_entry_bytes: int = 128 * 1024) -> None:
        self.maxsize = maxsize
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict[Key, Evaluation] = OrderedDict()
        # Held strongly: while they are the ones filed under, no new snapshot can get their address.
        self._policies: tuple[Policy, ...] | None = None
        self._facts: ClusterFacts | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def evaluate(
        self,
        endpoint: str,
        operation: str,
        namespace: str,
        obj: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        *,
        policies: tuple[Policy, ...],
        facts: ClusterFacts,
        compute: Callable[[], Evaluation],
    ) -> Evaluation:
        """compute()'s result for these inputs, from the memo when it holds it (slim: `obj`, the
        view's labels and pod spec are empty in a remembered one)."""
        try:
            key: Key = (
                endpoint,
                operation,
                namespace,
                orjson.dumps(obj),
                orjson.dumps(old) if old is not None else b"",
            )
        except TypeError:  # not JSON (a test's object): no key, no memo
            return compute()
        if len(key[3]) + len(key[4]) > self.max_entry_bytes:
            self.misses += 1
            return compute()
        with self._lock:
            if self._policies is not policies or self._facts is not facts:
                self._entries.clear()
                self._policies, self._facts = policies, facts
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        result = compute()
        with self._lock:
            # Filed only under the snapshots it was computed from.
            if self._policies is policies and self._facts is facts:
                self._entries[key] = slim(result)
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        return result

    def __len__(self) -> int:
        return len(self._entries)
