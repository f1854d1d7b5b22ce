"""Where the DaemonSet controller puts a DaemonSet's pods, with Kubernetes v1.37 semantics.

Mirrors:
- k8s.io/api/core/v1 toleration.go (Toleration.ToleratesTaint, compareNumericValues) and taint.go,
- pkg/apis/core/validation/validation.go (ValidateTolerations, validateTaintEffect),
- k8s.io/component-helpers/scheduling/corev1 helpers.go (FindMatchingUntoleratedTaint) and
  nodeaffinity/nodeaffinity.go (GetRequiredNodeAffinity, LazyErrorNodeSelector),
- pkg/controller/daemon/daemon_controller.go (NodeShouldRunDaemonPod, predicates, NewPod) and
  pkg/controller/daemon/util/daemonset_util.go (AddOrUpdateDaemonPodTolerations),
- pkg/apis/core/v1/helper/helpers.go (AddOrUpdateTolerationInPodSpec).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dsguard.fielderrors import ErrorList, FieldError
from dsguard.selectors import (
    DOES_NOT_EXIST,
    EXISTS,
    GT,
    IN,
    INT64_MAX,
    INT64_MIN,
    LT,
    NOT_IN,
    Requirement,
    label_value_errors,
    parse_go_int64,
    qualified_name_errors,
)

# KEP-5471 feature gate TaintTolerationComparisonOperators (toleration operators Lt/Gt): alpha since
# v1.35 with Default: false, and v1.37's kube_features.go still lists only that alpha entry. With the
# gate at its default the apiserver rejects Lt/Gt tolerations and ToleratesTaint(...,
# enableComparisonOperators=false) never matches them, so they are disabled here too. The numeric
# comparison is still implemented as the source does, behind this flag.
TAINT_TOLERATION_COMPARISON_OPERATORS = False

NO_SCHEDULE = "NoSchedule"
PREFER_NO_SCHEDULE = "PreferNoSchedule"
NO_EXECUTE = "NoExecute"
TAINT_EFFECTS = (NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE)

OP_EQUAL = "Equal"
OP_EXISTS = "Exists"
OP_LT = "Lt"
OP_GT = "Gt"

# k8s.io/api/core/v1 well_known_taints.go
TAINT_NODE_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_NODE_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NODE_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_NODE_MEMORY_PRESSURE = "node.kubernetes.io/memory-pressure"
TAINT_NODE_DISK_PRESSURE = "node.kubernetes.io/disk-pressure"
TAINT_NODE_NETWORK_UNAVAILABLE = "node.kubernetes.io/network-unavailable"
TAINT_NODE_PID_PRESSURE = "node.kubernetes.io/pid-pressure"

OBJECT_NAME_FIELD = "metadata.name"  # metav1.ObjectNameField, the only field nodes expose to matchFields


def _str(v: object) -> str:
    return "" if v is None else v if isinstance(v, str) else str(v)


def _mapping(v: object) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


_DECIMAL = re.compile(r"-?[1-9][0-9]*|0")


def is_decimal_integer(value: str) -> bool:
    """content.IsDecimalInteger: canonical form only ("0", "5", "-5"; not "05", "+5", "-0")."""
    return _DECIMAL.fullmatch(value) is not None


def _canonical_int64(value: str) -> int | None:
    # compareNumericValues: IsDecimalInteger, then strconv.ParseInt(v, 10, 64).
    return parse_go_int64(value) if is_decimal_integer(value) else None


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Taint:
        # timeAdded is ignored: it plays no part in toleration matching.
        return cls(key=_str(d.get("key")), value=_str(d.get("value")), effect=_str(d.get("effect")))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key}
        if self.value:
            d["value"] = self.value
        d["effect"] = self.effect
        return d

    def __str__(self) -> str:
        # Taint.ToString: "key=value:Effect", "key=value:", "key:Effect" or "key".
        if not self.effect:
            return f"{self.key}={self.value}:" if self.value else self.key
        if not self.value:
            return f"{self.key}:{self.effect}"
        return f"{self.key}={self.value}:{self.effect}"


# The taint values a toleration matches, for covers(); None stands for "no value at all".
@dataclass(frozen=True)
class _AnyValue:
    pass


@dataclass(frozen=True)
class _ExactValue:
    value: str


@dataclass(frozen=True)
class _IntRange:
    lo: int  # canonical decimal int64 taint values in [lo, hi]
    hi: int


_ValueSpace = _AnyValue | _ExactValue | _IntRange


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = OP_EQUAL  # "" in input means Equal
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None

    def __post_init__(self) -> None:
        # ToleratesTaint treats "" as Equal; normalising keeps == and hashing consistent with that.
        if self.operator == "":
            object.__setattr__(self, "operator", OP_EQUAL)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Toleration:
        """Lenient: for objects the apiserver already accepted."""
        ts = d.get("tolerationSeconds")
        seconds: int | None = None
        if isinstance(ts, int) and not isinstance(ts, bool):
            seconds = ts
        elif isinstance(ts, float) and ts.is_integer():
            seconds = int(ts)
        return cls(
            key=_str(d.get("key")),
            operator=_str(d.get("operator")),
            value=_str(d.get("value")),
            effect=_str(d.get("effect")),
            toleration_seconds=seconds,
        )

    @classmethod
    def parse(cls, raw: object, path: str, errors: ErrorList) -> Toleration | None:
        """Strict: ValidateTolerations for one toleration (new object, v1.37 default gates).

        Error paths follow the apiserver, including its quirk of reporting a bad `value` (for
        Equal, and for a non-empty value with Exists) against `{path}.operator`.
        """
        if not isinstance(raw, Mapping):
            errors.add(path, f"must be a mapping, got {type(raw).__name__}")
            return None
        start = len(errors.errors)
        known = ("key", "operator", "value", "effect", "tolerationSeconds")
        for k in raw:
            if k not in known:
                errors.add(f"{path}.{k}", f"unknown field; expected one of {', '.join(sorted(known))}")
        fields: dict[str, str] = {}
        for name in ("key", "operator", "value", "effect"):
            v = raw.get(name)
            if v is None:
                fields[name] = ""
            elif isinstance(v, str):
                fields[name] = v
            else:
                errors.add(f"{path}.{name}", f"must be a string, got {type(v).__name__} {v!r}")
                fields[name] = ""
        key, op, value, effect = fields["key"], fields["operator"], fields["value"], fields["effect"]
        seconds: int | None = None
        ts = raw.get("tolerationSeconds")
        if ts is not None:
            if isinstance(ts, bool) or not isinstance(ts, int):
                errors.add(f"{path}.tolerationSeconds", f"must be an integer, got {type(ts).__name__} {ts!r}")
            elif not INT64_MIN <= ts <= INT64_MAX:
                errors.add(f"{path}.tolerationSeconds", f"{ts} does not fit in int64")
            else:
                seconds = ts

        if key:
            for msg in qualified_name_errors(key):
                errors.add(f"{path}.key", f"{key!r} is not a valid label key: {msg}")
        if not key and op != OP_EXISTS:
            errors.add(
                f"{path}.operator",
                'operator must be Exists when `key` is empty, which means "match all values and all keys"',
            )
        if ts is not None and effect != NO_EXECUTE:
            errors.add(f"{path}.effect", "effect must be 'NoExecute' when `tolerationSeconds` is set")
        if op in ("", OP_EQUAL):
            for msg in label_value_errors(value):
                errors.add(f"{path}.operator", f"{value!r} is not a valid label value: {msg}")
        elif op == OP_EXISTS:
            if value:
                errors.add(f"{path}.operator", "value must be empty when `operator` is 'Exists'")
        elif op in (OP_LT, OP_GT) and TAINT_TOLERATION_COMPARISON_OPERATORS:
            if _canonical_int64(value) is None:
                errors.add(f"{path}.value", f"{value!r} must be a valid decimal integer in canonical form")
        else:
            hint = ""
            if op in (OP_LT, OP_GT):
                hint = " (Lt and Gt need the TaintTolerationComparisonOperators feature gate, off by default)"
            errors.add(f"{path}.operator", f"{op!r} is not one of Equal, Exists{hint}")
        if effect and effect not in TAINT_EFFECTS:
            errors.add(f"{path}.effect", f"{effect!r} is not one of {', '.join(TAINT_EFFECTS)}")

        if len(errors.errors) > start:
            return None
        return cls(key=key, operator=op, value=value, effect=effect, toleration_seconds=seconds)

    def to_dict(self) -> dict[str, Any]:
        """core/v1 JSON; empty strings and a nil tolerationSeconds are omitted (omitempty)."""
        d: dict[str, Any] = {}
        if self.key:
            d["key"] = self.key
        d["operator"] = self.operator
        if self.value:
            d["value"] = self.value
        if self.effect:
            d["effect"] = self.effect
        if self.toleration_seconds is not None:
            d["tolerationSeconds"] = self.toleration_seconds
        return d

    def tolerates(
        self, taint: Taint, *, comparison_operators: bool = TAINT_TOLERATION_COMPARISON_OPERATORS
    ) -> bool:
        """Toleration.ToleratesTaint (tolerationSeconds plays no part: that is eviction timing)."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        op = self.operator
        if op == OP_EQUAL:
            return self.value == taint.value
        if op == OP_EXISTS:
            return True
        if op in (OP_LT, OP_GT):
            if not comparison_operators:
                return False
            return compare_numeric_values(self.value, taint.value, op)
        return False

    def covers(
        self, required: Toleration, *, comparison_operators: bool = TAINT_TOLERATION_COMPARISON_OPERATORS
    ) -> bool:
        """True when self tolerates every taint `required` tolerates, at least as long.

        Keys, values and effects are compared as the sets of taints each toleration matches. For
        NoExecute taints the duration counts too: None is forever, and seconds <= 0 all mean
        "evict at once" (the taint eviction controller clamps them to 0).
        """
        req_space = _value_space(required, comparison_operators)
        if req_space is None:
            return True  # required tolerates no taint at all
        # The key and the effect first: most pairs differ there, and need no value space built.
        if self.key and self.key != required.key:
            return False
        if self.effect and self.effect != required.effect:
            return False
        own_space = _value_space(self, comparison_operators)
        if own_space is None:
            return False
        if not _value_subset(req_space, own_space):
            return False
        if required.effect in ("", NO_EXECUTE):
            return _duration(self) >= _duration(required)
        return True

    def __str__(self) -> str:
        # kubectl describe: "key=value:Effect op=Exists for 300s".
        s = self.key
        if self.value:
            s += "=" + self.value
        if self.effect:
            s += ":" + self.effect
        if self.operator == OP_EXISTS and not self.value:
            s += " op=Exists" if (self.key or self.effect) else "op=Exists"
        elif self.operator not in (OP_EQUAL, OP_EXISTS):
            s += f" op={self.operator}"
        if self.toleration_seconds is not None:
            s += f" for {self.toleration_seconds}s"
        return s


