"""The Kubernetes object a log line is about, for structured logs (`--log-format json`).

The services say what they are working on (`about(...)` around one DaemonSet's decision, one
admission review) and every line logged meanwhile, theirs or a library's, carries the object's
reference in its `object` field: log pipelines filter and join on it instead of parsing
messages. A contextvar, so concurrent asyncio tasks keep their own. No I/O.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str
    namespace: str = ""

    def to_dict(self) -> dict[str, str]:
        d = {"kind": self.kind}
        if self.namespace:
            d["namespace"] = self.namespace
        d["name"] = self.name
        return d

    @classmethod
    def of(cls, kind: str, ref: str) -> ObjectRef:
        """From "namespace/name" (or a cluster-scoped "name")."""
        namespace, sep, name = ref.partition("/")
        return cls(kind, name, namespace) if sep else cls(kind, ref)


_current: ContextVar[ObjectRef | None] = ContextVar("dsguard_log_object", default=None)


class about:
    """Lines logged inside are about `obj` (None: about nothing in particular). A class, not a
    contextmanager generator: the webhook enters one per review (about 2x cheaper)."""

    __slots__ = ("_obj", "_token")

    def __init__(self, obj: ObjectRef | None) -> None:
        self._obj = obj
        self._token: Token[ObjectRef | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._obj)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)


def object_extra(obj: ObjectRef) -> dict[str, Any]:
    """`log.info(..., extra=object_extra(ref))`: one line about an object outside about()."""
    return {"object": obj.to_dict()}


class ObjectFilter(logging.Filter):
    """Adds `record.object` (a dict, or None) from the current about() unless the call gave one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "object"):
            current = _current.get()
            record.object = current.to_dict() if current is not None else None
        return True
