"""The dedupe window: event ids seen recently, so a redelivered event changes nothing.

Ids are kept for the rules file's dedupe horizon after their event time, and at most MAX_SEEN_IDS of
them per customer (the oldest to arrive goes first), which bounds a replay storm's state.
"""

from __future__ import annotations

from operators.profile.model import Profile

MAX_SEEN_IDS = 256


def remember(profile: Profile, event_id: str, ts: int, horizon_ms: int) -> None:
    seen = profile.seen
    seen[event_id] = until = ts + horizon_ms
    profile.note_expiry(until)
    if len(seen) > MAX_SEEN_IDS:
        del seen[next(iter(seen))]  # dicts keep arrival order, and MessagePack keeps it across a save


def prune(seen: dict[str, int], ref_ms: int) -> tuple[int, int] | None:
    """Forget ids whose horizon ended by `ref_ms`; the first and last expiry of the rest (None: none left)."""
    if not seen:
        return None
    untils = seen.values()
    low = min(untils)
    if low <= ref_ms:  # a scan only when something expired (ids arrive roughly in time order)
        for event_id in [e for e, until in seen.items() if until <= ref_ms]:
            del seen[event_id]
        if not seen:
            return None
        low = min(untils)
    return low, max(untils)


def merge(profile: Profile, other: dict[str, int]) -> None:
    """Another profile's dedupe window, folded into this one (identity stitching): the union of both,
    each id kept until the later of its two horizons, at most MAX_SEEN_IDS of them (those that stay
    longest), ordered by horizon so that the next to go is the oldest."""
    if not other:
        return
    seen = profile.seen
    merged = dict(seen)
    for event_id, until in other.items():
        current = merged.get(event_id)
        if current is None or until > current:
            merged[event_id] = until
    kept = sorted(merged.items(), key=lambda item: (item[1], item[0]))[-MAX_SEEN_IDS:]
    seen.clear()
    seen.update(kept)
