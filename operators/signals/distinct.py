"""`distinct`: how many different values of one attribute in an event-time window.

State: [[value, newest ts], ...], at most `max_distinct` values (the one seen least recently goes
first). Options: `where`, `reset_on`, `by` (operators/signals/options.py and groups.py).

The members are kept in one defined order, by the repr of their value, so the same members are the
same list whatever order the events came in or the profiles were merged in, and equal states store
the same bytes (operators/profile/codec.py). Past the cap, the member seen least recently goes, a tie
by the repr, not by arrival. Values that are equal but written differently (1, 1.0 and true) are one
member, written as the smallest repr, again whatever came first.
"""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.codec import distinct_order
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals.base import Expiring, Signal
from nextclick.operators.signals.groups import load_windowed
from nextclick.operators.signals.window import Window

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
        add(values, value, ts, self.max_distinct)

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
        most recently seen, as `add` keeps them), in the defined order. Members are matched by
        equality, as `add` does (a value may be a list, which no dict could key)."""
        merged = [[value, ts] for value, ts in a]
        for value, ts in b:
            add(merged, value, ts, len(merged) + 1)
        if len(merged) > self.max_distinct:
            merged = sorted(merged, key=_recency)[-self.max_distinct:]
        merged.sort(key=distinct_order)
        return merged


def _recency(pair: list[Any]) -> tuple[int, str]:
    """Which member goes first at the cap: the one seen least recently, a tie by the value's repr."""
    return pair[1], repr(pair[0])


_TS = itemgetter(1)


def add(values: list[list[Any]], value: Any, ts: int, max_distinct: int) -> None:
    """Fold one value seen at `ts` into a state kept in the defined order (`distinct_order`); past
    `max_distinct`, the member seen least recently goes.

    A value seen again only has its time raised, in place: the usual case costs what it did before
    the order was defined. A new one is placed by a bisection (a few reprs). A state stored by an
    earlier release keeps the order it had until its next merge, or until it empties (one window
    without its events), when it is rebuilt in this one."""
    for pair in values:
        if pair[0] == value:
            if ts > pair[1]:
                pair[1] = ts
            kind = type(value)
            if (kind is not type(pair[0]) or (kind is float and value == 0.0)) and repr(value) < repr(pair[0]):
                values.remove(pair)  # 1 and 1.0, 0.0 and -0.0: one member, written as the smallest repr
                pair[0] = value
                bisect.insort(values, pair, key=distinct_order)
            return
    bisect.insort(values, [value, ts], key=distinct_order)
    if len(values) > max_distinct:
        low = min(map(_TS, values))
        oldest = [pair for pair in values if pair[1] == low]
        values.remove(oldest[0] if len(oldest) == 1 else min(oldest, key=distinct_order))


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
        add(state, value, ts, self.max_distinct)
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
