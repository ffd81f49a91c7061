"""The input's event-time frontier (a watermark): what every timer of the flow is judged by.

Absences, session ends and pruning fire when the frontier passes their deadline (plus the allowed
lateness), never on a wall clock hours ahead of the events being read. So the same events give the
same decisions live, in a backlog after downtime, in a backfill and after a restart.

- Each input partition reports its **floor** (operators/records.Progress): the event time of its next
  message, or None once it is caught up (at its end, idle past the alignment's idle timeout, or
  reading events within `LIVE_SLACK_MS` of the present). A caught-up partition advances with the clock.
- The frontier is the lowest floor over every input partition of the flow, or the clock when all of
  them are caught up. Until every partition has reported once, it is unknown and nothing fires.
- It never moves back: a partition that falls behind again (a burst of old events on a caught-up
  topic) holds the frontier where it is; its old events are late, as they would be live.

The identity stage computes it from the reports, which travel in the stream behind the messages they
account for, and sends it to every shard behind everything it routed (records.Frontier): a shard that
fires by it has already applied every earlier event, on this process or another. Pure: the callers
give the clock.
"""

from __future__ import annotations

from collections.abc import Callable

# A partition reading events this close to the present counts as caught up. Live, a partition flips
# between "at its end" and "one message in flight" with every message; those flips are not progress
# worth a round of frontier messages. Must stay well inside the allowed lateness (default 5 minutes).
LIVE_SLACK_MS = 2_000


class InputFrontier:
    """The frontier over every input partition, from their Progress reports (the identity stage's)."""

    __slots__ = ("_floors", "_total", "_reached")

    def __init__(self, clock: Callable[[], int]) -> None:
        self._floors: dict[str, int | None] = {}
        self._total = 0
        self._reached = EventTimeFrontier(clock, await_input=True)  # keeps it monotone

    def note(self, partition: str, floor: int | None, total: int) -> None:
        self._floors[partition] = floor
        self._total = total

    @property
    def known(self) -> bool:
        return self._total > 0 and len(self._floors) >= self._total

    def current(self) -> tuple[bool, int | None]:
        """(known, floor): floor None means every partition is caught up (follow the clock).

        Monotone: a floor lower than one reached before is reported as the one reached before."""
        if not self.known:
            return False, None
        floors = [f for f in self._floors.values() if f is not None]
        reached = self._reached
        reached.advance(min(floors) if floors else None)
        return True, None if reached.live else reached.now()


class EventTimeFrontier:
    """The frontier as one reader has it: the highest floor it was given, or the clock while the input
    is caught up. A shard holds one (fed by the identity stage's Frontier items); so does InputFrontier.

    `await_input` True (the flow): nothing is due until the first Frontier arrives. False (tools and
    tests that drive a shard directly): the clock is the frontier, as for an input that is caught up.
    """

    __slots__ = ("_clock", "_value", "_live")

    def __init__(self, clock: Callable[[], int], *, await_input: bool) -> None:
        self._clock = clock
        self._value: int | None = None
        self._live = not await_input

    @property
    def live(self) -> bool:
        return self._live

    def advance(self, floor: int | None) -> None:
        """A Frontier arrived: `floor`, or None for "follow the clock"."""
        now = self._clock()
        if self._live:  # what the clock made due so far stays due
            self._value = now if self._value is None else max(self._value, now)
        if floor is None:
            self._live = True
            return
        self._live = False
        low = min(floor, now)
        self._value = low if self._value is None else max(self._value, low)

    def now(self) -> int | None:
        """The frontier now (event time, ms), or None while it is unknown."""
        if self._live:
            now = self._clock()
            return now if self._value is None or now > self._value else self._value
        return self._value