def compare_numeric_values(toleration_value: str, taint_value: str, op: str) -> bool:
    """compareNumericValues: both sides must be canonical decimal int64s, else no match."""
    t = _canonical_int64(toleration_value)
    n = _canonical_int64(taint_value)
    if t is None or n is None:
        return False
    if op == OP_LT:
        return n < t
    if op == OP_GT:
        return n > t
    return False


def _value_space(t: Toleration, comparison_operators: bool) -> _ValueSpace | None:
    if t.operator == OP_EXISTS:
        return _AnyValue()
    if t.operator == OP_EQUAL:
        return _ExactValue(t.value)
    if t.operator in (OP_LT, OP_GT) and comparison_operators:
        n = _canonical_int64(t.value)
        if n is None:
            return None
        lo, hi = (n + 1, INT64_MAX) if t.operator == OP_GT else (INT64_MIN, n - 1)
        return _IntRange(lo, hi) if lo <= hi else None
    return None


def _value_subset(sub: _ValueSpace, sup: _ValueSpace) -> bool:
    if isinstance(sup, _AnyValue):
        return True
    if isinstance(sub, _AnyValue):
        return False
    if isinstance(sub, _ExactValue):
        if isinstance(sup, _ExactValue):
            return sub.value == sup.value
        n = _canonical_int64(sub.value)
        return n is not None and sup.lo <= n <= sup.hi
    if isinstance(sup, _ExactValue):
        # Canonical decimals are unique, so a one-number range is one string.
        return sub.lo == sub.hi and sup.value == str(sub.lo)
    return sup.lo <= sub.lo and sub.hi <= sup.hi


