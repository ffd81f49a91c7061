"""TimerRunner (operators/shard/timer_runner.py) on its own, against a real RocksDB store: turns by the
frontier, cold profiles written back at once and never cached, dirty ones by their own due time,
bounded turns, and customers waiting for a merge left for later."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.engine import steps as engine
from nextclick.operators.engine.steps import due_at
from nextclick.operators.frontier import EventTimeFrontier
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.profile.codec import decode_profile
from nextclick.operators.records import Decision
from nextclick.operators.shard import timer_runner
from nextclick.operators.shard.cache import ProfileCache
from nextclick.operators.shard.quarantine import Quarantine
from nextclick.operators.shard.timer_runner import TimerRunner
from nextclick.operators.state.keys import TIMER_PREFIX, profile_key, timer_key
from nextclick.operators.state.store import ShardStore
from nextclick.operators.state.timers import TimerIndex
from tests.helpers import HOUR, MIN, T0, consent, default_rules, make_event

FIRES = T0 + 2 * HOUR  # past the cart's deadline and the allowed lateness


class _Shard:
    """The parts a runner works with, over one store; `restart` drops everything held in memory."""

    def __init__(self, tmp_path: Path, clock: ManualClock, *, await_input: bool = False) -> None:
        self.store = ShardStore(tmp_path / "shard", cache_size=0, keep_checkpoints=4, sync=False)
        self.clock, self.await_input = clock, await_input
        self.waiting: dict[str, set[str]] = {}
        self.restart()

    def restart(self) -> None:
        rules = default_rules()
        self.timers = TimerIndex(self.store)
        self.frontier = EventTimeFrontier(self.clock.now_ms, await_input=self.await_input)
        self.cache = ProfileCache(self.store, self.timers, rules, 16, Quarantine(self.store, rules, 0, engine))
        self.runner = TimerRunner(self.store, self.timers, self.frontier, self.cache, rules, engine, self.waiting)

    def carts(self, *customers: str) -> int:
        """Consented customers with a cart (left in the cache, dirty); their first due time (the cart's
        reminder is due by `FIRES`)."""
        profiles, _, _ = self.cache.load(list(customers))
        self.cache.changing(profiles)
        for customer, profile in profiles.items():
            for event in (consent(T0, customer=customer),
                          make_event("add_to_cart", T0 + MIN, customer=customer, sku="s", amount=20.0)):
                engine.on_event(profile, event, self.cache.ruleset)
        self.cache.changed(profiles)
        due = due_at(profiles[customers[0]], self.cache.ruleset)
        assert due is not None
        return due


def test_nothing_fires_while_the_frontier_is_unknown(tmp_path: Path) -> None:
    shard = _Shard(tmp_path, ManualClock(T0 + 3 * HOUR), await_input=True)
    due = shard.carts("c1")
    assert shard.runner.next_due() == due
    assert shard.runner.due_now() is False and shard.runner.fire_due() == []
    shard.frontier.advance(FIRES)
    assert shard.runner.due_now() is True
    assert [d.rule_id for d in shard.runner.fire_due() if isinstance(d, Decision)] == ["cart_abandonment_email"]


def test_a_cold_profile_is_turned_and_written_back_at_once_without_entering_the_cache(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    shard = _Shard(tmp_path, clock)
    shard.carts("c1")
    shard.cache.flush()
    shard.store.checkpoint()
    shard.restart()
    clock.set(FIRES)
    out = shard.runner.fire_due()
    assert [(d.customer, d.rule_id) for d in out if isinstance(d, Decision)] == [("c1", "cart_abandonment_email")]
    assert shard.cache.live == {} and shard.cache.dirty == {}
    stored = decode_profile(shard.store.get(profile_key("c1")) or b"")
    assert "cart_abandonment_email" in stored.history.fired
    after = due_at(stored, shard.cache.ruleset)
    assert [k for k, _ in shard.store.scan(TIMER_PREFIX)] == ([] if after is None else [timer_key(after, "c1")])


def test_a_dirty_profile_fires_by_its_own_due_time_and_is_written_only_at_the_flush(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    shard = _Shard(tmp_path, clock)
    due = shard.carts("c1")
    assert shard.store.get(profile_key("c1")) is None  # no index key either: only its own due time
    assert shard.timers.earliest() == due
    clock.set(FIRES)
    assert [d.rule_id for d in shard.runner.fire_due() if isinstance(d, Decision)] == ["cart_abandonment_email"]
    assert shard.store.get(profile_key("c1")) is None and "c1" in shard.cache.dirty
    assert shard.cache.applied["c1"] == [FIRES]  # the turn is in the replay log
    shard.cache.flush()
    assert "cart_abandonment_email" in decode_profile(shard.store.get(profile_key("c1")) or b"").history.fired


def test_a_storm_drains_over_bounded_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timer_runner, "TIMER_LIMIT", 2)
    clock = ManualClock(T0 + MIN)
    shard = _Shard(tmp_path, clock)
    shard.carts(*[f"c{n}" for n in range(5)])
    shard.cache.flush()
    shard.store.checkpoint()
    shard.restart()
    clock.set(FIRES)
    turns = []
    while shard.runner.due_now():
        turns.append(len(shard.runner.fire_due()))
    assert turns == [2, 2, 1]


def test_a_customer_waiting_for_a_merge_gets_the_turn_after_it(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    shard = _Shard(tmp_path, clock)
    shard.carts("c1", "c2")
    clock.set(FIRES)
    shard.waiting["c1"] = {"moved"}
    assert [d.customer for d in shard.runner.fire_due() if isinstance(d, Decision)] == ["c2"]
    del shard.waiting["c1"]
    assert [d.customer for d in shard.runner.fire_due() if isinstance(d, Decision)] == ["c1"]


def test_a_profile_due_as_soon_as_a_batch_changed_it_is_turned_in_that_batch(tmp_path: Path) -> None:
    clock = ManualClock(T0 + 3 * HOUR)  # caught up, the cart's deadline already past
    shard = _Shard(tmp_path, clock)
    profiles, _, _ = shard.cache.load(["c1"])
    for event in (consent(T0), make_event("add_to_cart", T0 + MIN, sku="s", amount=20.0)):
        engine.on_event(profiles["c1"], event, shard.cache.ruleset)
    outcome = engine.Outcome()
    dues = shard.runner.due_after_batch(profiles, outcome)
    assert [d.rule_id for d in outcome.decisions] == ["cart_abandonment_email"]
    assert dues == {"c1": due_at(profiles["c1"], shard.cache.ruleset)}
