"""The dedupe window: event ids seen recently, so a redelivered event changes nothing.

An event is its type and id within its source, its type's touch channel (`event_key`): producers keep
ids unique per source, and two systems' id 1001 (a web shop's, a store till's) are two events. A
redelivery repeats its type too, so a source that reuses an id for another type (a page view's id on
a consent withdrawal, an outside probe) sends two events: keyed by id alone, the withdrawal was
dropped as a duplicate and the customer kept getting marketing email.

Each id is kept for the rules file's dedupe horizon from its event time; a late event's (older than
the customer's newest event minus the allowed lateness) from that newest time instead, so its
redelivery is caught too (from its own time it would expire on arrival). Only late events depend on
arrival order here, as their lateness itself does. At most MAX_SEEN_IDS ids are kept per customer
(the oldest to arrive goes first), which bounds a replay storm's state: a redelivery that comes after
that many newer events of its customer counts again. (Keeping purchases' ids longer at the cap was
tried: a busy customer's window then filled with them, and finding the next id to forget cost 9% of
the flow's time.)

The window's order is its arrival order and carries meaning: it says which id goes first at the cap.
So it is the one dict the codec stores as it is, not sorted (operators/profile/codec.py).
"""

from __future__ import annotations

import bisect

from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event

MAX_SEEN_IDS = 256


def event_key(event: Event) -> str:
    """What a redelivery repeats: the event's type and id within its source, taken to be its type's touch
    channel (`event_id` is unique per source: a store till's sale 1001 and a call center's contact 1001
    are two events). Not the topic: the same events read from another topic (a mirror, a renamed
    topic) must make the same profile."""
    return f"{event.channel}/{event.type}/{event.event_id}"


def earlier_keys(event: Event) -> tuple[str, str]:
    """The keys releases before this one remembered `event` by: its id within its source, and its id."""
    return f"{event.channel}/{event.event_id}", event.event_id


def seen(profile: Profile, event: Event, key: str) -> bool:
    """Whether `event` (its `event_key`) was applied to the profile within the horizon."""
    window = profile.seen
    if key in window:
        return True
    if not window:
        return False
    in_source, bare = earlier_keys(event)  # remembered by an earlier release, within one horizon of it
    return bare in window or in_source in window


def remember(profile: Profile, key: str, until: int) -> None:
    """Keep an `event_key` until `until` (event time); at the cap, forget the oldest to arrive."""
    window = profile.seen
    window[key] = until
    profile.note_expiry(until)
    if len(window) > MAX_SEEN_IDS:
        del window[next(iter(window))]  # dicts keep arrival order, and MessagePack keeps it across a save


def prune(seen: dict[str, int], ref_ms: int) -> tuple[int, int] | None:
    """Forget ids whose horizon ended by `ref_ms`; the first and last expiry of the rest (None: none left).

    One sort gives both bounds and what expired: ids arrive in roughly event-time order, so their
    horizons are nearly sorted, which Timsort orders in about one pass (2.5x faster than `min` and
    `max` over 256 ids)."""
    if not seen:
        return None
    untils = sorted(seen.values())
    if untils[0] <= ref_ms:  # some expired: a scan only then
        for event_id in [e for e, until in seen.items() if until <= ref_ms]:
            del seen[event_id]
        kept = bisect.bisect_right(untils, ref_ms)
        if kept == len(untils):
            return None
        return untils[kept], untils[-1]
    return untils[0], untils[-1]


def merge(profile: Profile, other: dict[str, int]) -> None:
    """Another profile's dedupe window, folded into this one (identity stitching): the union of both,
    each id kept until the later of its two horizons, at most MAX_SEEN_IDS of them (those that stay
    longest), ordered by horizon so that the next to go is the oldest. Ordered so even when `other`
    is empty: either profile absorbing the other gives the same window, in the same order."""
    seen = profile.seen
    if not other and not seen:
        return
    merged = dict(seen)
    for event_id, until in other.items():
        current = merged.get(event_id)
        if current is None or until > current:
            merged[event_id] = until
    kept = sorted(merged.items(), key=lambda item: (item[1], item[0]))[-MAX_SEEN_IDS:]
    seen.clear()
    seen.update(kept)
