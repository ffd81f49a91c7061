"""`distinct`: how many different values of one attribute in an event-time window.

State: [[value, newest ts], ...], at most `max_distinct` values (the oldest seen goes first).
"""

from __future__ import annotations

from typing import Any

from operators.profile.model import Profile
from operators.records import Event
from operators.rules.fields import Where
from operators.signals.base import Expiring
from operators.signals.window import WINDOW_FIELDS, Window

MAX_DISTINCT = 100


class Distinct(Expiring):
    kind = "distinct"

    def __init__(self, name: str, events: frozenset[str], window: Window, field: str | None,
                 max_distinct: int = MAX_DISTINCT) -> None:
        self.name, self.touched_by, self.window, self.field = name, events, window, field
        self.max_distinct = max_distinct
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        value = event.attrs.get(self.field) if self.field else event.type
        if value is None:
            return
        ts = event.ts
        values = profile.signals.get(self.name)
        if values is None:
            values = profile.signals[self.name] = []
        profile.note_expiry(ts + self.window.window_ms)
        for pair in values:
            if pair[0] == value:
                if ts > pair[1]:
                    pair[1] = ts
                return
        values.append([value, ts])
        if len(values) > self.max_distinct:
            values.sort(key=lambda p: p[1])
            del values[0]

    def prune(self, state: Any, ref_ms: int) -> Any:
        floor = self.window.floor(ref_ms)
        return [p for p in state if p[1] >= floor] or None

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        window = self.window.window_ms
        return min(p[1] for p in state) + window, max(p[1] for p in state) + window

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        if not state:
            return 0
        floor = self.window.floor(ref_ms)
        return sum(1 for p in state if p[1] >= floor)

    def merge(self, a: Any, b: Any) -> Any:
        """The union of both profiles' values, each with its newest time; at most `max_distinct` (the
        most recently seen), ordered by time."""
        newest: dict[Any, int] = {}
        for value, ts in [*a, *b]:
            current = newest.get(value)
            if current is None or ts > current:
                newest[value] = ts
        pairs = sorted(([value, ts] for value, ts in newest.items()), key=lambda p: (p[1], repr(p[0])))
        return pairs[-self.max_distinct:]


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Distinct:
    where.check_keys(body, WINDOW_FIELDS | {"field"})
    field = where.string(body, "field")
    if field is None:
        raise where.fail("field", "is required for kind 'distinct'")
    return Distinct(name, where.names(body, "events", event_types), Window.load(body, where), field)
