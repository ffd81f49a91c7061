"""`unmatched`: how many values of one attribute had an event of `events` in the window and no event
of `matched_by` with the same value: "emails opened and not clicked", matched by `campaign_id`.

    [signals.opened_not_clicked_14d]
    kind = "unmatched"
    events = ["email_open"]
    matched_by = ["email_click"]
    by = "campaign_id"
    window = "14d"

A count of opens and a count of clicks cannot say this: two opens and one click may be one campaign
clicked and one not, or the click may be of a campaign never opened.

State: [[key, newest event ts or None, newest match ts or None], ...] sorted by key (values are
kept as text, as group names are), at most `max_keys` keys: past the cap, the key seen least recently
goes (a tie: the smallest key), so neither arrival order nor a merge decides. The window is exact
(no buckets): an event counts from its time until `window` after it.
"""

from __future__ import annotations

import bisect
from typing import Any

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals.base import Expiring, Signal
from nextclick.operators.signals.groups import group_name
from nextclick.operators.signals.options import check_attribute

MAX_KEYS = 50
_MAX_KEYS_CEILING = 1000


def _seen(entry: list[Any]) -> int:
    return max(t for t in (entry[1], entry[2]) if t is not None)


def _cap(state: list[list[Any]], max_keys: int) -> None:
    while len(state) > max_keys:
        state.remove(min(state, key=lambda e: (_seen(e), e[0])))


class Unmatched(Expiring):
    kind = "unmatched"

    def __init__(self, name: str, events: frozenset[str], matched_by: frozenset[str], by: str, window_ms: int,
                 max_keys: int = MAX_KEYS) -> None:
        self.name, self.events, self.matched_by, self.by = name, events, matched_by, by
        self.window_ms, self.max_keys = window_ms, max_keys
        self.touched_by = events | matched_by
        self.attributes = (name,)

    def apply(self, profile: Profile, event: Event) -> None:
        value = event.attrs.get(self.by)
        if value is None:
            return
        key, ts = group_name(value), event.ts
        slot = 1 if event.type in self.events else 2
        state = profile.signals.get(self.name)
        if state is None:
            state = profile.signals[self.name] = []
        i = bisect.bisect_left(state, key, key=lambda e: e[0])
        if i < len(state) and state[i][0] == key:
            entry = state[i]
            if entry[slot] is None or ts > entry[slot]:
                entry[slot] = ts
        else:
            entry = [key, None, None]
            entry[slot] = ts
            state.insert(i, entry)
            _cap(state, self.max_keys)
        profile.note_expiry(ts + self.window_ms)

    def prune(self, state: Any, ref_ms: int) -> Any:
        floor = ref_ms - self.window_ms + 1
        kept = []
        for key, seen, matched in state:
            seen = seen if seen is not None and seen >= floor else None
            matched = matched if matched is not None and matched >= floor else None
            if seen is not None or matched is not None:
                kept.append([key, seen, matched])
        return kept or None

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        times = [t for entry in state for t in (entry[1], entry[2]) if t is not None]
        return min(times) + self.window_ms, max(times) + self.window_ms

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        if not state:
            return 0
        floor = ref_ms - self.window_ms + 1
        return sum(1 for _, seen, matched in state
                   if seen is not None and floor <= seen <= ref_ms
                   and not (matched is not None and floor <= matched <= ref_ms))

    def merge(self, a: Any, b: Any) -> Any:
        """Key by key, the newest time of each side; then the cap, as `apply` keeps it."""
        merged = {e[0]: list(e) for e in a}
        for key, seen, matched in b:
            entry = merged.get(key)
            if entry is None:
                merged[key] = [key, seen, matched]
                continue
            for slot, t in ((1, seen), (2, matched)):
                if t is not None and (entry[slot] is None or t > entry[slot]):
                    entry[slot] = t
        state = [merged[k] for k in sorted(merged)]
        _cap(state, self.max_keys)
        return state


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Signal:
    where.check_keys(body, {"kind", "events", "matched_by", "by", "window", "max_keys", "description"})
    events = where.names(body, "events", event_types)
    matched_by = where.names(body, "matched_by", event_types)
    both = sorted(events & matched_by)
    if both:
        where.report("matched_by", f"{both} also in 'events': an event type either counts or matches")
    by = where.string(body, "by", required=True) or ""
    if by:
        for field, types in (("by", events), ("by", matched_by)):
            for event_type in sorted(types):
                check_attribute(where, field, by, frozenset({event_type}))
    window = where.duration(body, "window")
    max_keys = where.integer(body, "max_keys", MAX_KEYS, minimum=1)
    if max_keys > _MAX_KEYS_CEILING:
        where.report("max_keys", f"must be at most {_MAX_KEYS_CEILING} (state is kept per customer)")
    return Unmatched(name, events, matched_by, by, window, max_keys)
