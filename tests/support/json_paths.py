"""Every path into a JSON-like document: where the boundary tests and the webhook fuzzer put a
hostile value."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of `value` itself, then of everything inside it (dict keys, list indexes), depth first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, (*prefix, i))
