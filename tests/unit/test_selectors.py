"""dsguard.selectors against cases ported from k8s.io/apimachinery's Go tests."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsguard.fielderrors import ErrorList
from dsguard.selectors import (
    DOES_NOT_EXIST,
    EXISTS,
    GT,
    IN,
    LT,
    NOT_IN,
    LabelSelector,
    Requirement,
    label_value_errors,
    parse_go_int64,
    qualified_name_errors,
)

# nodeaffinity_test.go TestNodeSelectorMatch: the exact detail for key "invalid key".
INVALID_KEY_DETAIL = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


def R(key: str, op: str, *values: str) -> Requirement:
    return Requirement(key=key, operator=op, values=values)


# --- util/validation ------------------------------------------------------------------------------


def test_invalid_key_message_matches_go() -> None:
    assert qualified_name_errors("invalid key") == [INVALID_KEY_DETAIL]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        # selector_test.go TestRequirementConstructor
        ("x", True),
        ("1foo", True),
        ("1234", True),
        ("a" * 254, False),  # breaks DNS rule that len(key) <= 253 (and the 63-char name part)
        # selector_test.go TestSetSelectorParser keys
        ("this-is-a-dns.domain.com/key-with-dash", True),
        ("0.1.2.domain/99", True),
        ("", False),
        ("/name", False),
        ("a/b/c", False),
        ("Example.com/x", False),  # prefix must be lowercase RFC 1123
        ("example.com/" + "a" * 63, True),
        ("example.com/" + "a" * 64, False),
        ("-a", False),
        ("a_b.c-d", True),
        ("a\n", False),  # Go's $ does not match before a trailing newline
    ],
)
def test_qualified_name(key: str, valid: bool) -> None:
    assert (qualified_name_errors(key) == []) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("bar", True),
        ("0204", True),
        ("10.10.100.1", True),
        ("-1", False),
        ("+1", False),
        ("a b", False),
        ("invalid value: ___@#$%^", False),  # nodeaffinity_test.go "invalid value in Affinity term"
        ("a" * 63, True),
        ("a" * 64, False),
        ("x\n", False),
    ],
)
def test_label_value(value: str, valid: bool) -> None:
    assert (label_value_errors(value) == []) is valid


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", 0),
        ("0204", 204),  # ParseInt accepts leading zeros (nodeaffinity_test.go kernel-version case)
        ("+5", 5),
        ("-5", -5),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("-9223372036854775808", -(2**63)),
        ("-9223372036854775809", None),
        ("", None),
        ("1_000", None),
        ("0x10", None),
        (" 1", None),
        ("1.5", None),
        ("v2", None),
        ("١", None),  # non-ASCII digit
    ],
)
def test_parse_go_int64(text: str, want: int | None) -> None:
    assert parse_go_int64(text) == want


# --- labels.Requirement ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "reqs", "match"),
    [
        # selector_test.go TestRequirementSelectorMatching
        ({"x": "foo", "y": "baz"}, [R("x", IN, "foo"), R("y", NOT_IN, "alpha")], True),
        ({"x": "foo", "y": "baz"}, [R("x", IN, "foo"), R("y", IN, "alpha")], False),
        ({"y": ""}, [R("x", NOT_IN, ""), R("y", EXISTS)], True),
        ({"y": ""}, [R("x", DOES_NOT_EXIST), R("y", EXISTS)], True),
        ({"y": ""}, [R("x", NOT_IN, ""), R("y", DOES_NOT_EXIST)], False),
        ({"y": "baz"}, [R("x", IN, "")], False),
        ({"z": "2"}, [R("z", GT, "1")], True),
        ({"z": "v2"}, [R("z", GT, "1")], False),
        # selector_test.go TestSelectorMatches (parsed forms written out)
        ({"x": "z"}, [R("x", EXISTS)], True),
        ({"y": "z"}, [R("x", DOES_NOT_EXIST)], True),
        ({"x": "2"}, [R("x", GT, "1")], True),
        ({"x": "0"}, [R("x", LT, "1")], True),
        ({"x": "0"}, [R("x", GT, "1")], False),
        ({"x": "2"}, [R("x", LT, "1")], False),
        ({"y": "z"}, [R("x", EXISTS)], False),
        ({"x": "z"}, [R("x", DOES_NOT_EXIST)], False),
        ({"x": "z", "z": "a"}, [R("x", NOT_IN, "y"), R("z", NOT_IN, "w")], True),
        ({"x": "z", "z": "w"}, [R("x", NOT_IN, "y"), R("z", NOT_IN, "w")], False),
        # Gt/Lt: missing key, unparsable label, int64 edges, leading zeros.
        ({}, [R("x", GT, "1")], False),
        ({}, [R("x", LT, "1")], False),
        ({"x": "0206"}, [R("x", GT, "0204")], True),
        ({"x": "9223372036854775808"}, [R("x", GT, "1")], False),
        ({"x": "+3"}, [R("x", GT, "2")], True),
        ({"x": "3"}, [R("x", GT, "2", "1")], False),  # exactly one value required
        ({"x": "3"}, [R("x", "Bogus", "3")], False),
    ],
)
def test_requirement_matches(labels: dict[str, str], reqs: list[Requirement], match: bool) -> None:
    assert all(r.matches(labels) for r in reqs) is match


@pytest.mark.parametrize(
    ("reqs", "want"),
    [
        # selector_test.go TestToString
        ([R("x", IN, "abc", "def"), R("y", NOT_IN, "jkl"), R("z", EXISTS)], "x in (abc,def),y notin (jkl),z"),
        ([R("x", NOT_IN, "abc", "def"), R("z", DOES_NOT_EXIST)], "x notin (abc,def),!z"),
        (
            [R("x", NOT_IN, "abc"), R("y", IN, "jkl", "mno"), R("z", NOT_IN, "")],
            "x notin (abc),y in (jkl,mno),z notin ()",
        ),
        ([R("x", GT, "2"), R("y", LT, "8"), R("z", EXISTS)], "x>2,y<8,z"),
        # values print sorted, input order kept in memory
        ([R("x", IN, "def", "abc")], "x in (abc,def)"),
    ],
)
def test_selector_string(reqs: list[Requirement], want: str) -> None:
    sel = LabelSelector(match_expressions=tuple(reqs))
    assert str(sel) == want


# --- metav1.LabelSelector -------------------------------------------------------------------------


def parse(raw: object) -> tuple[LabelSelector | None, list[tuple[str, str]]]:
    errors = ErrorList()
    sel = LabelSelector.parse(raw, "spec.selector", errors)
    return sel, [(e.path, e.message) for e in errors.errors]


MATCH_EXPRESSIONS = [{"key": "baz", "operator": "In", "values": ["qux", "norf"]}]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        # helpers_test.go TestLabelSelectorAsSelector
        ({}, ""),
        ({"matchLabels": {"foo": "bar"}}, "foo=bar"),
        ({"matchExpressions": MATCH_EXPRESSIONS}, "baz in (norf,qux)"),
        ({"matchLabels": {"foo": "bar"}, "matchExpressions": MATCH_EXPRESSIONS}, "baz in (norf,qux),foo=bar"),
        # the brief's example form
        (
            {
                "matchLabels": {"a": "b"},
                "matchExpressions": [
                    {"key": "d", "operator": "DoesNotExist"},
                    {"key": "c", "operator": "In", "values": ["y", "x"]},
                ],
            },
            "a=b,c in (x,y),!d",
        ),
        ({"matchLabels": None, "matchExpressions": None}, ""),
    ],
)
def test_parse_and_string(raw: dict[str, Any], want: str) -> None:
    sel, errs = parse(raw)
    assert errs == []
    assert sel is not None
    assert str(sel) == want


def test_empty_selector_matches_everything() -> None:
    sel, _ = parse({})
    assert sel is not None and sel.is_empty()
    assert sel.matches({}) and sel.matches({"x": "y"})  # selector_test.go TestEverything


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"foo": "bar", "baz": "qux"}, True),
        ({"foo": "bar", "baz": "norf", "extra": "x"}, True),
        ({"foo": "bar"}, False),
        ({"baz": "qux"}, False),
        ({"foo": "blah", "baz": "qux"}, False),
    ],
)
def test_match_labels_and_expressions_are_anded(labels: dict[str, str], match: bool) -> None:
    sel, _ = parse({"matchLabels": {"foo": "bar"}, "matchExpressions": MATCH_EXPRESSIONS})
    assert sel is not None
    assert sel.matches(labels) is match


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        # helpers_test.go TestLabelSelectorAsSelector: Exists with values is an error
        (
            {"matchExpressions": [{"key": "baz", "operator": "Exists", "values": ["qux", "norf"]}]},
            [
                (
                    "spec.selector.matchExpressions[0].values",
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
            ],
        ),
        (
            {"matchExpressions": [{"key": "baz", "operator": "DoesNotExist", "values": ["x"]}]},
            [
                (
                    "spec.selector.matchExpressions[0].values",
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
            ],
        ),
        (
            {"matchExpressions": [{"key": "baz", "operator": "In"}]},
            [
                (
                    "spec.selector.matchExpressions[0].values",
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )
            ],
        ),
        (
            {"matchExpressions": [{"key": "baz", "operator": "NotIn", "values": []}]},
            [
                (
                    "spec.selector.matchExpressions[0].values",
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )
            ],
        ),
        (
            {"matchExpressions": [{"key": "baz", "operator": "Foo"}]},
            [
                (
                    "spec.selector.matchExpressions[0].operator",
                    "'Foo' is not one of In, NotIn, Exists, DoesNotExist",
                )
            ],
        ),
        # Gt/Lt are node-selector operators only.
        (
            {"matchExpressions": [{"key": "baz", "operator": "Gt", "values": ["1"]}]},
            [
                (
                    "spec.selector.matchExpressions[0].operator",
                    "'Gt' is not one of In, NotIn, Exists, DoesNotExist",
                )
            ],
        ),
        (
            {"matchExpressions": [{"key": "invalid key", "operator": "Exists"}]},
            [
                (
                    "spec.selector.matchExpressions[0].key",
                    f"'invalid key' is not a valid label key: {INVALID_KEY_DETAIL}",
                )
            ],
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "not ok"]}]},
            [("spec.selector.matchExpressions[0].values[1]", "'not ok' is not a valid label value")],
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]},
            [("spec.selector.matchExpressions[0].values[0]", "must be a string, got int 1")],
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
            [("spec.selector.matchExpressions[0].values", "must be a list of strings, got str")],
        ),
        (
            {"matchLabels": {"enabled": True}},
            [("spec.selector.matchLabels.enabled", "must be a string, got bool True")],
        ),
        (
            {"matchLabels": {"bad key": "v"}},
            [("spec.selector.matchLabels", "'bad key' is not a valid label key")],
        ),
        (
            {"matchLabels": {"k": "bad value"}},
            [("spec.selector.matchLabels", "'bad value' is not a valid label value")],
        ),
        ({"matchLabels": ["a"]}, [("spec.selector.matchLabels", "must be a mapping, got list")]),
        ({"matchExpressions": {"a": 1}}, [("spec.selector.matchExpressions", "must be a list, got dict")]),
        ({"matchExpressions": ["a"]}, [("spec.selector.matchExpressions[0]", "must be a mapping, got str")]),
        (
            {"matchLables": {"a": "b"}},
            [("spec.selector.matchLables", "unknown field; expected one of matchExpressions, matchLabels")],
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]},
            [
                (
                    "spec.selector.matchExpressions[0].value",
                    "unknown field; expected one of key, operator, values",
                )
            ],
        ),
        (None, [("spec.selector", "must be a mapping, got NoneType")]),
        ("a=b", [("spec.selector", "must be a mapping, got str")]),
    ],
)
def test_parse_errors(raw: object, errors: list[tuple[str, str]]) -> None:
    sel, got = parse(raw)
    assert sel is None
    assert len(got) == len(errors)
    for (gpath, gmsg), (wpath, wmsg) in zip(got, errors, strict=True):
        assert gpath == wpath
        assert gmsg.startswith(wmsg)


def test_parse_reports_every_problem_at_once() -> None:
    sel, errs = parse(
        {
            "matchLabels": {"ok": "fine", "x": "bad value"},
            "matchExpressions": [
                {"key": "bad key", "operator": "Foo", "values": ["a b"]},
                {"key": "fine", "operator": "In", "values": ["y"]},
                {"key": "z", "operator": "In"},
            ],
        }
    )
    assert sel is None
    assert sorted(p for p, _ in errs) == [
        "spec.selector.matchExpressions[0].key",
        "spec.selector.matchExpressions[0].operator",
        "spec.selector.matchExpressions[0].values[0]",
        "spec.selector.matchExpressions[2].values",
        "spec.selector.matchLabels",
    ]


def test_parse_is_canonical() -> None:
    a, _ = parse({"matchLabels": {"x": "a", "a": "x"}})
    b, _ = parse({"matchLabels": {"a": "x", "x": "a"}})
    assert a == b and str(a) == "a=x,x=a"  # selector_test.go TestDeterministicParse


# --- properties -----------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "example.com/c", "1234"])
VALUES = st.sampled_from(["", "x", "y", "1", "02"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)


@st.composite
def selector_requirements(draw: st.DrawFn) -> Requirement:
    op = draw(st.sampled_from([IN, NOT_IN, EXISTS, DOES_NOT_EXIST]))
    values: tuple[str, ...] = ()
    if op in (IN, NOT_IN):
        values = tuple(draw(st.lists(VALUES, min_size=1, max_size=3)))
    return Requirement(key=draw(KEYS), operator=op, values=values)


SELECTORS = st.builds(
    lambda labels, exprs: LabelSelector(tuple(sorted(labels.items())), tuple(exprs)),
    st.dictionaries(KEYS, VALUES, max_size=3),
    st.lists(selector_requirements(), max_size=3),
)


@given(key=KEYS, values=st.lists(VALUES, min_size=1, max_size=3), labels=LABELS)
def test_not_in_is_the_complement_of_in(key: str, values: list[str], labels: dict[str, str]) -> None:
    assert R(key, NOT_IN, *values).matches(labels) is not R(key, IN, *values).matches(labels)
    assert R(key, DOES_NOT_EXIST).matches(labels) is not R(key, EXISTS).matches(labels)
    if key not in labels:
        assert R(key, NOT_IN, *values).matches(labels)
        assert not R(key, IN, *values).matches(labels)


@given(sel=SELECTORS)
def test_to_dict_parses_back(sel: LabelSelector) -> None:
    back, errs = parse(sel.to_dict())
    assert errs == []
    assert back == sel


@given(sel=SELECTORS, labels=LABELS)
def test_selector_is_the_and_of_its_parts(sel: LabelSelector, labels: dict[str, str]) -> None:
    parts = [R(k, IN, v) for k, v in sel.match_labels] + list(sel.match_expressions)
    assert sel.matches(labels) is all(r.matches(labels) for r in parts)


@given(sel=SELECTORS)
def test_string_is_sorted_by_key(sel: LabelSelector) -> None:
    text = str(sel)
    if sel.is_empty():
        assert text == ""
        return
    keys = [part.lstrip("!").split("=")[0].split(" ")[0] for part in _split_top_level(text)]
    assert keys == sorted(keys)


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts
