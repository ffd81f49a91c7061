"""ShardLogic against a real RocksDB, driven directly (no Kafka): what the decoded-profile cache must not hide."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from nextclick.operators.engine.steps import PRUNE_GRANULE_MS
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.records import EraseRequest
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext, ShardState
from nextclick.operators.state.keys import TIMER_PREFIX, customer_of_key, profile_key, timer_key
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import HOUR, MIN, SEC, T0, consent, default_rules, make_event, one_shard_savepoint


def test_erasing_a_customer_seen_only_this_epoch_reports_and_removes_it(tmp_path: Path) -> None:
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0))
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("page_view", T0, customer="c1"), make_event("page_view", T0, customer="c2")])
    # c1 exists only in the shard's decoded cache: nothing has been written to RocksDB yet.
    assert shard.erase("c1") is True
    assert shard.erase("nobody") is False
    shard.snapshot()
    shard.store.close()
    assert read_profile(tmp_path, 1, "c1") is None
    assert read_profile(tmp_path, 1, "c2") is not None


def _cart_customer_written(tmp_path: Path, clock: ManualClock) -> ShardLogic:
    """c1 consented to email and viewed a page; both written at an epoch end (timer index: far out)."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock)
    shard = ShardLogic(ctx, None)
    shard.on_batch([consent(T0), make_event("page_view", T0 + SEC, page_type="home")])
    shard.snapshot()
    return shard


