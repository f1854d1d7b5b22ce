"""Never a 500 for a bad object: the boundary at decode time (dsguard.daemonset_shape, the nesting
limit) and what each endpoint answers for a field it can't read.

One row per bug of issue 13 (each answered 500 before the boundary), then a hypothesis property:
for any JSON document, and for valid reviews with any value put at any path, serve_admission
answers 200 or 400 and never raises, and every 200 echoes the uid.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsguard.cluster_cache import ClusterCache
from dsguard.daemonset_shape import MAX_DEPTH, daemonset_shape_errors, full_shape_errors, too_deep
from dsguard.scheduling import NodeInfo
from tests.support.builders import daemonset, node, parsed_policy
from tests.support.json_paths import json_paths
from webhook.server import WebhookState, serve_admission

Endpoint = Literal["mutate", "validate"]
NS, NOWHERE_NS = "agents", "nowhere"
UID = "5d0c9b1e-2a7f-4c1e-8b0a-0f3c2e1d4a55"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
MAX_UNAVAILABLE = "spec.updateStrategy.rollingUpdate.maxUnavailable"
TOLERATIONS = "spec.template.spec.tolerations"
REQUIRED = "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
TERMS = f"{REQUIRED}.nodeSelectorTerms"

# Tolerations added (Add), caps clamped (Clamp): in NS on every node; in NOWHERE_NS the same policy
# on a DaemonSet whose nodeSelector targets no node (caps compared as written).
_SPEC: dict[str, Any] = {
    "enforcement": "Enforce",
    "tolerations": {"required": [INFRA], "onMissing": "Add", "coverage": {"nodeSelector": {}}},
    "rollout": {"maxUnavailable": "10%", "onExceed": "Clamp"},
}
POLICIES = (
    parsed_policy("agents", _SPEC, namespaces=[NS]),
    parsed_policy("nowhere", _SPEC, namespaces=[NOWHERE_NS]),
)
_node = partial(node, labels={"kubernetes.io/os": "linux"}, hostname_label=True, kubelet="v1.33.1")
_TAINT = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
NODES = [_node(f"n{i}", taints=[_TAINT] if i < 2 else []) for i in range(10)]


def state() -> WebhookState:
    cache = ClusterCache(static_policies=POLICIES)
    cache.use_static_facts([NodeInfo.from_node(n) for n in NODES], "v1.33.1")
    return WebhookState(cache=cache)


def agent(namespace: str = NS) -> dict[str, Any]:
    image = "registry.example.com/agent:1.0.0"
    ds = daemonset("agent", namespace, image=image, max_unavailable=1, max_surge=0)
    if namespace == NOWHERE_NS:
        ds["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "none"}
    return ds


def review(obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": UID,
        "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
        "namespace": obj["metadata"]["namespace"],
        "name": obj["metadata"]["name"],
        "operation": "UPDATE" if old is not None else "CREATE",
        "userInfo": {"username": "alice"},
        "object": obj,
    }
    if old is not None:
        request["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


_DEEP = re.compile(rb'"@deep:([0-9]+)@"')


def deep(depth: int) -> str:
    """A placeholder for `depth` nested arrays, expanded by wire() (orjson won't write them)."""
    return f"@deep:{depth}@"


def wire(doc: Any) -> bytes:
    """JSON by the standard library: it writes integers of any size, as a hostile client may."""
    return _DEEP.sub(lambda m: b"[" * int(m[1]) + b'"x"' + b"]" * int(m[1]), json.dumps(doc).encode())


def at(path: str, value: Any, namespace: str = NS, *, update: bool = False) -> Callable[[], bytes]:
    """A review of agent() with `value` put at the dotted path (created as needed)."""

    def body() -> bytes:
        obj = agent(namespace)
        node_: Any = obj
        keys = path.split(".")
        for key in keys[:-1]:
            node_ = node_.setdefault(key, {})
        node_[keys[-1]] = value
        return wire(review(obj, old=agent(namespace) if update else None))

    return body


def paused(strategy: Any) -> Callable[[], bytes]:
    """An UPDATE re-applying a strategy to a DaemonSet the guard paused (the pause hold reads it)."""

    def body() -> bytes:
        old = agent()
        old["metadata"]["annotations"] = {"dsguard.io/paused": "true"}
        old["spec"]["updateStrategy"] = {"type": "OnDelete"}
        new = copy.deepcopy(old)
        new["spec"]["updateStrategy"] = strategy
        return wire(review(new, old))

    return body


def deep_api_version() -> bytes:
    doc = review(agent())
    doc["apiVersion"] = deep(1000)
    return wire(doc)


def gt_value(digits: int) -> Callable[[], bytes]:
    term = {"matchExpressions": [{"key": "generation", "operator": "Gt", "values": ["5" * digits]}]}
    return at(
        "spec.template.spec.affinity",
        {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}},
    )


