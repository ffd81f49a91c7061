"""`distinct`: how many different values of one attribute in an event-time window.

State: [[value, newest ts], ...], at most `max_distinct` values (the oldest seen goes first).
Options: `where`, `reset_on`, `by` (operators/signals/options.py and groups.py).
"""

from __future__ import annotations

from typing import Any

from operators.profile.model import Profile
from operators.records import Event
from operators.rules.fields import Where
from operators.signals.base import Expiring, Signal
from operators.signals.groups import load_windowed
from operators.signals.window import Window

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
        seen = [p[1] for p in state]  # one list, then C's min and max: not two generator passes
        return min(seen) + window, max(seen) + window

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        if not state:
            return 0
        floor = self.window.floor(ref_ms)
        return sum(1 for p in state if p[1] >= floor)

    def clear(self, state: Any, until_ms: int) -> Any:
        return [p for p in state if p[1] > until_ms] or None

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


class DistinctPart:
    """One group's state for a grouped distinct: its [[value, newest ts], ...]."""

    def __init__(self, field: str, window: Window, max_distinct: int = MAX_DISTINCT) -> None:
        self.field, self.window, self.max_distinct = field, window, max_distinct
        self.values = Distinct("", frozenset(), window, field, max_distinct)

    def add(self, state: Any, event: Event, profile: Profile) -> Any:
        value = event.attrs.get(self.field)
        if state is None:
            state = []
        if value is None:
            return state
        ts = event.ts
        profile.note_expiry(ts + self.window.window_ms)
        for pair in state:
            if pair[0] == value:
                if ts > pair[1]:
                    pair[1] = ts
                return state
        state.append([value, ts])
        if len(state) > self.max_distinct:
            state.sort(key=lambda p: p[1])
            del state[0]
        return state

    def prune(self, state: Any, ref_ms: int) -> Any:
        return self.values.prune(state, ref_ms)

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        return self.values.expiry_bounds(state)

    def newest(self, state: Any) -> int:
        return max((p[1] for p in state), default=0)

    def value(self, state: Any, ref_ms: int) -> Any:
        return self.values.value("", state, ref_ms)

    def clear(self, state: Any, until_ms: int) -> Any:
        return self.values.clear(state, until_ms)

    def merge(self, a: Any, b: Any) -> Any:
        return self.values.merge(a, b)


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Signal:
    return load_windowed("distinct", name, body, where, event_types, reads_field=True,
                         plain=lambda events, window, field: Distinct(name, events, window, field),
                         part=lambda window, field: DistinctPart(field, window))
