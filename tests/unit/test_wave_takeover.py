"""webhook.wave_takeover through /mutate's composition (webhook.mutation.hold_then_mutate)."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from dsguard.annotations import (
    ORIGINAL_STRATEGY,
    PAUSED,
    PAUSED_REVISION,
    ROLLED_BACK_REVISION,
    WAVES_COMPLETED,
    WAVES_REVISION,
)
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy, parse_policy
from webhook.mutation import hold_then_mutate

ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 5}}
ON_DELETE = {"type": "OnDelete"}


def policy(waves: bool = True, caps: dict[str, Any] | None = None) -> Policy:
    spec: dict[str, Any] = {"match": {"namespaces": ["logging"]}}
    if waves:
        spec["guard"] = {"waves": {"canary": {"nodes": 1}}}
    if caps:
        spec["rollout"] = caps
    return parse_policy({"metadata": {"name": "waves"}, "spec": spec})


def ds(
    image: str = "agent:1", strategy: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "logging", "annotations": dict(annotations or {})},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": copy.deepcopy(strategy or ROLLING),
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": image}]},
            },
        },
    }


def mutate(policies: list[Policy], new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    result = hold_then_mutate(policies, new, facts=ClusterFacts(), namespace="logging", old=old)
    patched: dict[str, Any] = jsonpatch.apply_patch(new, result.patch)
    assert patched == result.obj, "the patch makes the object the rules saw"
    return patched


def test_a_template_change_is_handed_to_the_guard() -> None:
    out = mutate([policy()], ds("agent:2"), ds("agent:1"))
    assert out["spec"]["updateStrategy"] == ON_DELETE
    assert json.loads(out["metadata"]["annotations"][ORIGINAL_STRATEGY]) == ROLLING


@pytest.mark.parametrize(
    ("title", "policies", "new", "old"),
    [
        ("no waves policy", [policy(waves=False)], ds("agent:2"), ds("agent:1")),
        ("other namespace's policy", [], ds("agent:2"), ds("agent:1")),
        ("a creation is not a rollout", [policy()], ds("agent:2"), None),
        ("the user's own OnDelete", [policy()], ds("agent:2", ON_DELETE), ds("agent:1", ON_DELETE)),
        ("metadata-only update", [policy()], ds("agent:1", annotations={"team": "a"}), ds("agent:1")),
        (
            "the guard's rollback",
            [policy()],
            ds("agent:1", annotations={ROLLED_BACK_REVISION: "bad"}),
            ds("agent:2", ON_DELETE),
        ),
        (
            "the guard's completion restores the strategy",
            [policy()],
            ds("agent:2", annotations={WAVES_COMPLETED: "h2", ORIGINAL_STRATEGY: json.dumps(ROLLING)}),
            ds(
                "agent:2",
                ON_DELETE,
                annotations={WAVES_REVISION: "h2", ORIGINAL_STRATEGY: json.dumps(ROLLING)},
            ),
        ),
        (
            "a completed wave rollout, re-applied",
            [policy()],
            ds("agent:2"),
            ds("agent:2", annotations={WAVES_REVISION: "h2", WAVES_COMPLETED: "h2"}),
        ),
    ],
)
def test_left_alone(
    title: str, policies: list[Policy], new: dict[str, Any], old: dict[str, Any] | None
) -> None:
    out = mutate(policies, copy.deepcopy(new), old)
    assert out["spec"]["updateStrategy"] == new["spec"]["updateStrategy"], title
    assert (
        ORIGINAL_STRATEGY not in out["metadata"]["annotations"]
        or ORIGINAL_STRATEGY in new["metadata"]["annotations"]
    )


def test_a_gitops_reapply_mid_rollout_keeps_on_delete_and_records_the_new_strategy() -> None:
    running = {WAVES_REVISION: "h2", ORIGINAL_STRATEGY: json.dumps(ROLLING)}
    old = ds("agent:2", ON_DELETE, annotations=running)
    applied = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}
    out = mutate([policy()], ds("agent:2", applied, annotations=running), old)
    assert out["spec"]["updateStrategy"] == ON_DELETE
    assert json.loads(out["metadata"]["annotations"][ORIGINAL_STRATEGY]) == applied


def test_the_recorded_strategy_is_the_clamped_one() -> None:
    caps = {"maxUnavailable": 1, "onExceed": "Clamp"}
    out = mutate([policy(caps=caps)], ds("agent:2"), ds("agent:1"))
    assert out["spec"]["updateStrategy"] == ON_DELETE
    assert json.loads(out["metadata"]["annotations"][ORIGINAL_STRATEGY]) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }


def test_a_paused_rollout_stays_held_and_is_not_taken_over_twice() -> None:
    paused = {PAUSED: "true", PAUSED_REVISION: "h2", ORIGINAL_STRATEGY: json.dumps(ROLLING)}
    old = ds("agent:2", ON_DELETE, annotations=paused)
    out = mutate([policy()], ds("agent:2", annotations=paused), old)
    assert out["spec"]["updateStrategy"] == ON_DELETE
    assert json.loads(out["metadata"]["annotations"][ORIGINAL_STRATEGY]) == ROLLING


def test_no_annotations_map_yet() -> None:
    new, old = ds("agent:2"), ds("agent:1")
    del new["metadata"]["annotations"]
    out = mutate([policy()], new, old)
    assert out["spec"]["updateStrategy"] == ON_DELETE
    assert ORIGINAL_STRATEGY in out["metadata"]["annotations"]
