"""Event-time windows shared by the windowed kinds: sliding (bucketed) or tumbling, and their edges."""

from __future__ import annotations

from typing import Any

from nextclick.operators.conditions.fields import Where

WINDOW_FIELDS = {"kind", "events", "window", "type", "bucket", "description"}
# The default bucket of a sliding window: window / 30, at least 1 s and at most this. A bucket counts
# whole while any of it is in the window, so an event counts at most one bucket longer than the window:
# by default less than a minute (a 7-day window's edge was 5h36m late with window / 30 alone).
MAX_DEFAULT_BUCKET_MS = 60_000


def default_bucket_ms(window_ms: int) -> int:
    """The bucket a sliding window gets without `bucket`: window / 30, between 1 s and 1 minute."""
    return min(MAX_DEFAULT_BUCKET_MS, max(1000, window_ms // 30))


class Window:
    """A window of `window_ms`: sliding in buckets of `bucket_ms`, or tumbling."""

    __slots__ = ("bucket_ms", "size", "sliding", "window_ms")

    def __init__(self, window_ms: int, sliding: bool = True, bucket_ms: int = 60_000) -> None:
        self.window_ms = window_ms
        self.sliding = sliding
        # Sliding windows keep one bucket per `bucket_ms`, so state stays bounded however busy a customer is.
        self.bucket_ms = min(bucket_ms, window_ms)
        self.size = self.bucket_ms if sliding else window_ms

    def floor(self, ref_ms: int) -> int:
        """Oldest event time still inside the window that ends at `ref_ms`."""
        if self.sliding:
            return ref_ms - self.window_ms + 1
        return ref_ms - ref_ms % self.window_ms

    @classmethod
    def load(cls, body: dict[str, Any], where: Where) -> Window:
        kind = body.get("type", "sliding")
        if kind not in ("sliding", "tumbling"):
            where.report("type", "must be 'sliding' or 'tumbling'")
        window = where.duration(body, "window")
        return cls(window, kind == "sliding", where.duration(body, "bucket", default_bucket_ms(window)))