@dataclass(frozen=True)
class Bug:
    case: str
    body: Callable[[], bytes]
    status: int  # 400: refused at decode; 200: judged
    mutate: str  # /mutate's verdict label
    validate: str  # /validate's verdict label
    field: str = ""  # named in /mutate's warning and /validate's message
    # The toleration rule doesn't read the bad field: /mutate still adds the missing toleration,
    # /validate still denies its absence.
    still_added: bool = False


BUGS = [
    # 1. intstr.scaled_value on a percentage apps/v1 refuses.
    *(
        Bug(
            f"1-max-unavailable-{v!r}",
            at(MAX_UNAVAILABLE, v),
            200,
            "patched",
            "denied",
            MAX_UNAVAILABLE,
            True,
        )
        for v in ("5% ", "abc", "", "10.5%", "5%\n", "101%")
    ),
    # 2. The same with no node targeted: rollout_caps._number.
    Bug(
        "2-percent-no-nodes",
        at(MAX_UNAVAILABLE, "%%", NOWHERE_NS),
        200,
        "patched",
        "denied",
        MAX_UNAVAILABLE,
        True,
    ),
    # 3. A Gt value of 5,000 digits: the apiserver accepts it, the term never matches (no int() of it).
    Bug("3-gt-5000-digits", gt_value(5000), 200, "patched", "denied", still_added=True),
    # 5.-8. ~1,000-deep nesting: refused before the rules (scheduling._str, decode's message,
    # the template comparison, the pause hold).
    Bug(
        "5-deep-toleration-key",
        at(f"{TOLERATIONS}", [{"key": deep(1000)}]),
        400,
        "bad_request",
        "bad_request",
    ),
    Bug("6-deep-api-version", deep_api_version, 400, "bad_request", "bad_request"),
    Bug(
        "7-deep-template",
        at("spec.template.metadata.labels", deep(1000), update=True),
        400,
        "bad_request",
        "bad_request",
    ),
    Bug("8-deep-paused-strategy", paused(deep(1000)), 400, "bad_request", "bad_request"),
    # The same types, nested within the limit: a field the rules can't read, by name.
    Bug(
        "5-toleration-key-a-list",
        at(TOLERATIONS, [{"key": nested(20)}]),
        200,
        "warned",
        "denied",
        f"{TOLERATIONS}[0].key",
    ),
    Bug("8-paused-strategy-a-list", paused(nested(20)), 200, "warned", "denied", "spec.updateStrategy"),
    # 9.-11. TypeError / AttributeError in the placement.
    Bug("9-node-selector-terms-a-number", at(f"{TERMS}", 7), 200, "patched", "denied", TERMS, True),
    Bug("10-tolerations-a-number", at(TOLERATIONS, 7), 200, "warned", "denied", TOLERATIONS),
    Bug(
        "11-node-affinity-a-string",
        at("spec.template.spec.affinity.nodeAffinity", "x"),
        200,
        "patched",
        "denied",
        "spec.template.spec.affinity.nodeAffinity",
        True,
    ),
]


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.case)
@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
def test_each_bug_gets_a_clear_answer_not_a_500(bug: Bug, endpoint: Endpoint) -> None:
    status, body, verdict = serve_admission(state(), endpoint, bug.body())
    assert status == bug.status, body
    assert verdict == (bug.mutate if endpoint == "mutate" else bug.validate), body
    doc = orjson.loads(body)
    if status == 400:
        assert doc["kind"] == "Status" and doc["code"] == 400 and "levels deep" in doc["message"], doc
        return
    response = doc["response"]
    assert response["uid"] == UID
    if endpoint == "mutate":
        assert response["allowed"] is True  # /mutate never denies
        warnings = " ".join(response.get("warnings", []))
        assert bug.field in warnings and ("fix:" in warnings or not bug.field), warnings
        patch = orjson.loads(base64.b64decode(response["patch"])) if "patch" in response else []
        added = [op for op in patch if op["path"].startswith("/spec/template/spec/tolerations")]
        assert bool(added) == bug.still_added, patch
        assert not any("maxUnavailable" in op["path"] for op in patch) or not bug.field, patch
    else:
        assert response["allowed"] is False
        message = response["status"]["message"]
        assert (bug.field in message and "fix:" in message) or not bug.field, message
        assert ("missing required toleration" in message) == bug.still_added, message


