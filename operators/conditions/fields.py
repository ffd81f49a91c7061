"""Reading one table of a rules file: every error names the file, the item (rule or signal) and the field.

Shared by the rules loader and every signal kind, so all of them report mistakes the same way.

A `Where` either raises at the first mistake or, given an `errors` list, records each mistake its
helpers find and returns a harmless placeholder so the item's other fields are still read: that is
how `nextclick rules check` lists every error of a file, not only the first. A loader's own
`raise where.fail(...)` still ends that item (the loader catches it and records it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from nextclick.operators.errors import NextclickError
from nextclick.operators.infra.clock import UnitlessDuration, parse_duration_ms

# What a duration that failed to read stands for while the rest of its item is checked.
_PLACEHOLDER_MS = 60_000
# The longest duration a rules file may give (a window, a cooldown, an expiry, a suppression): a
# century, which stands for "for ever". Longer ones cannot be added to an event time (past year 9999,
# or 64 bits), which stopped the flow at its first decision rather than at load.
MAX_DURATION_MS = 36_500 * 86_400_000
MAX_DURATION = "36500d"
# The largest integer a rules file may give (a priority, a limit, a count): a decision carries some of
# them as JSON numbers, which consumers read exactly only up to 2**53 - 1.
MAX_INTEGER = 2**53 - 1
# One part of a compound duration ("1d12h"): the syntax scenario offsets use too.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def duration_ms(raw: Any) -> int:
    """A rules-file duration: "30m", "1d12h" (parts add up, as in scenario offsets), or plain
    milliseconds; what `parse_duration_ms` read before ("1.5h", "1 d") still reads the same."""
    if isinstance(raw, str):
        if raw.strip() == "0":  # as the configuration reads it: nothing, with no unit to give
            return 0
        parts = _PART.findall(raw)
        if len(parts) > 1 and "".join(n + u for n, u in parts) == raw:
            return sum(parse_duration_ms(n + u) for n, u in parts)
    return parse_duration_ms(raw)
T = TypeVar("T")


class RulesError(NextclickError, ValueError):
    """The rules file is invalid; the message names the file, the rule or signal, and the field."""


class Where:
    """The item being read (`rule 'x'`, `signal 'y'`, `[caps]`) and its file, for error messages."""

    def __init__(self, path: str, item: str, errors: list[RulesError] | None = None) -> None:
        self.path, self.item, self.errors = path, item, errors

    def fail(self, field: str, message: str) -> RulesError:
        return RulesError(f"{self.path}: {self.item}: field '{field}': {message}")

    def report(self, field: str, message: str) -> None:
        """A mistake in one field: raised, or recorded when this Where collects them."""
        error = self.fail(field, message)
        if self.errors is None:
            raise error
        self.errors.append(error)

    def attempt(self, read: Callable[..., T], *args: Any) -> T | None:
        """`read(*args)`; a RulesError it raises is recorded (None returned) when this Where collects."""
        try:
            return read(*args)
        except RulesError as error:
            if self.errors is None:
                raise
            self.errors.append(error)
            return None

    def check_keys(self, body: dict[str, Any], allowed: set[str]) -> None:
        """Unknown fields are errors: a field that is accepted and ignored misleads whoever wrote it."""
        for key in body:
            if key not in allowed:
                self.report(key, f"unknown field; allowed: {sorted(allowed)}")

    def duration(self, body: dict[str, Any], key: str, default: Any = None, name: str | None = None, *,
                 zero: bool = False) -> int:
        """A duration such as "30m"; `zero`: "0s" is allowed (it means "none")."""
        raw = body.get(key, default)
        name = name or key
        if raw is None:
            self.report(name, "is required (a duration such as 30m, 1h, 7d)")
            return _PLACEHOLDER_MS
        if key in body and isinstance(raw, int | float) and not isinstance(raw, bool) and raw != 0:
            self.report(name, str(UnitlessDuration(raw)))
            return _PLACEHOLDER_MS
        try:
            ms = duration_ms(raw)
        except ValueError as exc:
            self.report(name, str(exc))
            return _PLACEHOLDER_MS
        if ms < 0 or (ms == 0 and not zero):
            self.report(name, "must be positive" if not zero else "must not be negative")
            return _PLACEHOLDER_MS
        if ms > MAX_DURATION_MS:
            self.report(name, f"must be at most {MAX_DURATION} (100 years, for ever); got {raw!r}")
            return _PLACEHOLDER_MS
        return ms

    def names(self, body: dict[str, Any], key: str, known: set[str] | frozenset[str],
              required: bool = True, ignore: set[str] | None = None) -> frozenset[str]:
        """The names listed under `key`, of `known`; `ignore`: names whose mistake is reported already."""
        raw = body.get(key, [])
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            self.report(key, "must be a list of names")
            return frozenset()
        if required and not raw:
            self.report(key, "must name at least one")
        unknown = sorted(set(raw) - set(known) - (ignore or set()))
        if unknown:
            self.report(key, f"unknown name(s) {unknown}; known: {sorted(known)}")
        return frozenset(raw) & frozenset(known)

    def string(self, body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
        raw = body.get(key)
        if raw is None:
            if required:
                self.report(key, "is required")
            return None
        if not isinstance(raw, str) or not raw:
            self.report(key, "must be a non-empty string")
            return None
        return raw

    def integer(self, body: dict[str, Any], key: str, default: int, *, minimum: int = 0,
                maximum: int = MAX_INTEGER) -> int:
        raw = body.get(key, default)
        if not isinstance(raw, int) or isinstance(raw, bool) or not minimum <= raw <= maximum:
            self.report(key, f"must be an integer from {minimum} to {maximum}")
            return default
        return raw


def table(path: str, item: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RulesError(f"{path}: {item} must be a table; got {raw!r}")
    return raw
