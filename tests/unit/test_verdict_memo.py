"""webhook.verdict_memo through serve_admission: a repeated review is answered from the memo (its
own uid echoed, its audits still recorded), and no change of nodes, namespaces or policies ever
lets it answer from before the change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from dsguard.cluster_cache import ClusterCache
from tests.support.builders import daemonset, node, policy
from webhook.server import WebhookState, serve_admission

NS = "logging"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
INFRA_TAINT = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
COVER_ALL: dict[str, Any] = {"tolerations": {"required": [], "coverage": {"nodeSelector": {}}}}
REQUIRE_INFRA: dict[str, Any] = {"tolerations": {"required": [INFRA], "onMissing": "Deny"}}
ADD_INFRA: dict[str, Any] = {"tolerations": {"required": [INFRA], "onMissing": "Add"}}
PLATFORM = {"namespaceSelector": {"matchLabels": {"tier": "platform"}}}


def review(obj: dict[str, Any], uid: str, old: dict[str, Any] | None = None) -> bytes:
    request: dict[str, Any] = {
        "uid": UIDS.get(uid, uid),
        "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
        "name": obj["metadata"]["name"],
        "namespace": NS,
        "operation": "UPDATE" if old is not None else "CREATE",
        "userInfo": {"username": "argocd"},
        "object": obj,
        "oldObject": old,
    }
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


#: The apiserver's uids are UUIDs; the tests name them.
UIDS = {name: f"6f0c8f4e-2d7b-4c1e-9a55-{i:012x}" for i, name in enumerate(["u", "u1", "u2", "u3", "uid-x"])}
UIDS |= {f"uid-{i}": f"0e4f1b7c-3d21-4c1e-9a55-{i:012x}" for i in range(3)}


def answer(state: WebhookState, endpoint: str, body: bytes) -> dict[str, Any]:
    status, out, _ = serve_admission(state, endpoint, body)  # type: ignore[arg-type]
    assert status == 200
    response: dict[str, Any] = orjson.loads(out)["response"]
    names = {v: k for k, v in UIDS.items()}
    response["uid"] = names.get(response["uid"], response["uid"])
    return response


def agent() -> dict[str, Any]:
    return daemonset("agent", namespace=NS, image="registry.example.com/agent:1.0.0", app_label=True)


def watched_cache(policies: list[dict[str, Any]], namespace_labels: dict[str, str]) -> ClusterCache:
    """A cache fed as the watches feed it (not static), so every change goes its real way."""
    cache = ClusterCache()
    cache.replace_policies(policies)
    cache.replace_namespaces([{"metadata": {"name": NS, "labels": namespace_labels}}])
    cache.use_static_facts([], "v1.33.1")
    cache.replace_nodes([node("worker-1", hostname_label=True, taints=[], kubelet="v1.33.1")])
    return cache


Change = Callable[[ClusterCache], None]
CASES: list[tuple[str, str, list[dict[str, Any]], dict[str, str], Change]] = [
    (
        "a node gains a taint the DaemonSet doesn't tolerate",
        "validate",
        [policy("cover", COVER_ALL, namespaces=[NS])],
        {},
        lambda c: c.node_event("MODIFIED", node("worker-1", hostname_label=True, taints=[INFRA_TAINT])),
    ),
    (
        "a tainted node joins",
        "validate",
        [policy("cover", COVER_ALL, namespaces=[NS])],
        {},
        lambda c: c.node_event("ADDED", node("infra-1", hostname_label=True, taints=[INFRA_TAINT])),
    ),
    (
        "the namespace gains the label a policy selects",
        "validate",
        [policy("strict", {**REQUIRE_INFRA, "match": PLATFORM})],
        {"tier": "workload"},
        lambda c: c.namespace_event("MODIFIED", {"metadata": {"name": NS, "labels": {"tier": "platform"}}}),
    ),
    (
        "a policy is created",
        "validate",
        [],
        {},
        lambda c: c.policy_event("ADDED", policy("strict", REQUIRE_INFRA, namespaces=[NS])),
    ),
    (
        "a policy changes",
        "mutate",
        [policy("infra", {**ADD_INFRA, "match": {"namespaces": ["elsewhere"]}})],
        {},
        lambda c: c.policy_event("MODIFIED", policy("infra", ADD_INFRA, namespaces=[NS])),
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "policies", "labels", "change"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_change_is_never_answered_from_before_it(
    endpoint: str, policies: list[dict[str, Any]], labels: dict[str, str], change: Change
) -> None:
    state = WebhookState(cache=watched_cache(policies, labels))
    obj = agent()
    before = answer(state, endpoint, review(obj, "u1"))
    assert answer(state, endpoint, review(obj, "u2")) == {**before, "uid": "u2"}
    assert state.memo.hits == 1
    change(state.cache)
    after = answer(state, endpoint, review(obj, "u3"))
    fresh = answer(WebhookState(cache=state.cache), endpoint, review(obj, "u3"))  # its own, empty memo
    assert after == fresh
    assert after != {**before, "uid": "u3"}  # the change matters: a stale answer would be caught


def test_a_repeated_review_is_answered_from_the_memo_and_still_recorded() -> None:
    audit = policy("audited", {**REQUIRE_INFRA, "enforcement": "Audit"}, namespaces=[NS])
    state = WebhookState(cache=watched_cache([audit], {}))
    old = agent()
    new = agent()
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/agent:1.0.1"
    for i in range(3):
        response = answer(state, "validate", review(new, f"uid-{i}", old=old))
        assert response["uid"] == f"uid-{i}"
        assert response["allowed"] is True
    assert (state.memo.hits, state.memo.misses) == (2, 1)
    assert state.metrics.audits.labels("audited", "tolerations")._value.get() == 3
    # Another old object is another review.
    answer(state, "validate", review(new, "uid-x", old=new))
    assert state.memo.misses == 2


def test_the_memo_is_bounded() -> None:
    state = WebhookState(cache=watched_cache([], {}))
    state.memo.maxsize = 3
    for i in range(5):
        obj = agent()
        obj["metadata"]["name"] = f"agent-{i}"
        answer(state, "validate", review(obj, "u"))
    assert len(state.memo) == 3
    big = agent()
    big["metadata"]["annotations"] = {"blob": "x" * (state.memo.max_entry_bytes + 1)}
    answer(state, "validate", review(big, "u"))
    answer(state, "validate", review(big, "u"))
    assert state.memo.hits == 0  # too big to keep: judged every time


@pytest.mark.parametrize(
    ("uid", "in_object"),
    [
        ("6f0c8f4e-2d7b-4c1e-9a55-0e4f1b7c3d21", True),  # also in the object: where is the uid field?
        ("a", False),  # occurs all over the body
        ("caf\u00e9", False),  # not plain: JSON may spell it otherwise (\\u00e9)
    ],
)
def test_a_uid_that_cannot_be_cut_out_plainly_is_judged_without_the_memo(uid: str, in_object: bool) -> None:
    state = WebhookState(cache=watched_cache([], {}))
    obj = agent()
    if in_object:
        obj["metadata"]["annotations"] = {"copied": uid}
    for _ in range(2):
        status, out, _ = serve_admission(state, "validate", review(obj, uid))
        assert status == 200 and orjson.loads(out)["response"]["uid"] == uid
    assert (state.memo.hits, state.memo.misses, len(state.memo)) == (0, 0, 0)
