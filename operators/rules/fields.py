"""Reading one table of a rules file: every error names the file, the item (rule or signal) and the field.

Shared by the rules loader and every signal kind, so all of them report mistakes the same way.
"""

from __future__ import annotations

from typing import Any

from operators.infra.clock import parse_duration_ms


class RulesError(ValueError):
    """The rules file is invalid; the message names the file, the rule or signal, and the field."""


class Where:
    """The item being read (`rule 'x'`, `signal 'y'`, `[caps]`) and its file, for error messages."""

    def __init__(self, path: str, item: str) -> None:
        self.path, self.item = path, item

    def fail(self, field: str, message: str) -> RulesError:
        return RulesError(f"{self.path}: {self.item}: field '{field}': {message}")

    def check_keys(self, body: dict[str, Any], allowed: set[str]) -> None:
        """Unknown fields are errors: a field that is accepted and ignored misleads whoever wrote it."""
        for key in body:
            if key not in allowed:
                raise self.fail(key, f"unknown field; allowed: {sorted(allowed)}")

    def duration(self, body: dict[str, Any], key: str, default: Any = None, name: str | None = None) -> int:
        raw = body.get(key, default)
        name = name or key
        if raw is None:
            raise self.fail(name, "is required (a duration such as 30m, 1h, 7d)")
        try:
            ms = parse_duration_ms(raw)
        except ValueError as exc:
            raise self.fail(name, str(exc)) from None
        if ms <= 0:
            raise self.fail(name, "must be positive")
        return ms

    def names(self, body: dict[str, Any], key: str, known: set[str] | frozenset[str],
              required: bool = True) -> frozenset[str]:
        raw = body.get(key, [])
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.fail(key, "must be a list of names")
        if required and not raw:
            raise self.fail(key, "must name at least one")
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise self.fail(key, f"unknown name(s) {unknown}; known: {sorted(known)}")
        return frozenset(raw)

    def string(self, body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
        raw = body.get(key)
        if raw is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if not isinstance(raw, str) or not raw:
            raise self.fail(key, "must be a non-empty string")
        return raw

    def integer(self, body: dict[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
        raw = body.get(key, default)
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}")
        return raw


def table(path: str, item: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RulesError(f"{path}: {item} must be a table; got {raw!r}")
    return raw
