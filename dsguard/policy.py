"""DaemonSetPolicy (dsguard.io/v1alpha1): the spec parsed into frozen dataclasses.

The apiserver validates the CRD's OpenAPI schema first; this parser validates again (policy files
used offline never met an apiserver) and reports every error with its field path at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from dsguard.fielderrors import ErrorList
from dsguard.intstr import IntOrPercent, number_as_written, parse_int_or_percent
from dsguard.scheduling import Toleration
from dsguard.selectors import LabelSelector, qualified_name_errors
from dsguard.versions import VersionRange, validate_image_pattern

GROUP = "dsguard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DaemonSetPolicy"
PLURAL = "daemonsetpolicies"

E = TypeVar("E", bound=StrEnum)


class Enforcement(StrEnum):
    ENFORCE = "Enforce"  # deny
    WARN = "Warn"  # allow with admission warnings
    AUDIT = "Audit"  # allow, record only


class OnMissing(StrEnum):
    DENY = "Deny"
    ADD = "Add"


class OnExceed(StrEnum):
    DENY = "Deny"
    CLAMP = "Clamp"


class UnknownVersion(StrEnum):
    ALLOW = "Allow"
    WARN = "Warn"
    DENY = "Deny"


@dataclass(frozen=True)
class Match:
    namespaces: frozenset[str] | None = None
    namespace_selector: LabelSelector | None = None
    selector: LabelSelector | None = None

    def matches(
        self, *, namespace: str, namespace_labels: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        if self.namespaces is not None and namespace not in self.namespaces:
            return False
        if self.namespace_selector is not None and not self.namespace_selector.matches(namespace_labels):
            return False
        return self.selector is None or self.selector.matches(labels)


@dataclass(frozen=True)
class Coverage:
    node_selector: LabelSelector


@dataclass(frozen=True)
class TolerationPolicy:
    required: tuple[Toleration, ...] = ()
    on_missing: OnMissing = OnMissing.DENY
    coverage: Coverage | None = None


@dataclass(frozen=True)
class RolloutPolicy:
    max_unavailable: IntOrPercent | None = None
    max_surge: IntOrPercent | None = None
    # A floor under spec.minReadySeconds: the DaemonSet controller counts a new pod available
    # (and moves on) only after it has been Ready this long.
    min_ready_seconds: int | None = None
    on_exceed: OnExceed = OnExceed.DENY


@dataclass(frozen=True)
class Compatibility:
    kubernetes: VersionRange
    versions: VersionRange


@dataclass(frozen=True)
class VersionRule:
    image: str
    compatibility: tuple[Compatibility, ...]


@dataclass(frozen=True)
class VersionPolicy:
    rules: tuple[VersionRule, ...] = ()
    unknown_version: UnknownVersion = UnknownVersion.WARN


class GuardAction(StrEnum):
    PAUSE = "Pause"
    ROLLBACK = "Rollback"


class Approval(StrEnum):
    AUTO = "Auto"  # the next wave starts once the bake is over and the gates pass
    MANUAL = "Manual"  # ... and `dsguard promote` approved it


@dataclass(frozen=True)
class WavesPolicy:
    """The guard drives the rollout itself: a canary, then one wave per groupBy value (or per
    cumulative step), each baked before the next (docs/guard.md, Progressive rollouts)."""

    canary: IntOrPercent | None = None  # nodes in the first wave, spread across groupBy values
    group_by: str | None = None  # a node label: one wave per value
    order: tuple[str, ...] = ()  # groupBy values first, in this order; the others after, sorted
    steps: tuple[str, ...] = ()  # or: cumulative shares of the DaemonSet's nodes, "10%" .. "100%"
    max_unavailable: IntOrPercent | None = None  # inside a wave; None: the DaemonSet's own
    bake_seconds: int = 0
    approval: Approval = Approval.AUTO
    alert_on_completion: bool = False  # also alert (the policy's sinks) when a rollout completes


@dataclass(frozen=True)
class ApiserverGate:
    max_request_rate_increase: str  # "50%": the rate during the rollout over the baseline before it


@dataclass(frozen=True)
class PrometheusGate:
    url: str
    query: str
    max: float | None = None
    min: float | None = None


@dataclass(frozen=True)
class GatesPolicy:
    apiserver: ApiserverGate | None = None
    prometheus: tuple[PrometheusGate, ...] = ()


class AlertType(StrEnum):
    SLACK = "Slack"
    WEBHOOK = "Webhook"
    ALERTMANAGER = "Alertmanager"


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class AlertSink:
    """One entry of spec.guard.alerts, as the parser accepted it (see `_alert` for the rules): the
    URL inline (`url`, Webhook and Alertmanager only) or from a Secret (`url_secret_ref`), never
    both; an HMAC key only from a Secret and only for Webhook. guard.notify.sinks.build_sinks
    builds the sinks from these as they are."""

    type: AlertType
    url: str | None = None
    url_secret_ref: SecretRef | None = None
    hmac_secret_ref: SecretRef | None = None


@dataclass(frozen=True)
class GuardPolicy:
    failure_threshold: IntOrPercent = 3
    max_restarts: int = 3
    ready_deadline_seconds: int = 300
    progress_deadline_seconds: int = 1800
    action: GuardAction = GuardAction.PAUSE
    alerts: tuple[AlertSink, ...] = ()
    waves: WavesPolicy | None = None
    gates: GatesPolicy | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    match: Match = Match()
    enforcement: Enforcement = Enforcement.ENFORCE
    tolerations: TolerationPolicy | None = None
    rollout: RolloutPolicy | None = None
    versions: VersionPolicy | None = None
    guard: GuardPolicy | None = None


def parse_policy(doc: object, *, source: str = "") -> Policy:
    """Parse a DaemonSetPolicy object (CRD instance or a YAML file) into a Policy.

    Raises InvalidSpec naming every bad field. `source` (a file name, or "DaemonSetPolicy/x")
    prefixes the message so a user knows which document to fix.
    """
    errors = ErrorList()
    if not isinstance(doc, Mapping):
        errors.add("<root>", f"expected a {KIND} object (a mapping), got {type(doc).__name__}")
        errors.raise_if_any(source=source)
        raise AssertionError("unreachable")
    if doc.get("apiVersion") not in (None, API_VERSION):
        errors.add("apiVersion", f"{doc.get('apiVersion')!r} is not supported; use {API_VERSION}")
    if doc.get("kind") not in (None, KIND):
        errors.add("kind", f"{doc.get('kind')!r} is not a {KIND}")
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        errors.add("metadata.name", "is required")
        name = ""
    spec = doc.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        errors.add("spec", "must be a mapping")
        spec = {}
    r = _Reader(errors)
    _unknown_fields(r, spec, "spec", {"match", "enforcement", "tolerations", "rollout", "versions", "guard"})
    policy = Policy(
        name=name,
        match=_match(r, spec.get("match"), "spec.match"),
        enforcement=r.enum(spec.get("enforcement"), "spec.enforcement", Enforcement, Enforcement.ENFORCE),
        tolerations=_tolerations(r, spec.get("tolerations"), "spec.tolerations"),
        rollout=_rollout(r, spec.get("rollout"), "spec.rollout"),
        versions=_versions(r, spec.get("versions"), "spec.versions"),
        guard=_guard(r, spec.get("guard"), "spec.guard"),
    )
    errors.raise_if_any(source=source or (f"{KIND}/{name}" if name else ""))
    return policy


class _Reader:
    """Typed access to untyped YAML that records an error instead of raising."""

    def __init__(self, errors: ErrorList) -> None:
        self.errors = errors

    def mapping(self, raw: object, path: str) -> Mapping[str, Any] | None:
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            self.errors.add(path, f"must be a mapping, got {type(raw).__name__}")
            return None
        return raw

    def sequence(self, raw: object, path: str) -> Sequence[Any]:
        if raw is None:
            return ()
        if not isinstance(raw, list | tuple):
            self.errors.add(path, f"must be a list, got {type(raw).__name__}")
            return ()
        return raw

    def string(self, raw: object, path: str) -> str | None:
        if not isinstance(raw, str) or not raw:
            self.errors.add(path, "must be a non-empty string")
            return None
        return raw

    def enum(self, raw: object, path: str, kind: type[E], default: E) -> E:
        if raw is None:
            return default
        try:
            if not isinstance(raw, str):
                raise ValueError(raw)
            return kind(raw)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            self.errors.add(path, f"{raw!r} is not one of {allowed}")
            return default

    def integer(self, raw: object, path: str, *, minimum: int, maximum: int | None = None) -> int | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
            self.errors.add(path, f"{raw!r} must be an integer >= {minimum}")
            return None
        if maximum is not None and raw > maximum:
            self.errors.add(path, f"{raw!r} must be at most {maximum}")
            return None
        return raw

    def boolean(self, raw: object, path: str, default: bool = False) -> bool:
        if raw is None:
            return default
        if not isinstance(raw, bool):
            self.errors.add(path, f"{raw!r} must be true or false")
            return default
        return raw

    def number(self, raw: object, path: str) -> float | None:
        if raw is None:
            return None
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or raw != raw
            or raw
            in (
                float("inf"),
                float("-inf"),
            )
        ):
            self.errors.add(path, f"{raw!r} must be a number")
            return None
        return float(raw)

    def version_range(self, raw: object, path: str) -> VersionRange | None:
        text = self.string(raw, path)
        if text is None:
            return None
        try:
            return VersionRange.parse(text)
        except ValueError as e:
            self.errors.add(path, str(e))
            return None


def _unknown_fields(r: _Reader, raw: Mapping[str, Any], path: str, known: set[str]) -> None:
    # The CRD schema prunes unknown fields silently; offline we say so, since a typo
    # ("onMising") would otherwise turn a policy off without a word.
    for key in raw:
        if key not in known:
            r.errors.add(f"{path}.{key}", f"unknown field; expected one of {', '.join(sorted(known))}")


def _match(r: _Reader, raw: object, path: str) -> Match:
    m = r.mapping(raw, path)
    if m is None:
        return Match()
    _unknown_fields(r, m, path, {"namespaces", "namespaceSelector", "selector"})
    namespaces: frozenset[str] | None = None
    if "namespaces" in m:
        names = [
            r.string(n, f"{path}.namespaces[{i}]")
            for i, n in enumerate(r.sequence(m["namespaces"], f"{path}.namespaces"))
        ]
        namespaces = frozenset(n for n in names if n)
    ns_sel = None
    if m.get("namespaceSelector") is not None:
        ns_sel = LabelSelector.parse(m["namespaceSelector"], f"{path}.namespaceSelector", r.errors)
    sel = None
    if m.get("selector") is not None:
        sel = LabelSelector.parse(m["selector"], f"{path}.selector", r.errors)
    return Match(namespaces=namespaces, namespace_selector=ns_sel, selector=sel)


def _tolerations(r: _Reader, raw: object, path: str) -> TolerationPolicy | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    _unknown_fields(r, m, path, {"required", "onMissing", "coverage"})
    required: list[Toleration] = []
    for i, item in enumerate(r.sequence(m.get("required"), f"{path}.required")):
        t = Toleration.parse(item, f"{path}.required[{i}]", r.errors)
        if t is not None and t not in required:
            required.append(t)
    coverage = None
    cov = r.mapping(m.get("coverage"), f"{path}.coverage")
    if cov is not None:
        _unknown_fields(r, cov, f"{path}.coverage", {"nodeSelector"})
        sel = LabelSelector.parse(cov.get("nodeSelector") or {}, f"{path}.coverage.nodeSelector", r.errors)
        coverage = Coverage(node_selector=sel or LabelSelector())
    return TolerationPolicy(
        required=tuple(required),
        on_missing=r.enum(m.get("onMissing"), f"{path}.onMissing", OnMissing, OnMissing.DENY),
        coverage=coverage,
    )


def _rollout(r: _Reader, raw: object, path: str) -> RolloutPolicy | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    _unknown_fields(r, m, path, {"maxUnavailable", "maxSurge", "minReadySeconds", "onExceed"})
    caps: dict[str, IntOrPercent | None] = {}
    for field in ("maxUnavailable", "maxSurge"):
        caps[field] = None
        if m.get(field) is not None:
            value, errs = parse_int_or_percent(m[field], f"{path}.{field}")
            r.errors.extend(errs)
            caps[field] = value
    return RolloutPolicy(
        max_unavailable=caps["maxUnavailable"],
        max_surge=caps["maxSurge"],
        min_ready_seconds=r.integer(m.get("minReadySeconds"), f"{path}.minReadySeconds", minimum=0),
        on_exceed=r.enum(m.get("onExceed"), f"{path}.onExceed", OnExceed, OnExceed.DENY),
    )


def _versions(r: _Reader, raw: object, path: str) -> VersionPolicy | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    _unknown_fields(r, m, path, {"rules", "unknownVersion"})
    rules: list[VersionRule] = []
    for i, item in enumerate(r.sequence(m.get("rules"), f"{path}.rules")):
        rp = f"{path}.rules[{i}]"
        rm = r.mapping(item, rp)
        if rm is None:
            r.errors.add(rp, "must be a mapping with image and compatibility")
            continue
        _unknown_fields(r, rm, rp, {"image", "compatibility"})
        image = r.string(rm.get("image"), f"{rp}.image")
        if image is not None:
            try:
                validate_image_pattern(image)
            except ValueError as e:
                r.errors.add(f"{rp}.image", f"{e}; give a repository such as registry.example.com/agent")
                image = None
        compat: list[Compatibility] = []
        entries = r.sequence(rm.get("compatibility"), f"{rp}.compatibility")
        if not entries:
            r.errors.add(f"{rp}.compatibility", "must list at least one {kubernetes, versions} entry")
        for j, entry in enumerate(entries):
            cp = f"{rp}.compatibility[{j}]"
            em = r.mapping(entry, cp)
            if em is None:
                continue
            _unknown_fields(r, em, cp, {"kubernetes", "versions"})
            k = r.version_range(em.get("kubernetes"), f"{cp}.kubernetes")
            v = r.version_range(em.get("versions"), f"{cp}.versions")
            if k is not None and v is not None:
                compat.append(Compatibility(kubernetes=k, versions=v))
        if image is not None:
            rules.append(VersionRule(image=image, compatibility=tuple(compat)))
    return VersionPolicy(
        rules=tuple(rules),
        unknown_version=r.enum(
            m.get("unknownVersion"), f"{path}.unknownVersion", UnknownVersion, UnknownVersion.WARN
        ),
    )


def _guard(r: _Reader, raw: object, path: str) -> GuardPolicy | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    known = {
        "failureThreshold",
        "maxRestarts",
        "readyDeadlineSeconds",
        "progressDeadlineSeconds",
        "action",
        "alerts",
        "waves",
        "gates",
    }
    _unknown_fields(r, m, path, known)
    defaults = GuardPolicy()
    threshold: IntOrPercent = defaults.failure_threshold
    if m.get("failureThreshold") is not None:
        value, errs = parse_int_or_percent(m["failureThreshold"], f"{path}.failureThreshold")
        r.errors.extend(errs)
        if value is not None and not errs:
            if number_as_written(value) < 1:
                r.errors.add(
                    f"{path}.failureThreshold", f"{value!r} must be at least 1 (or 1%): 0 would act at once"
                )
            else:
                threshold = value
    numbers: dict[str, int] = {}
    for field, default, minimum in (
        ("maxRestarts", defaults.max_restarts, 1),
        ("readyDeadlineSeconds", defaults.ready_deadline_seconds, 1),
        ("progressDeadlineSeconds", defaults.progress_deadline_seconds, 1),
    ):
        raw_n = m.get(field)
        numbers[field] = default
        if raw_n is None:
            continue
        if isinstance(raw_n, bool) or not isinstance(raw_n, int) or raw_n < minimum:
            r.errors.add(f"{path}.{field}", f"{raw_n!r} must be an integer >= {minimum}")
        else:
            numbers[field] = raw_n
    alerts = []
    for i, item in enumerate(r.sequence(m.get("alerts"), f"{path}.alerts")):
        sink = _alert(r, item, f"{path}.alerts[{i}]")
        if sink is not None:
            alerts.append(sink)
    return GuardPolicy(
        failure_threshold=threshold,
        max_restarts=numbers["maxRestarts"],
        ready_deadline_seconds=numbers["readyDeadlineSeconds"],
        progress_deadline_seconds=numbers["progressDeadlineSeconds"],
        action=r.enum(m.get("action"), f"{path}.action", GuardAction, GuardAction.PAUSE),
        alerts=tuple(alerts),
        waves=_waves(r, m.get("waves"), f"{path}.waves"),
        gates=_gates(r, m.get("gates"), f"{path}.gates"),
    )


def _positive_count(r: _Reader, raw: object, path: str) -> IntOrPercent | None:
    """A node count: an integer >= 1 or a percentage from 1% to 100%."""
    value, errs = parse_int_or_percent(raw, path)
    r.errors.extend(errs)
    if value is None or errs:
        return None
    if number_as_written(value) < 1:
        r.errors.add(path, f'{value!r} must be at least 1 (or "1%")')
        return None
    return value


WAVES_FIELDS = frozenset(
    {"canary", "groupBy", "order", "steps", "maxUnavailable", "bakeSeconds", "approval", "alertOnCompletion"}
)


def _waves(r: _Reader, raw: object, path: str) -> WavesPolicy | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    _unknown_fields(r, m, path, set(WAVES_FIELDS))
    canary = None
    cm = r.mapping(m.get("canary"), f"{path}.canary")
    if cm is not None:
        _unknown_fields(r, cm, f"{path}.canary", {"nodes"})
        if cm.get("nodes") is None:
            r.errors.add(f"{path}.canary.nodes", 'is required: a node count (2) or a share ("1%")')
        else:
            canary = _positive_count(r, cm["nodes"], f"{path}.canary.nodes")
    group_by = None
    if m.get("groupBy") is not None:
        group_by = r.string(m["groupBy"], f"{path}.groupBy")
        if group_by is not None:
            for problem in qualified_name_errors(group_by):
                r.errors.add(f"{path}.groupBy", f"{group_by!r} is not a node label key: {problem}")
    order: list[str] = []
    for i, item in enumerate(r.sequence(m.get("order"), f"{path}.order")):
        value = item if isinstance(item, str) else None
        if value is None:
            r.errors.add(f"{path}.order[{i}]", f"{item!r} must be a label value (a string)")
        elif value in order:
            r.errors.add(f"{path}.order[{i}]", f"{value!r} is listed twice")
        else:
            order.append(value)
    if order and group_by is None:
        r.errors.add(f"{path}.order", "applies only with groupBy (the order of its values)")
    steps: list[str] = []
    raw_steps = r.sequence(m.get("steps"), f"{path}.steps")
    last = 0
    for i, item in enumerate(raw_steps):
        sp = f"{path}.steps[{i}]"
        if not isinstance(item, str) or not item.endswith("%") or not item[:-1].isdigit():
            r.errors.add(sp, f'{item!r} must be a percentage like "10%" (a cumulative share of the nodes)')
            continue
        share = int(item[:-1])
        if not last < share <= 100:
            r.errors.add(sp, f"{item!r} must be over the step before ({last}%) and at most 100%")
            continue
        last = share
        steps.append(item)
    if steps and last != 100:
        r.errors.add(f"{path}.steps", f'the last step must be "100%" (every node), got "{last}%"')
    if steps and group_by is not None:
        r.errors.add(f"{path}.steps", "give groupBy or steps, not both")
    max_unavailable = None
    if m.get("maxUnavailable") is not None:
        max_unavailable = _positive_count(r, m["maxUnavailable"], f"{path}.maxUnavailable")
    bake = r.integer(m.get("bakeSeconds"), f"{path}.bakeSeconds", minimum=0, maximum=7 * 24 * 3600)
    return WavesPolicy(
        canary=canary,
        group_by=group_by,
        order=tuple(order),
        steps=tuple(steps),
        max_unavailable=max_unavailable,
        bake_seconds=bake or 0,
        approval=r.enum(m.get("approval"), f"{path}.approval", Approval, Approval.AUTO),
        alert_on_completion=r.boolean(m.get("alertOnCompletion"), f"{path}.alertOnCompletion"),
    )


def _gates(r: _Reader, raw: object, path: str) -> GatesPolicy | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    _unknown_fields(r, m, path, {"apiserver", "prometheus"})
    apiserver = None
    am = r.mapping(m.get("apiserver"), f"{path}.apiserver")
    if am is not None:
        ap = f"{path}.apiserver.maxRequestRateIncrease"
        _unknown_fields(r, am, f"{path}.apiserver", {"maxRequestRateIncrease"})
        raw_inc = am.get("maxRequestRateIncrease")
        if not isinstance(raw_inc, str) or not raw_inc.endswith("%") or not raw_inc[:-1].isdigit():
            r.errors.add(
                ap, f'{raw_inc!r} must be a percentage like "50%" (over the rate before the rollout)'
            )
        elif int(raw_inc[:-1]) < 1:
            r.errors.add(ap, f'{raw_inc!r} must be at least "1%"')
        else:
            apiserver = ApiserverGate(max_request_rate_increase=raw_inc)
    prometheus: list[PrometheusGate] = []
    for i, item in enumerate(r.sequence(m.get("prometheus"), f"{path}.prometheus")):
        pp = f"{path}.prometheus[{i}]"
        pm = r.mapping(item, pp)
        if pm is None:
            continue
        _unknown_fields(r, pm, pp, {"url", "query", "max", "min"})
        url = r.string(pm.get("url"), f"{pp}.url")
        if url is not None and not url.startswith(("https://", "http://")):
            r.errors.add(f"{pp}.url", f"{url!r} must be an http:// or https:// URL (the Prometheus server)")
            url = None
        query = r.string(pm.get("query"), f"{pp}.query")
        high = r.number(pm.get("max"), f"{pp}.max")
        low = r.number(pm.get("min"), f"{pp}.min")
        if pm.get("max") is None and pm.get("min") is None:
            r.errors.add(pp, "give max, min or both: the limits the query's value must stay within")
        elif high is not None and low is not None and low > high:
            r.errors.add(f"{pp}.min", f"{low} is over max {high}")
        if url is not None and query is not None:
            prometheus.append(PrometheusGate(url=url, query=query, max=high, min=low))
    return GatesPolicy(apiserver=apiserver, prometheus=tuple(prometheus))


def _secret_ref(r: _Reader, raw: object, path: str) -> SecretRef | None:
    m = r.mapping(raw, path)
    if m is None:
        return None
    _unknown_fields(r, m, path, {"namespace", "name", "key"})
    ns, name, key = (r.string(m.get(f), f"{path}.{f}") for f in ("namespace", "name", "key"))
    if ns is None or name is None or key is None:
        return None
    return SecretRef(ns, name, key)


# An inline alert `url`: http:// or https://, a host (and port), then optionally a path, query or
# fragment; no user info (a credential) and no whitespace. The CRD's `pattern` for the field is
# this one, and it is matched whole (as the apiserver's RE2 does, and Python's fullmatch).
INLINE_URL_PATTERN = r"^https?://[^\t\n\v\f\r /?#@]+([/?#][^\t\n\v\f\r ]*)?$"
_INLINE_URL = re.compile(INLINE_URL_PATTERN)
_WHITESPACE = frozenset("\t\n\v\f\r ")
_URL_EXAMPLE = "e.g. https://alerts.example.com/dsguard"


def _inline_url(r: _Reader, raw: object, path: str) -> str | None:
    """The `url` of a Webhook or Alertmanager sink. Errors never repeat the value: a URL may carry
    a credential even where it should not."""
    url = r.string(raw, path)
    if url is None or _INLINE_URL.fullmatch(url):
        return url
    scheme, sep, rest = url.partition("://")
    authority = rest
    for stop in "/?#":
        authority = authority.split(stop, 1)[0]
    if not sep or scheme not in ("http", "https"):
        r.errors.add(path, f"must be an http:// or https:// URL; fix: {_URL_EXAMPLE}")
    elif _WHITESPACE.intersection(url):
        r.errors.add(path, "must not contain whitespace; fix: remove it (a space in a path is %20)")
    elif "@" in authority:
        r.errors.add(
            path,
            "carries user info before '@' (a credential); fix: put the whole URL in a Secret "
            "and use urlSecretRef instead of url",
        )
    else:
        r.errors.add(path, f"has no host; fix: {_URL_EXAMPLE}")
    return None


def _alert(r: _Reader, raw: object, path: str) -> AlertSink | None:
    """One alert sink. The rules (the CRD's schema says the same):

    - `type` is required: Slack, Webhook or Alertmanager;
    - the URL is inline (`url`) or from a Secret (`urlSecretRef`), one of the two, except for
      Slack: a Slack webhook URL is a credential, so only `urlSecretRef`;
    - an inline `url` is http(s) with a host, without user info (a credential: use urlSecretRef)
      or whitespace;
    - `hmacSecretRef` (the signing key, only from a Secret) only for Webhook;
    - a Secret reference names namespace, name and key.

    An explicit null is taken as absent, as the apiserver prunes it."""
    if raw is None:
        r.errors.add(path, "must be a mapping with type and url or urlSecretRef")
        return None
    m = r.mapping(raw, path)
    if m is None:
        return None
    had_errors = len(r.errors.errors)
    _unknown_fields(r, m, path, {"type", "url", "urlSecretRef", "hmacSecretRef"})
    if m.get("type") is None:
        r.errors.add(f"{path}.type", "is required: one of Slack, Webhook, Alertmanager")
        return None
    kind = r.enum(m.get("type"), f"{path}.type", AlertType, AlertType.WEBHOOK)
    has_url, has_url_ref = m.get("url") is not None, m.get("urlSecretRef") is not None
    url = None
    if kind is AlertType.SLACK:
        if has_url:
            r.errors.add(
                f"{path}.url", "a Slack webhook URL is a credential: put it in a Secret and use urlSecretRef"
            )
        elif not has_url_ref:
            r.errors.add(
                f"{path}.urlSecretRef", "is required for Slack (the Secret key holding the webhook URL)"
            )
    elif has_url:
        url = _inline_url(r, m["url"], f"{path}.url")
    elif not has_url_ref:
        r.errors.add(f"{path}.url", f"is required for {kind.value} (or urlSecretRef)")
    url_ref = _secret_ref(r, m.get("urlSecretRef"), f"{path}.urlSecretRef")
    if has_url and has_url_ref:
        r.errors.add(f"{path}.urlSecretRef", "give url or urlSecretRef, not both")
    hmac_ref = _secret_ref(r, m.get("hmacSecretRef"), f"{path}.hmacSecretRef")
    if m.get("hmacSecretRef") is not None and kind is not AlertType.WEBHOOK:
        r.errors.add(f"{path}.hmacSecretRef", "applies only to type Webhook")
    if len(r.errors.errors) > had_errors:
        return None
    return AlertSink(type=kind, url=url, url_secret_ref=url_ref, hmac_secret_ref=hmac_ref)


def guard_policy_for(policies: Sequence[Policy]) -> tuple[str | None, GuardPolicy]:
    """The guard section in force for a DaemonSet: the first matching policy with one, in the
    order given (the guard, its audit and `dsguard status` all pick it this way), or the defaults."""
    for p in policies:
        if p.guard is not None:
            return p.name, p.guard
    return None, GuardPolicy()
