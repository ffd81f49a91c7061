"""The identity rules and the guards that apply them: which links may never happen, and why.

The rules (priorities among identifier types, limits per profile, blocked values) are loaded once at
start from a TOML file (`[identity] file`; default: the shipped `default_identity.toml`), validated
with one-line errors that name the file and the key.

Every guard is registered here, once, with its refusal reason (also its label on
nextclick_identity_links_refused_total and in the refusal log) and where it runs:

- `raw` guards run in the parser on raw identifiers, before hashing (a blocked value must be
  recognisable): `guard_links`;
- `link` guards run in the identity stage on the profiles a link would join
  (`IdentityGraph.decide`, operators/identity/graph.py), in registration order; the first that
  refuses names the identifier type it is about.

A new guard is one function here with `@link_guard(...)` or `@raw_guard(...)`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple

from nextclick.operators.channels import ID_TYPES
from nextclick.operators.errors import NextclickError
from nextclick.operators.identity.pseudonyms import pseudonymize_cached
from nextclick.operators.infra.config import read_toml

DEFAULT_IDENTITY_FILE = str(files("nextclick.operators.identity").joinpath("default_identity.toml"))
_BLOCKED_CACHE = 65536


class IdentityRulesError(NextclickError, ValueError):
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
        text = placeholder_form(raw)
        if not text:  # nothing but invisible characters (a zero-width space): it names nobody
            return True
        values = self.blocked_values.get(id_type)
        if values and text in values:
            return True
        for pattern in self.blocked_patterns.get(id_type, ()):
            if pattern.search(text):
                return True
        return False


# Characters that show nothing: every format character (zero-width spaces and joiners, direction marks,
# tags, the byte-order mark), combining marks and control characters by their Unicode category, and the
# blank letters and fillers some fonts draw as nothing.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Cc"})
_BLANKS = frozenset("\u115f\u1160\u180e\u2800\u3164\uffa0")
# Quotes a value may come wrapped in, once or twice: straight, typographic, guillemets.
_QUOTES = frozenset("\"'`\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a")


def placeholder_form(raw: str) -> str:
    """What blocked values and patterns are matched against: compatibility forms folded (full-width
    `ｎｕｌｌ` is `null`), characters that show nothing dropped (zero-width spaces, marks, fillers),
    surrounding spaces and quotes taken off (`"null"`, a value serialized twice; `“null”`; twice at
    most), case folded. Only for the check: an identifier that is not blocked is used exactly as sent."""
    if raw.isascii():  # control characters show nothing either: a C string's NUL keyed everyone's events
        text = (raw if raw.isprintable() else "".join(ch for ch in raw if ch.isprintable())).strip()
    else:
        text = "".join(ch for ch in unicodedata.normalize("NFKC", raw)
                       if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and ch not in _BLANKS).strip()
    for _ in range(2):
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
    return text.casefold()


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
    common_values = {placeholder_form(v) for v in _strings(source, "blocked.values", blocked.get("values", []))}
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
        own_values = {placeholder_form(v) for v in _strings(source, f"blocked.{id_type}.values",
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


# -- the guards -----------------------------------------------------------------------------------

class LinkProposal(NamedTuple):
    """What a link would make: `ids`, every identifier the joined profile would hold by type; the
    types keying the profiles it joins (`keyed_by`, one per profile, an unlinked identifier keying
    its own); the rules in force."""

    ids: dict[str, list[str]]
    keyed_by: tuple[str, ...]
    rules: IdentityRules

    @property
    def top(self) -> str:
        """The type the joined profile would be keyed by: its highest-priority identifier's."""
        return min(self.ids, key=self.rules.rank)


@dataclass(frozen=True)
class Guard:
    """One guard: `reason` is its refusal reason and metric label; `where` is "raw" or "link"."""

    reason: str
    where: str
    explains: str
    check: Callable[..., Any]


GUARDS: dict[str, Guard] = {}


def _register(reason: str, where: str, explains: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def add(check: Callable[..., Any]) -> Callable[..., Any]:
        if reason in GUARDS:
            raise ValueError(f"identity guard {reason!r} is registered twice")
        GUARDS[reason] = Guard(reason, where, explains, check)
        return check
    return add


def raw_guard(reason: str, explains: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `check(rules, id_type, raw) -> bool` (True: refuse), run by the parser."""
    return _register(reason, "raw", explains)


def link_guard(reason: str, explains: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `check(proposal) -> str | None` (the identifier type refused, or None), run by the
    identity stage."""
    return _register(reason, "link", explains)


@raw_guard("blocked_value", "a raw identifier the rules block (a placeholder, a test address) links nothing")
def _blocked_value(rules: IdentityRules, id_type: str, raw: str) -> bool:
    return rules.blocked(id_type, raw)


@link_guard("two_customer_ids", "two different customer ids never merge")
def _two_customer_ids(proposal: LinkProposal) -> str | None:
    return "customer" if len(proposal.ids.get("customer", ())) > 1 else None


@link_guard("same_key_type", "two profiles keyed by the same type never merge (one would move into the "
                             "stage it is already in)")
def _same_key_type(proposal: LinkProposal) -> str | None:
    top = proposal.top
    return top if proposal.keyed_by.count(top) > 1 else None


@link_guard("limit", "no identifier type may exceed its limit per profile ([limits])")
def _limit(proposal: LinkProposal) -> str | None:
    rules = proposal.rules
    for id_type in sorted(proposal.ids, key=rules.rank):
        if len(proposal.ids[id_type]) > rules.limit(id_type):
            return id_type
    return None


RAW_GUARDS: tuple[Guard, ...] = tuple(g for g in GUARDS.values() if g.where == "raw")
LINK_GUARDS: tuple[Guard, ...] = tuple(g for g in GUARDS.values() if g.where == "link")
REFUSAL_REASONS: tuple[str, ...] = tuple(GUARDS)


def refuse_raw(rules: IdentityRules, id_type: str, raw: str) -> str | None:
    """The reason a raw identifier may not link, or None."""
    for guard in RAW_GUARDS:
        if guard.check(rules, id_type, raw):
            return guard.reason
    return None


def refuse_link(proposal: LinkProposal) -> tuple[str, str] | None:
    """(reason, identifier type) of the first link guard that refuses, or None: the link holds."""
    for guard in LINK_GUARDS:
        id_type = guard.check(proposal)
        if id_type is not None:
            return guard.reason, id_type
    return None


def guard_links(primary: tuple[str, str], others: Sequence[tuple[str, str]], rules: IdentityRules,
                secret: bytes) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(links, refused): the other identifiers as (type, pseudonymous key), without those a raw guard
    refuses (their types are returned instead). A refused `primary` links nothing: the event still
    counts for the profile it names, but one placeholder value must not join others to it."""
    if not others:
        return (), ()
    if refuse_raw(rules, *primary) is not None:
        return (), (primary[0],)
    links: list[tuple[str, str]] = []
    refused: list[str] = []
    for id_type, raw in others:
        if refuse_raw(rules, id_type, raw) is not None:
            refused.append(id_type)
        else:
            links.append((id_type, pseudonymize_cached(id_type, raw, secret)))
    return tuple(links), tuple(refused)
