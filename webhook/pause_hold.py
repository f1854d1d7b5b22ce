"""Keep a guard pause in place when a re-apply would undo it.

The guard pauses a rollout by switching spec.updateStrategy to OnDelete and recording the pause
in dsguard.io/* annotations. GitOps tools (Argo CD self-heal, Flux) and plain `kubectl apply`
write the manifest's RollingUpdate strategy back within minutes, and the bad revision would roll
on while the annotations still say "paused". So on UPDATE, while the stored object is paused and
the update keeps the pause annotation and the pod template, the mutating webhook puts OnDelete
back and says why. It lets through:

* `dsguard resume` (it removes dsguard.io/paused together with restoring the strategy),
* a new template: a new revision, which the guard resumes and watches from scratch,
* the guard itself (an exempt user in the install manifests).

Independent of the policies: the annotation is only there because the guard paused the rollout.
/mutate applies it before the policies' mutations (webhook/mutation.py), in one patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsguard.annotations import PAUSE_REASON, PAUSED, PAUSED_REVISION
from dsguard.daemonset import ON_DELETE, as_mapping
from dsguard.rules.context import ObjectEdit


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_mapping(as_mapping(obj.get("metadata")).get("annotations"))


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_mapping(obj.get("spec"))


def keep_paused(old: Mapping[str, Any], edit: ObjectEdit) -> list[str]:
    """Put the stored OnDelete strategy back on `edit` when the update would undo a guard pause;
    returns the warning for the user (empty when nothing was done)."""
    new = edit.obj
    if _annotations(old).get(PAUSED) != "true" or _annotations(new).get(PAUSED) != "true":
        return []
    held = _spec(old).get("updateStrategy")
    if as_mapping(held).get("type") != ON_DELETE:
        return []  # someone else changed the strategy since the pause; not ours to hold
    if _spec(new).get("updateStrategy") == held or _spec(new).get("template") != _spec(old).get("template"):
        return []
    edit.set(["spec"], "updateStrategy", dict(as_mapping(held)))
    meta = as_mapping(new.get("metadata"))
    ref = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
    revision = _annotations(old).get(PAUSED_REVISION, "")
    reason = _annotations(old).get(PAUSE_REASON, "")
    return [
        f"dsguard kept spec.updateStrategy OnDelete: the rollout of DaemonSet {ref} is paused by the "
        f"dsguard guard (revision {revision}: {reason}). Run `dsguard resume {ref}` to resume it, or "
        "change the pod template to roll out a new revision"
    ]
