"""intstr percentages (dsguard.intstr.percent_value, apps validation's getPercentValue), remembered
only while short."""

from __future__ import annotations

import pytest

from dsguard import intstr
from dsguard.intstr import percent_value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10%", 10),
        ("0%", 0),
        ("100%", 100),
        ("007%", 7),  # leading zeros, as strconv.Atoi takes them
        ("101%", 101),  # over 100: the caller refuses it
        ("12345%", intstr._OVER_100),  # more than 4 digits: only ever compared with 100
        ("0" * 40 + "25%", 25),  # long, so parsed without the cache: the same answer
        ("9" * 5000 + "%", intstr._OVER_100),  # int() of 4,300+ digits is never attempted
        ("10", None),
        ("%", None),
        ("-5%", None),
        ("1.5%", None),
        ("10%\n", None),  # Go's $ is the end of the text
        (" 10%", None),
        ("", None),
    ],
)
def test_percent_value(text: str, value: int | None) -> None:
    assert percent_value(text) == value
    assert percent_value(text) == value  # a second time: from the cache when short


def test_only_short_strings_are_kept_by_the_cache() -> None:
    intstr._cached_percent_value.cache_clear()
    percent_value("25%")
    percent_value("0" * 1000 + "25%")
    assert intstr._cached_percent_value.cache_info().currsize == 1
