"""The shape of the DaemonSet fields the rules read, checked once at the boundary.

The rules (dsguard/rules/, scheduling, selectors, intstr) and the webhook's holds read a DaemonSet
as plain JSON dicts. Objects the apiserver stored are well-typed, but the mutating webhook runs
before apps/v1 validation, `dsguard check` reads hand-written YAML, and anyone can POST a review:
so every field they read is checked here first, with its path and the fix, the way the apiserver
would decode and validate it (types as Go's JSON decoder takes them; values where the rules parse
them: intstr percentages as apps validation's IsValidPercent / IsNotMoreThan100Percent, int32 and
int64 ranges). A rule whose fields are wrong does not run (`blocks`); the others still do.

`too_deep` bounds the nesting of a whole document before anything recursive (comparisons, repr,
copies) touches it: a typed DaemonSet review is a few dozen levels deep at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from dsguard.daemonset import is_mapping
from dsguard.intstr import percent_value

# orjson.dumps refuses documents nested more than 254 levels deep (a Rust-side check, ~10x faster
# than a Python walk), so a successful dumps proves a document within this limit.
MAX_DEPTH = 254

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

METADATA = "metadata"
LABELS = "metadata.labels"
ANNOTATIONS = "metadata.annotations"
UPDATE_STRATEGY = "spec.updateStrategy"
MIN_READY_SECONDS = "spec.minReadySeconds"
POD_SPEC = "spec.template.spec"
TOLERATIONS = f"{POD_SPEC}.tolerations"
# Everything PodPlacement.from_pod_spec reads: which nodes the DaemonSet targets.
PLACEMENT = (
    TOLERATIONS,
    f"{POD_SPEC}.nodeSelector",
    f"{POD_SPEC}.nodeName",
    f"{POD_SPEC}.hostNetwork",
    f"{POD_SPEC}.affinity",
)
IMAGES = (f"{POD_SPEC}.containers", f"{POD_SPEC}.initContainers")


@dataclass(frozen=True)
class ShapeError:
    """A field the rules can't read: where, what is wrong, and the fix."""

    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; fix: {self.fix}"


def _related(a: str, b: str) -> bool:
    """One path is the other or lies inside it (`spec` holds `spec.template.spec.tolerations`)."""
    if len(a) > len(b):
        a, b = b, a
    return b == a or (b.startswith(a) and b[len(a)] in ".[")


def blocks(errors: Iterable[ShapeError], reads: Sequence[str]) -> list[ShapeError]:
    """The errors in the fields `reads` names (or in a field holding one of them)."""
    return [e for e in errors if any(_related(e.path, r) for r in reads)]


