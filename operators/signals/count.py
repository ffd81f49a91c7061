"""`count`: how many events of the given types in an event-time window (options: `where`, `reset_on`,
`by`; operators/signals/options.py and groups.py)."""

from __future__ import annotations

from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals import buckets
from nextclick.operators.signals.base import Expiring, Signal
from nextclick.operators.signals.groups import load_windowed
from nextclick.operators.signals.window import Window


class Count(Expiring):
    kind = "count"

    def __init__(self, name: str, events: frozenset[str], window: Window) -> None:
        self.name, self.touched_by, self.window = name, events, window
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        # The usual case inline: the newest bucket is the event's. A count adds ones, so unlike a
        # sum its total cannot stop being finite; anything else takes the general path.
        state = profile.signals.get(self.name)
        if state is not None:
            ts, size = event.ts, self.window.size
            newest = state[-1]
            if newest[0] == ts - ts % size:
                newest[1] += 1.0
                return
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
    return load_windowed("count", name, body, where, event_types, reads_field=False,
                         plain=lambda events, window, _: Count(name, events, window),
                         part=lambda window, _: buckets.BucketPart(name, window, _one, int))
