"""intstr.IntOrString as DaemonSet rolling updates use it (apimachinery/pkg/util/intstr)."""

from __future__ import annotations

import math
import re

from dsguard.fielderrors import FieldError

IntOrPercent = int | str

# apimachinery validation.IsValidPercent: digits then '%', nothing else.
_PERCENT = re.compile(r"^[0-9]+%$")


def parse_int_or_percent(raw: object, path: str) -> tuple[IntOrPercent | None, list[FieldError]]:
    """Validate as apps/v1 does for maxUnavailable/maxSurge: a non-negative int or 'N%' with N <= 100."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return None, [FieldError(path, f'{raw!r} must be an integer or a percentage like "10%"')]
    if isinstance(raw, int):
        if raw < 0:
            return None, [FieldError(path, f"{raw} must be greater than or equal to 0")]
        return raw, []
    if not _PERCENT.match(raw):
        return None, [FieldError(path, f'{raw!r} must be an integer or a percentage like "10%"')]
    if int(raw[:-1]) > 100:
        return None, [FieldError(path, f"{raw!r} is over 100%")]
    return raw, []


def scaled_value(value: IntOrPercent, total: int, *, round_up: bool) -> int:
    """GetScaledValueFromIntOrPercent: percentages scale against total; the DaemonSet controller rounds up."""
    if isinstance(value, int):
        return value
    percent = int(value[:-1])
    scaled = percent * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def is_zero(value: IntOrPercent | None) -> bool:
    """apps validation's getIntOrPercentValue(v) == 0: '0%' and 0 are both zero; unset counts as zero."""
    if value is None:
        return True
    if isinstance(value, int):
        return value == 0
    return int(value[:-1]) == 0
