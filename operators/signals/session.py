"""`session`: a session in progress, which ends after `gap` without events.

State: [start, last, events] of the current session, in event time.
"""

from __future__ import annotations

from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals.base import Expiring


class Session(Expiring):
    kind = "session"

    def __init__(self, name: str, gap_ms: int, events: frozenset[str], all_types: frozenset[str]) -> None:
        self.name, self.gap_ms = name, gap_ms
        self.restricted = bool(events)
        self.touched_by = events or all_types  # none named: every event
        self.attributes = (f"{name}_active", f"{name}_events", f"{name}_minutes")
        self._active, self._events, self._minutes = self.attributes

    def apply(self, profile: Profile, event: Event) -> None:
        ts, gap = event.ts, self.gap_ms
        state = profile.signals.get(self.name)
        if state is not None and ts <= state[0] - gap:
            return  # from an older session, long over: it must not replace the current one
        if state is None or ts - state[1] >= gap:
            state = profile.signals[self.name] = [ts, ts, 1]
        else:
            if ts < state[0]:
                state[0] = ts
            if ts > state[1]:
                state[1] = ts
            state[2] += 1
        profile.note_expiry(state[1] + gap)

    def prune(self, state: Any, ref_ms: int) -> Any:
        return None if state[1] + self.gap_ms <= ref_ms else state

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        at = state[1] + self.gap_ms
        return at, at

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        active = state is not None and ref_ms - state[1] < self.gap_ms
        if attribute == self._active:
            return active
        if attribute == self._events:
            return state[2] if active else 0
        return (state[1] - state[0]) // 60_000 if active else 0

    def merge(self, a: Any, b: Any) -> Any:
        """One session if they are less than `gap` apart (the events of both count), else the later one."""
        gap = self.gap_ms
        if a[0] - b[1] < gap and b[0] - a[1] < gap:
            return [min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2]]
        later = b if (b[1], b[0], b[2]) > (a[1], a[0], a[2]) else a
        return [later[0], later[1], later[2]]


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Session:
    where.check_keys(body, {"kind", "gap", "events", "description"})
    return Session(name, where.duration(body, "gap", "30m"), where.names(body, "events", event_types, required=False),
                   event_types)
