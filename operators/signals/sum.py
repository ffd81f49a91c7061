"""`sum`: the total of one numeric attribute over events of the given types in an event-time window
(options: `where`, `reset_on`, `by`; operators/signals/options.py and groups.py)."""

from __future__ import annotations

from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals import buckets
from nextclick.operators.signals.base import Expiring, Signal
from nextclick.operators.signals.groups import load_windowed
from nextclick.operators.signals.window import Window


class Sum(Expiring):
    kind = "sum"

    def __init__(self, name: str, events: frozenset[str], window: Window, field: str) -> None:
        self.name, self.touched_by, self.window, self.field = name, events, window, field
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        # A missing (or null) attribute adds nothing.
        buckets.add(profile, self.name, self.window, event.ts, float(event.attrs.get(self.field, 0) or 0))

    def prune(self, state: Any, ref_ms: int) -> Any:
        return buckets.prune(state, self.window, ref_ms)

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        return buckets.expiry_bounds(state, self.window)

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        return round(buckets.total(state, self.window, ref_ms), 2)

    def clear(self, state: Any, until_ms: int) -> Any:
        return buckets.clear(state, until_ms)

    def merge(self, a: Any, b: Any) -> Any:
        return buckets.merge(a, b, self.name)


def _round(total: float) -> float:
    return round(total, 2)


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Signal:
    def part(window: Window, field: str) -> buckets.BucketPart:
        def amount(event: Event) -> float:
            return float(event.attrs.get(field, 0) or 0)
        return buckets.BucketPart(name, window, amount, _round)

    return load_windowed("sum", name, body, where, event_types, reads_field=True,
                         plain=lambda events, window, field: Sum(name, events, window, field), part=part)
