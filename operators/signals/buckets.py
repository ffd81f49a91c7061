"""Bucketed window sums: the state of `count` and `sum`, a list of [bucket start, amount] by start."""

from __future__ import annotations

import math
from collections.abc import Iterator
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
    for bucket in reversed(buckets):  # the newest bucket is the usual one
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
    floor, size = window.floor(ref_ms), window.size
    kept = [b for b in buckets if b[0] + size > floor]
    return kept or None


def expiries(buckets: list[list[Any]], window: Window) -> Iterator[int]:
    tail = window.size - 1 + window.window_ms
    for bucket in buckets:
        yield bucket[0] + tail
