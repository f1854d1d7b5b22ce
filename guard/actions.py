"""The patches that pause, resume and roll back a DaemonSet. Pure: dicts in, patch bodies out.

`kubectl rollout pause` does not support DaemonSets, so pausing switches spec.updateStrategy to
OnDelete (the DaemonSet controller then replaces a pod only when someone deletes it) and keeps
the replaced strategy in an annotation for resume. Every patch carries the DaemonSet's
resourceVersion as a precondition: two guards racing (or a guard and a human) can't both act on
the same state; the loser gets 409 Conflict and decides again from the new state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from guard.rollout import (
    ORIGINAL_STRATEGY,
    PAUSE_ANNOTATIONS,
    PAUSE_REASON,
    PAUSED,
    PAUSED_AT,
    PAUSED_REVISION,
    ROLLBACK_REASON,
    ROLLED_BACK_REVISION,
    ROLLED_BACK_TO,
    STALLED_REVISION,
    DaemonSetState,
    Revision,
)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MAX_REASON = 1000  # annotations are small; the full list goes to the Event and alerts


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def pause_patch(ds: DaemonSetState, revision: str, reason: str, at: str) -> dict[str, Any]:
    return {
        "metadata": {
            "resourceVersion": ds.resource_version,
            "annotations": {
                PAUSED: "true",
                PAUSE_REASON: _clip(reason),
                PAUSED_REVISION: revision,
                PAUSED_AT: at,
                ORIGINAL_STRATEGY: json.dumps(dict(ds.strategy), sort_keys=True, separators=(",", ":")),
            },
        },
        # rollingUpdate must go: apps/v1 validation forbids it with type OnDelete
        "spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": None}},
    }


class ResumeError(ValueError):
    pass


def original_strategy(ds: DaemonSetState) -> dict[str, Any]:
    raw = ds.annotations.get(ORIGINAL_STRATEGY)
    if raw is None:
        raise ResumeError(
            f"DaemonSet {ds.ref} has no {ORIGINAL_STRATEGY} annotation; set spec.updateStrategy by hand"
        )
    try:
        strategy = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ResumeError(f"DaemonSet {ds.ref}: annotation {ORIGINAL_STRATEGY} is not JSON ({e})") from None
    if not isinstance(strategy, dict) or strategy.get("type", "RollingUpdate") not in (
        "RollingUpdate",
        "OnDelete",
    ):
        raise ResumeError(
            f"DaemonSet {ds.ref}: annotation {ORIGINAL_STRATEGY} is not an updateStrategy: {raw}"
        )
    return strategy


def resume_patch(ds: DaemonSetState) -> dict[str, Any]:
    """Restore the strategy the pause replaced and clear the pause annotations."""
    if not ds.paused:
        raise ResumeError(f"DaemonSet {ds.ref} is not paused by dsguard (no {PAUSED}=true annotation)")
    strategy = original_strategy(ds)
    return {
        "metadata": {
            "resourceVersion": ds.resource_version,
            "annotations": dict.fromkeys(PAUSE_ANNOTATIONS),
        },
        "spec": {
            "updateStrategy": {
                "type": strategy.get("type", "RollingUpdate"),
                "rollingUpdate": strategy.get("rollingUpdate"),
            }
        },
    }


def rollback_patch(ds: DaemonSetState, bad: str, to: Revision, reason: str) -> dict[str, Any]:
    """`kubectl rollout undo`'s strategic-merge patch (the revision's data), plus our record."""
    patch: dict[str, Any] = json.loads(json.dumps(dict(to.data)))
    meta = patch.setdefault("metadata", {})
    meta["resourceVersion"] = ds.resource_version
    annotations = meta.setdefault("annotations", {})
    annotations.update(
        {
            ROLLED_BACK_REVISION: bad,
            ROLLED_BACK_TO: f"{to.hash} (revision {to.number})",
            ROLLBACK_REASON: _clip(reason),
        }
    )
    if ds.paused:  # a rollback supersedes a pause: restore the strategy so the old template rolls out
        strategy = original_strategy(ds)
        annotations.update(dict.fromkeys(PAUSE_ANNOTATIONS))
        patch.setdefault("spec", {})["updateStrategy"] = {
            "type": strategy.get("type", "RollingUpdate"),
            "rollingUpdate": strategy.get("rollingUpdate"),
        }
    return patch


def template_matches(ds: DaemonSetState, to: Revision) -> bool:
    """kubectl's daemonSetMatch: skip a rollback to the template the DaemonSet already has."""
    target = _mapping(_mapping(to.data.get("spec")).get("template"))
    clean = {k: v for k, v in target.items() if k != "$patch"}
    return bool(_strip_empty(clean) == _strip_empty(dict(ds.template)))


def stalled_patch(ds: DaemonSetState, revision: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {STALLED_REVISION: revision}}}


def _mapping(raw: object) -> Mapping[str, Any]:
    return raw if isinstance(raw, Mapping) else {}


def _strip_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_empty(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_strip_empty(v) for v in value]
    return value
