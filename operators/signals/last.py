"""`last`: the value of one attribute (or the event type) of the latest event, while it is in the window.

State: [ts, value] of the event with the newest event time; of events at the same time, the value
with the greater repr (as `merge` chooses), so the order they arrived in does not decide. Options:
`where`, `reset_on` (operators/signals/options.py).
"""

from __future__ import annotations

from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals.base import Expiring, Signal
from nextclick.operators.signals.options import OPTION_FIELDS, check_attribute, read_reset, read_where, with_options
from nextclick.operators.signals.window import WINDOW_FIELDS, Window


class Last(Expiring):
    kind = "last"

    def __init__(self, name: str, events: frozenset[str], window: Window, field: str | None) -> None:
        self.name, self.touched_by, self.window, self.field = name, events, window, field
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        value = event.attrs.get(self.field) if self.field else event.type
        state = profile.signals.get(self.name)
        ts = event.ts
        if state is None or ts > state[0] or (ts == state[0] and repr(value) >= repr(state[1])):
            profile.signals[self.name] = [ts, value]
            profile.note_expiry(ts + self.window.window_ms)

    def prune(self, state: Any, ref_ms: int) -> Any:
        return None if state[0] < self.window.floor(ref_ms) else state

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        at = state[0] + self.window.window_ms
        return at, at

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        if state and self.window.floor(ref_ms) <= state[0] <= ref_ms:
            return state[1]
        return None

    def clear(self, state: Any, until_ms: int) -> Any:
        return None if state[0] <= until_ms else state

    def merge(self, a: Any, b: Any) -> Any:
        """The latest of the two (a tie in time goes to the greater value's text, so either order agrees)."""
        later = b if (b[0], repr(b[1])) > (a[0], repr(a[1])) else a
        return [later[0], later[1]]


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Signal:
    where.check_keys(body, WINDOW_FIELDS | {"field"} | OPTION_FIELDS)
    events = where.names(body, "events", event_types)
    field = where.string(body, "field")
    if field is not None:
        check_attribute(where, "field", field, events)
    window = Window.load(body, where)
    conditions, reset_on = read_where(body, where, events), read_reset(body, where, event_types, events)
    return with_options(Last(name, events, window, field), conditions, reset_on, window.window_ms)