def _duration(t: Toleration) -> float:
    if t.toleration_seconds is None:
        return math.inf
    return float(max(0, t.toleration_seconds))


def tolerations_tolerate_taint(
    tolerations: Iterable[Toleration],
    taint: Taint,
    *,
    comparison_operators: bool = TAINT_TOLERATION_COMPARISON_OPERATORS,
) -> bool:
    """TolerationsTolerateTaint: any toleration will do."""
    return any(t.tolerates(taint, comparison_operators=comparison_operators) for t in tolerations)


def find_untolerated_taints(
    taints: Iterable[Taint],
    tolerations: Sequence[Toleration],
    effects: Iterable[str] = (NO_SCHEDULE, NO_EXECUTE),
) -> tuple[Taint, ...]:
    """FindMatchingUntoleratedTaint, but every match rather than the first (for messages).

    The default effects are the ones the DaemonSet controller's predicates consider.
    """
    wanted = frozenset(effects)
    return tuple(t for t in taints if t.effect in wanted and not tolerations_tolerate_taint(tolerations, t))


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    kubelet_version: str  # status.nodeInfo.kubeletVersion, "" if unknown

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeInfo:
        """Lenient, and total: a Node from a hand-written file may have any shape (the apiserver's
        are validated); what isn't a mapping or a list reads as absent."""
        meta, spec, status = (_mapping(node.get(k)) for k in ("metadata", "spec", "status"))
        labels = _mapping(meta.get("labels"))
        taints = spec.get("taints")
        return cls(
            name=_str(meta.get("name")),
            labels={_str(k): _str(v) for k, v in labels.items() if isinstance(v, str | int | float | bool)},
            taints=tuple(Taint.from_dict(t) for t in taints if isinstance(t, Mapping))
            if isinstance(taints, list)
            else (),
            kubelet_version=_str(_mapping(status.get("nodeInfo")).get("kubeletVersion")),
        )


