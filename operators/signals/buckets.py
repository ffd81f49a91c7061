"""Bucketed window sums: the state of `count` and `sum`, a list of [bucket start, amount] by start."""

from __future__ import annotations

import math
from typing import Any

from operators.profile.facts import ProfileEncodeError
from operators.profile.model import Profile
from operators.signals.window import Window


def add(profile: Profile, name: str, window: Window, ts: int, amount: float) -> None:
    size = window.size
    start = ts - ts % size
    signals = profile.signals
    buckets = signals.get(name)
    if buckets is None:
        buckets = signals[name] = []
    elif buckets[-1][0] == start:  # the newest bucket is the usual one
        total = buckets[-1][1] = buckets[-1][1] + amount
        if not math.isfinite(total):
            raise ProfileEncodeError(f"signal {name} is not a finite number")
        return
    else:
        for bucket in buckets:
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


def merge(a: list[list[Any]], b: list[list[Any]], name: str) -> list[list[Any]]:
    """Two bucket lists as one, bucket by bucket: amounts of the same bucket add (state of `count`, `sum`)."""
    merged = {start: amount for start, amount in a}
    for start, amount in b:
        total = merged[start] + amount if start in merged else amount
        if not math.isfinite(total):
            raise ProfileEncodeError(f"signal {name} is not a finite number")
        merged[start] = total
    return [[start, merged[start]] for start in sorted(merged)]