def test_an_absence_fires_on_time_for_a_change_not_yet_written(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    shard = _cart_customer_written(tmp_path, clock)
    stored_before = shard.store.get(profile_key("c1"))
    # The cart makes the absence timer the earliest; the change stays in memory until the epoch end.
    shard.on_batch([make_event("add_to_cart", T0 + MIN, sku="s1", amount=30.0)])
    assert shard.store.get(profile_key("c1")) == stored_before
    clock.set(T0 + MIN + HOUR + 5 * MIN)  # the deadline plus the allowed lateness
    at = shard.notify_at()
    assert at is not None and at <= clock.wall_deadline(clock.now_ms())
    decisions, _ = shard.on_notify()
    assert [(d.rule_id, d.trigger) for d in decisions] == [("cart_abandonment_email", "cart_abandoned")]
    # Firing the timer wrote nothing early either: the profile goes out once, at the epoch end.
    assert shard.store.get(profile_key("c1")) == stored_before
    shard.snapshot()
    shard.store.close()
    profile = read_profile(tmp_path, 1, "c1")
    assert profile is not None and "cart_abandoned" not in profile["signals"]
    assert "cart_abandonment_email" in profile["history"]["fired"]


def test_a_timer_key_left_stale_by_an_unwritten_change_does_not_fire(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    shard = _cart_customer_written(tmp_path, clock)
    shard.on_batch([make_event("add_to_cart", T0 + MIN, sku="s1", amount=30.0)])
    shard.snapshot()  # the index now holds the cart deadline
    # The purchase cancels the cart; the index keeps the old deadline until this is written.
    shard.on_batch([make_event("purchase", T0 + 2 * MIN, amount=30.0, order_id="o1")])
    clock.set(T0 + 2 * HOUR)
    decisions, _ = shard.on_notify()
    assert [d.rule_id for d in decisions if d.trigger == "cart_abandoned"] == []
    shard.snapshot()
    shard.store.close()


def test_a_timer_turn_between_backlog_batches_does_not_write_the_batch_out(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock)
    shard = ShardLogic(ctx, None)
    # A backlog batch: 40 customers (more than a live flow may leave dirty) and one whose cart
    # deadline has long passed by the clock.
    batch = [make_event("page_view", T0, customer=f"c{i}", page_type="home") for i in range(40)]
    batch.append(make_event("add_to_cart", T0 - 2 * HOUR, customer="late-cart", sku="s1", amount=5.0))
    shard.on_batch(batch)
    shard.on_notify()  # one customer is due
    # Profiles wait for the epoch end: a turn with one due customer is no sign that the flow keeps up.
    assert [c for c in (f"c{i}" for i in range(40)) if shard.store.get(profile_key(c)) is not None] == []
    shard.snapshot()
    assert all(shard.store.get(profile_key(f"c{i}")) is not None for i in range(40))
    shard.store.close()
    late_cart = read_profile(tmp_path, 1, "late-cart")
    assert late_cart is not None and "cart_abandoned" not in late_cart["signals"]  # the turn did run


def test_a_backlog_event_already_due_on_the_clock_has_its_timer_turn_in_the_same_batch(tmp_path: Path) -> None:
    clock = ManualClock(T0 + 3 * HOUR)
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock)
    shard = ShardLogic(ctx, None)
    # Catch-up: consent, then a cart two hours old; its reminder was due an hour ago by the clock.
    out, _ = shard.on_batch([consent(T0), make_event("add_to_cart", T0 + MIN, sku="s1", amount=30.0)])
    assert [(d.rule_id, d.trigger) for d in out] == [("cart_abandonment_email", "cart_abandoned")]
    assert shard.on_notify()[0] == []  # nothing left for a later turn: it fired once
    shard.snapshot()
    # The timer index holds one key for c1: when the earliest of the rest of its state expires.
    timers = [k for k, _ in shard.store.scan(TIMER_PREFIX)]
    shard.store.close()
    stored = read_profile(tmp_path, 1, "c1")
    assert stored is not None and "cart_abandoned" not in stored["signals"]
    granule = PRUNE_GRANULE_MS
    assert timers == [timer_key(-(-stored["prune_at"] // granule) * granule + default_rules().late.allowed_lateness_ms,
                                "c1")]


# --- erasure can't be undone by a crash ----------------------------------------------------------
#
# An erased customer must never come back through a stale timer (docs/state.md). Two guards keep
# it so: `erase_customer` deletes the timer keys of both the current and the last committed profile,
# and `on_notify` drops a due timer whose profile is gone instead of creating one. Each test below
# fails with its guard removed.


def _keys_of(shard: ShardLogic, customer: str) -> list[bytes]:
    return [k for k, _ in shard.store.scan(b"") if customer.encode() in k]


def test_an_erase_after_an_early_write_removes_the_committed_timer_too(tmp_path: Path) -> None:
    clock = ManualClock(T0 + 2 * MIN)
    # One cached profile: a second customer evicts the first, which writes it before the epoch ends,
    # so its timer key moves in this epoch while the committed one still points at the old due time.
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock, cache_profiles=1)
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("add_to_cart", T0, customer="c1", sku="s1", amount=50.0)])
    committed = shard.snapshot()  # Bytewax commits this epoch: profile and cart timer
    epoch = [make_event("page_view", T0 + MIN, customer="c1", event_id="v1", page_type="product"),
             make_event("page_view", T0 + MIN, customer="c2", event_id="v2", page_type="home"),
             EraseRequest("c1", "dsr-1")]
    shard.on_batch(epoch)  # the view moves c1's timer; c2 evicts c1, writing it; the erase is synced
    shard.store.close()  # SIGKILL before the epoch's checkpoint

    shard = ShardLogic(ctx, committed)  # resume; Bytewax replays the epoch's input
    shard.on_batch(epoch)
    shard.snapshot()
    assert _keys_of(shard, "c1") == []  # no profile, no timer: nothing that could bring c1 back
    shard.store.close()


def test_a_due_timer_whose_profile_is_gone_never_creates_one(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock)
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("page_view", T0, customer="c2", page_type="home")])
    shard.store.put(timer_key(T0 + MIN, "c1"), b"")  # a stale timer left by some earlier release
    shard.snapshot()
    clock.set(T0 + HOUR)
    decisions, _ = shard.on_notify()
    shard.snapshot()
    assert decisions == [] and _keys_of(shard, "c1") == []
    shard.store.close()