def daemonset_auto_tolerations(host_network: bool) -> tuple[Toleration, ...]:
    """The tolerations AddOrUpdateDaemonPodTolerations gives every DaemonSet pod, in its order."""
    tols = [
        Toleration(key=TAINT_NODE_NOT_READY, operator=OP_EXISTS, effect=NO_EXECUTE),
        Toleration(key=TAINT_NODE_UNREACHABLE, operator=OP_EXISTS, effect=NO_EXECUTE),
        Toleration(key=TAINT_NODE_DISK_PRESSURE, operator=OP_EXISTS, effect=NO_SCHEDULE),
        Toleration(key=TAINT_NODE_MEMORY_PRESSURE, operator=OP_EXISTS, effect=NO_SCHEDULE),
        Toleration(key=TAINT_NODE_PID_PRESSURE, operator=OP_EXISTS, effect=NO_SCHEDULE),
        Toleration(key=TAINT_NODE_UNSCHEDULABLE, operator=OP_EXISTS, effect=NO_SCHEDULE),
    ]
    if host_network:
        tols.append(Toleration(key=TAINT_NODE_NETWORK_UNAVAILABLE, operator=OP_EXISTS, effect=NO_SCHEDULE))
    return tuple(tols)


def add_or_update_toleration(
    tolerations: Sequence[Toleration], toleration: Toleration
) -> tuple[Toleration, ...]:
    """AddOrUpdateTolerationInPodSpec: replace entries with the same key/operator/value/effect
    (so a user's bounded not-ready toleration becomes the controller's unbounded one), else append.
    An identical entry leaves the whole list untouched."""
    out: list[Toleration] = []
    updated = False
    for t in tolerations:
        if (t.key, t.operator, t.value, t.effect) == (
            toleration.key,
            toleration.operator,
            toleration.value,
            toleration.effect,
        ):
            if t == toleration:
                return tuple(tolerations)
            out.append(toleration)
            updated = True
            continue
        out.append(t)
    if not updated:
        out.append(toleration)
    return tuple(out)


