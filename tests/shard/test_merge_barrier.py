"""MergeBarrier (operators/shard/merge_barrier.py) on its own, against a real RocksDB store: moving a
profile out takes its stored copy and timer with it; moved profiles are merged once all have come,
whichever path delivered first; the items that waited come back in order; no epoch ends half-way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nextclick.operators.engine import steps as engine
from nextclick.operators.engine.steps import due_at
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.model import new_profile
from nextclick.operators.records import Decision, Frontier, MergeExpect, MoveIn, MoveOut
from nextclick.operators.shard.cache import ProfileCache
from nextclick.operators.shard.common import Merge
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.merge_barrier import MergeBarrier
from nextclick.operators.shard.quarantine import Quarantine
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import QUARANTINED, TIMER_PREFIX, profile_key
from nextclick.operators.state.store import ShardStore, StateError
from nextclick.operators.state.timers import TimerIndex
from tests.helpers import HOUR, MIN, T0, consent, default_rules, make_event


def _barrier(tmp_path: Path, *, viewing: bool = False) -> MergeBarrier:
    store = ShardStore(tmp_path / "shard", cache_size=0, keep_checkpoints=4, sync=False)
    rules = default_rules()
    cache = ProfileCache(store, TimerIndex(store), rules, 16, Quarantine(store, rules, 0, engine), viewing=viewing)
    return MergeBarrier(store, cache, rules, 0)


def _moved(customer: str, amount: float) -> bytes:
    profile = new_profile(customer)
    engine.on_event(profile, make_event("purchase", T0, customer=customer, amount=amount), default_rules())
    return encode_profile(profile)


def test_a_profile_moved_out_takes_its_stored_copy_and_timer_along(tmp_path: Path) -> None:
    barrier = _barrier(tmp_path, viewing=True)
    cache, store = barrier.cache, barrier.store
    profiles, _, _ = cache.load(["c1"])
    cache.changing(profiles)
    for event in (consent(T0), make_event("add_to_cart", T0 + MIN, sku="s", amount=20.0)):
        engine.on_event(profiles["c1"], event, cache.ruleset)
    cache.changed(profiles)
    cache.flush()
    store.checkpoint()
    assert [k for k, _ in store.scan(TIMER_PREFIX)]
    expected = encode_profile(profiles["c1"])
    moved = barrier.move_out(MoveOut("c1", into="w", route="r"))
    assert (moved.customer, moved.moved, moved.route, moved.blob) == ("w", "c1", "r", expected)
    assert store.get(profile_key("c1")) is None and list(store.scan(TIMER_PREFIX)) == []
    assert "c1" not in cache.live and cache.viewed == {"c1"}  # its tombstone on the view
    assert barrier.move_out(MoveOut("nobody", into="w", route="r")).blob is None


def test_a_quarantined_profile_moves_as_nothing_and_its_record_stays(tmp_path: Path) -> None:
    barrier = _barrier(tmp_path)
    barrier.store.put(profile_key("c1"), QUARANTINED)
    assert barrier.move_out(MoveOut("c1", into="w", route="r")).blob is None
    assert barrier.store.get(profile_key("c1")) == QUARANTINED


def test_held_items_come_back_in_order_once_every_moved_profile_is_merged(tmp_path: Path) -> None:
    barrier = _barrier(tmp_path)
    ids = {"customer": ["w", "a", "b"]}
    assert barrier.expect(MergeExpect("w", ("a", "b"), ids)) == []
    held = [make_event("page_view", T0, customer="w"), make_event("page_view", T0 + 1, customer="w")]
    barrier.held["w"] += held
    assert barrier.move_in(MoveIn("w", "b", _moved("b", 7.0), "r")) == []
    with pytest.raises(StateError, match="expected for 1 customer"):
        barrier.settled("profiles shard 0")
    assert barrier.move_in(MoveIn("w", "a", _moved("a", 5.0), "r")) == held
    barrier.settled("profiles shard 0")
    profile = barrier.cache.live["w"]
    assert profile.facts.revenue == 12.0 and profile.ids == ids
    assert "w" in barrier.cache.dirty
    step = barrier.cache.applied["w"][-1]
    assert isinstance(step, Merge) and step.ids == ids and len(step.blobs) == 2  # replayable
    assert barrier.cache.dirty_due["w"] == due_at(profile, barrier.ruleset)


def test_a_moved_profile_that_arrives_before_its_merge_waits_for_it(tmp_path: Path) -> None:
    barrier = _barrier(tmp_path)
    assert barrier.move_in(MoveIn("w", "a", _moved("a", 5.0), "r")) == []
    with pytest.raises(StateError, match="and 1 unclaimed"):
        barrier.settled("profiles shard 0")
    assert barrier.expect(MergeExpect("w", ("a",), {"customer": ["w", "a"]})) == []  # all here: merged at once
    barrier.settled("profiles shard 0")
    assert barrier.cache.live["w"].facts.revenue == 5.0
    barrier.cache.flush()
    assert decode_profile(barrier.store.get(profile_key("w")) or b"").facts.revenue == 5.0


def _two_logins_in_one_batch(tmp_path: Path, frontier_first: bool) -> list[tuple[str, int]]:
    """A customer with a cart, then one batch with two merges into them (two logins, each a new cookie)
    and the frontier past the cart's deadline, before or after the moved profiles arrive: the decisions
    the absences make, as (rule, profile version)."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + 3 * HOUR),
                       sync=False, await_frontier=True)
    shard = ShardLogic(ctx, None)
    out: list[Any] = []

    def cookie(key: str) -> bytes:  # a cookie's profile that browsed once, as the source shard sends it
        profile = new_profile(key)
        engine.on_event(profile, make_event("page_view", T0, customer=key, event_id=f"{key}-pv",
                                            page_type="product", category="bags"), default_rules())
        return encode_profile(profile)

    def login(event_id: str, at: int) -> Any:
        return make_event("page_view", at, customer="w", event_id=event_id, page_type="product", category="bags")

    out += shard.on_batch([consent(T0, customer="w", event_id="c"),
                           make_event("add_to_cart", T0 + MIN, customer="w", event_id="cart", sku="s", amount=20.0,
                                      quantity=1, category="bags"),
                           Frontier(0, T0 + 2 * MIN)])[0]
    batch: list[Any] = [MergeExpect("w", ("a",), {"customer": ["w", "a"]}), login("login-1", T0 + 5 * MIN),
                        MergeExpect("w", ("b",), {"customer": ["w", "a", "b"]}), login("login-2", T0 + 6 * MIN)]
    caught_up = Frontier(0, None)  # the clock, hours past the cart's deadline
    out += shard.on_batch([*batch, caught_up] if frontier_first else batch)[0]
    out += shard.on_batch([MoveIn("w", "a", cookie("a"), "0"), MoveIn("w", "b", cookie("b"), "0")])[0]
    if not frontier_first:
        out += shard.on_batch([caught_up])[0]
    for _ in range(3):
        out += shard.on_notify()[0]
    return sorted((d.rule_id, d.profile_version) for d in out if isinstance(d, Decision))


