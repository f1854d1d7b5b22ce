"""Label selectors with Kubernetes v1.37 semantics.

Mirrors k8s.io/apimachinery:
- pkg/labels/selector.go (Requirement.Matches, Requirement.String, NewRequirement),
- pkg/apis/meta/v1/helpers.go (LabelSelectorAsSelector),
- pkg/apis/meta/v1/validation/validation.go (ValidateLabelSelector, new objects:
  AllowInvalidLabelValueInSelector=false),
- pkg/util/validation/validation.go (IsQualifiedName, IsValidLabelValue, IsDNS1123Subdomain).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dsguard.fielderrors import ErrorList

IN = "In"
NOT_IN = "NotIn"
EXISTS = "Exists"
DOES_NOT_EXIST = "DoesNotExist"
GT = "Gt"
LT = "Lt"

# metav1.LabelSelectorOperator: Gt/Lt exist only for node selectors (labels.Requirement supports them).
LABEL_SELECTOR_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# --- apimachinery/pkg/util/validation -------------------------------------------------------------

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_ERR = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_QNAME_RE = re.compile(_QNAME_FMT)
_QNAME_MAX = 63

_LABEL_VALUE_FMT = f"({_QNAME_FMT})?"
_LABEL_VALUE_ERR = (
    "a valid label must be an empty string or consist of alphanumeric characters, "
    "'-', '_' or '.', and must start and end with an alphanumeric character"
)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)
_LABEL_VALUE_MAX = 63

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_ERR = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1123_SUBDOMAIN_MAX = 253


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # validation.RegexError, including its double space before " or ".
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    parts = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {parts}regex used for validation is '{fmt}')"


def _max_len_error(n: int) -> str:
    return f"must be no more than {n} characters"


def dns1123_subdomain_errors(value: str) -> list[str]:
    """IsDNS1123Subdomain. Go regexps anchor with ^...$ on the whole string, hence fullmatch."""
    errs: list[str] = []
    if len(value) > _DNS1123_SUBDOMAIN_MAX:
        errs.append(_max_len_error(_DNS1123_SUBDOMAIN_MAX))
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errs.append(_regex_error(_DNS1123_SUBDOMAIN_ERR, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def qualified_name_errors(value: str) -> list[str]:
    """IsQualifiedName: a label key, `[prefix/]name`; empty list when valid."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in dns1123_subdomain_errors(prefix))
    else:
        return [
            "a qualified name "
            + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > _QNAME_MAX:
        errs.append("name part " + _max_len_error(_QNAME_MAX))
    if not _QNAME_RE.fullmatch(name):
        errs.append("name part " + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def label_value_errors(value: str) -> list[str]:
    """IsValidLabelValue: empty is valid; empty list when valid."""
    errs: list[str] = []
    if len(value) > _LABEL_VALUE_MAX:
        errs.append(_max_len_error(_LABEL_VALUE_MAX))
    if not _LABEL_VALUE_RE.fullmatch(value):
        errs.append(_regex_error(_LABEL_VALUE_ERR, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


_GO_INT = re.compile(r"[+-]?[0-9]+")


def parse_go_int64(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64): optional sign, ASCII digits (leading zeros fine), int64 range."""
    if not _GO_INT.fullmatch(text):
        return None
    # Out of range past 19 significant digits: decided before int(), which refuses 4,300+ digits.
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 19:
        return None
    n = -int(digits) if text.startswith("-") else int(digits)
    return n if INT64_MIN <= n <= INT64_MAX else None


# --- labels.Requirement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """labels.Requirement. LabelSelector.parse only produces In/NotIn/Exists/DoesNotExist;
    node affinity (dsguard.scheduling) also uses Gt/Lt."""

    key: str
    operator: str  # "In" | "NotIn" | "Exists" | "DoesNotExist" (| "Gt" | "Lt" for node selectors)
    values: tuple[str, ...]
    _value_set: frozenset[str] = field(init=False, repr=False, compare=False, hash=False)
    _bound: int | None = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Precomputed once: matches() runs per node per admission.
        object.__setattr__(self, "_value_set", frozenset(self.values))
        bound = parse_go_int64(self.values[0]) if len(self.values) == 1 else None
        object.__setattr__(self, "_bound", bound)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Requirement.Matches: NotIn and DoesNotExist match a missing key; In, Exists, Gt, Lt do not."""
        op = self.operator
        if op == IN:
            v = labels.get(self.key)
            return v is not None and v in self._value_set
        if op == NOT_IN:
            v = labels.get(self.key)
            return v is None or v not in self._value_set
        if op == EXISTS:
            return self.key in labels
        if op == DOES_NOT_EXIST:
            return self.key not in labels
        if op in (GT, LT):
            v = labels.get(self.key)
            if v is None or self._bound is None:
                return False
            n = parse_go_int64(v)
            if n is None:
                return False
            return n > self._bound if op == GT else n < self._bound
        return False

    def why_not(self, labels: Mapping[str, str]) -> str:
        """Why `labels` fail this requirement, with the value they have: for a reader, not Go."""
        value = labels.get(self.key)
        has = f"has {self.key}={value}" if value is not None else f"has no {self.key} label"
        if self.operator in (GT, LT) and value is not None and parse_go_int64(value) is None:
            has += ", not an integer"
        return f"{self} ({has})"

    def __str__(self) -> str:
        # Requirement.String: values sorted for In/NotIn, "!key" for DoesNotExist.
        op = self.operator
        if op == EXISTS:
            return self.key
        if op == DOES_NOT_EXIST:
            return "!" + self.key
        vals = self.values[0] if len(self.values) == 1 else ",".join(sorted(self.values))
        if op == IN:
            return f"{self.key} in ({vals})"
        if op == NOT_IN:
            return f"{self.key} notin ({vals})"
        if op == GT:
            return f"{self.key}>{vals}"
        if op == LT:
            return f"{self.key}<{vals}"
        return f"{self.key} {op} ({vals})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            d["values"] = list(self.values)
        return d


# --- metav1.LabelSelector -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector as LabelSelectorAsSelector reads it: matchLabels AND matchExpressions."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        # An empty (non-nil) selector is labels.Everything().
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        return all(r.matches(labels) for r in self.match_expressions)

    def __str__(self) -> str:
        """labels.Selector.String(): requirements sorted by key, matchLabels as `k=v`; "" when empty."""
        items: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in self.match_labels]
        items += [(r.key, str(r)) for r in self.match_expressions]
        items.sort(key=lambda kv: kv[0])
        return ",".join(s for _, s in items)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.match_labels:
            d["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            d["matchExpressions"] = [r.to_dict() for r in self.match_expressions]
        return d

    @classmethod
    def parse(cls, raw: object, path: str, errors: ErrorList) -> LabelSelector | None:
        """Parse and validate a metav1.LabelSelector dict the way the apiserver validates a new object.

        On bad input adds FieldErrors (all of them, with field paths) and returns None.
        """
        if not isinstance(raw, Mapping):
            errors.add(path, f"must be a mapping, got {type(raw).__name__}")
            return None
        start = len(errors.errors)
        for k in raw:
            if k not in ("matchLabels", "matchExpressions"):
                errors.add(f"{path}.{k}", "unknown field; expected one of matchExpressions, matchLabels")

        labels: list[tuple[str, str]] = []
        ml = raw.get("matchLabels")
        mpath = f"{path}.matchLabels"
        if ml is not None and not isinstance(ml, Mapping):
            errors.add(mpath, f"must be a mapping, got {type(ml).__name__}")
        elif ml:
            for k, v in ml.items():
                if not isinstance(k, str):
                    errors.add(mpath, f"key {k!r} must be a string")
                    continue
                if not isinstance(v, str):
                    # YAML turns `enabled: true` into a bool; the apiserver rejects non-strings.
                    errors.add(f"{mpath}.{k}", f"must be a string, got {type(v).__name__} {v!r}")
                    continue
                # ValidateLabels reports against the matchLabels path itself, not a per-key path.
                for msg in qualified_name_errors(k):
                    errors.add(mpath, f"{k!r} is not a valid label key: {msg}")
                for msg in label_value_errors(v):
                    errors.add(mpath, f"{v!r} is not a valid label value: {msg}")
                labels.append((k, v))

        exprs: list[Requirement] = []
        me = raw.get("matchExpressions")
        epath = f"{path}.matchExpressions"
        if me is not None and not isinstance(me, list | tuple):
            errors.add(epath, f"must be a list, got {type(me).__name__}")
        elif me:
            for i, item in enumerate(me):
                r = _parse_requirement(item, f"{epath}[{i}]", errors)
                if r is not None:
                    exprs.append(r)

        if len(errors.errors) > start:
            return None
        labels.sort()
        return cls(match_labels=tuple(labels), match_expressions=tuple(exprs))


def _parse_requirement(raw: object, path: str, errors: ErrorList) -> Requirement | None:
    """ValidateLabelSelectorRequirement: every problem reported, not just the first."""
    if not isinstance(raw, Mapping):
        errors.add(path, f"must be a mapping, got {type(raw).__name__}")
        return None
    start = len(errors.errors)
    for k in raw:
        if k not in ("key", "operator", "values"):
            errors.add(f"{path}.{k}", "unknown field; expected one of key, operator, values")
    key = raw.get("key", "")
    if key is None:
        key = ""
    if not isinstance(key, str):
        errors.add(f"{path}.key", f"must be a string, got {type(key).__name__}")
        key = None
    op = raw.get("operator", "")
    if op is None:
        op = ""
    raw_values = raw.get("values")
    values: list[str] = []
    if raw_values is not None and not isinstance(raw_values, list | tuple):
        errors.add(f"{path}.values", f"must be a list of strings, got {type(raw_values).__name__}")
    elif raw_values:
        for j, v in enumerate(raw_values):
            if not isinstance(v, str):
                errors.add(f"{path}.values[{j}]", f"must be a string, got {type(v).__name__} {v!r}")
                continue
            values.append(v)
            for msg in label_value_errors(v):
                errors.add(f"{path}.values[{j}]", f"{v!r} is not a valid label value: {msg}")

    if op in (IN, NOT_IN):
        if not raw_values:
            errors.add(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
    elif op in (EXISTS, DOES_NOT_EXIST):
        if raw_values:
            errors.add(f"{path}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
    else:
        errors.add(f"{path}.operator", f"{op!r} is not one of {', '.join(LABEL_SELECTOR_OPERATORS)}")
    if key is not None:
        for msg in qualified_name_errors(key):
            errors.add(f"{path}.key", f"{key!r} is not a valid label key: {msg}")

    if len(errors.errors) > start or key is None or not isinstance(op, str):
        return None
    return Requirement(key=key, operator=op, values=tuple(values))
