"""The patches that pause, resume and roll back a DaemonSet. Pure: dicts in, patch bodies out.

`kubectl rollout pause` does not support DaemonSets, so pausing switches spec.updateStrategy to
OnDelete (the DaemonSet controller then replaces a pod only when someone deletes it) and keeps
the replaced strategy in an annotation for resume. Every patch carries the DaemonSet's
resourceVersion as a precondition: two guards racing (or a guard and a human) can't both act on
the same state; the loser gets 409 Conflict and decides again from the new state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from dsguard.annotations import (
    ALERTS_PENDING,
    ORIGINAL_STRATEGY,
    PAUSE_ANNOTATIONS,
    PAUSE_MARKS,
    PAUSE_REASON,
    PAUSED,
    PAUSED_AT,
    PAUSED_REVISION,
    ROLLBACK_REASON,
    ROLLED_BACK_REVISION,
    ROLLED_BACK_TO,
    STALLED_REVISION,
    WAVE_ANNOTATIONS,
    encode_strategy,
    waves_in_progress,
)
from dsguard.daemonset import as_mapping
from dsguard.revisions import Revision
from guard.notify.alert import Alert
from guard.rollout import DaemonSetState

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
MAX_REASON = 1000  # annotations are small; the full list goes to the Event and alerts
# dsguard.io/alerts-pending: each entry keeps at most this many failing pods (the alert sent at the
# time has them all), and the whole value stays under MAX_PENDING_BYTES (a DaemonSet's annotations
# together may take 256 KiB). An entry is about 1-3 KiB, and entries are removed within seconds of
# delivery, so the cap only matters while sinks are down for long.
MAX_PENDING_FAILING = 20
MAX_PENDING_BYTES = 32 * 1024

PatchBody = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # a JSON patch is a list of operations


class DaemonSetPatcher(Protocol):
    """Sends a patch of one of the content types above (guard.main.KubePatcher: the apiserver)."""

    async def patch(self, namespace: str, name: str, body: PatchBody, content_type: str) -> None: ...


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def pause_patch(ds: DaemonSetState, revision: str, reason: str, at: str) -> dict[str, Any]:
    annotations = {PAUSED: "true", PAUSE_REASON: _clip(reason), PAUSED_REVISION: revision, PAUSED_AT: at}
    if ds.strategy_type == "OnDelete" and ORIGINAL_STRATEGY in ds.annotations:
        # A wave rollout (already OnDelete): the recorded strategy is the user's, keep it.
        return {"metadata": {"resourceVersion": ds.resource_version, "annotations": annotations}}
    annotations[ORIGINAL_STRATEGY] = encode_strategy(ds.strategy)
    return {
        "metadata": {"resourceVersion": ds.resource_version, "annotations": annotations},
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
    """Restore the strategy the pause replaced and clear the pause annotations. A paused wave
    rollout stays OnDelete: resuming it lets the guard continue from the wave it stopped at."""
    if not ds.paused:
        raise ResumeError(f"DaemonSet {ds.ref} is not paused by dsguard (no {PAUSED}=true annotation)")
    if waves_in_progress(ds.annotations) and ds.strategy_type == "OnDelete":
        return {
            "metadata": {"resourceVersion": ds.resource_version, "annotations": dict.fromkeys(PAUSE_MARKS)}
        }
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
    waving = waves_in_progress(ds.annotations) and ds.strategy_type == "OnDelete"
    if ds.paused or waving:
        # A rollback supersedes a pause and a wave rollout: restore the user's strategy so the
        # DaemonSet controller rolls every updated node back to the old template.
        strategy = original_strategy(ds)
        annotations.update(dict.fromkeys(PAUSE_ANNOTATIONS))
        annotations.update(dict.fromkeys(WAVE_ANNOTATIONS))
        patch.setdefault("spec", {})["updateStrategy"] = {
            "type": strategy.get("type", "RollingUpdate"),
            "rollingUpdate": strategy.get("rollingUpdate"),
        }
    return patch


def template_matches(ds: DaemonSetState, to: Revision) -> bool:
    """kubectl's daemonSetMatch: skip a rollback to the template the DaemonSet already has."""
    target = as_mapping(as_mapping(to.data.get("spec")).get("template"))
    clean = {k: v for k, v in target.items() if k != "$patch"}
    return bool(_strip_empty(clean) == _strip_empty(dict(ds.template)))