def test_a_second_merge_in_the_batch_is_applied_before_the_first_merges_timers_fire(tmp_path: Path) -> None:
    """The first merge completes mid-batch and its customer's events are applied there, before the
    second merge's items: a timer turn at that point fired the cart's absence on a profile without the
    second login, or with it, depending on whether the frontier or the moved profiles came first
    (two channels, no order between them). The same events must give the same decisions."""
    late = _two_logins_in_one_batch(tmp_path / "frontier-last", frontier_first=False)
    early = _two_logins_in_one_batch(tmp_path / "frontier-first", frontier_first=True)
    assert early == late
    assert late and all(version == 6 for _, version in late)  # 2 events of theirs, 2 logins, 2 moved


def _cart_on_a_shard(tmp_path: Path, customer: str, consented: str, *before: Any) -> tuple[ShardLogic, list[Any]]:
    """A shard that waits for the frontier, and `customer`'s cart a minute after `consented` consented
    (`before`: items between the two); what it sent so far."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + 3 * HOUR),
                       sync=False, await_frontier=True)
    shard = ShardLogic(ctx, None)
    out = shard.on_batch([consent(T0, customer=consented, event_id="c"), *before])[0]
    out += shard.on_batch([make_event("add_to_cart", T0 + MIN, customer=customer, event_id="cart", sku="s",
                                      amount=20.0, quantity=1, category="bags"), Frontier(0, T0 + 2 * MIN)])[0]
    return shard, out


def _late_sign_in(tmp_path: Path, frontier_first: bool) -> list[tuple[str, str]]:
    """A cookie's cart with no consent, then a sign-in (the cookie's profile merged into a customer who
    consented) 70 minutes later: after the cart's deadline and the allowed lateness. The frontier's
    timer turn and the merge reach the shard in either order. The decisions, as (rule, customer)."""
    shard, out = _cart_on_a_shard(tmp_path, "a", "w")
    at = T0 + 70 * MIN
    merge = [MoveOut("a", "w", "0", at_ms=at), MergeExpect("w", ("a",), {"customer": ["w"], "cookie": ["a"]}, at_ms=at),
             make_event("login", at, customer="w", event_id="login")]
    past_the_cart = Frontier(0, T0 + 2 * HOUR)
    steps: list[list[Any]] = [[past_the_cart], merge] if frontier_first else [merge, [past_the_cart]]
    for items in steps:
        result = shard.on_batch(items)[0] + shard.on_notify()[0]
        out += result
        moved = [m for m in result if isinstance(m, MoveIn)]
        if moved:
            out += shard.on_batch(moved)[0] + shard.on_notify()[0]
    return sorted((d.rule_id, d.customer) for d in out if isinstance(d, Decision))


def test_a_cart_abandoned_before_a_sign_in_is_judged_on_the_profile_it_was_abandoned_on(tmp_path: Path) -> None:
    """The merge is an event at the sign-in's time on the cookie's profile: the cart, due before it, is
    judged there (no consent: no email) whether the frontier's timer turn or the merge came first. It
    used to move with the profile when the merge came first and be sent, with the customer's consent."""
    late = _late_sign_in(tmp_path / "merge-first", frontier_first=False)
    early = _late_sign_in(tmp_path / "frontier-first", frontier_first=True)
    assert late == early == []