@dataclass(frozen=True)
class Placement:
    should_run: bool
    # "" when should_run; else e.g. "nodeName is x", "node affinity/nodeSelector does not match",
    # "taint dedicated=infra:NoSchedule is not tolerated".
    reason: str
    untolerated: tuple[Taint, ...]  # the NoSchedule/NoExecute taints not tolerated (all of them)
    # NodeShouldRunDaemonPod's second result: an existing pod stays (nodeName and affinity fit, and
    # no NoExecute taint is untolerated).
    should_continue_running: bool = False


@dataclass(frozen=True)
class _FieldRequirement:
    key: str
    value: str
    equal: bool  # In -> OneTermEqualSelector, NotIn -> OneTermNotEqualSelector


@dataclass(frozen=True)
class _Term:
    """nodeSelectorTerm: matchExpressions AND matchFields; None = that half was empty."""

    labels: tuple[Requirement, ...] | None
    fields: tuple[_FieldRequirement, ...] | None
    index: int = 0  # in nodeSelectorTerms, for messages

    def misses(self, labels: Mapping[str, str], node_name: str) -> list[str]:
        """The requirements `matches` finds failing, each with the node's value (explain)."""
        out = [r.why_not(labels) for r in self.labels or () if not r.matches(labels)]
        if self.fields is not None and node_name:
            for f in self.fields:
                actual = node_name if f.key == OBJECT_NAME_FIELD else ""
                if (actual == f.value) != f.equal:
                    op = "in" if f.equal else "notin"
                    out.append(f"{f.key} {op} ({f.value}) (the node's {f.key} is {actual!r})")
        return out

    def matches(self, labels: Mapping[str, str], node_name: str) -> bool:
        if self.labels is not None:
            for r in self.labels:
                if not r.matches(labels):
                    return False
        # nodeSelectorTerm.match skips matchFields when the node has no fields (an unnamed node).
        if self.fields is not None and node_name:
            for f in self.fields:
                # fields.Set.Get returns "" for a field that isn't there.
                actual = node_name if f.key == OBJECT_NAME_FIELD else ""
                if (actual == f.value) != f.equal:
                    return False
        return True


_NODE_SELECTOR_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT)


def _node_requirement(raw: Mapping[str, Any], path: str, errs: list[FieldError]) -> Requirement | None:
    """nodeSelectorRequirementsAsSelector for one expression, with labels.NewRequirement's checks."""
    key = _str(raw.get("key"))
    op = _str(raw.get("operator"))
    raw_values = raw.get("values") or []
    if op not in _NODE_SELECTOR_OPERATORS:
        errs.append(
            FieldError(f"{path}.operator", f"{op!r} is not one of {', '.join(_NODE_SELECTOR_OPERATORS)}")
        )
        return None
    start = len(errs)
    values: list[str] = []
    for i, v in enumerate(raw_values if isinstance(raw_values, list | tuple) else [raw_values]):
        if not isinstance(v, str):
            errs.append(FieldError(f"{path}.values[{i}]", f"must be a string, got {type(v).__name__} {v!r}"))
            continue
        values.append(v)
    for msg in qualified_name_errors(key):
        errs.append(FieldError(f"{path}.key", f"{key!r} is not a valid label key: {msg}"))
    if op in (IN, NOT_IN) and not values:
        errs.append(FieldError(f"{path}.values", "for 'in', 'notin' operators, values set can't be empty"))
    elif op in (EXISTS, DOES_NOT_EXIST) and values:
        errs.append(FieldError(f"{path}.values", "values set must be empty for exists and does not exist"))
    elif op in (GT, LT):
        if len(values) != 1:
            errs.append(
                FieldError(f"{path}.values", "for 'Gt', 'Lt' operators, exactly one value is required")
            )
        for i, v in enumerate(values):
            if parse_go_int64(v) is None:
                errs.append(
                    FieldError(
                        f"{path}.values[{i}]", "for 'Gt', 'Lt' operators, the value must be an integer"
                    )
                )
    # NewRequirement validates every value as a label value, Gt/Lt included: "-1" cannot pass.
    for i, v in enumerate(values):
        for msg in label_value_errors(v):
            errs.append(FieldError(f"{path}.values[{i}][{key}]", f"{v!r} is not a valid label value: {msg}"))
    if len(errs) > start:
        return None
    return Requirement(key=key, operator=op, values=tuple(values))


