"""Conditions compiled once, at load, into closures that read only the attributes they name.

An attribute is computed on first use while one trigger is judged and remembered for the rest of
that trigger's candidates (`View`), so a rule that names `segment` costs the RFM scores once, and
a rule that names nothing durable costs nothing durable.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

from operators.profile.facts import ATTRIBUTES as DURABLE_ATTRIBUTES
from operators.profile.model import Profile
from operators.records import Trigger
from operators.rules.model import Condition
from operators.signals.base import Signal

Getter = Callable[[Profile, Trigger], Any]

OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}
TRIGGER_PREFIX = "trigger."
# Named for rules but never set: kept so files that name it still load (docs/rules.md).
RESERVED = ("customer_channel",)


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


def _durable(get: Callable[[Any, int], Any]) -> Getter:
    def durable(profile: Profile, trigger: Trigger) -> Any:
        return get(profile.facts, trigger.ts)
    return durable


def _signal(signal: Signal, attribute: str) -> Getter:
    name = signal.name
    return lambda profile, trigger: signal.value(attribute, profile.signals.get(name), trigger.ts)


def _trigger_attribute(key: str) -> Getter:
    return lambda _profile, trigger: trigger.attrs.get(key)


def attribute_getters(signals: Iterable[Signal]) -> dict[str, Getter]:
    """Every attribute a condition may name, except `trigger.<attribute>` (added per condition)."""
    getters: dict[str, Getter] = {name: _durable(get) for name, get in DURABLE_ATTRIBUTES.items()}
    for signal in signals:
        for attribute in signal.attributes:
            getters[attribute] = _signal(signal, attribute)
    getters["trigger"] = lambda _profile, trigger: trigger.name
    for name in RESERVED:
        getters[name] = lambda _profile, _trigger: None
    return getters


def compile_condition(condition: Condition, getters: dict[str, Getter]) -> Callable[[View], bool]:
    name, value, compare = condition.attribute, condition.value, OPS[condition.op]
    if name.startswith(TRIGGER_PREFIX) and name not in getters:
        getters[name] = _trigger_attribute(name[len(TRIGGER_PREFIX):])
    if condition.op in ("==", "!="):
        def equality(view: View) -> bool:
            try:
                return bool(compare(view.get(name), value))
            except TypeError:
                return False
        return equality

    def ordered(view: View) -> bool:
        actual = view.get(name)
        if actual is None:
            return False
        try:
            return bool(compare(actual, value))
        except TypeError:
            return False
    return ordered


def compile_conditions(conditions: tuple[Condition, ...], getters: dict[str, Getter]) -> Callable[[View], bool]:
    """All conditions must hold; they are tried in the order written and stop at the first false one."""
    checks = tuple(compile_condition(c, getters) for c in conditions)
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
