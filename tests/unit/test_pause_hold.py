"""The webhook keeps a guard pause when a re-apply (GitOps, kubectl apply) would undo it."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from dsguard.facts import ClusterFacts
from dsguard.policy import parse_policy
from dsguard.rules.context import ObjectEdit
from dsguard.rules.engine import judge
from webhook.mutation import hold_then_mutate
from webhook.pause_hold import keep_paused

ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
ON_DELETE = {"type": "OnDelete"}
PAUSE = {
    "dsguard.io/paused": "true",
    "dsguard.io/paused-revision": "7f57c8b956",
    "dsguard.io/pause-reason": "3 of 4 pods failing",
    "dsguard.io/original-update-strategy": '{"type":"RollingUpdate"}',
}


def ds(
    strategy: dict[str, Any], annotations: dict[str, str] | None = None, image: str = "a:1"
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "ops", "annotations": dict(annotations or {})},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": copy.deepcopy(strategy),
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": image}]},
            },
        },
    }


PAUSED_OLD = ds(ON_DELETE, PAUSE)


@pytest.mark.parametrize(
    ("name", "old", "new", "held"),
    [
        ("GitOps re-applies RollingUpdate, keeping the annotations", PAUSED_OLD, ds(ROLLING, PAUSE), True),
        ("a re-apply that also changes labels", PAUSED_OLD, ds(ROLLING, {**PAUSE, "team": "x"}), True),
        ("dsguard resume removes the pause annotation", PAUSED_OLD, ds(ROLLING, {}), False),
        ("a new template is a new revision", PAUSED_OLD, ds(ROLLING, PAUSE, image="a:2"), False),
        ("strategy untouched", PAUSED_OLD, ds(ON_DELETE, {**PAUSE, "x": "y"}), False),
        ("not paused", ds(ROLLING, {}), ds({"type": "OnDelete"}, {}), False),
        (
            "paused annotation but the stored strategy isn't OnDelete",
            ds(ROLLING, PAUSE),
            ds(ROLLING, PAUSE),
            False,
        ),
        (
            "paused annotation set to something else",
            ds(ON_DELETE, {**PAUSE, "dsguard.io/paused": "false"}),
            ds(ROLLING, {**PAUSE, "dsguard.io/paused": "false"}),
            False,
        ),
    ],
)
def test_keep_paused(name: str, old: dict[str, Any], new: dict[str, Any], held: bool) -> None:
    before = copy.deepcopy(new)
    edit = ObjectEdit(new)
    notes = keep_paused(old, edit)
    assert new == before, "the input is never modified"
    if held:
        assert edit.obj["spec"]["updateStrategy"] == ON_DELETE
        assert jsonpatch.apply_patch(new, edit.ops) == edit.obj
        (note,) = notes
        assert "dsguard resume ops/agent" in note and "7f57c8b956" in note and "3 of 4 pods failing" in note
    else:
        assert notes == [] and edit.ops == [] and edit.obj == new


def test_held_by_the_mutating_endpoint_with_no_policy_matching() -> None:
    """The hold needs no policy: the annotation is only there because the guard paused it."""
    result = hold_then_mutate([], ds(ROLLING, PAUSE), facts=ClusterFacts(), old=PAUSED_OLD)
    assert result.patch == [{"op": "replace", "path": "/spec/updateStrategy", "value": ON_DELETE}]
    assert any("paused by the dsguard guard" in n for n in result.notices)


def test_held_and_then_mutated_by_policies_in_one_patch() -> None:
    """The hold comes first; the policies judge the held object (no strategy change: caps not enforced)."""
    policy = parse_policy(
        {
            "apiVersion": "dsguard.io/v1alpha1",
            "kind": "DaemonSetPolicy",
            "metadata": {"name": "p"},
            "spec": {"match": {"namespaces": ["ops"]}, "rollout": {"maxUnavailable": 1, "onExceed": "Deny"}},
        }
    )
    new = ds({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 5}}, PAUSE)
    mutated = hold_then_mutate([policy], new, facts=ClusterFacts(), old=PAUSED_OLD)
    final = jsonpatch.apply_patch(new, mutated.patch)
    assert final["spec"]["updateStrategy"] == ON_DELETE
    judged = judge([policy], final, facts=ClusterFacts(), old=PAUSED_OLD)
    assert judged.allowed, judged.denials


def test_validate_alone_does_not_hold() -> None:
    """/validate judges what it is given; the hold is a mutation."""
    result = judge([], ds(ROLLING, PAUSE), facts=ClusterFacts(), old=PAUSED_OLD)
    assert result.patch == [] and result.allowed
