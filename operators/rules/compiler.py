"""The attributes a rule's conditions may name, each with its getter: the durable facts, every signal's
attributes, `trigger` and `customer_channel` (conditions are parsed and compiled in
operators/conditions/compiler.py; `trigger.<attribute>` gets its getter there, per condition)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nextclick.operators.channels import EVENT_CHANNELS
from nextclick.operators.conditions.compiler import CUSTOMER_CHANNEL, Getter
from nextclick.operators.profile.facts import ATTRIBUTES as DURABLE_ATTRIBUTES
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Trigger
from nextclick.operators.signals.base import Signal


def _durable(get: Callable[[Any, int], Any]) -> Getter:
    def durable(profile: Profile, trigger: Trigger) -> Any:
        return get(profile.facts, trigger.ts)
    return durable


def _signal(signal: Signal, attribute: str) -> Getter:
    name = signal.name
    # A kind whose attribute needs more of the trigger than its time (a group's `same_as_trigger`)
    # offers a reader of (state, trigger) for it.
    reader = getattr(signal, "reader", None)
    read = reader(attribute) if reader is not None else None
    if read is not None:
        return lambda profile, trigger: read(profile.signals.get(name), trigger)
    return lambda profile, trigger: signal.value(attribute, profile.signals.get(name), trigger.ts)


def attribute_getters(signals: Iterable[Signal], channels: Mapping[str, str] = EVENT_CHANNELS) -> dict[str, Getter]:
    """Every attribute a condition may name, except `trigger.<attribute>` (added per condition).
    `channels`: each event type's touch channel (the tracking plan's), for `customer_channel`."""
    getters: dict[str, Getter] = {name: _durable(get) for name, get in DURABLE_ATTRIBUTES.items()}
    for signal in signals:
        for attribute in signal.attributes:
            getters[attribute] = _signal(signal, attribute)
    getters["trigger"] = lambda _profile, trigger: trigger.name
    getters[CUSTOMER_CHANNEL] = lambda _profile, trigger: channels.get(trigger.name)
    return getters
