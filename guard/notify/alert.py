"""What the guard tells people about a DaemonSet rollout. Pure: no HTTP, no Kubernetes client.

Generic webhook body (`Alert.to_json()`, schema version 1), sent as compact JSON (UTF-8):

    {
      "version": 1,                          # bumped only on an incompatible change
      "kind": "paused",                      # paused | rolled_back | resumed | stalled
      "severity": "critical",                # critical: paused, rolled_back; warning: stalled; info: resumed
      "key": "<uid>/<revision>/<kind>",      # stable id of this alert, what senders dedupe on
      "at": "2025-05-01T12:00:00.000000Z",   # when the guard acted, RFC 3339, UTC
      "daemonset": {"namespace": "kube-system", "name": "node-agent", "uid": "<DaemonSet uid>"},
      "revision": "5d9c7b8f6",               # controller-revision-hash of the update revision
      "policy": "node-agents",               # DaemonSetPolicy that asked for the action; "" if none
      "summary": "paused: 3 of 5 updated pods failing (CrashLoopBackOff) with threshold 3",
      "failing": [                           # the failing updated pods seen, possibly empty
        {"pod": "node-agent-x7k2p", "node": "worker-3", "reason": "CrashLoopBackOff"}
      ]
    }

Receivers must ignore fields they don't know: new fields may be added within version 1. The
HTTP headers that come with it (signature, delivery id) are described in `guard.notify.sinks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1
_STRING_FIELDS = ("revision", "policy", "summary")


class AlertKind(StrEnum):
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    RESUMED = "resumed"
    STALLED = "stalled"
    GATE_ERROR = "gate_error"  # a wave rollout's gate could not be measured: people are told, no action
    COMPLETED = "completed"  # a wave rollout completed (spec.guard.waves.alertOnCompletion)

    @property
    def camel(self) -> str:
        """The suffix of Alertmanager alert names: RolledBack for rolled_back."""
        return "".join(part.capitalize() for part in self.value.split("_"))

    @property
    def words(self) -> str:
        """For people: "rolled back"."""
        return self.value.replace("_", " ")

    @property
    def severity(self) -> str:
        return _SEVERITY[self]


_SEVERITY = {
    AlertKind.PAUSED: "critical",
    AlertKind.ROLLED_BACK: "critical",
    AlertKind.STALLED: "warning",
    AlertKind.GATE_ERROR: "warning",
    AlertKind.COMPLETED: "info",
    AlertKind.RESUMED: "info",
}


@dataclass(frozen=True)
class FailingPod:
    pod: str
    node: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"pod": self.pod, "node": self.node, "reason": self.reason}

    @classmethod
    def from_json(cls, d: object, path: str = "failing[]") -> FailingPod:
        if not isinstance(d, dict):
            raise ValueError(f"alert field {path!r} must be an object, got {type(d).__name__}")
        return cls(**{name: _string(d, name, f"{path}.{name}") for name in ("pod", "node", "reason")})


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    namespace: str
    daemonset: str
    uid: str  # the DaemonSet's metadata.uid
    revision: str  # controller-revision-hash of the update revision the action was about
    summary: str  # one line: "paused: 3 of 5 updated pods failing (CrashLoopBackOff) with threshold 3"
    failing: tuple[FailingPod, ...] = ()
    policy: str = ""
    at: datetime = field(default_factory=_now)  # tz-aware; normalised to UTC

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"Alert.at must be timezone-aware, got {self.at!r}")
        # Frozen: normalise through object.__setattr__. A list for `failing` would make the
        # alert unhashable and mutable behind the dispatcher's back.
        object.__setattr__(self, "at", self.at.astimezone(UTC))
        object.__setattr__(self, "kind", AlertKind(self.kind))
        object.__setattr__(self, "failing", tuple(self.failing))

    @property
    def key(self) -> str:
        """Dedupe key: one alert of a kind per DaemonSet (uid, so a re-created one is new) and revision."""
        return f"{self.uid}/{self.revision}/{self.kind.value}"

    def to_json(self) -> dict[str, Any]:
        """The generic webhook body; schema in the module docstring."""
        return {
            "version": SCHEMA_VERSION,
            "kind": self.kind.value,
            "severity": self.kind.severity,
            "key": self.key,
            "at": rfc3339(self.at),
            "daemonset": {"namespace": self.namespace, "name": self.daemonset, "uid": self.uid},
            "revision": self.revision,
            "policy": self.policy,
            "summary": self.summary,
            "failing": [p.to_json() for p in self.failing],
        }

    @classmethod
    def from_json(cls, d: object) -> Alert:
        """The Alert that `to_json()` described; ValueError naming the first thing wrong.

        Strict: the guard reads these back from its own annotation (dsguard.io/alerts-pending),
        so anything unexpected (a hand edit, a newer schema) is reported, not guessed at.
        `severity` and `key` are derived; they must agree with kind, uid and revision.
        """
        if not isinstance(d, dict):
            raise ValueError(f"an alert must be a JSON object, got {type(d).__name__}")
        version = d.get("version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise ValueError(f"unsupported alert version {version!r} (expected {SCHEMA_VERSION})")
        kind_raw = _string(d, "kind")
        try:
            kind = AlertKind(kind_raw)
        except ValueError:
            raise ValueError(f"unknown alert kind {kind_raw!r}") from None
        ds = d.get("daemonset")
        if not isinstance(ds, dict):
            raise ValueError("alert field 'daemonset' must be an object")
        strings = {name: _string(d, name) for name in _STRING_FIELDS}
        at_raw = _string(d, "at")
        try:
            at = datetime.fromisoformat(at_raw)
        except ValueError:
            raise ValueError(f"alert field 'at' is not an RFC 3339 time: {at_raw!r}") from None
        if at.tzinfo is None:
            raise ValueError(f"alert field 'at' has no time zone: {at_raw!r}")
        failing = d.get("failing")
        if not isinstance(failing, list):
            raise ValueError("alert field 'failing' must be a list")
        alert = cls(
            kind=kind,
            namespace=_string(ds, "namespace", "daemonset.namespace"),
            daemonset=_string(ds, "name", "daemonset.name"),
            uid=_string(ds, "uid", "daemonset.uid"),
            revision=strings["revision"],
            summary=strings["summary"],
            failing=tuple(FailingPod.from_json(p, f"failing[{i}]") for i, p in enumerate(failing)),
            policy=strings["policy"],
            at=at,
        )
        if _string(d, "severity") != kind.severity:
            raise ValueError(f"alert severity {d['severity']!r} does not match kind {kind.value}")
        if _string(d, "key") != alert.key:
            raise ValueError(f"alert key {d['key']!r} does not match its fields ({alert.key})")
        return alert


def _string(d: dict[str, Any], name: str, path: str | None = None) -> str:
    value = d.get(name)
    if not isinstance(value, str):
        what = "is missing" if value is None else f"must be a string, not {type(value).__name__}"
        raise ValueError(f"alert field {path or name!r} {what}")
    return value


def rfc3339(at: datetime) -> str:
    """UTC with exactly six fractional digits: what Kubernetes' MicroTime requires, and valid RFC 3339."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