# --- depth -----------------------------------------------------------------------------------------


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, Mapping) else v
        if depth > limit:
            return True
        for c in children:
            if isinstance(c, Mapping | list | tuple):
                stack.append((c, depth + 1))
    return False


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when objects/arrays nest more than `limit` levels; never recurses in Python."""
    if not isinstance(value, Mapping | list | tuple):
        return False
    if limit >= MAX_DEPTH:
        try:
            orjson.dumps(value, default=lambda _: None, option=orjson.OPT_NON_STR_KEYS)
            return False
        except TypeError:  # orjson.JSONEncodeError: too deep, or a >64-bit int; the walk decides
            pass
    return _depth_exceeds(value, limit)


# --- values ----------------------------------------------------------------------------------------


def describe(value: object) -> str:
    """A short, bounded description of a JSON value for messages (never the whole of a big one)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"a {len(format(value, 'x')) * 4}-bit integer"
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        if len(value) <= 40:
            return f"string {orjson.dumps(value).decode()}"
        return f"string {orjson.dumps(value[:40]).decode()}... ({len(value)} characters)"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} field(s)"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    def __init__(self) -> None:
        self.errors: list[ShapeError] = []

    def add(self, path: str, problem: str, fix: str) -> None:
        self.errors.append(ShapeError(path, problem, fix))

    def wrong_type(self, path: str, value: object, want: str, fix: str) -> None:
        self.add(path, f"must be {want}, got {describe(value)}", fix)

    def obj(self, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
        v = parent.get(key)
        if v is None:
            return None
        if not is_mapping(v):
            self.wrong_type(path, v, "an object", f"write {key} as a mapping of its fields, or remove it")
            return None
        return v

    def items(self, parent: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
        """A list of objects: (item path, item) for the items that are objects."""
        v = parent.get(key)
        if v is None:
            return []
        if type(v) is not list and not isinstance(v, tuple):
            self.wrong_type(path, v, "a list", f"write {key} as a YAML list (- item per entry), or remove it")
            return []
        out = []
        for i, item in enumerate(v):
            if item is None:
                continue
            if not is_mapping(item):
                fix = "write each entry as a mapping of its fields"
                self.wrong_type(f"{path}[{i}]", item, "an object", fix)
                continue
            out.append((f"{path}[{i}]", item))
        return out

    def string(self, parent: Mapping[str, Any], key: str, path: str) -> None:
        v = parent.get(key)
        if v is not None and not isinstance(v, str):
            self.wrong_type(path, v, "a string", f'quote it: {key}: "{_plain(v)}"')

    def strings(self, parent: Mapping[str, Any], key: str, path: str) -> None:
        v = parent.get(key)
        if v is None:
            return
        if type(v) is not list and not isinstance(v, tuple):
            self.wrong_type(path, v, "a list of strings", f'write {key} as a list, e.g. {key}: ["a"]')
            return
        for i, s in enumerate(v):
            if not isinstance(s, str):
                self.wrong_type(f"{path}[{i}]", s, "a string", f'quote it: "{_plain(s)}"')

    def string_map(self, parent: Mapping[str, Any], key: str, path: str) -> None:
        v = parent.get(key)
        if v is None:
            return
        if not is_mapping(v):
            self.wrong_type(path, v, "a map of strings", f"write {key} as key: value pairs")
            return
        for k, s in v.items():
            if not isinstance(k, str):
                self.wrong_type(path, k, "a map with string keys", f'quote the key: "{_plain(k)}"')
            elif not isinstance(s, str):
                self.wrong_type(f"{path}.{k}", s, "a string", f'quote it: {k}: "{_plain(s)}"')

    def integer(self, parent: Mapping[str, Any], key: str, path: str, lo: int, hi: int) -> None:
        v = parent.get(key)
        if v is None:
            return
        if not _is_int(v):
            self.wrong_type(path, v, "an integer", f"write {key} as a whole number, unquoted")
        elif not lo <= v <= hi:
            self.add(path, f"{describe(v)} is outside {lo}..{hi}", f"set {key} between {lo} and {hi}")

    def int_or_percent(self, parent: Mapping[str, Any], key: str, path: str) -> None:
        """ValidatePositiveIntOrPercent and IsNotMoreThan100Percent, after intstr's JSON decoding
        (a quoted value is a string, anything else must decode as an int32)."""
        v = parent.get(key)
        if v is None:
            return
        fix = f'write {key} as a whole number of pods (e.g. 1) or a percentage (e.g. "10%")'
        if isinstance(v, str):
            n = percent_value(v)
            if n is None:
                self.add(path, f'{describe(v)} must be an integer or percentage (e.g. "5%")', fix)
            elif n > 100:
                self.add(path, f"{describe(v)} must not be greater than 100%", fix)
        elif not _is_int(v):
            self.wrong_type(path, v, "an integer or a percentage string", fix)
        elif not 0 <= v <= INT32_MAX:
            self.add(path, f"{describe(v)} must be between 0 and {INT32_MAX}", fix)


def _plain(v: object) -> str:
    """A scalar as it would be written inside quotes in the fix; "..." for anything long or nested."""
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, int):
        text = str(v) if v.bit_length() <= 64 else "..."
    elif isinstance(v, float | str):
        text = str(v)
    else:
        return "..."
    return text if len(text) <= 40 else text[:40] + "..."


def _pod_spec(c: _Checker, pod: Mapping[str, Any]) -> None:
    for path, tol in c.items(pod, "tolerations", TOLERATIONS):
        for key in ("key", "operator", "value", "effect"):
            c.string(tol, key, f"{path}.{key}")
        c.integer(tol, "tolerationSeconds", f"{path}.tolerationSeconds", INT64_MIN, INT64_MAX)
    c.string_map(pod, "nodeSelector", f"{POD_SPEC}.nodeSelector")
    c.string(pod, "nodeName", f"{POD_SPEC}.nodeName")
    host_network = pod.get("hostNetwork")
    if host_network is not None and not isinstance(host_network, bool):
        c.wrong_type(f"{POD_SPEC}.hostNetwork", host_network, "a boolean", "write hostNetwork: true or false")
    affinity = c.obj(pod, "affinity", f"{POD_SPEC}.affinity")
    node_affinity = c.obj(affinity, "nodeAffinity", f"{POD_SPEC}.affinity.nodeAffinity") if affinity else None
    required_path = f"{POD_SPEC}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    required = (
        c.obj(node_affinity, "requiredDuringSchedulingIgnoredDuringExecution", required_path)
        if node_affinity
        else None
    )
    if required:
        for term_path, term in c.items(required, "nodeSelectorTerms", f"{required_path}.nodeSelectorTerms"):
            for part in ("matchExpressions", "matchFields"):
                for req_path, req in c.items(term, part, f"{term_path}.{part}"):
                    c.string(req, "key", f"{req_path}.key")
                    c.string(req, "operator", f"{req_path}.operator")
                    c.strings(req, "values", f"{req_path}.values")
    for field, path in zip(("containers", "initContainers"), IMAGES, strict=True):
        for item_path, container in c.items(pod, field, path):
            c.string(container, "name", f"{item_path}.name")
            c.string(container, "image", f"{item_path}.image")