def _node_field_requirement(
    raw: Mapping[str, Any], path: str, errs: list[FieldError]
) -> _FieldRequirement | None:
    """nodeSelectorRequirementsAsFieldSelector for one expression: In/NotIn with exactly one value."""
    op = _str(raw.get("operator"))
    values = raw.get("values") or []
    if op not in (IN, NOT_IN):
        errs.append(FieldError(f"{path}.operator", f"{op!r} is not one of In, NotIn"))
        return None
    if not isinstance(values, list | tuple) or len(values) != 1:
        errs.append(FieldError(f"{path}.values", "must have one element"))
        return None
    return _FieldRequirement(key=_str(raw.get("key")), value=_str(values[0]), equal=op == IN)


def _compile_term(raw: Mapping[str, Any], path: str, errs: list[FieldError]) -> _Term | None:
    """newNodeSelectorTerm; None when the term has parse errors (LazyErrorNodeSelector: never matches)."""
    start = len(errs)
    exprs = raw.get("matchExpressions") or []
    fields = raw.get("matchFields") or []
    labels: tuple[Requirement, ...] | None = None
    if exprs:
        reqs = [
            _node_requirement(e if isinstance(e, Mapping) else {}, f"{path}.matchExpressions[{i}]", errs)
            for i, e in enumerate(exprs)
        ]
        labels = tuple(r for r in reqs if r is not None)
    field_reqs: tuple[_FieldRequirement, ...] | None = None
    if fields:
        freqs = [
            _node_field_requirement(f if isinstance(f, Mapping) else {}, f"{path}.matchFields[{i}]", errs)
            for i, f in enumerate(fields)
        ]
        field_reqs = tuple(f for f in freqs if f is not None)
    if len(errs) > start:
        return None
    return _Term(labels=labels, fields=field_reqs)


def _taint_list(taints: Sequence[Taint]) -> str:
    if len(taints) == 1:
        return f"taint {taints[0]} is not tolerated"
    return f"taints {', '.join(str(t) for t in taints)} are not tolerated"


_AFFINITY_PATH = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
_CACHE_LIMIT = 4096


