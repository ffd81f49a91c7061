"""The one injectable clock: wall-clock time for absence timers, event-time skew checks and metrics.

Bytewax schedules `notify_at` against the real wall clock, so every clock also says when, in real
time, a deadline on its own time line falls due (`wall_deadline`).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from nextclick.operators.errors import NextclickError

# How often a shard re-checks a clock that does not follow real time (tests' manual clock).
POLL = timedelta(milliseconds=50)


class Clock(Protocol):
    def now_ms(self) -> int:
        """Current time on this clock, epoch milliseconds UTC."""
        ...

    def wall_deadline(self, deadline_ms: int) -> datetime:
        """The real (UTC) time at which `deadline_ms` on this clock will have passed."""
        ...


class SystemClock:
    """Real time."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def wall_deadline(self, deadline_ms: int) -> datetime:
        return datetime.fromtimestamp(deadline_ms / 1000, tz=UTC)


class ScaledClock:
    """Time that runs `speed` times faster than real time from `start_ms`; the demo uses it so
    that an hour-long absence window passes in seconds without shortening the configured window."""

    def __init__(self, speed: float, start_ms: int | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._real_start = time.time()
        self._start_ms = SystemClock().now_ms() if start_ms is None else start_ms

    def now_ms(self) -> int:
        return self._start_ms + int((time.time() - self._real_start) * 1000 * self.speed)

    def wall_deadline(self, deadline_ms: int) -> datetime:
        real = self._real_start + (deadline_ms - self._start_ms) / 1000 / self.speed
        return datetime.fromtimestamp(real, tz=UTC)


class ManualClock:
    """A clock that moves only when told to; tests drive absence timers with it."""

    def __init__(self, now_ms: int) -> None:
        self._now = now_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def set(self, now_ms: int) -> None:
        with self._lock:
            self._now = now_ms

    def advance(self, ms: int) -> None:
        with self._lock:
            self._now += ms

    def wall_deadline(self, deadline_ms: int) -> datetime:
        real_now = datetime.now(UTC)
        return real_now if deadline_ms <= self.now_ms() else real_now + POLL


class UnitlessDuration(NextclickError, ValueError):
    """A duration written as a bare number other than 0: seconds to whoever wrote `10`, milliseconds to a
    reader, so neither the configuration nor a rules file guesses (`alignment_idle_timeout = 10` let every
    partition count as idle at once; `cooldown = 3600` sent the same email every 3.6 seconds)."""

    def __init__(self, number: object) -> None:
        super().__init__(f'{number} has no unit: write "{number}s" for seconds or "{number}ms" for milliseconds')


def parse_duration_ms(text: str | int) -> int:
    """'30m', '1h', '45s', '7d', '250ms' or plain milliseconds -> milliseconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    s = str(text).strip()
    for suffix in ("ms", "s", "m", "h", "d"):
        if s.endswith(suffix) and s[: -len(suffix)].strip().replace(".", "", 1).isdigit():
            return int(float(s[: -len(suffix)]) * units[suffix])
    raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 45s, 30m, 1h, 7d)")