def daemonset_shape_errors(obj: Mapping[str, Any]) -> tuple[ShapeError, ...]:
    """Every field of an apps/v1 DaemonSet the rules and the webhook's holds read, checked as
    the apiserver would decode and validate it; empty when they can all be read."""
    if type(obj) is dict and _plainly_readable(obj):
        return ()  # the common case, without building a path string per field
    return full_shape_errors(obj)


# --- the fast path ---------------------------------------------------------------------------------
# Answers "no errors" for a well-typed object without the paths and messages _Checker builds for
# every field (~3x cheaper). Conservative: anything unusual (a tuple, a Mapping that is not a dict,
# a str subclass) is False and goes to full_shape_errors, the authority; it is True only when
# full_shape_errors would find nothing (tests/unit/test_admission_boundary.py checks it).


def _str_or_none(v: object) -> bool:
    return v is None or type(v) is str


def _str_map(v: object) -> bool:
    return v is None or (type(v) is dict and all(type(k) is str and type(s) is str for k, s in v.items()))


def _dicts(v: object) -> list[dict[str, Any]] | None:
    """The items of a list of objects (None items skipped); None when it is not one."""
    if v is None:
        return []
    if type(v) is not list:
        return None
    out = [item for item in v if item is not None]
    return out if all(type(item) is dict for item in out) else None


def _int_or_percent_ok(v: object) -> bool:
    if v is None:
        return True
    if type(v) is int:
        return 0 <= v <= INT32_MAX
    if type(v) is str:
        n = percent_value(v)
        return n is not None and n <= 100
    return False


def _node_affinity_ok(affinity: object) -> bool:
    if not affinity:
        return affinity is None or type(affinity) is dict
    if type(affinity) is not dict:
        return False
    node_affinity = affinity.get("nodeAffinity")
    if not node_affinity:
        return node_affinity is None or type(node_affinity) is dict
    if type(node_affinity) is not dict:
        return False
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return required is None or type(required) is dict
    if type(required) is not dict:
        return False
    terms = _dicts(required.get("nodeSelectorTerms"))
    if terms is None:
        return False
    for term in terms:
        for part in ("matchExpressions", "matchFields"):
            reqs = _dicts(term.get(part))
            if reqs is None:
                return False
            for req in reqs:
                values = req.get("values")
                if not (_str_or_none(req.get("key")) and _str_or_none(req.get("operator"))):
                    return False
                if values is not None and not (type(values) is list and all(type(x) is str for x in values)):
                    return False
    return True


