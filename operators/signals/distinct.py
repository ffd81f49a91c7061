"""`distinct`: how many different values of one attribute in an event-time window.

State: [[value, newest ts], ...], at most `max_distinct` values (the one seen least recently goes
first). Options: `where`, `reset_on`, `by` (operators/signals/options.py and groups.py).

The members are kept in one defined order, by (newest ts, repr of the value): the order they leave
in, and the same list whatever order the events came in or the profiles were merged in, so equal
states store the same bytes (operators/profile/codec.py). Values that are equal but written
differently (1, 1.0 and true) are one member, written as the smallest repr, again whatever came first.
"""

from __future__ import annotations

import bisect
from operator import itemgetter
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
        most recently seen), in the defined order. Members are matched by equality, as `add` does (a
        value may be a list, which no dict could key)."""
        merged = [[value, ts] for value, ts in a]
        for value, ts in b:
            add(merged, value, ts, len(merged) + 1)
        merged.sort(key=distinct_order)
        return merged[-self.max_distinct:]


def distinct_order(pair: list[Any]) -> tuple[Any, str]:
    """The defined order of a distinct state: oldest first, a tie in time by the value's repr."""
    return pair[1], repr(pair[0])


_TS = itemgetter(1)


def add(values: list[list[Any]], value: Any, ts: int, max_distinct: int) -> None:
    """Fold one value seen at `ts` into a state kept in the defined order (`distinct_order`); past
    `max_distinct`, the first (seen least recently) goes.

    The usual case, a value seen again or a new one at the newest time, costs a scan and no repr.
    A state stored before the order was defined is put in it when its order is next found broken, and
    in any case within one window, when all of its members have been seen anew or have left."""
    for i, pair in enumerate(values):
        if pair[0] == value:
            if type(value) is not type(pair[0]) or type(value) is float:  # 1 and 1.0, 0.0 and -0.0
                if repr(value) < repr(pair[0]):
                    pair[0] = value
                    if ts <= pair[1]:
                        _place(values, i)
            if ts > pair[1]:
                pair[1] = ts
                _place(values, i)
            return
    values.append([value, ts])
    _place(values, len(values) - 1)
    if len(values) > max_distinct:
        if values[0][1] > min(map(_TS, values)):  # a state from before the order: put it in order first
            values.sort(key=distinct_order)
        del values[0]


def _place(values: list[list[Any]], i: int) -> None:
    """Move `values[i]`, just changed or appended, to where the order puts it (usually: where it is)."""
    pair = values[i]
    if (i and not _in_order(values[i - 1], pair)) or (i + 1 < len(values) and not _in_order(pair, values[i + 1])):
        del values[i]
        if pair[1] > values[-1][1]:  # the usual case: seen again, now the newest
            values.append(pair)
        else:
            bisect.insort(values, pair, key=distinct_order)


def _in_order(a: list[Any], b: list[Any]) -> bool:
    """`distinct_order(a) <= distinct_order(b)`, with a repr only for a tie in time."""
    return a[1] < b[1] or (a[1] == b[1] and repr(a[0]) <= repr(b[0]))


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
