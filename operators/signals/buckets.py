"""Bucketed window sums: the state of `count` and `sum`, a list of [bucket start, amount] by start
(grouped: one such list per group, see operators/signals/groups.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from nextclick.operators.profile.facts import ProfileEncodeError
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals.window import Window


def add(profile: Profile, name: str, window: Window, ts: int, amount: float) -> None:
    size = window.size
    start = ts - ts % size
    signals = profile.signals
    buckets = signals.get(name)
    if buckets is None:
        buckets = signals[name] = []
    else:
        newest = buckets[-1][0]
        if newest == start:  # the newest bucket is the usual one
            total = buckets[-1][1] = buckets[-1][1] + amount
            if not math.isfinite(total):
                raise ProfileEncodeError(f"signal {name} is not a finite number")
            return
        if start < newest:  # an older bucket (buckets are in start order): look for it from the newest down
            for bucket in reversed(buckets):
                if bucket[0] == start:
                    bucket[1] += amount
                    if not math.isfinite(bucket[1]):
                        raise ProfileEncodeError(f"signal {name} is not a finite number")
                    return
    profile.note_expiry(start + size - 1 + window.window_ms)
    buckets.append([start, amount])
    if len(buckets) > 1 and buckets[-2][0] > start:
        buckets.sort(key=lambda b: b[0])


def total(buckets: list[list[Any]] | None, window: Window, ref_ms: int) -> float:
    if not buckets:
        return 0
    floor, size = window.floor(ref_ms), window.size
    return sum(b[1] for b in buckets if b[0] + size > floor and b[0] <= ref_ms)


def prune(buckets: list[list[Any]], window: Window, ref_ms: int) -> list[list[Any]] | None:
    """Buckets are kept in start order, so the ones that left the window are a prefix."""
    floor, size = window.floor(ref_ms), window.size
    gone = 0
    for bucket in buckets:
        if bucket[0] + size > floor:
            break
        gone += 1
    if gone:
        del buckets[:gone]
    return buckets or None


def expiry_bounds(buckets: list[list[Any]], window: Window) -> tuple[int, int]:
    tail = window.size - 1 + window.window_ms
    return buckets[0][0] + tail, buckets[-1][0] + tail


def add_to(buckets: list[list[Any]], window: Window, ts: int, amount: float, name: str) -> int | None:
    """`add` for a list held elsewhere (one group's buckets): when a new bucket was made, its expiry."""
    size = window.size
    start = ts - ts % size
    for bucket in reversed(buckets):  # the newest bucket is the usual one
        if bucket[0] == start:
            bucket[1] += amount
            if not math.isfinite(bucket[1]):
                raise ProfileEncodeError(f"signal {name} is not a finite number")
            return None
    buckets.append([start, amount])
    if len(buckets) > 1 and buckets[-2][0] > start:
        buckets.sort(key=lambda b: b[0])
    return start + size - 1 + window.window_ms


def clear(buckets: list[list[Any]], until_ms: int) -> list[list[Any]] | None:
    """Without every bucket that holds time at or before `until_ms` (a reset; buckets are in start order)."""
    gone = 0
    for bucket in buckets:
        if bucket[0] > until_ms:
            break
        gone += 1
    if gone:
        del buckets[:gone]
    return buckets or None


class BucketPart:
    """One group's state for a grouped count or sum: its buckets."""

    def __init__(self, name: str, window: Window, amount: Callable[[Event], float], rounding: Callable[[float], Any]
                 ) -> None:
        self.name, self.window, self.amount, self.rounding = name, window, amount, rounding

    def add(self, state: Any, event: Event, profile: Profile) -> Any:
        if state is None:
            state = []
        expiry = add_to(state, self.window, event.ts, self.amount(event), self.name)
        if expiry is not None:
            profile.note_expiry(expiry)
        return state

    def prune(self, state: Any, ref_ms: int) -> Any:
        return prune(state, self.window, ref_ms)

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        return expiry_bounds(state, self.window)

    def newest(self, state: Any) -> int:
        return int(state[-1][0])

    def value(self, state: Any, ref_ms: int) -> Any:
        return self.rounding(total(state, self.window, ref_ms))

    def clear(self, state: Any, until_ms: int) -> Any:
        return clear(state, until_ms)

    def merge(self, a: Any, b: Any) -> Any:
        return merge(a, b, self.name)


def merge(a: list[list[Any]], b: list[list[Any]], name: str) -> list[list[Any]]:
    """Two bucket lists as one, bucket by bucket: amounts of the same bucket add (state of `count`, `sum`)."""
    merged = {start: amount for start, amount in a}
    for start, amount in b:
        total = merged[start] + amount if start in merged else amount
        if not math.isfinite(total):
            raise ProfileEncodeError(f"signal {name} is not a finite number")
        merged[start] = total
    return [[start, merged[start]] for start in sorted(merged)]
