"""Errors that name the field they are about, in the apiserver's style (`spec.rollout.maxSurge: ...`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidSpec(ValueError):
    """One or more field errors, all reported at once so a user fixes everything in one pass."""

    def __init__(self, errors: Iterable[FieldError], *, source: str = "") -> None:
        self.errors = tuple(errors)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(e) for e in self.errors))


class ErrorList:
    """Collects field errors while a parser walks a document, then raises them together."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def extend(self, errors: Iterable[FieldError]) -> None:
        self.errors.extend(errors)

    def raise_if_any(self, *, source: str = "") -> None:
        if self.errors:
            raise InvalidSpec(self.errors, source=source)
