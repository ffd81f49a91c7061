"""Quarantine (operators/shard/quarantine.py) on its own, against a real RocksDB store: a customer set
aside leaves a record and no timer; a failed event is undone by replaying what succeeded before it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from nextclick.operators.engine import steps as engine
from nextclick.operators.engine.merge import merge_all
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.model import new_profile
from nextclick.operators.records import Event, Outcome
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.common import Applied, Merge
from nextclick.operators.shard.quarantine import Quarantine
from nextclick.operators.state.keys import (
    QUARANTINED,
    TIMER_PREFIX,
    is_timer_of,
    profile_key,
    quarantine_key,
    timer_key,
)
from nextclick.operators.state.store import ShardStore
from tests.helpers import HOUR, MIN, T0, consent, default_rules, make_event


def _store(tmp_path: Path) -> ShardStore:
    return ShardStore(tmp_path / "shard", cache_size=0, keep_checkpoints=4, sync=False)


def _timers(store: ShardStore, customer: str) -> list[bytes]:
    return [k for k, _ in store.scan(TIMER_PREFIX) if is_timer_of(k, customer.encode())]


def test_a_customer_set_aside_keeps_the_stored_bytes_and_loses_every_timer_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put(profile_key("c1"), b"stored bytes")
    for due, customer in ((T0, "c1"), (T0 + HOUR, "c1"), (T0, "c2")):
        store.put(timer_key(due, customer), b"")
    store.checkpoint()
    quarantine = Quarantine(store, default_rules(), 0, engine)
    quarantine.record("c1", "engine.on_timers", ZeroDivisionError(), None, {T0, None})
    assert store.get(profile_key("c1")) == QUARANTINED
    record = orjson.loads(store.get(quarantine_key("c1")) or b"{}")
    assert record == {"customer": "c1", "step": "engine.on_timers", "exception": "ZeroDivisionError",
                      "stored_base64": base64.b64encode(b"stored bytes").decode()}
    assert _timers(store, "c1") == [] and _timers(store, "c2") == [timer_key(T0, "c2")]
    quarantine.record("c1", "replay", ValueError(), None, set())  # already aside: the first record stays
    assert orjson.loads(store.get(quarantine_key("c1")) or b"{}")["step"] == "engine.on_timers"


def test_rebuild_replays_events_timer_turns_and_merges_onto_the_stored_copy(tmp_path: Path) -> None:
    store, rules = _store(tmp_path), default_rules()
    stored = new_profile("c1")
    engine.on_event(stored, consent(T0), rules)
    store.put(profile_key("c1"), encode_profile(stored))
    other = new_profile("c2")
    engine.on_event(other, make_event("purchase", T0, customer="c2", amount=5.0), rules)
    cart = msgspec.structs.replace(make_event("add_to_cart", T0 + MIN, sku="s", amount=20.0), id_type="customer")
    steps: list[Applied] = [cart,
                            T0 + 2 * HOUR, Merge((encode_profile(other),), {"customer": ["c1", "c2"]})]
    expected = decode_profile(encode_profile(stored))
    expected.ids = {"customer": ["c1"]}  # learnt from the cart's identifier type
    engine.on_event(expected, cart, rules)
    engine.on_timers(expected, rules, T0 + 2 * HOUR)
    merge_all(expected, [other], rules)
    expected.ids = {"customer": ["c1", "c2"]}
    rebuilt = Quarantine(store, rules, 0, engine).rebuild("c1", steps)
    assert encode_profile(rebuilt) == encode_profile(expected)
    assert Quarantine(store, rules, 0, engine).rebuild("nobody", []).customer == "nobody"  # never stored: new


class _Failing:
    """Engine steps whose timer turn raises: a replay runs the steps the shard handed over."""

    @staticmethod
    def on_event(profile: Any, event: Event, ruleset: RuleSet, out: Outcome | None = None) -> Outcome:
        return engine.on_event(profile, event, ruleset, out)

    @staticmethod
    def on_timers(profile: Any, ruleset: RuleSet, now_ms: int, out: Outcome | None = None) -> Outcome:
        raise ZeroDivisionError


def test_rebuild_runs_the_engine_steps_it_was_given(tmp_path: Path) -> None:
    quarantine = Quarantine(_store(tmp_path), default_rules(), 0, _Failing)
    assert quarantine.rebuild("c1", [consent(T0)]).facts.version >= 1
    with pytest.raises(ZeroDivisionError):
        quarantine.rebuild("c1", [consent(T0), T0 + HOUR])
