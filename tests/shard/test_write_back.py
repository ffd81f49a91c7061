"""When changed profiles go to the store within an epoch: late enough that a profile changing again is
encoded once, early enough that the epoch-end pause finds few (operators/shard/cache.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.shard.cache import DIRTY_LIMIT, EARLY_DIRTY_LIMIT
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import profile_key
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import SEC, T0, default_rules, make_event

CUSTOMERS = 300  # more than DIRTY_LIMIT, fewer than EARLY_DIRTY_LIMIT


def _shard(path: Path, epoch_s: float | None) -> ShardLogic:
    ctx = ShardContext(state_dir=path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + 60 * SEC),
                       epoch_s=epoch_s)
    return ShardLogic(ctx, None)


def _live_batches(shard: ShardLogic, rounds: int) -> None:
    """Live traffic: small batches, every customer seen once per round."""
    for r in range(rounds):
        for i in range(CUSTOMERS):
            shard.on_batch([make_event("page_view", T0 + r * SEC + i, customer=f"c{i}", event_id=f"e{r}-{i}",
                                        page_type="home")])


def _written(shard: ShardLogic) -> int:
    return sum(shard.store.get(profile_key(f"c{i}")) is not None for i in range(CUSTOMERS))


def test_early_in_an_epoch_a_changing_profile_waits_instead_of_being_rewritten(tmp_path: Path) -> None:
    young = _shard(tmp_path / "young", epoch_s=3600.0)  # the whole test runs in the epoch's young part
    _live_batches(young, rounds=2)
    assert _written(young) == 0 and len(young.state.cache.dirty) == CUSTOMERS <= EARLY_DIRTY_LIMIT  # type: ignore[union-attr]
    plain = _shard(tmp_path / "plain", epoch_s=None)  # tools and tests: DIRTY_LIMIT throughout
    _live_batches(plain, rounds=2)
    assert _written(plain) >= CUSTOMERS - DIRTY_LIMIT
    for shard in (young, plain):
        shard.snapshot()
        shard.store.close()
    # What was stored is the same either way.
    assert all(read_profile(tmp_path / "young", 1, f"c{i}") == read_profile(tmp_path / "plain", 1, f"c{i}")
               for i in range(0, CUSTOMERS, 37))


def test_the_epoch_end_finds_at_most_dirty_limit_even_when_no_batch_comes(tmp_path: Path) -> None:
    shard = _shard(tmp_path, epoch_s=3600.0)
    _live_batches(shard, rounds=1)
    state = shard.state
    assert state is not None and len(state.cache.dirty) == CUSTOMERS
    assert shard.notify_at() is not None  # a wake-up for when the young part ends
    state.early_until = 0.0  # ... which it now has; traffic stopped, so only notifications come
    turns = 0
    while (at := shard.notify_at()) is not None and at <= datetime.now(UTC) and turns < 100:
        shard.on_notify()
        turns += 1
    assert len(state.cache.dirty) <= DIRTY_LIMIT
    assert turns > 1  # in chunks, not in one stall
    assert _written(shard) >= CUSTOMERS - DIRTY_LIMIT
    shard.snapshot()
    assert not state.cache.dirty
    shard.store.close()


def test_a_wind_down_that_can_write_nothing_stops_asking_until_the_next_batch(tmp_path: Path) -> None:
    shard = _shard(tmp_path, epoch_s=3600.0)
    _live_batches(shard, rounds=1)
    state = shard.state
    assert state is not None
    state.early_until = 0.0
    state.cache.live.clear()  # dirty entries the cache no longer holds: nothing a turn could write
    shard.on_notify()
    assert state.wind_down_at() is None  # no busy loop of notifications
    shard.on_batch([make_event("page_view", T0, customer="c0", event_id="again", page_type="home")])
    assert state.wind_down_at() is not None  # a batch came: it may try again