def test_a_bad_field_no_policy_reads_is_a_warning_at_validate() -> None:
    """maxSurge under a policy capping only maxUnavailable... is still read by the caps rule; a bad
    minReadySeconds is read by no rule of these policies: apps/v1 validation is the authority."""
    obj = agent()
    obj["spec"]["minReadySeconds"] = "30"
    obj["spec"]["template"]["spec"]["tolerations"] = [INFRA]
    status, body, verdict = serve_admission(state(), "validate", orjson.dumps(review(obj)))
    response = orjson.loads(body)["response"]
    assert (status, verdict, response["allowed"]) == (200, "warned", True), response
    assert any("spec.minReadySeconds" in w and "apps/v1" in w for w in response["warnings"]), response


@pytest.mark.parametrize(
    "command",
    [
        ["check", "--policy", "{p}", "{ds}"],
        ["plan", "-f", "{ds}", "--policy-file", "{p}", "--nodes", "{nodes}"],
        ["upgrade-check", "--to", "1.38.0", "-f", "{ds}", "--policy-file", "{p}", "--nodes", "{nodes}"],
    ],
    ids=lambda c: c[0],
)
def test_the_offline_commands_report_the_same_fields(tmp_path: Any, command: list[str]) -> None:
    from click.testing import CliRunner

    from dsguard.cli import main

    obj = agent()
    obj["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = "5% "
    files = {"ds": tmp_path / "ds.json", "p": tmp_path / "p.yaml", "nodes": tmp_path / "nodes.json"}
    files["ds"].write_bytes(orjson.dumps(obj))
    policy = {"apiVersion": "dsguard.io/v1alpha1", "kind": "DaemonSetPolicy", "metadata": {"name": "p"}}
    files["p"].write_bytes(orjson.dumps({**policy, "spec": _SPEC}))
    files["nodes"].write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": NODES}))
    result = CliRunner().invoke(main, [arg.format(**files) for arg in command])
    assert result.exit_code == 2, result.output
    assert f"ds.json#1: DaemonSet {NS}/agent: {MAX_UNAVAILABLE}" in result.output, result.output
    assert "fix: write maxUnavailable" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("value", "deep"),
    [(nested(MAX_DEPTH - 1), False), (nested(MAX_DEPTH), True), ({"a": nested(MAX_DEPTH)}, True),
     ({"big": 10**30, "deep": nested(MAX_DEPTH)}, True), ({"big": 10**30}, False), ("x", False)],
)  # fmt: skip
def test_too_deep_counts_levels_exactly(value: Any, deep: bool) -> None:
    # nested(n) is n lists: MAX_DEPTH - 1 levels + the root dict = MAX_DEPTH is fine.
    assert too_deep({"root": value}) is deep


@pytest.mark.parametrize(
    ("value", "problem"),
    [(1, ""), ("10%", ""), ("0050%", ""), ("100%", ""), (2**31 - 1, ""), (2**31, "between"), (-1, "between"),
     ("5", "percentage"), ("+5%", "percentage"), ("-5%", "percentage"), ("101%", "greater than 100%"),
     ("9" * 5000 + "%", "greater than 100%"), (1.5, "an integer or a percentage"), (True, "an integer")],
)  # fmt: skip
def test_int_or_percent_as_apps_validation_takes_it(value: Any, problem: str) -> None:
    obj = agent()
    obj["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = value
    errors = [e for e in daemonset_shape_errors(obj) if e.path.endswith("maxSurge")]
    assert (problem in errors[0].problem) if problem else not errors, errors


# --- the property ---------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# Values a hostile client puts anywhere: wrong types, deep nesting, huge numbers and strings.
_HUGE_INT = "HUGE-INT-PLACEHOLDER"
_hostile = (
    _json
    | st.integers(min_value=990, max_value=1100).map(deep)  # Python's recursion limit is 1,000
    | st.sampled_from(["5% ", "%%", "abc", "", "10.5%", "5%\n", "-1%", "5" * 5000, "0" * 5000 + "7"])
    | st.just(_HUGE_INT)
    | st.integers(min_value=2**31, max_value=2**63)
    | st.text(min_size=1, max_size=3).map(lambda s: s * 20_000)
)


def _valid_reviews() -> list[dict[str, Any]]:
    paused_old = agent()
    paused_old["metadata"]["annotations"] = {"dsguard.io/paused": "true"}
    paused_old["spec"]["updateStrategy"] = {"type": "OnDelete"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "generation", "operator": "Gt", "values": ["3"]}],
         "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}  # fmt: skip
    full = agent()
    full["spec"]["template"]["spec"].update(affinity=affinity, tolerations=[INFRA], hostNetwork=True)
    full["spec"]["minReadySeconds"] = 5
    return [review(agent()), review(full, agent()), review(agent(NOWHERE_NS)), review(agent(), paused_old)]


