"""The dedupe window: event ids seen recently, so a redelivered event changes nothing.

Ids are kept for the rules file's dedupe horizon after their event time, and at most MAX_SEEN_IDS of
them per customer (the oldest to arrive goes first), which bounds a replay storm's state.

The window's order is its arrival order and carries meaning: it says which id goes first at the cap.
Going by horizon instead would drop a late event's id on arrival, and its redelivery would count
twice. So it is the one dict the codec stores as it is, not sorted (operators/profile/codec.py).
"""

from __future__ import annotations

import bisect

from nextclick.operators.profile.model import Profile

MAX_SEEN_IDS = 256


def remember(profile: Profile, event_id: str, ts: int, horizon_ms: int) -> None:
    seen = profile.seen
    seen[event_id] = until = ts + horizon_ms
    profile.note_expiry(until)
    if len(seen) > MAX_SEEN_IDS:
        del seen[next(iter(seen))]  # dicts keep arrival order, and MessagePack keeps it across a save


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
