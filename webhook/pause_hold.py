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
from dsguard.daemonset import ON_DELETE, annotations_of, as_mapping, spec_of
from dsguard.rules.context import ObjectEdit


def keep_paused(old: Mapping[str, Any], edit: ObjectEdit) -> list[str]:
    """Put the stored OnDelete strategy back on `edit` when the update would undo a guard pause;
    returns the warning for the user (empty when nothing was done)."""
    new = edit.obj
    if annotations_of(old).get(PAUSED) != "true" or annotations_of(new).get(PAUSED) != "true":
        return []
    held = spec_of(old).get("updateStrategy")
    if as_mapping(held).get("type") != ON_DELETE:
        return []  # someone else changed the strategy since the pause; not ours to hold
    if spec_of(new).get("updateStrategy") == held or spec_of(new).get("template") != spec_of(old).get(
        "template"
    ):
        return []
    edit.set(["spec"], "updateStrategy", dict(as_mapping(held)))
    meta = as_mapping(new.get("metadata"))
    ref = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
    revision = annotations_of(old).get(PAUSED_REVISION, "")
    reason = annotations_of(old).get(PAUSE_REASON, "")
    return [
        f"dsguard kept spec.updateStrategy OnDelete: the rollout of DaemonSet {ref} is paused by the "
        f"dsguard guard (revision {revision}: {reason}). Run `dsguard resume {ref}` to resume it, or "
        "change the pod template to roll out a new revision"
    ]