VALID = _valid_reviews()
PATHS = [(i, p) for i, r in enumerate(VALID) for p in json_paths(r)]
# Half the examples go where the rules and the holds read (spec, labels, annotations).
READ_PATHS = [
    (i, p) for i, p in PATHS if p[:2] in (("request", "object"), ("request", "oldObject"))
    and len(p) > 2 and p[2] in ("spec", "metadata")
]  # fmt: skip
STATE = state()
_PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _answers(endpoint: Endpoint, body: bytes) -> None:
    status, out, _ = serve_admission(STATE, endpoint, body)
    assert status in (200, 400), out
    doc = orjson.loads(out)
    if status == 200:
        assert doc["response"]["uid"], doc
        sent = orjson.loads(body)["request"]["uid"]
        assert doc["response"]["uid"] == sent


@_PROPERTY
@given(doc=_json, endpoint=st.sampled_from(["mutate", "validate"]))
def test_any_json_document_gets_200_or_400(doc: Any, endpoint: Endpoint) -> None:
    _answers(endpoint, wire(doc))


@_PROPERTY
@given(
    where=st.sampled_from(READ_PATHS) | st.sampled_from(PATHS),
    value=_hostile,
    endpoint=st.sampled_from(["mutate", "validate"]),
    compress=st.booleans(),
)
def test_any_value_at_any_path_of_a_valid_review_gets_200_or_400(
    where: tuple[int, tuple[Any, ...]], value: Any, endpoint: Endpoint, compress: bool
) -> None:
    index, path = where
    doc = copy.deepcopy(VALID[index])
    if not path:
        doc = value
    else:
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    body = wire(doc).replace(f'"{_HUGE_INT}"'.encode(), b"9" * 5000)
    if compress:  # bytes that aren't JSON at all
        body = zlib.compress(body)
    _answers(endpoint, body)


def _with(where: tuple[int, tuple[Any, ...]], value: Any) -> dict[str, Any]:
    """The object (or oldObject) of a valid review with `value` put at the path."""
    index, path = where
    doc = copy.deepcopy(VALID[index])
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    obj: dict[str, Any] = doc["request"][path[1]]
    return obj


# Values at the edge of what each read field takes: the fast path's checks must draw the same lines.
_EDGES = ["10%", "100%", "101%", "5% ", "", "x", 0, -1, 2**31 - 1, 2**31, 2**63, -(2**63) - 1, 1.5, True,
          None, {}, [], [None], [1], {"a": 1}, {1: "a"}, ("a",)]  # fmt: skip


def test_the_shape_checks_fast_path_agrees_with_the_full_check_at_every_read_field() -> None:
    """daemonset_shape_errors skips the full check for plainly readable objects: it must never
    skip one the full check finds an error in (nor find different ones)."""
    for where in READ_PATHS:
        for value in _EDGES:
            obj = _with(where, value)
            assert daemonset_shape_errors(obj) == full_shape_errors(obj), (where, value)


@_PROPERTY
@given(where=st.sampled_from(READ_PATHS), value=_hostile)
def test_the_shape_checks_fast_path_agrees_with_the_full_check(
    where: tuple[int, tuple[Any, ...]], value: Any
) -> None:
    obj = _with(where, value)
    assert daemonset_shape_errors(obj) == full_shape_errors(obj)
