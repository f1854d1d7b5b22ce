"""intstr.IntOrString as DaemonSet rolling updates use it (apimachinery/pkg/util/intstr)."""

from __future__ import annotations

import functools
import math
import re

from dsguard.fielderrors import FieldError

IntOrPercent = int | str

# apimachinery validation.IsValidPercent: `^[0-9]+%$`, digits then '%', nothing else. Go's `$` is
# the end of the text; Python's also matches before a final newline, hence fullmatch.
_PERCENT = re.compile(r"[0-9]+%")
_OVER_100 = 10_000


# Strings up to this long are remembered (an object's value can be megabytes long: those are
# parsed every time rather than kept alive by the cache).
_CACHED_LEN = 16


def percent_value(text: str) -> int | None:
    """apps validation's getPercentValue: N of a valid "N%" (leading zeros allowed, as strconv.Atoi
    takes them), None when not a valid percentage. A value of more than 4 digits is only ever
    compared with 100, so it is not converted (Python refuses int() of 4,300+ digits)."""
    return _cached_percent_value(text) if len(text) <= _CACHED_LEN else _percent_value(text)


def _percent_value(text: str) -> int | None:
    if not _PERCENT.fullmatch(text):
        return None
    digits = text[:-1].lstrip("0")
    return int(digits or "0") if len(digits) <= 4 else _OVER_100


# Pure, and the same few strings ("10%", "25%") come in review after review: a parse costs a regex
# match and an int(), a hit a dict lookup.
_cached_percent_value = functools.lru_cache(maxsize=256)(_percent_value)


def parse_int_or_percent(raw: object, path: str) -> tuple[IntOrPercent | None, list[FieldError]]:
    """Validate as apps/v1 does for maxUnavailable/maxSurge: a non-negative int or 'N%' with N <= 100."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return None, [FieldError(path, f'{raw!r} must be an integer or a percentage like "10%"')]
    if isinstance(raw, int):
        if raw < 0:
            return None, [FieldError(path, f"{raw} must be greater than or equal to 0")]
        return raw, []
    n = percent_value(raw)
    if n is None:
        return None, [FieldError(path, f'{raw!r} must be an integer or a percentage like "10%"')]
    if n > 100:
        return None, [FieldError(path, f"{raw!r} is over 100%")]
    return raw, []


def _percent(value: str) -> int:
    n = percent_value(value)
    if n is None:  # callers validate first (dsguard.daemonset_shape); say which value if not
        raise ValueError(f"{value!r} is not a percentage")
    return n


def scaled_value(value: IntOrPercent, total: int, *, round_up: bool) -> int:
    """GetScaledValueFromIntOrPercent: percentages scale against total; the DaemonSet controller rounds up."""
    if isinstance(value, int):
        return value
    scaled = _percent(value) * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def number_as_written(value: IntOrPercent) -> int:
    """3 for 3, 10 for "10%": for comparing two values of the same kind without a scale."""
    return value if isinstance(value, int) else _percent(value)


def is_zero(value: IntOrPercent | None) -> bool:
    """apps validation's getIntOrPercentValue(v) == 0: '0%' and 0 are both zero; unset counts as zero."""
    if value is None:
        return True
    if isinstance(value, int):
        return value == 0
    return _percent(value) == 0
