"""dsguard.scheduling against cases ported from the Kubernetes Go tests (names cited per case)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.fielderrors import ErrorList
from dsguard.scheduling import (
    NO_EXECUTE,
    NO_SCHEDULE,
    PREFER_NO_SCHEDULE,
    TAINT_TOLERATION_COMPARISON_OPERATORS,
    NodeInfo,
    Placement,
    PodPlacement,
    Taint,
    Toleration,
    add_or_update_toleration,
    compare_numeric_values,
    daemonset_auto_tolerations,
    find_untolerated_taints,
    is_decimal_integer,
)
from tests.support.builders import node_info

SLA = "node.kubernetes.io/sla"

# daemon_controller_test.go fixtures
SIMPLE_DAEMONSET_LABEL = {"name": "simple-daemon", "type": "production"}
SIMPLE_DAEMONSET_LABEL2 = {"name": "simple-daemon", "type": "test"}
SIMPLE_NODE_LABEL = {"color": "blue", "speed": "fast"}
NO_SCHEDULE_TOLERATIONS = [{"key": "dedicated", "value": "user1", "effect": "NoSchedule"}]
NO_SCHEDULE_TAINTS = [{"key": "dedicated", "value": "user1", "effect": "NoSchedule"}]
NO_EXECUTE_TAINTS = [{"key": "dedicated", "value": "user1", "effect": "NoExecute"}]
NODE_NOT_READY = [
    {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": "2025-01-01T00:00:00Z"}
]
NODE_UNREACHABLE = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]


#: NodeInfos (through NodeInfo.from_node) of nodes on kubelet v1.37.0, by default untainted and unlabelled.
node = partial(node_info, kubelet="v1.37.0")


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    d: dict[str, Any] = {"key": key, "operator": op}
    if values:
        d["values"] = list(values)
    return d


# --- Toleration.tolerates -------------------------------------------------------------------------


def test_comparison_operators_are_off_by_default() -> None:
    assert TAINT_TOLERATION_COMPARISON_OPERATORS is False


@pytest.mark.parametrize(
    ("tol", "taint", "tolerated"),
    [
        # toleration_test.go TestTolerationToleratesTaint
        (Toleration("foo", "Exists", "", NO_SCHEDULE), Taint("foo", "", NO_SCHEDULE), True),
        (Toleration("foo", "Exists", "", NO_SCHEDULE), Taint("foo", "bar", NO_SCHEDULE), True),
        (Toleration("", "Exists", "", NO_SCHEDULE), Taint("foo", "bar", NO_SCHEDULE), True),
        (Toleration("foo", "Equal", "bar", NO_SCHEDULE), Taint("foo", "bar", NO_SCHEDULE), True),
        (Toleration("foo", "Equal", "value1", NO_SCHEDULE), Taint("foo", "value2", NO_SCHEDULE), False),
        (Toleration("foo", "Equal", "bar", NO_SCHEDULE), Taint("foo", "bar", NO_EXECUTE), False),
        (Toleration(SLA, "Gt", "950", NO_SCHEDULE), Taint(SLA, "800", NO_SCHEDULE), False),
        (Toleration(SLA, "Gt", "750", NO_SCHEDULE), Taint(SLA, "950", NO_SCHEDULE), True),
        (Toleration(SLA, "Lt", "800", NO_SCHEDULE), Taint(SLA, "950", NO_SCHEDULE), False),
        (Toleration(SLA, "Lt", "950", NO_SCHEDULE), Taint(SLA, "800", NO_SCHEDULE), True),
        (Toleration(SLA, "Gt", "950", NO_SCHEDULE), Taint(SLA, "950", NO_SCHEDULE), False),
        (Toleration(SLA, "Gt", "950", NO_SCHEDULE), Taint(SLA, "high", NO_SCHEDULE), False),
        (Toleration("test-key", "Gt", "-100", NO_SCHEDULE), Taint("test-key", "-200", NO_SCHEDULE), False),
        (
            Toleration("test-key", "Gt", "9223372036854775806", NO_SCHEDULE),
            Taint("test-key", "100", NO_SCHEDULE),
            False,
        ),
        # empty effect = all effects; empty operator = Equal; unknown operator never matches
        (Toleration("foo", "Exists"), Taint("foo", "x", PREFER_NO_SCHEDULE), True),
        (Toleration("foo", "", "bar"), Taint("foo", "bar", NO_EXECUTE), True),
        (Toleration("foo", "In", "bar"), Taint("foo", "bar", NO_EXECUTE), False),
        # empty key + Equal (rejected by validation, but ToleratesTaint skips the key check)
        (Toleration("", "Equal", "v"), Taint("any-key", "v", NO_SCHEDULE), True),
        (Toleration("", "Equal", "v"), Taint("any-key", "w", NO_SCHEDULE), False),
        # tolerationSeconds plays no part in matching
        (Toleration("foo", "Exists", "", NO_EXECUTE, 0), Taint("foo", "", NO_EXECUTE), True),
    ],
)
def test_tolerates_with_gate_on(tol: Toleration, taint: Taint, tolerated: bool) -> None:
    assert tol.tolerates(taint, comparison_operators=True) is tolerated


@pytest.mark.parametrize("op", ["Lt", "Gt"])
def test_lt_gt_never_tolerate_with_gate_off(op: str) -> None:
    # ToleratesTaint(..., enableComparisonOperators=false) returns false for Lt/Gt.
    tol = Toleration(SLA, op, "500", NO_SCHEDULE)
    for value in ("0", "499", "500", "501", "1000", "x", ""):
        assert not tol.tolerates(Taint(SLA, value, NO_SCHEDULE))


@pytest.mark.parametrize(
    ("tol_val", "taint_val", "op", "want"),
    [
        # toleration_test.go TestCompareNumericValues
        ("100", "200", "Gt", True),
        ("200", "100", "Gt", False),
        ("100", "100", "Gt", False),
        ("-100", "-50", "Gt", True),
        ("-50", "-100", "Gt", False),
        ("0", "1", "Gt", True),
        ("9223372036854775806", "9223372036854775807", "Gt", True),
        ("200", "100", "Lt", True),
        ("100", "200", "Lt", False),
        ("100", "100", "Lt", False),
        ("-50", "-100", "Lt", True),
        ("-100", "-50", "Lt", False),
        ("0", "-1", "Lt", True),
        ("abc", "100", "Gt", False),
        ("", "100", "Gt", False),
        ("0100", "200", "Gt", False),
        ("+100", "200", "Gt", False),
        ("100.5", "200", "Gt", False),
        ("-", "100", "Gt", False),
        ("100", "xyz", "Gt", False),
        ("100", "", "Gt", False),
        ("100", "0200", "Gt", False),
        ("100", "+200", "Lt", False),
        ("100", " 200 ", "Lt", False),
        ("100", "100", "Equal", False),
        ("100", "100", "Exists", False),
        ("0", "0", "Gt", False),
        ("0", "0", "Lt", False),
        ("0", "9223372036854775807", "Gt", True),
        ("0", "-9223372036854775808", "Lt", True),
        # beyond the Go table: "-0" is not canonical, int64 overflow fails ParseInt
        ("-0", "1", "Gt", False),
        ("0", "9223372036854775808", "Gt", False),
    ],
)
def test_compare_numeric_values(tol_val: str, taint_val: str, op: str, want: bool) -> None:
    assert compare_numeric_values(tol_val, taint_val, op) is want


@pytest.mark.parametrize(
    ("value", "ok"),
    [("0", True), ("5", True), ("-5", True), ("05", False), ("+5", False), ("-0", False), ("", False)],
)
def test_is_decimal_integer(value: str, ok: bool) -> None:
    assert is_decimal_integer(value) is ok


# --- Taint / Toleration strings and dicts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("taint", "want"),
    [
        # taint_test.go TestTaintToString
        (Taint("foo", "bar", NO_SCHEDULE), "foo=bar:NoSchedule"),
        (Taint("foo", "", NO_SCHEDULE), "foo:NoSchedule"),
        (Taint("foo"), "foo"),
        (Taint("foo", "bar"), "foo=bar:"),
        (Taint("dedicated", "infra", NO_SCHEDULE), "dedicated=infra:NoSchedule"),
    ],
)
def test_taint_str(taint: Taint, want: str) -> None:
    assert str(taint) == want


@pytest.mark.parametrize(
    ("tol", "want"),
    [
        (
            Toleration("node.kubernetes.io/not-ready", "Exists", "", NO_EXECUTE, 300),
            "node.kubernetes.io/not-ready:NoExecute op=Exists for 300s",
        ),
        (Toleration("", "Exists"), "op=Exists"),
        (Toleration("", "Exists", "", NO_SCHEDULE), ":NoSchedule op=Exists"),
        (Toleration("dedicated", "Equal", "infra", NO_SCHEDULE), "dedicated=infra:NoSchedule"),
        (Toleration("k", "Gt", "5"), "k=5 op=Gt"),
    ],
)
def test_toleration_str(tol: Toleration, want: str) -> None:
    assert str(tol) == want


def test_taint_from_dict_ignores_time_added() -> None:
    assert Taint.from_dict(NODE_NOT_READY[0]) == Taint("node.kubernetes.io/not-ready", "", NO_EXECUTE)


@pytest.mark.parametrize(
    ("raw", "want", "out"),
    [
        (
            {"key": "a", "value": "b", "effect": "NoSchedule"},
            Toleration("a", "Equal", "b", NO_SCHEDULE),
            {"key": "a", "operator": "Equal", "value": "b", "effect": "NoSchedule"},
        ),
        ({"operator": "Exists"}, Toleration("", "Exists"), {"operator": "Exists"}),
        ({"key": "a", "operator": "", "value": None}, Toleration("a"), {"key": "a", "operator": "Equal"}),
        (
            {"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0},
            Toleration("a", "Exists", "", NO_EXECUTE, 0),
            {"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0},
        ),
        (
            {"key": "a", "operator": "Exists", "tolerationSeconds": 30.0},
            Toleration("a", "Exists", toleration_seconds=30),
            {"key": "a", "operator": "Exists", "tolerationSeconds": 30},
        ),
    ],
)
def test_toleration_dicts(raw: dict[str, Any], want: Toleration, out: dict[str, Any]) -> None:
    assert Toleration.from_dict(raw) == want
    assert want.to_dict() == out


def test_empty_operator_is_equal() -> None:
    assert Toleration("a", "", "b") == Toleration("a", "Equal", "b")
    assert hash(Toleration("a", "", "b")) == hash(Toleration("a", "Equal", "b"))


# --- Toleration.parse (ValidateTolerations) -------------------------------------------------------


def parse_tol(raw: object) -> tuple[Toleration | None, list[tuple[str, str]]]:
    errors = ErrorList()
    tol = Toleration.parse(raw, "spec.tolerations[0]", errors)
    return tol, [(e.path, e.message) for e in errors.errors]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            Toleration("node.kubernetes.io/not-ready", "Exists", "", NO_EXECUTE, 300),
        ),
        ({"operator": "Exists"}, Toleration("", "Exists")),
        (
            {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": -5},
            Toleration("", "Exists", "", NO_EXECUTE, -5),
        ),
        (
            {"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"},
            Toleration("foo", "Equal", "bar", NO_SCHEDULE),
        ),
        ({"key": "foo", "value": "bar"}, Toleration("foo", "Equal", "bar")),
        ({"key": "foo", "operator": "Equal"}, Toleration("foo")),
        (
            {"key": "example.com/foo", "operator": "Exists", "effect": "PreferNoSchedule"},
            Toleration("example.com/foo", "Exists", "", PREFER_NO_SCHEDULE),
        ),
        ({"key": "foo", "operator": "Exists", "value": None}, Toleration("foo", "Exists")),
    ],
)
def test_parse_valid(raw: dict[str, Any], want: Toleration) -> None:
    assert parse_tol(raw) == (want, [])


P = "spec.tolerations[0]"


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        # validation_test.go TestValidatePod toleration cases (path asserted as in expectedError)
        (
            {"key": "nospecialchars^=@", "operator": "Equal", "value": "bar", "effect": "NoSchedule"},
            [(f"{P}.key", "'nospecialchars^=@' is not a valid label key")],
        ),
        (
            {"key": "foo", "operator": "In", "value": "bar", "effect": "NoSchedule"},
            [(f"{P}.operator", "'In' is not one of Equal, Exists")],
        ),
        (
            {"key": "foo", "operator": "Exists", "value": "bar", "effect": "NoSchedule"},
            [(f"{P}.operator", "value must be empty when `operator` is 'Exists'")],
        ),
        (
            {"operator": "Equal", "value": "bar", "effect": "NoSchedule"},
            [(f"{P}.operator", "operator must be Exists when `key` is empty")],
        ),
        (
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoSchedule",
                "tolerationSeconds": 20,
            },
            [(f"{P}.effect", "effect must be 'NoExecute' when `tolerationSeconds` is set")],
        ),
        # an empty operator with an empty key is not Exists either
        (
            {"value": "", "effect": "NoSchedule"},
            [(f"{P}.operator", "operator must be Exists when `key` is empty")],
        ),
        (
            {"operator": "Exists", "tolerationSeconds": 5},
            [(f"{P}.effect", "effect must be 'NoExecute' when `tolerationSeconds` is set")],
        ),
        # bad value for Equal is reported against .operator, as the apiserver does
        (
            {"key": "foo", "operator": "Equal", "value": "not ok"},
            [(f"{P}.operator", "'not ok' is not a valid label value")],
        ),
        (
            {"key": "foo", "operator": "Exists", "effect": "NoEvict"},
            [(f"{P}.effect", "'NoEvict' is not one of NoSchedule, PreferNoSchedule, NoExecute")],
        ),
        # Lt/Gt: feature gate TaintTolerationComparisonOperators is off by default in v1.37
        (
            {"key": "sla", "operator": "Gt", "value": "5"},
            [(f"{P}.operator", "'Gt' is not one of Equal, Exists (Lt and Gt need")],
        ),
        (
            {"key": "sla", "operator": "Lt", "value": "5"},
            [(f"{P}.operator", "'Lt' is not one of Equal, Exists (Lt and Gt need")],
        ),
        ({"key": "foo", "operator": "exists"}, [(f"{P}.operator", "'exists' is not one of Equal, Exists")]),
        (
            {"key": "foo", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": True},
            [(f"{P}.tolerationSeconds", "must be an integer, got bool")],
        ),
        (
            {"key": "foo", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "30"},
            [(f"{P}.tolerationSeconds", "must be an integer, got str")],
        ),
        (
            {"key": "foo", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2**63},
            [(f"{P}.tolerationSeconds", "9223372036854775808 does not fit in int64")],
        ),
        ({"key": 5, "operator": "Exists"}, [(f"{P}.key", "must be a string, got int 5")]),
        (
            {"key": "foo", "operator": "Exists", "tolerationSecond": 5},
            [(f"{P}.tolerationSecond", "unknown field")],
        ),
        ("foo:NoSchedule", [(P, "must be a mapping, got str")]),
    ],
)
def test_parse_errors(raw: object, errors: list[tuple[str, str]]) -> None:
    tol, got = parse_tol(raw)
    assert tol is None
    assert len(got) == len(errors), got
    for (gpath, gmsg), (wpath, wmsg) in zip(got, errors, strict=True):
        assert gpath == wpath
        assert gmsg.startswith(wmsg), gmsg


def test_parse_reports_every_problem() -> None:
    _, got = parse_tol({"operator": "Bogus", "value": "a b", "effect": "Nope", "tolerationSeconds": 1})
    assert [p for p, _ in got] == [f"{P}.operator", f"{P}.effect", f"{P}.operator", f"{P}.effect"]


# --- Toleration.covers ----------------------------------------------------------------------------

NR = "node.kubernetes.io/not-ready"


@pytest.mark.parametrize(
    ("have", "need", "covers"),
    [
        (Toleration("", "Exists"), Toleration(NR, "Exists", "", NO_EXECUTE, 300), True),
        (Toleration("", "Exists"), Toleration("", "Exists"), True),
        (Toleration(NR, "Exists"), Toleration(NR, "Exists", "", NO_EXECUTE), True),
        (Toleration(NR, "Exists", "", NO_EXECUTE), Toleration(NR, "Exists"), False),  # misses NoSchedule
        (
            Toleration(NR, "Exists", "", NO_EXECUTE),
            Toleration("", "Exists", "", NO_EXECUTE),
            False,
        ),  # one key only
        (Toleration("k", "Equal", "v"), Toleration("k", "Exists"), False),
        (Toleration("k", "Exists"), Toleration("k", "Equal", "v"), True),
        (Toleration("k", "Equal", "v"), Toleration("k", "Equal", "w"), False),
        # durations: None is forever; bounded needs bounded; <= 0 all mean "at once"
        (Toleration(NR, "Exists", "", NO_EXECUTE, 300), Toleration(NR, "Exists", "", NO_EXECUTE), False),
        (Toleration(NR, "Exists", "", NO_EXECUTE, 300), Toleration(NR, "Exists", "", NO_EXECUTE, 300), True),
        (Toleration(NR, "Exists", "", NO_EXECUTE, 300), Toleration(NR, "Exists", "", NO_EXECUTE, 600), False),
        (Toleration(NR, "Exists", "", NO_EXECUTE, 600), Toleration(NR, "Exists", "", NO_EXECUTE, 300), True),
        (Toleration(NR, "Exists", "", NO_EXECUTE, -1), Toleration(NR, "Exists", "", NO_EXECUTE, 0), True),
        (Toleration(NR, "Exists", "", NO_EXECUTE), Toleration(NR, "Exists", "", NO_EXECUTE, 300), True),
        # duration is irrelevant when required tolerates no NoExecute taint
        (Toleration("k", "Exists", "", NO_SCHEDULE), Toleration("k", "Exists", "", NO_SCHEDULE), True),
        # Lt/Gt tolerate nothing with the gate off: trivially covered, and cover nothing
        (Toleration("k", "Equal", "v"), Toleration("k", "Gt", "5"), True),
        (Toleration("k", "Gt", "5"), Toleration("k", "Equal", "7"), False),
        (Toleration("k", "Bogus", "5"), Toleration("k", "Bogus", "5"), True),
    ],
)
def test_covers(have: Toleration, need: Toleration, covers: bool) -> None:
    assert have.covers(need) is covers


@pytest.mark.parametrize(
    ("have", "need", "covers"),
    [
        (Toleration("k", "Gt", "5"), Toleration("k", "Equal", "7"), True),
        (Toleration("k", "Gt", "5"), Toleration("k", "Equal", "07"), False),  # not canonical
        (Toleration("k", "Gt", "5"), Toleration("k", "Gt", "6"), True),
        (Toleration("k", "Gt", "6"), Toleration("k", "Gt", "5"), False),
        (Toleration("k", "Lt", "5"), Toleration("k", "Lt", "4"), True),
        (Toleration("k", "Lt", "5"), Toleration("k", "Gt", "1"), False),
        (Toleration("k", "Equal", "9223372036854775807"), Toleration("k", "Gt", "9223372036854775806"), True),
        (Toleration("k", "Equal", "x"), Toleration("k", "Gt", "9223372036854775807"), True),  # empty set
        (Toleration("k", "Gt", "5"), Toleration("k", "Exists"), False),
        (Toleration("k", "Gt", "05"), Toleration("k", "Equal", "7"), False),  # tolerates nothing
    ],
)
def test_covers_with_comparison_operators(have: Toleration, need: Toleration, covers: bool) -> None:
    assert have.covers(need, comparison_operators=True) is covers


# --- DaemonSet automatic tolerations --------------------------------------------------------------


def test_auto_tolerations() -> None:
    # daemonset_util.go AddOrUpdateDaemonPodTolerations
    base = [
        Toleration("node.kubernetes.io/not-ready", "Exists", "", NO_EXECUTE),
        Toleration("node.kubernetes.io/unreachable", "Exists", "", NO_EXECUTE),
        Toleration("node.kubernetes.io/disk-pressure", "Exists", "", NO_SCHEDULE),
        Toleration("node.kubernetes.io/memory-pressure", "Exists", "", NO_SCHEDULE),
        Toleration("node.kubernetes.io/pid-pressure", "Exists", "", NO_SCHEDULE),
        Toleration("node.kubernetes.io/unschedulable", "Exists", "", NO_SCHEDULE),
    ]
    assert list(daemonset_auto_tolerations(False)) == base
    net = Toleration("node.kubernetes.io/network-unavailable", "Exists", "", NO_SCHEDULE)
    assert list(daemonset_auto_tolerations(True)) == [*base, net]


def test_add_or_update_replaces_a_bounded_twin() -> None:
    # helpers.go AddOrUpdateTolerationInPodSpec: same key/operator/value/effect -> replaced in place.
    auto = Toleration(NR, "Exists", "", NO_EXECUTE)
    user = [Toleration("a", "Exists"), Toleration(NR, "Exists", "", NO_EXECUTE, 300)]
    assert add_or_update_toleration(user, auto) == (Toleration("a", "Exists"), auto)
    assert add_or_update_toleration([auto], auto) == (auto,)
    # a different operator is a different toleration: appended
    equal_nr = Toleration(NR, "Equal", "", NO_EXECUTE)
    assert add_or_update_toleration([equal_nr], auto) == (equal_nr, auto)


def test_from_pod_spec_adds_controller_tolerations() -> None:
    p = PodPlacement.from_pod_spec(
        {"tolerations": [{"key": NR, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}
    )
    assert p.tolerations == daemonset_auto_tolerations(False)
    p = PodPlacement.from_pod_spec({"hostNetwork": True, "tolerations": None})
    assert p.tolerations == daemonset_auto_tolerations(True)


# --- NodeInfo -------------------------------------------------------------------------------------


def test_node_info_from_node() -> None:
    n = NodeInfo.from_node(
        {
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule", "timeAdded": None}]},
            "status": {"nodeInfo": {"kubeletVersion": "v1.37.1"}},
        }
    )
    assert n == NodeInfo(
        name="n1", labels={"a": "b"}, taints=(Taint("k", "v", NO_SCHEDULE),), kubelet_version="v1.37.1"
    )
    assert NodeInfo.from_node({}) == NodeInfo(name="", labels={}, taints=(), kubelet_version="")


# --- node affinity (nodeaffinity_test.go) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "labels", "node_name", "want"),
    [
        # TestPodMatchesNodeSelectorAndAffinityTerms
        ({}, None, "", True),
        ({"nodeSelector": {"foo": "bar"}}, None, "", False),
        ({"nodeSelector": {"foo": "bar"}}, {"foo": "bar"}, "", True),
        ({"nodeSelector": {"foo": "bar"}}, {"foo": "bar", "baz": "blah"}, "", True),
        ({"nodeSelector": {"foo": "bar", "baz": "blah"}}, {"foo": "bar"}, "", False),
        (required({"matchExpressions": [expr("foo", "In", "bar", "value2")]}), {"foo": "bar"}, "", True),
        (
            required({"matchExpressions": [expr("kernel-version", "Gt", "0204")]}),
            {"kernel-version": "0206"},
            "",
            True,
        ),
        (
            required({"matchExpressions": [expr("mem-type", "NotIn", "DDR", "DDR2")]}),
            {"mem-type": "DDR3"},
            "",
            True,
        ),
        (required({"matchExpressions": [expr("GPU", "Exists")]}), {"GPU": "NVIDIA-GRID-K1"}, "", True),
        (required({"matchExpressions": [expr("foo", "In", "value1", "value2")]}), {"foo": "bar"}, "", False),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": None}
                    }
                }
            },
            {"foo": "bar"},
            "",
            False,
        ),
        (required(), {"foo": "bar"}, "", False),
        (required({"matchExpressions": []}), {"foo": "bar"}, "", False),
        (
            {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": None}}},
            {"foo": "bar"},
            "",
            True,
        ),
        (
            required({"matchExpressions": [expr("GPU", "Exists"), expr("GPU", "NotIn", "AMD", "INTER")]}),
            {"GPU": "NVIDIA-GRID-K1"},
            "",
            True,
        ),
        (
            required({"matchExpressions": [expr("GPU", "Exists"), expr("GPU", "In", "AMD", "INTER")]}),
            {"GPU": "NVIDIA-GRID-K1"},
            "",
            False,
        ),
        (
            required(
                {"matchExpressions": [expr("foo", "In", "bar", "value2")]},
                {"matchExpressions": [expr("diffkey", "In", "wrong", "value2")]},
            ),
            {"foo": "bar"},
            "",
            True,
        ),
        (
            {"nodeSelector": {"foo": "bar"}, **required({"matchExpressions": [expr("foo", "Exists")]})},
            {"foo": "bar"},
            "",
            True,
        ),
        (
            {"nodeSelector": {"foo": "bar"}, **required({"matchExpressions": [expr("foo", "Exists")]})},
            {"foo": "barrrrrr"},
            "",
            False,
        ),
        (
            required({"matchExpressions": [expr("foo", "NotIn", "invalid value: ___@#$%^")]}),
            {"foo": "bar"},
            "",
            False,
        ),
        (required({"matchFields": [expr("metadata.name", "In", "node_1")]}), None, "node_1", True),
        (required({"matchFields": [expr("metadata.name", "In", "node_1")]}), None, "node_2", False),
        (
            required(
                {"matchFields": [expr("metadata.name", "In", "node_1")]},
                {"matchExpressions": [expr("foo", "In", "bar")]},
            ),
            {"foo": "bar"},
            "node_2",
            True,
        ),
        (
            required(
                {
                    "matchFields": [expr("metadata.name", "In", "node_1")],
                    "matchExpressions": [expr("foo", "In", "bar")],
                }
            ),
            {"foo": "bar"},
            "node_2",
            False,
        ),
        (
            required(
                {
                    "matchFields": [expr("metadata.name", "In", "node_1")],
                    "matchExpressions": [expr("foo", "In", "bar")],
                }
            ),
            {"foo": "bar"},
            "node_1",
            True,
        ),
        (
            required(
                {"matchFields": [expr("metadata.name", "In", "node_1")]},
                {"matchExpressions": [expr("foo", "In", "not-match-to-bar")]},
            ),
            {"foo": "bar"},
            "node_2",
            False,
        ),
        # beyond the Go tables
        (
            required({"matchFields": [expr("metadata.name", "In", "node_1")]}),
            None,
            "",
            True,
        ),  # unnamed node: fields skipped
        (required({"matchFields": [expr("metadata.name", "NotIn", "node_1")]}), None, "node_2", True),
        (
            required({"matchFields": [expr("metadata.uid", "In", "")]}),
            None,
            "node_2",
            True,
        ),  # missing field reads ""
        (required({"matchFields": [expr("metadata.name", "Exists")]}), None, "node_1", False),
        (
            required({"matchExpressions": [expr("n", "Gt", "-1")]}),
            {"n": "5"},
            "",
            False,
        ),  # "-1" is no label value
        (required({"matchExpressions": [expr("n", "Lt", "10")]}), {"n": "-5"}, "", True),
        (required({"matchExpressions": [expr("n", "Gt", "1", "2")]}), {"n": "5"}, "", False),
        (required({"matchExpressions": [expr("n", "Gt", "x")]}), {"n": "5"}, "", False),
        (required({"matchExpressions": [expr("n", "DoesNotExist")]}), {}, "", True),
        (required({"matchExpressions": [expr("n", "NotIn", "a")]}), {}, "", True),
        (
            required({"matchExpressions": [expr("n", "Exists", "a")]}),
            {"n": "a"},
            "",
            False,
        ),  # values forbidden
        (required({"matchExpressions": [expr("n", "In")]}), {"n": ""}, "", False),  # values required
    ],
)
def test_node_affinity(
    spec: dict[str, Any], labels: dict[str, str] | None, node_name: str, want: bool
) -> None:
    p = PodPlacement.from_pod_spec(spec)
    assert p.matches_node_affinity(node(node_name, labels=labels)) is want


def test_invalid_terms_are_reported_and_skipped() -> None:
    # nodeaffinity_test.go TestNodeSelectorMatch "invalid field selector and label selector" and
    # "second term matches": a term with a parse error never matches, the others still do.
    spec = required(
        {"matchFields": [expr("metadata.name", "In", "host_1", "host_2")]},
        {
            "matchExpressions": [expr("label_1", "In", "label_1_val")],
            "matchFields": [expr("metadata.name", "In", "host_1")],
        },
        {"matchExpressions": [expr("invalid key", "In", "label_value")]},
        {"matchFields": [expr("metadata.name", "In", "host_1")]},
    )
    p = PodPlacement.from_pod_spec(spec)
    base = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    assert [(e.path, e.message) for e in p.affinity_errors] == [
        (f"{base}[0].matchFields[0].values", "must have one element"),
        (
            f"{base}[2].matchExpressions[0].key",
            "'invalid key' is not a valid label key: name part must consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or "
            "'my.name',  or '123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        ),
    ]
    assert p.matches_node_affinity(node("host_1"))
    assert not p.matches_node_affinity(node("host_2"))
    assert p.matches_node_affinity(node("host_2", labels={"label_1": "label_1_val"})) is False


def test_unsupported_operator_in_a_term() -> None:
    p = PodPlacement.from_pod_spec(required({"matchExpressions": [expr("a", "Foo", "b")]}))
    assert [e.path.rsplit(".", 1)[-1] for e in p.affinity_errors] == ["operator"]
    assert not p.matches_node_affinity(node("test-node", labels={"a": "b"}))


# --- NodeShouldRunDaemonPod (daemon_controller_test.go) -------------------------------------------


@pytest.mark.parametrize(
    ("name", "spec", "should_run", "should_continue"),
    [
        # TestNodeShouldRunDaemonPod on newNode("test-node", simpleDaemonSetLabel)
        ("ShouldRunDaemonPod", {}, True, True),
        ("ErrPodNotMatchHostName", {"nodeName": "other-node"}, False, False),
        ("ErrNodeSelectorNotMatch", {"nodeSelector": SIMPLE_DAEMONSET_LABEL2}, False, False),
        ("ShouldRunDaemonPod nodeSelector", {"nodeSelector": SIMPLE_DAEMONSET_LABEL}, True, True),
        (
            "ErrPodAffinityNotMatch",
            required({"matchExpressions": [expr("type", "In", "test")]}),
            False,
            False,
        ),
        (
            "ShouldRunDaemonPod affinity",
            required({"matchExpressions": [expr("type", "In", "production")]}),
            True,
            True,
        ),
        ("matching nodeName", {"nodeName": "test-node"}, True, True),
    ],
)
def test_node_should_run_daemon_pod(
    name: str, spec: dict[str, Any], should_run: bool, should_continue: bool
) -> None:
    placement = PodPlacement.from_pod_spec(spec).evaluate(node("test-node", labels=SIMPLE_DAEMONSET_LABEL))
    assert (placement.should_run, placement.should_continue_running) == (should_run, should_continue), name


@pytest.mark.parametrize(
    ("name", "spec", "taints", "should_run", "should_continue"),
    [
        ("TestTaintedNodeDaemonDoesNotLaunchIntolerantPod", {}, NO_SCHEDULE_TAINTS, False, True),
        ("TestNoScheduleTaintedDoesntEvicitRunningIntolerantPod", {}, NO_SCHEDULE_TAINTS, False, True),
        ("TestNoExecuteTaintedDoesEvicitRunningIntolerantPod", {}, NO_EXECUTE_TAINTS, False, False),
        (
            "TestTaintedNodeDaemonLaunchesToleratePod",
            {"tolerations": NO_SCHEDULE_TOLERATIONS},
            NO_SCHEDULE_TAINTS,
            True,
            True,
        ),
        ("TestNodeDaemonLaunchesToleratePod", {"tolerations": NO_SCHEDULE_TOLERATIONS}, [], True, True),
        ("TestNotReadyNodeDaemonLaunchesPod", {}, NODE_NOT_READY, True, True),
        ("TestUnreachableNodeDaemonLaunchesPod", {}, NODE_UNREACHABLE, True, True),
        (
            "TestTaintPressureNodeDaemonLaunchesPod",
            {},
            [
                {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/pid-pressure", "effect": "NoSchedule"},
            ],
            True,
            True,
        ),
        (
            "unschedulable node",
            {},
            [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
            True,
            True,
        ),
        (
            "network-unavailable without hostNetwork",
            {},
            [{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}],
            False,
            True,
        ),
        (
            "network-unavailable with hostNetwork",
            {"hostNetwork": True},
            [{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}],
            True,
            True,
        ),
        ("PreferNoSchedule is not a predicate", {}, [{"key": "x", "effect": "PreferNoSchedule"}], True, True),
        (
            "not-ready NoSchedule is not auto-tolerated",
            {},
            [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}],
            False,
            True,
        ),
        (
            "tolerate everything",
            {"tolerations": [{"operator": "Exists"}]},
            NO_EXECUTE_TAINTS + NO_SCHEDULE_TAINTS,
            True,
            True,
        ),
        (
            "equal toleration, other value",
            {"tolerations": NO_SCHEDULE_TOLERATIONS},
            [{"key": "dedicated", "value": "user2", "effect": "NoSchedule"}],
            False,
            True,
        ),
        (
            "Gt toleration with the gate off",
            {"tolerations": [{"key": "sla", "operator": "Gt", "value": "5"}]},
            [{"key": "sla", "value": "9", "effect": "NoSchedule"}],
            False,
            True,
        ),
    ],
)
def test_taint_predicates(
    name: str, spec: dict[str, Any], taints: list[Any], should_run: bool, should_continue: bool
) -> None:
    placement = PodPlacement.from_pod_spec(spec).evaluate(node("tainted", labels=None, taints=taints))
    assert (placement.should_run, placement.should_continue_running) == (should_run, should_continue), name


@pytest.mark.parametrize(
    ("name", "spec", "runs_on"),
    [
        ("TestNameDaemonSetLaunchesPods", {"nodeName": "node-0"}, ["node-0"]),
        ("TestBadNameDaemonSetDoesNothing", {"nodeName": "node-10"}, []),
        (
            "TestNameAndSelectorDaemonSetLaunchesPods",
            {"nodeName": "node-6", "nodeSelector": SIMPLE_NODE_LABEL},
            ["node-6"],
        ),
        (
            "TestInconsistentNameSelectorDaemonSetDoesNothing",
            {"nodeName": "node-0", "nodeSelector": SIMPLE_NODE_LABEL},
            [],
        ),
        (
            "TestSelectorDaemonSetLaunchesPods",
            {"nodeSelector": SIMPLE_NODE_LABEL},
            ["node-4", "node-5", "node-6"],
        ),
        ("TestBadSelectorDaemonDoesNothing", {"nodeSelector": {"color": "blue", "speed": "slow"}}, []),
        (
            "TestNodeAffinityDaemonLaunchesPods",
            required({"matchExpressions": [expr("color", "In", SIMPLE_NODE_LABEL["color"])]}),
            ["node-4", "node-5", "node-6"],
        ),
    ],
)
def test_daemon_launches_on(name: str, spec: dict[str, Any], runs_on: list[str]) -> None:
    # addNodes(0, 4, nil) + addNodes(4, 3, simpleNodeLabel)
    nodes = [node(f"node-{i}") for i in range(4)] + [
        node(f"node-{i}", labels=SIMPLE_NODE_LABEL) for i in range(4, 7)
    ]
    p = PodPlacement.from_pod_spec(spec)
    assert [n.name for n in nodes if p.evaluate(n).should_run] == runs_on, name


def test_reasons() -> None:
    p = PodPlacement.from_pod_spec({"nodeName": "x"})
    assert p.evaluate(node("y")) == Placement(False, "nodeName is x", ())
    p = PodPlacement.from_pod_spec({"nodeSelector": {"a": "b"}})
    infra = Taint("dedicated", "infra", NO_SCHEDULE)
    assert p.evaluate(node("n", labels={}, taints=[infra.to_dict()])) == Placement(
        False, "node affinity/nodeSelector does not match", (infra,)
    )
    p = PodPlacement.from_pod_spec({})
    assert (
        p.evaluate(node("n", labels={}, taints=[infra.to_dict()])).reason
        == "taint dedicated=infra:NoSchedule is not tolerated"
    )
    gpu = Taint("gpu", "", NO_EXECUTE)
    soft = Taint("soft", "", PREFER_NO_SCHEDULE)
    got = p.evaluate(node("n", labels={}, taints=[infra.to_dict(), soft.to_dict(), gpu.to_dict()]))
    assert got == Placement(
        False, "taints dedicated=infra:NoSchedule, gpu:NoExecute are not tolerated", (infra, gpu), False
    )
    assert p.evaluate(node("n")) == Placement(True, "", (), True)


def test_find_untolerated_taints() -> None:
    taints = [Taint("a", "", NO_SCHEDULE), Taint("b", "", PREFER_NO_SCHEDULE), Taint("c", "", NO_EXECUTE)]
    assert find_untolerated_taints(taints, [Toleration("a", "Exists")]) == (taints[2],)
    assert find_untolerated_taints(taints, [], effects=[NO_EXECUTE]) == (taints[2],)
    assert find_untolerated_taints(taints, [Toleration("", "Exists")]) == ()


def test_evaluate_many_nodes_reuses_the_taint_cache() -> None:
    p = PodPlacement.from_pod_spec({"tolerations": NO_SCHEDULE_TOLERATIONS, "nodeSelector": {"pool": "a"}})
    nodes = [
        node(f"n{i}", labels={"pool": "ab"[i % 2]}, taints=NO_SCHEDULE_TAINTS if i % 3 else NO_EXECUTE_TAINTS)
        for i in range(3000)
    ]
    runs = sum(p.evaluate(n).should_run for n in nodes)
    assert runs == sum(1 for i in range(3000) if i % 2 == 0 and i % 3)


# --- properties -----------------------------------------------------------------------------------

KEYS = ["", "a", "b", "example.com/c"]
VALUES = ["", "x", "1", "2", "-1", "01"]
EFFECTS = ["", NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE]
OPERATORS = ["", "Equal", "Exists", "Lt", "Gt", "Bogus"]

TOLERATIONS = st.builds(
    Toleration,
    key=st.sampled_from(KEYS),
    operator=st.sampled_from(OPERATORS),
    value=st.sampled_from(VALUES),
    effect=st.sampled_from(EFFECTS),
    toleration_seconds=st.none() | st.integers(-3, 3),
)

# Every key/value the tolerations use, plus one they don't: enough to witness any non-coverage
# (with the comparison gate off, value sets are single strings or everything).
UNIVERSE = [
    Taint(k, v, e)
    for k in [*KEYS[1:], "zz-other"]
    for v in [*VALUES, "zz-other"]
    for e in [NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE]
]


def _seconds(t: Toleration) -> float:
    return math.inf if t.toleration_seconds is None else max(0, t.toleration_seconds)


def _covers_oracle(have: Toleration, need: Toleration, gate: bool, universe: list[Taint] = UNIVERSE) -> bool:
    for x in universe:
        if not need.tolerates(x, comparison_operators=gate):
            continue
        if not have.tolerates(x, comparison_operators=gate):
            return False
        if x.effect == NO_EXECUTE and _seconds(have) < _seconds(need):
            return False
    return True


@settings(max_examples=300)
@given(have=TOLERATIONS, need=TOLERATIONS)
def test_covers_is_exactly_taint_set_inclusion(have: Toleration, need: Toleration) -> None:
    assert have.covers(need) is _covers_oracle(have, need, gate=False)


# Numeric tolerations for the comparison operators, on one key so the value sets are what varies.
NUMERIC_TOLERATIONS = st.builds(
    Toleration,
    key=st.sampled_from(["", "k"]),
    operator=st.sampled_from(["Equal", "Exists", "Lt", "Gt"]),
    value=st.sampled_from(["-1", "0", "1", "2", "3", "01", "x"]),
    effect=st.sampled_from(["", NO_SCHEDULE, NO_EXECUTE]),
    toleration_seconds=st.none() | st.integers(-2, 2),
)
# Interval ends of every Lt/Gt above, one past them, the int64 extremes, and non-canonical values.
NUMERIC_UNIVERSE = [
    Taint(k, v, e)
    for k in ["k", "other"]
    for v in [*(str(n) for n in range(-3, 7)), str(-(2**63)), str(2**63 - 1), "01", "+1", "x", ""]
    for e in [NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE]
]


@settings(max_examples=300)
@given(have=NUMERIC_TOLERATIONS, need=NUMERIC_TOLERATIONS)
def test_covers_is_exactly_taint_set_inclusion_with_comparison_operators(
    have: Toleration, need: Toleration
) -> None:
    assert have.covers(need, comparison_operators=True) is _covers_oracle(have, need, True, NUMERIC_UNIVERSE)


@given(have=TOLERATIONS, need=TOLERATIONS)
def test_covers_is_sound_with_comparison_operators(have: Toleration, need: Toleration) -> None:
    if have.covers(need, comparison_operators=True):
        assert _covers_oracle(have, need, gate=True)


@given(t=TOLERATIONS)
def test_covers_is_reflexive(t: Toleration) -> None:
    assert t.covers(t)
    assert t.covers(t, comparison_operators=True)


@given(
    t=st.builds(
        Toleration,
        key=st.text(max_size=8),
        operator=st.text(max_size=8),
        value=st.text(max_size=8),
        effect=st.text(max_size=8),
        toleration_seconds=st.none() | st.integers(-(2**63), 2**63 - 1),
    )
)
def test_dict_round_trip(t: Toleration) -> None:
    assert Toleration.from_dict(t.to_dict()) == t


@given(t=TOLERATIONS)
def test_parse_accepts_what_it_emits(t: Toleration) -> None:
    parsed, errs = parse_tol(t.to_dict())
    if parsed is not None:
        assert errs == [] and parsed == t
        assert Toleration.parse(parsed.to_dict(), "p", ErrorList()) == parsed


TAINTS = st.builds(
    Taint,
    key=st.sampled_from([*KEYS[1:], NR]),
    value=st.sampled_from(VALUES),
    effect=st.sampled_from(EFFECTS[1:]),
)


@given(
    tols=st.lists(TOLERATIONS, max_size=3),
    taints=st.lists(TAINTS, max_size=4),
    labels=st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]), max_size=2),
    host_network=st.booleans(),
)
def test_evaluate_matches_the_predicates(
    tols: list[Toleration], taints: list[Taint], labels: dict[str, str], host_network: bool
) -> None:
    spec = {
        "hostNetwork": host_network,
        "nodeSelector": {"a": "x"},
        "tolerations": [t.to_dict() for t in tols],
    }
    n = node("n", labels=labels, taints=[t.to_dict() for t in taints])
    got = PodPlacement.from_pod_spec(spec).evaluate(n)
    all_tols = [*tols, *daemonset_auto_tolerations(host_network)]
    untolerated = [
        x
        for x in taints
        if x.effect in (NO_SCHEDULE, NO_EXECUTE) and not any(t.tolerates(x) for t in all_tols)
    ]
    assert got.should_run is (labels.get("a") == "x" and not untolerated)
    assert list(got.untolerated) == untolerated
    assert got.should_continue_running is (
        labels.get("a") == "x" and not any(x.effect == NO_EXECUTE for x in untolerated)
    )
