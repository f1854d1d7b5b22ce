"""The dsguard.io/* annotations the guard writes on a DaemonSet, and what they say. Pure.

All guard state lives on the DaemonSet (see docs/guard.md): the guard writes these with each
action, the webhook's pause hold and `dsguard status` read them. One place names them and one
place reads them, so "paused since X because Y" means the same everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ANNOTATION_PREFIX = "dsguard.io/"
PAUSED = "dsguard.io/paused"
PAUSE_REASON = "dsguard.io/pause-reason"
PAUSED_REVISION = "dsguard.io/paused-revision"
PAUSED_AT = "dsguard.io/paused-at"
ORIGINAL_STRATEGY = "dsguard.io/original-update-strategy"
ROLLED_BACK_REVISION = "dsguard.io/rolled-back-revision"
ROLLED_BACK_TO = "dsguard.io/rolled-back-to"
ROLLBACK_REASON = "dsguard.io/rollback-reason"
STALLED_REVISION = "dsguard.io/stalled-revision"
# The guard's outbox: alerts written with the action that caused them, removed once every sink has
# settled them (delivered, or failed for good). A guard that dies in between, or a new leader,
# sends what is left again: alerts are at least once. A JSON list of Alert.to_json() bodies.
ALERTS_PENDING = "dsguard.io/alerts-pending"
PAUSE_ANNOTATIONS = (PAUSED, PAUSE_REASON, PAUSED_REVISION, PAUSED_AT, ORIGINAL_STRATEGY)
# The pause itself, without the strategy it replaced: what resuming a wave rollout removes (the
# guard keeps driving it under OnDelete, and restores ORIGINAL_STRATEGY when it completes).
PAUSE_MARKS = (PAUSED, PAUSE_REASON, PAUSED_REVISION, PAUSED_AT)

# Progressive rollouts (spec.guard.waves): the guard drives the rollout of one revision under
# OnDelete, wave by wave; the user's strategy is in ORIGINAL_STRATEGY until it completes.
WAVES_REVISION = "dsguard.io/waves-revision"  # the revision being rolled out in waves
WAVE = "dsguard.io/wave"  # index of the current wave (0: the canary, when there is one)
WAVE_STARTED_AT = "dsguard.io/wave-started-at"
BAKE_STARTED_AT = "dsguard.io/bake-started-at"  # the current wave is updated and Ready: baking
PROMOTED_WAVE = "dsguard.io/promoted-wave"  # `dsguard promote`: wave N may start (ends a bake early)
WAVES_TAKEOVER = "dsguard.io/waves-takeover"  # pods the controller replaced before the guard took over
WAVES_COMPLETED = "dsguard.io/waves-completed"  # the last revision rolled out in waves, completed
GATE_BASELINES = "dsguard.io/gate-baselines"  # JSON: {"apiserver": <req/s before the rollout>}
WAVE_ANNOTATIONS = (
    WAVES_REVISION,
    WAVE,
    WAVE_STARTED_AT,
    BAKE_STARTED_AT,
    PROMOTED_WAVE,
    WAVES_TAKEOVER,
    GATE_BASELINES,
)


def encode_strategy(strategy: Mapping[str, Any]) -> str:
    """The value of ORIGINAL_STRATEGY: the updateStrategy as compact, key-sorted JSON."""
    return json.dumps(dict(strategy), sort_keys=True, separators=(",", ":"))


def encode_baselines(baselines: Mapping[str, float]) -> str:
    """The value of GATE_BASELINES: {"apiserver": <requests/s>}."""
    return json.dumps(dict(baselines), sort_keys=True, separators=(",", ":"))


def is_paused(annotations: Mapping[str, Any]) -> bool:
    return annotations.get(PAUSED) == "true"


@dataclass(frozen=True)
class PauseInfo:
    since: str  # dsguard.io/paused-at as written (RFC 3339), "" when missing
    reason: str
    revision: str  # the paused revision's hash, "" when missing
    current: bool  # False once a newer revision replaced the paused one (the guard resumes it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "reason": self.reason,
            "revision": self.revision,
            "current": self.current,
        }


@dataclass(frozen=True)
class RollbackInfo:
    revision: str  # the bad revision's hash
    to: str  # "<hash> (revision <n>)"
    reason: str
    current: bool  # the DaemonSet still runs the template the guard rolled back to

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "to": self.to, "reason": self.reason, "current": self.current}


def pause_info(annotations: Mapping[str, Any], revision: str | None) -> PauseInfo | None:
    """The guard's pause, if any; `revision` is the DaemonSet's update revision (None: unknown)."""
    if not is_paused(annotations):
        return None
    paused_revision = str(annotations.get(PAUSED_REVISION) or "")
    return PauseInfo(
        since=str(annotations.get(PAUSED_AT) or ""),
        reason=str(annotations.get(PAUSE_REASON) or ""),
        revision=paused_revision,
        # The guard resumes a DaemonSet whose paused revision a newer one replaced (decide: RESUME).
        current=not paused_revision or revision is None or paused_revision == revision,
    )


def rollback_info(
    annotations: Mapping[str, Any], revision: str | None, generation_observed: bool
) -> RollbackInfo | None:
    bad = annotations.get(ROLLED_BACK_REVISION)
    if not bad:
        return None
    to = str(annotations.get(ROLLED_BACK_TO) or "")
    # The annotations stay after later rollouts: the rollback is the DaemonSet's current state
    # only while the controller has seen the latest spec and its update revision is the one the
    # guard went back to (a newer template, or the bad one re-applied, is a new rollout).
    return RollbackInfo(
        revision=str(bad),
        to=to,
        reason=str(annotations.get(ROLLBACK_REASON) or ""),
        current=generation_observed and (revision is None or to.split(" ", 1)[0] == revision),
    )


@dataclass(frozen=True)
class WaveInfo:
    revision: str  # the revision the guard is rolling out in waves
    index: int  # the current wave
    started_at: str  # RFC 3339, as written
    bake_started_at: str  # "" while the wave is still being updated
    promoted: int | None  # the wave `dsguard promote` approved, if any
    takeover: int | None  # pods already replaced when the guard took over (webhook missed it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "wave": self.index,
            "startedAt": self.started_at,
            "bakeStartedAt": self.bake_started_at,
            "promoted": self.promoted,
            "takeover": self.takeover,
        }


def _int(raw: object) -> int | None:
    try:
        value = int(str(raw))
    except ValueError:
        return None
    return value if value >= 0 else None


def wave_info(annotations: Mapping[str, Any]) -> WaveInfo | None:
    """The wave rollout in progress, if any (a malformed index reads as wave 0: the guard then
    redoes the canary rather than skip it)."""
    revision = annotations.get(WAVES_REVISION)
    if not revision:
        return None
    return WaveInfo(
        revision=str(revision),
        index=_int(annotations.get(WAVE)) or 0,
        started_at=str(annotations.get(WAVE_STARTED_AT) or ""),
        bake_started_at=str(annotations.get(BAKE_STARTED_AT) or ""),
        promoted=_int(annotations.get(PROMOTED_WAVE)) if annotations.get(PROMOTED_WAVE) else None,
        takeover=_int(annotations.get(WAVES_TAKEOVER)) if annotations.get(WAVES_TAKEOVER) else None,
    )


def waves_in_progress(annotations: Mapping[str, Any], revision: str | None = None) -> bool:
    """A wave rollout is under way (of `revision`, when given): the guard drives it under OnDelete."""
    info = wave_info(annotations)
    if info is None or annotations.get(WAVES_COMPLETED) == info.revision:
        return False
    return revision is None or info.revision == revision


def gate_baseline(annotations: Mapping[str, Any], gate: str) -> float | None:
    """A gate's baseline recorded at the start of the wave rollout (None when missing or malformed)."""
    raw = annotations.get(GATE_BASELINES)
    if not isinstance(raw, str) or len(raw) > 4096:
        return None
    try:
        value = json.loads(raw).get(gate)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def stalled(annotations: Mapping[str, Any], revision: str | None) -> bool:
    return revision is not None and annotations.get(STALLED_REVISION) == revision


def rolled_back_here(annotations: Mapping[str, Any], revision: str) -> bool:
    """The guard rolled this revision back before: re-applying it is a deliberate choice."""
    return annotations.get(ROLLED_BACK_REVISION) == revision