def test_erasing_a_customer_leaves_the_timer_of_an_id_that_ends_the_same_way(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock)
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("add_to_cart", T0, customer=c, sku="s1", amount=50.0) for c in ("c1", "xc1")])
    shard.snapshot()  # both timer keys are now in this epoch's undo record too
    assert shard.erase("c1") is True
    shard.snapshot()
    assert [k for k, _ in shard.store.scan(b"") if customer_of_key(k) == "c1"] == []
    assert [k for k, _ in shard.store.scan(TIMER_PREFIX) if k.endswith(b"xc1")] != []  # xc1's cart still fires
    shard.store.close()


# --- a storm of timers after downtime: turns of profiles only the store holds ---------------------


def _carts_written_then_reopened(tmp_path: Path, clock: ManualClock, customers: list[str]) -> ShardLogic:
    """Each customer consented and left a cart; written at an epoch end, then the shard reopened as after
    a restart (nothing decoded in its cache)."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock)
    shard = ShardLogic(ctx, None)
    batch = []
    for c in customers:
        batch += [consent(T0, customer=c), make_event("add_to_cart", T0 + MIN, customer=c, sku="s1", amount=30.0)]
    shard.on_batch(batch)
    seq = shard.snapshot()["seq"]
    shard.store.close()
    return ShardLogic(ctx, {"shard": 0, "seq": seq})


def test_timer_turns_of_stored_profiles_fire_write_and_leave_the_cache_to_live_traffic(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    customers = [f"c{i}" for i in range(5)]
    shard = _carts_written_then_reopened(tmp_path, clock, customers)
    shard.on_batch([make_event("page_view", T0 + 2 * MIN, customer="live", page_type="home")])
    clock.set(T0 + 7 * 24 * HOUR)  # a week of downtime: every cart reminder, and all state, expired
    decisions, _ = shard.on_notify()
    assert sorted((d.customer, d.rule_id) for d in decisions) == [(c, "cart_abandonment_email") for c in customers]
    assert shard.state is not None and list(shard.state._live) == ["live"]  # the storm evicted no one
    # Written at once (no later write needed), with nothing left to fire for them.
    assert [k for k, _ in shard.store.scan(TIMER_PREFIX) if not k.endswith(b"live")] == []
    assert shard.on_notify()[0] == []
    shard.snapshot()
    shard.store.close()
    for c in customers:
        profile = read_profile(tmp_path, 1, c)
        # Everything transient is gone, the reminder's cooldown included; the facts stay.
        assert profile is not None and profile["signals"] == {} and profile["seen"] == {}
        assert profile["history"]["fired"] == {} and profile["facts"]["last_seen"] == T0 + MIN


def test_a_crash_after_timer_turns_of_stored_profiles_restores_them_exactly(tmp_path: Path) -> None:
    clock = ManualClock(T0 + MIN)
    customers = [f"c{i}" for i in range(50)]  # enough writes that some reach RocksDB before the crash
    shard = _carts_written_then_reopened(tmp_path, clock, customers)
    before = {c: shard.store.get(profile_key(c)) for c in customers}
    timers_before = [k for k, _ in shard.store.scan(TIMER_PREFIX)]
    seq = shard.store.seq
    clock.set(T0 + 7 * 24 * HOUR)
    first, _ = shard.on_notify()
    assert len(first) == len(customers)
    shard.store.close()  # killed before the epoch ended: the turns must be undone, not half-kept
    shard = ShardLogic(shard.ctx, {"shard": 0, "seq": seq})
    assert {c: shard.store.get(profile_key(c)) for c in customers} == before
    assert [k for k, _ in shard.store.scan(TIMER_PREFIX)] == timers_before
    again, _ = shard.on_notify()  # the replayed epoch makes the same decisions
    assert sorted((d.customer, d.rule_id) for d in again) == sorted((d.customer, d.rule_id) for d in first)
    shard.store.close()


def test_a_dropped_shard_closes_its_store_without_the_collector(tmp_path: Path) -> None:
    """ShardState's parts hold references one way only: when the flow drops a shard, reference counting
    frees it and its RocksDB lock at once (a restart in the same process opens the same directory)."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0))
    state = ShardState.open(ctx, 0, None)
    state.apply([make_event("page_view", T0, customer="c1")])
    seq = state.checkpoint()
    store = weakref.ref(state.store)
    gc.disable()
    try:
        del state
        assert store() is None
        ShardState.open(ctx, 0, seq).close()
    finally:
        gc.enable()


