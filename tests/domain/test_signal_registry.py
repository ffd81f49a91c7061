"""Adding a signal kind is one module and one registry entry: a small `peak` kind, defined here.

`peak` is the largest value of one attribute in an event-time window. The module below is all it
takes: a class with the signal protocol's methods and a loader, registered under its kind name.
Rules then load it from TOML, read its attribute, and the engine applies, prunes and expires it
like any shipped kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nextclick.operators.conditions.fields import RulesError, Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.signals import registry
from nextclick.operators.signals.base import Expiring
from nextclick.operators.signals.window import WINDOW_FIELDS, Window
from tests.helpers import DAY, HOUR, MIN, T0, Customer, fired, transient_parts, write_rules


class Peak(Expiring):
    """State: [[ts, value], ...] of the events in the window."""

    kind = "peak"

    def __init__(self, name: str, events: frozenset[str], window: Window, field: str) -> None:
        self.name, self.touched_by, self.window, self.field = name, events, window, field
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        value = event.attrs.get(self.field)
        if isinstance(value, (int, float)):
            profile.signals.setdefault(self.name, []).append([event.ts, value])
            profile.note_expiry(event.ts + self.window.window_ms)

    def prune(self, state: Any, ref_ms: int) -> Any:
        floor = self.window.floor(ref_ms)
        return [p for p in state if p[0] >= floor] or None

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        times = [p[0] + self.window.window_ms for p in state]
        return min(times), max(times)

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        floor = self.window.floor(ref_ms)
        return max((v for ts, v in state or () if floor <= ts <= ref_ms), default=None)


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Peak:
    where.check_keys(body, WINDOW_FIELDS | {"field"})
    field = where.string(body, "field", required=True)
    assert field is not None
    return Peak(name, where.names(body, "events", event_types), Window.load(body, where), field)


@pytest.fixture()
def peak_kind() -> Iterator[None]:
    registry.register("peak", load)
    try:
        yield
    finally:
        del registry.KINDS["peak"]


RULES = '''
[signals.biggest_cart_1h]
kind = "peak"
events = ["add_to_cart"]
field = "amount"
window = "1h"

[[rule]]
id = "big_spender_ad"
on = ["page_view"]
when = ["biggest_cart_1h >= 100"]
action = "show_ad"
channel = "ads"
cooldown = "1m"

[consent]
ads = "opt_out"
'''


def test_a_registered_kind_loads_decides_and_expires(tmp_path: Path, peak_kind: None) -> None:
    c = Customer(load_rules(write_rules(tmp_path, RULES)))
    c.send("add_to_cart", T0, amount=30.0)
    assert fired(c.send("page_view", T0 + MIN)) == []
    c.send("add_to_cart", T0 + 2 * MIN, amount=120.0)
    out = c.send("page_view", T0 + 3 * MIN)
    assert fired(out) == [("big_spender_ad", "ads", "page_view")]
    assert out.decisions[0].signals == {"biggest_cart_1h": 120.0}
    assert fired(c.send("page_view", T0 + 2 * MIN + HOUR)) == []  # the 120 left the window
    c.tick(T0 + 2 * DAY)
    assert not any(transient_parts(c.profile).values())  # nothing of it stays after its lifetime


def test_its_loader_reports_mistakes_like_the_shipped_kinds(tmp_path: Path, peak_kind: None) -> None:
    with pytest.raises(RulesError, match=r"signal 'biggest_cart_1h': field 'field': is required"):
        load_rules(write_rules(tmp_path, RULES.replace('field = "amount"\n', "")))


def test_an_unregistered_kind_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"field 'kind': must be one of count, sum, distinct, last, absence, session"):
        load_rules(write_rules(tmp_path, RULES))