class PodPlacement:
    """The placement-relevant part of a DaemonSet's pod template, parsed once and evaluated
    against many nodes."""

    __slots__ = (
        "_taint_cache",
        "affinity_errors",
        "host_network",
        "node_name",
        "node_selector",
        "required_terms",
        "tolerations",
    )

    def __init__(
        self,
        *,
        node_name: str = "",
        node_selector: tuple[tuple[str, str], ...] = (),
        required_terms: tuple[_Term, ...] | None = None,
        tolerations: tuple[Toleration, ...] = (),
        host_network: bool = False,
        affinity_errors: tuple[FieldError, ...] = (),
    ) -> None:
        self.node_name = node_name
        self.node_selector = node_selector
        # None: no required node affinity. (): required affinity that can match nothing.
        self.required_terms = required_terms
        self.tolerations = tolerations  # the user's, plus the DaemonSet controller's
        self.host_network = host_network
        # Unparseable terms (paths relative to the pod spec); they never match, as in Go.
        self.affinity_errors = affinity_errors
        # The same few taints recur on thousands of nodes: decide each once.
        self._taint_cache: dict[Taint, bool] = {}

    @classmethod
    def from_pod_spec(cls, spec: Mapping[str, Any]) -> PodPlacement:
        """spec = DaemonSet spec.template.spec as the apiserver returns it (lenient)."""
        host_network = spec.get("hostNetwork") is True
        tols: tuple[Toleration, ...] = tuple(
            Toleration.from_dict(t) for t in (spec.get("tolerations") or ()) if isinstance(t, Mapping)
        )
        # NewPod -> AddOrUpdateDaemonPodTolerations.
        for auto in daemonset_auto_tolerations(host_network):
            tols = add_or_update_toleration(tols, auto)

        selector = spec.get("nodeSelector") or {}
        node_selector = (
            tuple((_str(k), _str(v)) for k, v in selector.items()) if isinstance(selector, Mapping) else ()
        )

        # GetRequiredNodeAffinity: a non-nil requiredDuringScheduling... selector counts even with no terms.
        errs: list[FieldError] = []
        terms: tuple[_Term, ...] | None = None
        affinity = spec.get("affinity") or {}
        node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
        required = (
            node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") if node_affinity else None
        )
        if isinstance(required, Mapping):
            compiled: list[_Term] = []
            for i, raw in enumerate(required.get("nodeSelectorTerms") or ()):
                if not isinstance(raw, Mapping) or not (
                    raw.get("matchExpressions") or raw.get("matchFields")
                ):
                    continue  # an empty term matches nothing
                term = _compile_term(raw, f"{_AFFINITY_PATH}.nodeSelectorTerms[{i}]", errs)
                if term is not None:
                    compiled.append(replace(term, index=i))
            terms = tuple(compiled)

        return cls(
            node_name=_str(spec.get("nodeName")),
            node_selector=node_selector,
            required_terms=terms,
            tolerations=tols,
            host_network=host_network,
            affinity_errors=tuple(errs),
        )

    def tolerates(self, taint: Taint) -> bool:
        hit = self._taint_cache.get(taint)
        if hit is None:
            hit = tolerations_tolerate_taint(self.tolerations, taint)
            if len(self._taint_cache) >= _CACHE_LIMIT:
                self._taint_cache.clear()
            self._taint_cache[taint] = hit
        return hit

    def matches_node_affinity(self, node: NodeInfo) -> bool:
        """RequiredNodeAffinity.Match: spec.nodeSelector AND (any required term)."""
        labels = node.labels
        for k, v in self.node_selector:
            if labels.get(k) != v:
                return False
        terms = self.required_terms
        if terms is None:
            return True
        name = node.name
        return any(t.matches(labels, name) for t in terms)

    def explain(self, node: NodeInfo) -> NodeExplanation:
        """evaluate(node) with every reason spelled out, for `dsguard explain` and findings' node
        lists: the same decision (shouldRun), all the reasons rather than the first, and, where
        the pod runs, how soon the taint manager evicts it (a NoExecute taint tolerated for a
        while)."""
        if self.node_name and self.node_name != node.name:
            msg = f"nodeName is {self.node_name}: the pod is bound to that node only"
            return NodeExplanation(node.name, False, (NodeReason(REASON_NODE_NAME, "nodeName", msg),))
        reasons: list[NodeReason] = []
        labels = node.labels
        for k, v in self.node_selector:
            actual = labels.get(k)
            if actual == v:
                continue
            has = f"has {k}={actual}" if actual is not None else f"has no {k} label"
            reasons.append(
                NodeReason(REASON_NODE_SELECTOR, "nodeSelector", f"nodeSelector {k}={v} (the node {has})")
            )
        terms = self.required_terms
        if terms is not None and not any(t.matches(labels, node.name) for t in terms):
            for t in terms:
                missed = "; ".join(t.misses(labels, node.name))
                field = f"{_AFFINITY_PATH}.nodeSelectorTerms[{t.index}]"
                reasons.append(
                    NodeReason(REASON_NODE_AFFINITY, field, f"nodeSelectorTerms[{t.index}] fails: {missed}")
                )
            for e in self.affinity_errors:
                reasons.append(
                    NodeReason(REASON_NODE_AFFINITY, e.path, f"never matches, invalid: {e.message}")
                )
            if not terms and not self.affinity_errors:
                reasons.append(
                    NodeReason(
                        REASON_NODE_AFFINITY,
                        _AFFINITY_PATH,
                        "required node affinity has no term (matches no node)",
                    )
                )
        for taint in node.taints:
            if taint.effect in (NO_SCHEDULE, NO_EXECUTE) and not self.tolerates(taint):
                reasons.append(
                    NodeReason(REASON_TAINT, "tolerations", f"taint {taint} is not tolerated", taint=taint)
                )
        if reasons:
            return NodeExplanation(node.name, False, tuple(reasons))
        seconds, evicting = eviction_after(node.taints, self.tolerations)
        if evicting is None:
            return NodeExplanation(node.name, True)
        loop = " (the controller creates it again: a loop)" if seconds == 0 else ""
        msg = (
            f"runs, but not for long: NoExecute taint {evicting} is tolerated for {seconds}s only, then the "
            f"taint manager evicts the pod{loop}"
        )
        return NodeExplanation(
            node.name,
            True,
            (NodeReason(REASON_EVICTED, "tolerations", msg, taint=evicting),),
            evicted_after=seconds,
        )

    def evaluate(self, node: NodeInfo) -> Placement:
        """NodeShouldRunDaemonPod(node, ds): shouldRun (and shouldContinueRunning)."""
        if self.node_name and self.node_name != node.name:
            return Placement(False, f"nodeName is {self.node_name}", ())
        fits_affinity = self.matches_node_affinity(node)
        if not node.taints:  # most nodes: no tuple to build, and a shared (frozen) answer
            return _RUNS if fits_affinity else _AFFINITY_MISMATCH
        untolerated = tuple(
            t
            for t in node.taints
            if (t.effect == NO_SCHEDULE or t.effect == NO_EXECUTE) and not self.tolerates(t)
        )
        if not fits_affinity:
            return Placement(False, _AFFINITY_REASON, untolerated)
        if untolerated:
            keeps = not any(t.effect == NO_EXECUTE for t in untolerated)
            return Placement(False, _taint_list(untolerated), untolerated, should_continue_running=keeps)
        return _RUNS