def test_an_erased_customers_events_from_before_the_erasure_are_not_applied_again(tmp_path: Path) -> None:
    """Without identity stitching the shard alone sees the erasure: a replay that reads the erasure before
    the events that preceded it (after a crash, or a restore of an older savepoint) must not bring the
    customer back, also after a restart; an event dated after the erasure starts a new profile."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + HOUR))
    shard = ShardLogic(ctx, None)
    story = [consent(T0), make_event("purchase", T0 + MIN, amount=50.0, order_id="o1")]
    shard.on_batch(story)
    shard.on_batch([EraseRequest("c1", "r1", requested_at=T0 + 10 * MIN)])
    shard.on_batch(story)
    seq = shard.snapshot()
    shard.store.close()
    assert read_profile(tmp_path, 1, "c1") is None
    again = ShardLogic(ctx, seq)  # the erasure is remembered with the shard's state
    again.on_batch(story)
    again.on_batch([make_event("page_view", T0 + 20 * MIN, page_type="home")])
    again.snapshot()
    again.store.close()
    profile = read_profile(tmp_path, 1, "c1")
    assert profile is not None and profile["facts"]["orders"] == 0 and profile["facts"]["version"] == 1


def test_an_erasure_is_remembered_by_every_shard_of_a_resharded_savepoint(tmp_path: Path) -> None:
    """The mark names no customer (a digest), so no shard owns it: re-sharding gives it to every one."""

    from nextclick.operators.state.erased import ErasedKeys
    from nextclick.operators.state.store import ShardStore
    from nextclick.operators.tools.savepoint import reshard

    ctx = ShardContext(state_dir=tmp_path / "state", shards=1, ruleset=default_rules(), clock=ManualClock(T0 + HOUR))
    shard = ShardLogic(ctx, None)
    shard.on_batch([consent(T0), EraseRequest("c1", "r1", requested_at=T0 + 10 * MIN)])
    resume = shard.snapshot()
    shard.store.close()
    assert resume is not None
    seq = int(resume["seq"])
    one_shard_savepoint(tmp_path / "state" / "shard-0000", tmp_path / "sp", seq)
    reshard(tmp_path / "sp", tmp_path / "sp4", 4)
    for n in range(4):
        store = ShardStore.open_read_only(tmp_path / "sp4" / f"shard-{n:04d}")
        try:
            assert ErasedKeys(store).before_erasure("c1", T0 + 5 * MIN), n
        finally:
            store.close()


def test_an_erased_shared_cookie_is_remembered_as_shared(tmp_path: Path) -> None:
    """The mark keeps whether the key was shared, across a reopen, and marking it again keeps that."""
    from nextclick.operators.state.erased import ErasedKeys
    from nextclick.operators.state.store import ShardStore

    store = ShardStore(tmp_path / "s", sync=False)
    marks = ErasedKeys(store)
    store.erase([], written=marks.mark("kiosk", T0, shared=True))
    store.erase([], written=marks.mark("ann", T0))
    store.erase([], written=marks.mark("kiosk", T0 + MIN))  # a later erasure of someone else who used it
    store.checkpoint()
    store.close()
    store = ShardStore(tmp_path / "s", sync=False)
    try:
        again = ErasedKeys(store)
        assert again.was_shared("kiosk") and not again.was_shared("ann") and not again.was_shared("other")
        assert again.erased_at("kiosk") == T0 + MIN and again.erased_at("ann") == T0
    finally:
        store.close()


def test_an_erasure_stays_whole_when_the_process_dies_before_the_checkpoint(tmp_path: Path) -> None:
    """The erasure is committed at once, its mark with it: a crash before the epoch's checkpoint replays
    the customer's purchase from before the erasure, which must not bring them back (an outside probe: the
    mark was staged for the checkpoint, lost with the crash, and the purchase made a new profile)."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + HOUR))
    shard = ShardLogic(ctx, None)
    shard.on_batch([consent(T0)])
    resume = shard.snapshot()
    purchase = make_event("purchase", T0 + MIN, order_id="o1", amount=40.0)
    shard.on_batch([purchase, EraseRequest("c1", "r1", requested_at=T0 + 10 * MIN)])
    shard.store.close()  # SIGKILL: no checkpoint of this epoch

    again = ShardLogic(ctx, resume)  # resumed from the last checkpoint; the epoch is read again
    again.on_batch([purchase])
    again.snapshot()
    again.store.close()
    assert read_profile(tmp_path, 1, "c1") is None


