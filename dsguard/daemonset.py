"""The parts of an apps/v1 DaemonSet the rules read, with the apiserver's defaults applied.

Objects from the apiserver are already defaulted; manifests checked offline are not, so the
defaults (SetDefaults_DaemonSet in pkg/apis/apps/v1/defaults.go) are applied here once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from dsguard.intstr import IntOrPercent

ROLLING_UPDATE = "RollingUpdate"
ON_DELETE = "OnDelete"
DEFAULT_MAX_UNAVAILABLE: IntOrPercent = 1
DEFAULT_MAX_SURGE: IntOrPercent = 0

TOLERATIONS_PATH = "spec.template.spec.tolerations"
ROLLING_UPDATE_PATH = "spec.updateStrategy.rollingUpdate"


def is_mapping(raw: object) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(raw, Mapping), fast for the dicts JSON parses into: an ABC check costs ~10x a
    type check, and the guard runs several per pod on every watch event (and 5,000+ per list)."""
    return type(raw) is dict or isinstance(raw, Mapping)


def as_mapping(raw: object) -> Mapping[str, Any]:
    """raw when it is a mapping, else {}: for reading fields of API objects that may be absent or null."""
    return raw if is_mapping(raw) else {}


@dataclass(frozen=True)
class ContainerImage:
    path: str  # e.g. spec.template.spec.containers[0].image
    container: str
    image: str


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_mapping(as_mapping(obj.get("metadata")).get("annotations"))


def spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_mapping(obj.get("spec"))


def _seconds(raw: object) -> int:
    # apps/v1 validation rejects anything but a non-negative int32; judge what it would store.
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 0


@dataclass(frozen=True)
class DaemonSetView:
    namespace: str
    name: str
    labels: Mapping[str, str]
    pod_spec: Mapping[str, Any]
    strategy_type: str
    max_unavailable: IntOrPercent
    max_surge: IntOrPercent
    min_ready_seconds: int = 0

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], *, namespace: str = "") -> DaemonSetView:
        meta = as_mapping(obj.get("metadata"))
        spec = as_mapping(obj.get("spec"))
        strategy = as_mapping(spec.get("updateStrategy"))
        rolling = as_mapping(strategy.get("rollingUpdate"))
        max_unavailable = rolling.get("maxUnavailable")
        max_surge = rolling.get("maxSurge")
        return cls(
            namespace=namespace or str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or meta.get("generateName") or ""),
            labels=as_mapping(meta.get("labels")),
            pod_spec=as_mapping(as_mapping(spec.get("template")).get("spec")),
            strategy_type=str(strategy.get("type") or ROLLING_UPDATE),
            max_unavailable=max_unavailable
            if isinstance(max_unavailable, int | str)
            else DEFAULT_MAX_UNAVAILABLE,
            max_surge=max_surge if isinstance(max_surge, int | str) else DEFAULT_MAX_SURGE,
            min_ready_seconds=_seconds(spec.get("minReadySeconds")),
        )

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def images(self) -> Iterator[ContainerImage]:
        for field in ("initContainers", "containers"):
            containers = self.pod_spec.get(field)
            if not isinstance(containers, list):
                continue
            for i, c in enumerate(containers):
                c = as_mapping(c)
                image = c.get("image")
                if isinstance(image, str) and image:
                    yield ContainerImage(
                        f"spec.template.spec.{field}[{i}].image", str(c.get("name", "")), image
                    )
