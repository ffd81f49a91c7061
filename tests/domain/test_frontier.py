"""The event-time frontier, as pure functions: what the identity stage and each shard make of the reports."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nextclick.operators.frontier import EventTimeFrontier, InputFrontier

NOW = 1_796_000_000_000
HOUR = 3_600_000

floors = st.one_of(st.none(), st.integers(NOW - 10 * HOUR, NOW))
reports = st.lists(st.tuples(st.integers(0, 3), floors), max_size=40)


class _Input:
    """An InputFrontier on a clock the test sets: `current(t)` is the frontier with the clock at t."""

    def __init__(self) -> None:
        self.now = NOW
        self.frontier = InputFrontier(lambda: self.now)
        self.note = self.frontier.note

    def current(self, now_ms: int) -> tuple[bool, int | None]:
        self.now = now_ms
        return self.frontier.current()


def test_unknown_until_every_partition_has_reported() -> None:
    f = _Input()
    f.note("web#0", NOW - HOUR, 2)
    assert f.current(NOW) == (False, None)
    f.note("store#0", NOW - 2 * HOUR, 2)
    assert f.current(NOW) == (True, NOW - 2 * HOUR)


def test_the_slowest_partition_with_data_sets_it_and_caught_up_ones_follow_the_clock() -> None:
    f = _Input()
    f.note("web#0", NOW - HOUR, 3)
    f.note("store#0", None, 3)  # at its end
    f.note("app#0", NOW - 3 * HOUR, 3)
    assert f.current(NOW) == (True, NOW - 3 * HOUR)
    f.note("app#0", None, 3)
    assert f.current(NOW) == (True, NOW - HOUR)
    f.note("web#0", None, 3)
    assert f.current(NOW) == (True, None)  # every one caught up: the clock


def test_it_never_moves_back_not_even_after_following_the_clock() -> None:
    f = _Input()
    f.note("web#0", None, 1)
    assert f.current(NOW) == (True, None)
    f.note("web#0", NOW - HOUR, 1)  # old events on a caught-up topic: late, as they would be live
    assert f.current(NOW + 5) == (True, NOW + 5)


@given(reports)
def test_monotone_and_never_ahead_of_the_clock_or_the_slowest_partition(steps: list[tuple[int, int | None]]) -> None:
    f = _Input()
    seen: dict[int, int | None] = {}
    last = None
    was_live = False
    clock = NOW
    for partition, floor in steps:
        clock += 1
        f.note(f"p{partition}", floor, 4)
        seen[partition] = floor
        known, value = f.current(clock)
        assert known == (len(seen) == 4)
        if not known:
            continue
        effective = clock if value is None else value
        if last is not None:
            assert effective >= last
        if value is not None:
            assert value <= clock
            slowest = min(fl for fl in seen.values() if fl is not None)
            # Ahead of the slowest partition only by what was already reached (the clock, if it followed it).
            reached = clock if was_live else (last if last is not None else slowest)
            assert value <= max(slowest, reached)
        last, was_live = effective, value is None


def test_a_shard_fires_nothing_before_its_first_frontier_in_the_flow() -> None:
    clock = [NOW]
    shard = EventTimeFrontier(lambda: clock[0], await_input=True)
    assert shard.now() is None
    shard.advance(NOW - 2 * HOUR)
    assert shard.now() == NOW - 2 * HOUR and not shard.live
    shard.advance(NOW - 3 * HOUR)  # never back
    assert shard.now() == NOW - 2 * HOUR
    shard.advance(None)
    clock[0] += 1000
    assert shard.live and shard.now() == NOW + 1000
    shard.advance(NOW - HOUR)  # falls behind again: keeps what the clock made due
    clock[0] += 1000
    assert shard.now() == NOW + 1000


def test_a_shard_driven_directly_follows_the_clock() -> None:
    clock = [NOW]
    shard = EventTimeFrontier(lambda: clock[0], await_input=False)
    assert shard.live and shard.now() == NOW