def test_an_erased_profiles_tombstone_is_on_the_view_before_the_erasure_is_done(tmp_path: Path) -> None:
    """Its tombstone is acknowledged before the erasure commits, so a crash before the checkpoint cannot
    leave the view's last record live (a replay finds nothing to erase and writes nothing)."""
    published: list[tuple[list[tuple[str, object]], set[str]]] = []

    def view(changes: list[tuple[str, object]], erased: set[str]) -> int:
        published.append((changes, erased))
        assert shard.store.get(profile_key("c1")) is not None, "the tombstone goes out first"
        return len(changes)

    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + HOUR),
                       view=view)  # type: ignore[arg-type]
    shard = ShardLogic(ctx, None)
    shard.on_batch([consent(T0)])
    shard.snapshot()
    published.clear()
    shard.on_batch([EraseRequest("c1", "r1", requested_at=T0 + 10 * MIN)])
    assert published == [([("profiles/c1", None)], {"profiles/c1"})]
    shard.store.close()


def test_a_follow_up_erasure_keeps_a_profile_started_after_the_erasure_and_erases_an_older_one(
        tmp_path: Path) -> None:
    """A follow-up (one identifier of a linked erasure, recorded by the identity stage) finishes what a crash
    left, but a profile whose first event is after the erasure is someone's activity since: kept."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + HOUR))
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("page_view", T0, customer="old"),
                    make_event("page_view", T0 + 20 * MIN, customer="new")])
    shard.on_batch([EraseRequest("old", "r1", requested_at=T0 + 10 * MIN, follow_up=True),
                    EraseRequest("new", "r1", requested_at=T0 + 10 * MIN, follow_up=True)])
    shard.snapshot()
    shard.store.close()
    assert read_profile(tmp_path, 1, "old") is None
    assert read_profile(tmp_path, 1, "new") is not None


def test_a_profile_moved_out_in_this_epoch_gets_its_tombstone_at_once_when_erased(tmp_path: Path) -> None:
    """A sign-in's merge took the cookie's profile out of its shard earlier in the epoch: its last record on
    the view is still the committed one, and an erasure must tombstone it before it commits (an outside
    probe: the kill lost the staged tombstones and the service answered for the cookie)."""
    from nextclick.operators.records import MoveOut

    published: list[tuple[list[tuple[str, object]], set[str]]] = []

    def view(changes: list[tuple[str, object]], erased: set[str]) -> int:
        published.append((changes, erased))
        return len(changes)

    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + HOUR),
                       view=view)  # type: ignore[arg-type]
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("add_to_cart", T0, customer="ck", sku="s", amount=5.0)])
    shard.snapshot()
    published.clear()
    shard.on_batch([MoveOut("ck", "cust", "customer/0")])
    from nextclick.operators.infra import metrics

    erased = metrics.counter_values(metrics.ERASURES).get((), 0.0)
    shard.on_batch([EraseRequest("ck", "r1", requested_at=T0 + 10 * MIN)])
    assert published == [([("profiles/ck", None)], {"profiles/ck"})]
    # Counted where the profile is now (the linked family), not here too (a probe saw one person counted twice).
    assert metrics.counter_values(metrics.ERASURES).get((), 0.0) == erased
    shard.store.close()