def stalled_patch(ds: DaemonSetState, revision: str) -> dict[str, Any]:
    # preconditioned too: it writes dsguard.io/alerts-pending, read from this very version
    return {"metadata": {"resourceVersion": ds.resource_version, "annotations": {STALLED_REVISION: revision}}}


# -- the pending alerts (dsguard.io/alerts-pending) -------------------------------------------------


def pending_entries(raw: str | None) -> list[Any] | None:
    """The entries of a dsguard.io/alerts-pending value: [] without one, None if it is not a JSON list."""
    if raw is None:
        return []
    # Anyone who may annotate the DaemonSet writes here: a value far over what the guard writes,
    # or nested deep enough to exhaust the parser's recursion, is malformed, not a crash.
    if len(raw) > 2 * MAX_PENDING_BYTES:
        return None
    try:
        entries = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return entries if isinstance(entries, list) else None


def pending_entry(alert: Alert) -> dict[str, Any]:
    """What the annotation keeps of `alert`: its webhook body, with fewer failing pods."""
    body = alert.to_json()
    body["failing"] = body["failing"][:MAX_PENDING_FAILING]
    body["summary"] = _clip(body["summary"])
    return body


def entry_id(entry: Any) -> tuple[str, str] | None:
    """An entry's identity: (key, at). The key alone repeats when a revision is paused again after
    a resume; `at` (to the microsecond) tells those alerts apart."""
    if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("at"), str):
        return entry["key"], entry["at"]
    return None


def encode_pending(entries: Sequence[Any]) -> tuple[str, int]:
    """The annotation value for `entries`, and how many of the oldest were left out to stay under
    MAX_PENDING_BYTES (the newest is always kept)."""
    kept = list(entries)
    while True:
        value = json.dumps(kept, separators=(",", ":"))
        if len(kept) <= 1 or len(value.encode()) <= MAX_PENDING_BYTES:
            return value, len(entries) - len(kept)
        kept.pop(0)


def with_pending_alert(patch: dict[str, Any], ds: DaemonSetState, alert: Alert) -> tuple[dict[str, Any], int]:
    """`patch` (an action's, preconditioned on ds's resourceVersion) that also appends `alert` to
    the pending alerts of that version; and how many old entries had to go (encode_pending).

    A value that is not a JSON list is replaced: the guard wrote none such, and it would block the
    outbox for good."""
    entries = pending_entries(ds.annotations.get(ALERTS_PENDING)) or []
    value, dropped = encode_pending([*entries, pending_entry(alert)])
    patch.setdefault("metadata", {}).setdefault("annotations", {})[ALERTS_PENDING] = value
    return patch, dropped


def clear_pending_patch(current: str, keep: Sequence[Any]) -> list[dict[str, Any]]:
    """A JSON patch that takes the pending alerts from `current` to `keep` (removing the annotation
    when none are left). It tests for the exact `current` value first: if anything changed it in
    between, the apiserver refuses it (422) and nothing is lost."""
    path = "/metadata/annotations/" + ALERTS_PENDING.replace("~", "~0").replace("/", "~1")
    ops: list[dict[str, Any]] = [{"op": "test", "path": path, "value": current}]
    if keep:
        ops.append({"op": "replace", "path": path, "value": encode_pending(keep)[0]})
    else:
        ops.append({"op": "remove", "path": path})
    return ops


def _strip_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_empty(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_strip_empty(v) for v in value]
    return value
