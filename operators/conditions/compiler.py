"""Conditions compiled once, at load, into closures that read only the attributes they name.

An attribute is computed on first use while one trigger is judged and remembered for the rest of
that trigger's candidates (`View`), so a rule that names `segment` costs the RFM scores once, and
a rule that names nothing durable costs nothing durable.

The same comparison semantics (`_check`) serve a rule's `when` over a View and a signal's `where`
over an event's attributes: a missing value (None) fails every operator but `==` and `!=`, which
compare with null; mismatched types fail.
"""

from __future__ import annotations

import datetime
import math
import operator
import re
import tomllib
from collections.abc import Callable
from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.conditions.model import Condition, Group, When
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Trigger

Getter = Callable[[Profile, Trigger], Any]

OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}
TRIGGER_PREFIX = "trigger."
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|!=|>|<|not in|in)\s*(.+?)\s*$")
# The channel of the event that triggered the rule (web, email, mobile, store, call_center); None
# when the trigger is an absence (it fires on the clock, not on a touch). See docs/rules.md.
CUSTOMER_CHANNEL = "customer_channel"


def parse_condition(where: Where, text: Any, field: str = "when") -> Condition:
    """`<attribute> <op> <TOML literal>`, as written in a rule's `when` or a signal's `where`."""
    if not isinstance(text, str):
        raise where.fail(field, f"each condition must be a string like \"orders >= 1\"; got {text!r}")
    m = _CONDITION.match(text)
    if not m:
        raise where.fail(field, f"cannot read condition {text!r}; write '<attribute> <op> <value>' "
                                f"with op one of {', '.join(OPS)}")
    attribute, op, literal = m.groups()
    try:
        value = tomllib.loads(f"v = {literal}")["v"]
    except tomllib.TOMLDecodeError:
        raise where.fail(field, f"in {text!r}: {literal!r} is not a value (quote strings: \"loyal\")") from None
    if op in ("in", "not in") and not isinstance(value, list):
        raise where.fail(field, f"in {text!r}: '{op}' needs a list, e.g. [\"a\", \"b\"]")
    for item in value if op in ("in", "not in") else [value]:
        why = _not_comparable(item)
        if why:
            raise where.fail(field, f"in {text!r}: {why}")
    return Condition(attribute, op, value, text)


def _not_comparable(value: Any) -> str | None:
    """Why a literal can never equal or order against an attribute's value, or None. Attributes hold
    strings, numbers and booleans; times are epoch milliseconds."""
    if isinstance(value, datetime.datetime):
        hint = (f" (write {int(value.timestamp() * 1000)} for {value.isoformat()})" if value.tzinfo is not None
                else " (with its offset, e.g. Z for UTC, the number is the instant's)")
        return ("a date-time is not a value an attribute holds: times are epoch milliseconds" + hint +
                ", or compare an attribute such as days_since_last_purchase")
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date or a time of day is not a value an attribute holds: times are epoch milliseconds"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a number a condition can compare: write a finite number"
    if isinstance(value, (dict, list)):
        return f"a {'table' if isinstance(value, dict) else 'list'} is not a value an attribute holds " \
               "(only 'in' and 'not in' take a list, of strings, numbers or booleans)"
    return None


_GROUPS = ("any", "all", "not")


MAX_GROUP_DEPTH = 16  # groups within groups: deeper is a generated file gone wrong, not a campaign


def parse_when_item(where: Where, raw: Any, field: str = "when", depth: int = 1) -> Condition | Group:
    """A condition string, or a group table: `{ any = [...] }` (at least one holds), `{ all = [...] }`
    (every one holds) or `{ not = <condition, group or list> }` (a list under `not`: not all of it)."""
    if not isinstance(raw, dict):
        return parse_condition(where, raw, field)
    if depth > MAX_GROUP_DEPTH:
        raise where.fail(field, f"groups are nested more than {MAX_GROUP_DEPTH} deep")
    if len(raw) != 1 or next(iter(raw)) not in _GROUPS:
        raise where.fail(field, f"a group is a table with one key, any, all or not; got keys {sorted(raw)}")
    kind, body = next(iter(raw.items()))
    if kind == "not" and not isinstance(body, list):
        body = [body]
    if not isinstance(body, list) or not body:
        raise where.fail(field, f"'{kind}' needs a non-empty list of conditions or groups")
    items = tuple(parse_when_item(where, item, field, depth + 1) for item in body)
    return Group(kind, items, f"{kind}({', '.join(i.text for i in items)})")


