"""A memo of the rules' evaluations, for the reviews that repeat: GitOps controllers re-apply the
same DaemonSets every few minutes, and every apply is a /mutate and a /validate review.

An evaluation is a pure function of the endpoint, the review (its operation, namespace, object and
old object), the policies in force and the facts snapshot (nodes, namespace labels, apiserver
version). The key is the endpoint and the review's body with its uid cut out: the body holds all
the review carries (more than the evaluation reads: a review differing in anything is a miss,
never a wrong answer), and cutting the uid costs a scan of the bytes where re-encoding the
objects cost 10-40 µs. The uid is cut only when it is plain (UUID characters, so its JSON text
is itself) and occurs once in the body: that occurrence is then the uid field, and the rest is
the review with an empty uid. Otherwise the review is judged without the memo. The policies and
the facts are snapshots the watched cache replaces (new objects) whenever anything the rules
read changes: the memo is emptied as soon as either is not the one it was filled under, so it
never answers from an older cluster or policy set. What a review records (audit findings,
denial logs) is still done per review by the caller.

An entry keeps what an answer is made of (patch, notices, verdict, findings, the DaemonSet's
namespace and name), not the object: a memo of whole decoded DaemonSets kept 256 object graphs
alive for the garbage collector to walk.

Bounded: at most `maxsize` entries of at most `max_entry_bytes` each (bigger objects are judged
every time), least recently used first out.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules.engine import Evaluation

Key = tuple[str, bytes]
_PLAIN_UID = re.compile(rb"[0-9A-Za-z-]{1,128}")
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
        body: bytes,
        uid: str,
        *,
        policies: tuple[Policy, ...],
        facts: ClusterFacts,
        compute: Callable[[], Evaluation],
    ) -> Evaluation:
        """compute()'s result for the review in `body` (whose request.uid is `uid`), from the memo
        when it holds it (slim: `obj`, the view's labels and pod spec are empty in a remembered
        one)."""
        raw = uid.encode()
        if not _PLAIN_UID.fullmatch(raw) or body.count(raw) != 1:
            return compute()
        key: Key = (endpoint, body.replace(raw, b"", 1))
        if len(body) > self.max_entry_bytes:
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