def eviction_after(
    taints: Sequence[Taint], tolerations: Sequence[Toleration]
) -> tuple[int | None, Taint | None]:
    """When the taint manager evicts a pod whose tolerations tolerate every NoExecute taint of
    its node: (seconds, the taint that sets them), or (None, None) for never. As processPodOnNode:
    GetMatchingTolerations takes the first toleration that tolerates each NoExecute taint, and
    getMinTolerationTime the least tolerationSeconds among those (<= 0 is at once; none is never)."""
    least: tuple[int, Taint] | None = None
    for taint in taints:
        if taint.effect != NO_EXECUTE:
            continue
        used = next((t for t in tolerations if t.tolerates(taint)), None)
        if used is None or used.toleration_seconds is None:
            continue  # untolerated is never explained here: the pod doesn't run at all
        seconds = max(0, used.toleration_seconds)
        if least is None or seconds < least[0]:
            least = (seconds, taint)
    return (None, None) if least is None else least


REASON_NODE_NAME = "nodeName"
REASON_NODE_SELECTOR = "nodeSelector"
REASON_NODE_AFFINITY = "nodeAffinity"
REASON_TAINT = "taint"
REASON_EVICTED = "evicted"  # runs, but the taint manager evicts it after tolerationSeconds


@dataclass(frozen=True)
class NodeReason:
    """One reason a DaemonSet's pod doesn't run on a node (or doesn't stay): `field` is the pod
    spec field to change, relative to spec.template.spec."""

    kind: str  # REASON_*
    field: str
    message: str
    taint: Taint | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "field": f"spec.template.spec.{self.field}",
            "message": self.message,
        }
        if self.taint is not None:
            d["taint"] = self.taint.to_dict()
        return d


@dataclass(frozen=True)
class NodeExplanation:
    """PodPlacement.explain for one node: `runs` is NodeShouldRunDaemonPod's shouldRun."""

    node: str
    runs: bool
    reasons: tuple[NodeReason, ...] = ()
    evicted_after: int | None = None  # seconds: runs, but the taint manager evicts each pod

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "runs": self.runs,
            "evictedAfterSeconds": self.evicted_after,
            "reasons": [r.to_dict() for r in self.reasons],
        }


# Placements are frozen, so the common answers are shared rather than built once per node.
_AFFINITY_REASON = "node affinity/nodeSelector does not match"
_RUNS = Placement(True, "", (), should_continue_running=True)
_AFFINITY_MISMATCH = Placement(False, _AFFINITY_REASON, ())