def parse_when(where: Where, raw: Any, field: str = "when") -> When:
    """A rule's `when`: a list of conditions and groups, all of which must hold."""
    if not isinstance(raw, list):
        raise where.fail(field, "must be a list of conditions")
    return tuple(parse_when_item(where, item, field) for item in raw)


class View:
    """What conditions read while one trigger is judged: each attribute computed once, on first use."""

    __slots__ = ("getters", "memo", "profile", "trigger")

    def __init__(self, profile: Profile, trigger: Trigger, getters: dict[str, Getter]) -> None:
        self.profile, self.trigger, self.getters = profile, trigger, getters
        self.memo: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        memo = self.memo
        if name in memo:
            return memo[name]
        value = memo[name] = self.getters[name](self.profile, self.trigger)
        return value


def _trigger_attribute(key: str) -> Getter:
    return lambda _profile, trigger: trigger.attrs.get(key)


def _check(op: str, value: Any, read: Callable[[Any, str], Any], name: str) -> Callable[[Any], bool]:
    """`read(subject, name) <op> value`, with the documented semantics of missing values and types."""
    compare = OPS[op]
    if op in ("==", "!="):
        def equality(subject: Any) -> bool:
            try:
                return bool(compare(read(subject, name), value))
            except TypeError:
                return False
        return equality

    def ordered(subject: Any) -> bool:
        actual = read(subject, name)
        if actual is None:
            return False
        try:
            return bool(compare(actual, value))
        except TypeError:
            return False
    return ordered


def add_getter(name: str, getters: dict[str, Getter]) -> None:
    """`trigger.<attribute>` gets its getter when a condition or a decision parameter names it."""
    if name.startswith(TRIGGER_PREFIX) and name not in getters:
        getters[name] = _trigger_attribute(name[len(TRIGGER_PREFIX):])


def compile_condition(condition: Condition, getters: dict[str, Getter]) -> Callable[[View], bool]:
    name = condition.attribute
    add_getter(name, getters)
    return _check(condition.op, condition.value, View.get, name)


def compile_item(item: Condition | Group, getters: dict[str, Getter]) -> Callable[[View], bool]:
    """One condition or group: a group's items are tried in the order written, and stop as soon as
    the result is known (the first true under `any`, the first false under `all` and `not`)."""
    if isinstance(item, Condition):
        return compile_condition(item, getters)
    checks = tuple(compile_item(i, getters) for i in item.items)
    if item.kind == "any":
        return lambda view: any(check(view) for check in checks)
    every = lambda view: all(check(view) for check in checks)  # noqa: E731
    if item.kind == "all":
        return every
    return lambda view: not every(view)


def compile_filter(conditions: tuple[Condition, ...]) -> Callable[[dict[str, Any]], bool]:
    """A signal's `where`: all conditions hold over an event's attributes (same semantics as `when`)."""
    checks = tuple(_check(c.op, c.value, dict.get, c.attribute) for c in conditions)
    if len(checks) == 1:
        return checks[0]

    def every(attrs: dict[str, Any]) -> bool:
        for check in checks:
            if not check(attrs):
                return False
        return True
    return every


def compile_conditions(conditions: When, getters: dict[str, Getter]) -> Callable[[View], bool]:
    """All conditions must hold; they are tried in the order written and stop at the first false one."""
    checks = tuple(compile_item(c, getters) for c in conditions)
    if not checks:
        return lambda _view: True
    if len(checks) == 1:
        return checks[0]

    def every(view: View) -> bool:
        for check in checks:
            if not check(view):
                return False
        return True
    return every
