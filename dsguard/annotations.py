"""The dsguard.io/* annotations the guard writes on a DaemonSet, and what they say. Pure.

All guard state lives on the DaemonSet (see docs/guard.md): the guard writes these with each
action, the webhook's pause hold and `dsguard status` read them. One place names them and one
place reads them, so "paused since X because Y" means the same everywhere.
"""

from __future__ import annotations

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


def stalled(annotations: Mapping[str, Any], revision: str | None) -> bool:
    return revision is not None and annotations.get(STALLED_REVISION) == revision


def rolled_back_here(annotations: Mapping[str, Any], revision: str) -> bool:
    """The guard rolled this revision back before: re-applying it is a deliberate choice."""
    return annotations.get(ROLLED_BACK_REVISION) == revision
