"""ProfileCache (operators/shard/cache.py) on its own, against a real RocksDB store: the LRU of decoded
profiles, the dirty set and its write-back with the timer keys, and the way into quarantine."""

from __future__ import annotations

from pathlib import Path

import orjson

from nextclick.operators.engine import steps as engine
from nextclick.operators.engine.steps import due_at
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.model import Profile
from nextclick.operators.shard.cache import ProfileCache
from nextclick.operators.shard.quarantine import Quarantine
from nextclick.operators.state.keys import QUARANTINED, profile_key, quarantine_key, timer_key
from nextclick.operators.state.store import ShardStore
from nextclick.operators.state.timers import TimerIndex
from tests.helpers import MIN, T0, consent, default_rules, make_event


def _cache(tmp_path: Path, capacity: int = 16) -> ProfileCache:
    store = ShardStore(tmp_path / "shard", cache_size=0, keep_checkpoints=4, sync=False)
    rules = default_rules()
    return ProfileCache(store, TimerIndex(store), rules, capacity, Quarantine(store, rules, 0, engine))


def _change(cache: ProfileCache, customer: str, *events_ts: int) -> Profile:
    """Load one customer and apply page views at `events_ts`, as the shard does (replay log included)."""
    profiles, _, _ = cache.load([customer])
    cache.changing(profiles)
    for ts in events_ts:
        event = make_event("page_view", ts, customer=customer, page_type="home")
        engine.on_event(profiles[customer], event, cache.ruleset)
        cache.applied.setdefault(customer, []).append(event)
    cache.changed(profiles)
    return profiles[customer]


def test_a_change_stays_in_memory_until_the_flush_which_writes_it_and_moves_its_timer_key(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    profiles, created, quarantined = cache.load(["c1"])
    assert created == {"c1"} and quarantined == set()
    cache.changing(profiles)
    profile = profiles["c1"]
    for event in (consent(T0), make_event("add_to_cart", T0 + MIN, sku="s", amount=20.0)):
        engine.on_event(profile, event, cache.ruleset)
    cache.changed(profiles)
    due = due_at(profile, cache.ruleset)
    assert due is not None
    assert cache.store.get(profile_key("c1")) is None and cache.dirty_due == {"c1": due}
    assert cache.timers.earliest() == due  # woken for it though nothing is written
    cache.flush()
    assert cache.store.get(profile_key("c1")) == encode_profile(profile)
    assert cache.store.get(timer_key(due, "c1")) == b""
    assert cache.dirty == {} and cache.dirty_due == {} and "c1" in cache.live


def test_the_least_recently_used_profile_is_evicted_and_written_if_dirty(tmp_path: Path) -> None:
    cache = _cache(tmp_path, capacity=2)
    first = _change(cache, "c1", T0)
    _change(cache, "c2", T0)
    assert cache.store.get(profile_key("c1")) is None
    _change(cache, "c3", T0)
    assert list(cache.live) == ["c2", "c3"]
    assert cache.store.get(profile_key("c1")) == encode_profile(first)
    assert "c1" not in cache.dirty and "c1" not in cache.applied
    assert cache.retired  # its replay log is freed at the next turn, not during the write
    cache.new_turn()
    assert cache.retired == []


def test_over_the_dirty_bound_the_least_recently_changed_are_written_never_the_batch_s_own(tmp_path: Path) -> None:
    cache = _cache(tmp_path, capacity=100)
    cache.dirty_limit = 2  # a batch of one customer: the bound is 4 (4 times the batch)
    for n in range(5):
        _change(cache, f"c{n}", T0)
    assert [c for c in ("c0", "c1", "c2", "c3", "c4") if cache.store.get(profile_key(c)) is not None] == \
        ["c0", "c1", "c2"]
    assert list(cache.dirty) == ["c3", "c4"]


def test_a_stored_profile_that_cannot_be_decoded_is_set_aside_and_reported(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.store.put(profile_key("bad"), b"\x00 not a profile")
    cache.store.checkpoint()
    profiles, created, quarantined = cache.load(["bad", "new"])
    assert list(profiles) == ["new"] and created == {"new"} and quarantined == {"bad"}
    assert cache.store.get(profile_key("bad")) == QUARANTINED
    record = orjson.loads(cache.store.get(quarantine_key("bad")) or b"{}")
    assert record["step"] == "decode_profile"
    assert cache.load(["bad"])[2] == {"bad"}  # and stays aside


def test_restore_rebuilds_the_profile_from_the_stored_copy_and_the_replay_log(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    _change(cache, "c1", T0)
    cache.flush()
    cache.store.checkpoint()
    profile = _change(cache, "c1", T0 + MIN)
    expected = encode_profile(profile)
    profile.facts.revenue = 1e9  # what a failing event left half-applied
    profiles = {"c1": profile}
    assert cache.restore("c1", profiles) is True
    assert encode_profile(profiles["c1"]) == expected and cache.live["c1"] is profiles["c1"]


def test_forget_drops_unwritten_changes(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    _change(cache, "c1", T0)
    assert cache.forget("c1") is True and cache.forget("c1") is False
    cache.flush()
    assert cache.store.get(profile_key("c1")) is None
    assert (cache.live, cache.dirty, cache.dirty_due, cache.applied) == ({}, {}, {}, {})


def test_view_changes_show_written_profiles_as_stored_and_gone_ones_as_none(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "shard", cache_size=0, keep_checkpoints=4, sync=False)
    rules = default_rules()
    cache = ProfileCache(store, TimerIndex(store), rules, 1, Quarantine(store, rules, 0, engine), viewing=True)
    _change(cache, "c1", T0)
    _change(cache, "c2", T0)  # evicts c1: written, shown from the store
    cache.flush()
    cache.mark_viewed("gone")
    cache.mark_viewed("erased", erased=True)
    changes, erased = cache.view_changes("profiles")
    assert [key for key, _ in changes] == ["profiles/c1", "profiles/c2", "profiles/erased", "profiles/gone"]
    assert erased == {"profiles/erased"}  # its tombstone says why; "gone" (merged away) says nothing
    c1 = changes[0][1]
    assert c1 is not None and encode_profile(c1) == store.get(profile_key("c1"))
    assert changes[3][1] is None and cache.viewed == set() == cache.erased_viewed
    assert decode_profile(store.get(profile_key("c2")) or b"").customer == "c2"
