"""`count`: how many events of the given types in an event-time window (options: `where`, `reset_on`,
`by`; operators/signals/options.py and groups.py)."""

from __future__ import annotations

from typing import Any

from operators.profile.model import Profile
from operators.records import Event
from operators.rules.fields import Where
from operators.signals import buckets
from operators.signals.base import Expiring, Signal
from operators.signals.groups import GROUP_FIELDS, Grouped, read_by
from operators.signals.options import OPTION_FIELDS, read_reset, read_where, with_options
from operators.signals.window import WINDOW_FIELDS, Window


class Count(Expiring):
    kind = "count"

    def __init__(self, name: str, events: frozenset[str], window: Window) -> None:
        self.name, self.touched_by, self.window = name, events, window
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        buckets.add(profile, self.name, self.window, event.ts, 1.0)

    def prune(self, state: Any, ref_ms: int) -> Any:
        return buckets.prune(state, self.window, ref_ms)

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        return buckets.expiry_bounds(state, self.window)

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        return int(buckets.total(state, self.window, ref_ms))

    def clear(self, state: Any, until_ms: int) -> Any:
        return buckets.clear(state, until_ms)

    def merge(self, a: Any, b: Any) -> Any:
        return buckets.merge(a, b, self.name)


def _one(_event: Event) -> float:
    return 1.0


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Signal:
    where.check_keys(body, WINDOW_FIELDS | OPTION_FIELDS | GROUP_FIELDS)
    events = where.names(body, "events", event_types)
    window = Window.load(body, where)
    conditions, reset_on = read_where(body, where, events), read_reset(body, where, event_types, events)
    by, max_groups = read_by(body, where, events)
    signal: Signal
    if by is None:
        signal = Count(name, events, window)
    else:
        signal = Grouped(name, "count", events, window, by, max_groups,
                         buckets.BucketPart(name, window, _one, int))
    return with_options(signal, conditions, reset_on, window.window_ms)
