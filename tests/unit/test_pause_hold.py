"""The webhook keeps a guard pause when a re-apply (GitOps, kubectl apply) would undo it."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import jsonpatch
import pytest

from dsguard.facts import ClusterFacts
from dsguard.rules.context import ObjectEdit
from dsguard.rules.engine import judge
from tests.support.builders import daemonset, parsed_policy
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


#: DaemonSet ops/agent, annotated as given (none by default), on image a:1.
ds = partial(daemonset, namespace="ops", image="a:1", annotations={})
PAUSED_OLD = ds(update_strategy=ON_DELETE, annotations=PAUSE)


@pytest.mark.parametrize(
    ("name", "old", "new", "held"),
    [
        (
            "GitOps re-applies RollingUpdate, keeping the annotations",
            PAUSED_OLD,
            ds(update_strategy=ROLLING, annotations=PAUSE),
            True,
        ),
        (
            "a re-apply that also changes labels",
            PAUSED_OLD,
            ds(update_strategy=ROLLING, annotations={**PAUSE, "team": "x"}),
            True,
        ),
        (
            "dsguard resume removes the pause annotation",
            PAUSED_OLD,
            ds(update_strategy=ROLLING, annotations={}),
            False,
        ),
        (
            "a new template is a new revision",
            PAUSED_OLD,
            ds(update_strategy=ROLLING, annotations=PAUSE, image="a:2"),
            False,
        ),
        (
            "strategy untouched",
            PAUSED_OLD,
            ds(update_strategy=ON_DELETE, annotations={**PAUSE, "x": "y"}),
            False,
        ),
        (
            "not paused",
            ds(update_strategy=ROLLING, annotations={}),
            ds(update_strategy={"type": "OnDelete"}, annotations={}),
            False,
        ),
        (
            "paused annotation but the stored strategy isn't OnDelete",
            ds(update_strategy=ROLLING, annotations=PAUSE),
            ds(update_strategy=ROLLING, annotations=PAUSE),
            False,
        ),
        (
            "paused annotation set to something else",
            ds(update_strategy=ON_DELETE, annotations={**PAUSE, "dsguard.io/paused": "false"}),
            ds(update_strategy=ROLLING, annotations={**PAUSE, "dsguard.io/paused": "false"}),
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
    result = hold_then_mutate(
        [], ds(update_strategy=ROLLING, annotations=PAUSE), facts=ClusterFacts(), old=PAUSED_OLD
    )
    assert result.patch == [{"op": "replace", "path": "/spec/updateStrategy", "value": ON_DELETE}]
    assert any("paused by the dsguard guard" in n for n in result.notices)


def test_held_and_then_mutated_by_policies_in_one_patch() -> None:
    """The hold comes first; the policies judge the held object (no strategy change: caps not enforced)."""
    policy = parsed_policy("p", {"rollout": {"maxUnavailable": 1, "onExceed": "Deny"}}, namespaces=["ops"])
    new = ds(
        update_strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 5}}, annotations=PAUSE
    )
    mutated = hold_then_mutate([policy], new, facts=ClusterFacts(), old=PAUSED_OLD)
    final = jsonpatch.apply_patch(new, mutated.patch)
    assert final["spec"]["updateStrategy"] == ON_DELETE
    judged = judge([policy], final, facts=ClusterFacts(), old=PAUSED_OLD)
    assert judged.allowed, judged.denials


def test_validate_alone_does_not_hold() -> None:
    """/validate judges what it is given; the hold is a mutation."""
    result = judge([], ds(update_strategy=ROLLING, annotations=PAUSE), facts=ClusterFacts(), old=PAUSED_OLD)
    assert result.patch == [] and result.allowed