def _shared_after_the_cart(tmp_path: Path, frontier_first: bool) -> list[tuple[str, Any, Any]]:
    """A signed-in customer's cart, then, 90 minutes later (past its deadline and the lateness), the
    cookie signs in as someone else and is detached as shared. The frontier's timer turn and the Detach
    reach the shard in either order. The decisions, as (rule, reachable, address)."""
    from nextclick.operators.records import Detach

    shard, out = _cart_on_a_shard(tmp_path, "w", "w", MergeExpect("w", ("a",), {"customer": ["w"], "cookie": ["a"]},
                                                                  at_ms=T0), MoveIn("w", "a", None, "0"))
    detach, past_the_cart = [Detach("w", "a", at_ms=T0 + 90 * MIN)], [Frontier(0, T0 + 2 * HOUR)]
    for items in ([past_the_cart, detach] if frontier_first else [detach, past_the_cart]):
        out += shard.on_batch(items)[0] + shard.on_notify()[0]
    return sorted((d.rule_id, d.reachable, d.address) for d in out if isinstance(d, Decision))


def test_a_cart_due_before_its_cookie_was_shared_is_judged_with_the_cookie(tmp_path: Path) -> None:
    """An outside probe: in a backlog the Detach of a cookie that became shared reached the shard before
    the frontier's timer turn, so the cart email due an hour before it lost the cookie's reach (and an
    ad with require_address was not sent); live, or with the turn first, it had it. The Detach is an event
    at the sign-in's time: what was due by then fires first."""
    late = _shared_after_the_cart(tmp_path / "detach-first", frontier_first=False)
    early = _shared_after_the_cart(tmp_path / "frontier-first", frontier_first=True)
    assert late == early
    assert late and all("ads" in (reachable or ()) for _, reachable, _ in late), late


def _erased_through_a_later_sign_in(tmp_path: Path, frontier_first: bool) -> list[tuple[str, str]]:
    """A cookie's consented cart; 90 minutes later it signs in as a customer whose erasure the flow read
    first (a backlog reads the control topic ahead of the inputs), so the identity stage erases the cookie
    with the sign-in's time (`fire_before`). The frontier's timer turn and the erasure reach the shard in
    either order. The decisions, as (rule, customer)."""
    from nextclick.operators.records import EraseRequest

    shard, out = _cart_on_a_shard(tmp_path, "a", "a")
    erase = [EraseRequest("a", "linked-by-an-erased-persons-event", requested_at=T0 + 100 * MIN,
                          fire_before=T0 + 90 * MIN)]
    past_the_cart = [Frontier(0, T0 + 2 * HOUR)]
    for items in ([past_the_cart, erase] if frontier_first else [erase, past_the_cart]):
        out += shard.on_batch(items)[0] + shard.on_notify()[0]
    return sorted((d.rule_id, d.customer) for d in out if isinstance(d, Decision))


def test_a_cart_due_before_the_sign_in_that_links_it_to_an_erased_person_is_judged_as_live(tmp_path: Path) -> None:
    """An outside probe: in a 5-hour backlog 70 of 100 such carts (86 with two workers) got their email;
    live, all 100, as the cart was due long before the sign-in. Now the erasure fires what was due by the
    sign-in first, whichever reaches the shard first."""
    late = _erased_through_a_later_sign_in(tmp_path / "erasure-first", frontier_first=False)
    early = _erased_through_a_later_sign_in(tmp_path / "frontier-first", frontier_first=True)
    assert late == early == [("cart_abandonment_email", "a")]
