"""The patches that drive a wave rollout (dsguard/waves.py decides which). Pure.

Like the pause, every patch carries the DaemonSet's resourceVersion as a precondition: a wave is
started, baked or advanced once, by one guard, from the state it read. Pod deletions carry the
pod's uid as a precondition: a pod is deleted at most once, never its replacement.
"""

from __future__ import annotations

from typing import Any

from dsguard.annotations import (
    BAKE_STARTED_AT,
    GATE_BASELINES,
    ORIGINAL_STRATEGY,
    PROMOTED_WAVE,
    WAVE,
    WAVE_ANNOTATIONS,
    WAVE_STARTED_AT,
    WAVES_COMPLETED,
    WAVES_REVISION,
    WAVES_TAKEOVER,
    encode_baselines,
    encode_strategy,
)
from dsguard.daemonset import ON_DELETE
from guard.actions import original_strategy
from guard.rollout import DaemonSetState


def start_patch(
    ds: DaemonSetState, revision: str, takeover: int, at: str, *, baselines: dict[str, float] | None = None
) -> dict[str, Any]:
    """Record the wave rollout of `revision`, at wave 0; switch to OnDelete when the webhook didn't
    (then the user's strategy is recorded, and `takeover` pods were already replaced)."""
    annotations: dict[str, Any] = {
        WAVES_REVISION: revision,
        WAVE: "0",
        WAVE_STARTED_AT: at,
        BAKE_STARTED_AT: None,
        PROMOTED_WAVE: None,
        WAVES_TAKEOVER: str(takeover) if ds.strategy_type != ON_DELETE else None,
        GATE_BASELINES: encode_baselines(baselines) if baselines else None,
    }
    patch: dict[str, Any] = {"metadata": {"resourceVersion": ds.resource_version, "annotations": annotations}}
    if ds.strategy_type != ON_DELETE:
        annotations[ORIGINAL_STRATEGY] = encode_strategy(ds.strategy)
        patch["spec"] = {"updateStrategy": {"type": ON_DELETE, "rollingUpdate": None}}
    return patch


def baselines_patch(ds: DaemonSetState, baselines: dict[str, float]) -> dict[str, Any]:
    """The gates' baselines, for a rollout that started before the guard had measured them."""
    annotations = {GATE_BASELINES: encode_baselines(baselines)}
    return {"metadata": {"resourceVersion": ds.resource_version, "annotations": annotations}}


def bake_patch(ds: DaemonSetState, at: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": ds.resource_version, "annotations": {BAKE_STARTED_AT: at}}}


def advance_patch(ds: DaemonSetState, wave: int, at: str) -> dict[str, Any]:
    return {
        "metadata": {
            "resourceVersion": ds.resource_version,
            "annotations": {WAVE: str(wave), WAVE_STARTED_AT: at, BAKE_STARTED_AT: None},
        }
    }


def complete_patch(ds: DaemonSetState, revision: str) -> dict[str, Any]:
    """Restore the user's strategy exactly and keep only the record of the completion.
    Raises actions.ResumeError when the recorded strategy is missing or malformed."""
    strategy = original_strategy(ds)
    annotations: dict[str, Any] = dict.fromkeys(WAVE_ANNOTATIONS)
    annotations[ORIGINAL_STRATEGY] = None
    annotations[WAVES_COMPLETED] = revision
    return {
        "metadata": {"resourceVersion": ds.resource_version, "annotations": annotations},
        "spec": {
            "updateStrategy": {
                "type": strategy.get("type", "RollingUpdate"),
                "rollingUpdate": strategy.get("rollingUpdate"),
            }
        },
    }


def promote_patch(ds: DaemonSetState, wave: int) -> dict[str, Any]:
    """`dsguard promote`: wave `wave` may start (and the bake before it may end)."""
    return {"metadata": {"resourceVersion": ds.resource_version, "annotations": {PROMOTED_WAVE: str(wave)}}}
