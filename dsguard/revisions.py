"""A DaemonSet's ControllerRevisions as the guard and `dsguard status` see them. Pure.

The update revision is the DaemonSet's newest ControllerRevision (the DaemonSet controller
labels each pod with its revision's `controller-revision-hash`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dsguard.daemonset import as_mapping
from dsguard.pod_health import REVISION_LABEL, controller_owner


@dataclass(frozen=True, slots=True)
class Revision:
    name: str
    hash: str
    number: int
    owner_uid: str
    data: Mapping[str, Any]  # the strategic-merge patch that restores its template

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Revision | None:
        meta = as_mapping(obj.get("metadata"))
        owner = controller_owner(meta)
        if owner is None:
            return None
        labels = as_mapping(meta.get("labels"))
        name = str(meta.get("name", ""))
        return cls(
            name=name,
            # The DaemonSet controller names revisions <ds>-<hash> and labels them with the hash.
            hash=str(labels.get(REVISION_LABEL) or name.rsplit("-", 1)[-1]),
            number=int(obj.get("revision") or 0),
            owner_uid=str(owner.get("uid", "")),
            data=as_mapping(obj.get("data")),
        )


def update_revision(revisions: Iterable[Revision]) -> Revision | None:
    return max(revisions, key=lambda r: r.number, default=None)


def previous_revision(revisions: Iterable[Revision]) -> Revision | None:
    """The second newest revision: what `kubectl rollout undo` goes back to."""
    ordered = sorted(revisions, key=lambda r: r.number)
    return ordered[-2] if len(ordered) >= 2 else None