def _pod_spec_ok(pod: dict[str, Any]) -> bool:
    tolerations = _dicts(pod.get("tolerations"))
    if tolerations is None:
        return False
    for tol in tolerations:
        if not all(_str_or_none(tol.get(key)) for key in ("key", "operator", "value", "effect")):
            return False
        seconds = tol.get("tolerationSeconds")
        if seconds is not None and not (type(seconds) is int and INT64_MIN <= seconds <= INT64_MAX):
            return False
    host_network = pod.get("hostNetwork")
    if not (_str_map(pod.get("nodeSelector")) and _str_or_none(pod.get("nodeName"))):
        return False
    if not (host_network is None or type(host_network) is bool) or not _node_affinity_ok(pod.get("affinity")):
        return False
    for field in ("containers", "initContainers"):
        containers = _dicts(pod.get(field))
        if containers is None:
            return False
        for c in containers:
            if not (_str_or_none(c.get("name")) and _str_or_none(c.get("image"))):
                return False
    return True


def _plainly_readable(obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata")
    if meta is not None:
        if type(meta) is not dict:
            return False
        if not all(_str_or_none(meta.get(key)) for key in ("name", "generateName", "namespace")):
            return False
        if not (_str_map(meta.get("labels")) and _str_map(meta.get("annotations"))):
            return False
    spec = obj.get("spec")
    if spec is None:
        return True
    if type(spec) is not dict:
        return False
    ready = spec.get("minReadySeconds")
    if ready is not None and not (type(ready) is int and 0 <= ready <= INT32_MAX):
        return False
    strategy = spec.get("updateStrategy")
    if strategy is not None:
        if type(strategy) is not dict or not _str_or_none(kind := strategy.get("type")):
            return False
        if kind not in (None, "", "RollingUpdate", "OnDelete"):
            return False
        rolling = strategy.get("rollingUpdate")
        if rolling is not None and (
            type(rolling) is not dict
            or not _int_or_percent_ok(rolling.get("maxUnavailable"))
            or not _int_or_percent_ok(rolling.get("maxSurge"))
        ):
            return False
    template = spec.get("template")
    if template is None:
        return True
    if type(template) is not dict:
        return False
    pod = template.get("spec")
    return pod is None or (type(pod) is dict and _pod_spec_ok(pod))


def full_shape_errors(obj: Mapping[str, Any]) -> tuple[ShapeError, ...]:
    c = _Checker()
    meta = c.obj(obj, "metadata", METADATA)
    if meta is not None:
        for key in ("name", "generateName", "namespace"):
            c.string(meta, key, f"{METADATA}.{key}")
        c.string_map(meta, "labels", LABELS)
        c.string_map(meta, "annotations", ANNOTATIONS)
    spec = c.obj(obj, "spec", "spec")
    if spec is None:
        return tuple(c.errors)
    c.integer(spec, "minReadySeconds", MIN_READY_SECONDS, 0, INT32_MAX)
    strategy = c.obj(spec, "updateStrategy", UPDATE_STRATEGY)
    if strategy is not None:
        kind = strategy.get("type")
        if kind is not None and kind not in ("", "RollingUpdate", "OnDelete"):
            c.add(
                f"{UPDATE_STRATEGY}.type",
                f'{describe(kind)} is not one of "RollingUpdate", "OnDelete"',
                "set type: RollingUpdate or type: OnDelete",
            )
        rolling = c.obj(strategy, "rollingUpdate", f"{UPDATE_STRATEGY}.rollingUpdate")
        if rolling is not None:
            for key in ("maxUnavailable", "maxSurge"):
                c.int_or_percent(rolling, key, f"{UPDATE_STRATEGY}.rollingUpdate.{key}")
    template = c.obj(spec, "template", "spec.template")
    if template is not None:
        pod = c.obj(template, "spec", POD_SPEC)
        if pod is not None:
            _pod_spec(c, pod)
    return tuple(c.errors)
