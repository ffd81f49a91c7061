"""The identity rules: priorities among identifier types, limits per profile, blocked values.

Loaded once at start from a TOML file (`[identity] file`; default: the shipped
`default_identity.toml`), validated with one-line errors that name the file and the key. The parser
asks `blocked` about raw identifiers (before hashing: a blocked value must be recognisable); the
identity stage asks `rank` and `limit` when it decides a link (operators/identity/graph.py).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from operators.identity.pseudonyms import ID_TYPES
from operators.infra.config import read_toml

DEFAULT_IDENTITY_FILE = str(files("operators.identity").joinpath("default_identity.toml"))
_BLOCKED_CACHE = 65536


class IdentityRulesError(ValueError):
    """The identity rules file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class IdentityRules:
    """What links are allowed. `priority` lists every identifier type, highest first."""

    priority: tuple[str, ...]
    limits: dict[str, int]
    # Per id type: blocked raw values (stripped, casefolded) and patterns (searched, case-insensitive).
    blocked_values: dict[str, frozenset[str]] = field(default_factory=dict)
    blocked_patterns: dict[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    source: str = ""
    # (type, raw) -> blocked, for the identifiers seen last: a signed-in visitor's every web event names
    # the same two, and the patterns are regular expressions. Memory only, like the parser's key cache.
    _seen: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def _rank(self) -> dict[str, int]:
        return {t: n for n, t in enumerate(self.priority)}

    def rank(self, id_type: str) -> int:
        """0 for the highest-priority type; a merged profile is keyed by its lowest-rank identifier."""
        return self._rank[id_type]

    @property
    def anchors(self) -> tuple[str, ...]:
        """The types that can key a profile of linked identifiers, in the order profiles move between
        them (lowest priority first). The lowest-priority type never keys one: an event names at most
        one identifier of each type besides customer ids, so a linked profile always holds a higher type."""
        return tuple(reversed(self.priority[:-1]))

    def limit(self, id_type: str) -> int:
        return self.limits[id_type]

    def blocked(self, id_type: str, raw: str) -> bool:
        """A raw identifier that must never link (a placeholder, a test address...)."""
        seen = self._seen
        answer = seen.get((id_type, raw))
        if answer is None:
            if len(seen) >= _BLOCKED_CACHE:
                seen.clear()
            answer = seen[(id_type, raw)] = self._check(id_type, raw)
        return answer

    def _check(self, id_type: str, raw: str) -> bool:
        values = self.blocked_values.get(id_type)
        if values and raw.strip().casefold() in values:
            return True
        for pattern in self.blocked_patterns.get(id_type, ()):
            if pattern.search(raw):
                return True
        return False


def _fail(path: str, key: str, message: str) -> IdentityRulesError:
    return IdentityRulesError(f"{path}: {key}: {message}")


def _strings(path: str, key: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _fail(path, key, "must be a list of strings")
    return raw


def _patterns(path: str, key: str, raw: Any) -> tuple[re.Pattern[str], ...]:
    out = []
    for text in _strings(path, key, raw):
        try:
            out.append(re.compile(text, re.IGNORECASE))
        except re.error as exc:
            raise _fail(path, key, f"{text!r} is not a regular expression ({exc})") from None
    return tuple(out)


def load_identity_rules(path: str | Path | None = None) -> IdentityRules:
    """Read and check an identity rules file; keys it leaves out take the shipped defaults."""
    source = str(path or DEFAULT_IDENTITY_FILE)
    doc = read_toml(source, IdentityRulesError)
    defaults = doc if source == DEFAULT_IDENTITY_FILE else read_toml(DEFAULT_IDENTITY_FILE, IdentityRulesError)
    unknown = set(doc) - {"priority", "limits", "blocked"}
    if unknown:
        raise _fail(source, sorted(unknown)[0], "unknown key; allowed: priority, limits, blocked")
    priority = _strings(source, "priority", doc.get("priority", defaults["priority"]))
    if sorted(priority) != sorted(ID_TYPES) or len(set(priority)) != len(priority):
        raise _fail(source, "priority", f"must list every identifier type once: {sorted(ID_TYPES)}; got {priority}")
    raw_limits = doc.get("limits", {})
    if not isinstance(raw_limits, dict):
        raise _fail(source, "limits", "must be a table")
    limits: dict[str, int] = {}
    for id_type in ID_TYPES:
        value = raw_limits.get(id_type, defaults["limits"][id_type])
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(source, f"limits.{id_type}", "must be an integer >= 1")
        limits[id_type] = value
    for key in set(raw_limits) - ID_TYPES:
        raise _fail(source, f"limits.{key}", f"unknown identifier type; known: {sorted(ID_TYPES)}")
    if limits["customer"] != 1:
        raise _fail(source, "limits.customer", "must be 1: two different customer ids never merge")
    blocked = doc.get("blocked", defaults["blocked"])
    if not isinstance(blocked, dict):
        raise _fail(source, "blocked", "must be a table")
    common_values = {v.strip().casefold() for v in _strings(source, "blocked.values", blocked.get("values", []))}
    common_patterns = _patterns(source, "blocked.patterns", blocked.get("patterns", []))
    values: dict[str, frozenset[str]] = {}
    patterns: dict[str, tuple[re.Pattern[str], ...]] = {}
    for key, body in blocked.items():
        if key in ("values", "patterns"):
            continue
        if key not in ID_TYPES:
            raise _fail(source, f"blocked.{key}", f"unknown key; allowed: values, patterns, {sorted(ID_TYPES)}")
        if not isinstance(body, dict) or set(body) - {"values", "patterns"}:
            raise _fail(source, f"blocked.{key}", "must be a table of values and patterns")
    for id_type in ID_TYPES:
        body = blocked.get(id_type, {})
        own_values = {v.strip().casefold() for v in _strings(source, f"blocked.{id_type}.values",
                                                             body.get("values", []))}
        values[id_type] = frozenset(common_values | own_values)
        patterns[id_type] = common_patterns + _patterns(source, f"blocked.{id_type}.patterns",
                                                        body.get("patterns", []))
    return IdentityRules(priority=tuple(priority), limits=limits, blocked_values=values,
                         blocked_patterns=patterns, source=source)


@functools.lru_cache(maxsize=1)
def default_identity_rules() -> IdentityRules:
    """The shipped rules, loaded once (what the parser uses when it is not given any)."""
    return load_identity_rules(DEFAULT_IDENTITY_FILE)
