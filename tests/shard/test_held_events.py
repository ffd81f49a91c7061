"""Event-time order across readers in a shard, without identity stitching (operators/shard/held.py).

The identity stage holds events for the frontier when several workers read the input (an outside
probe: a 2-process cluster sent cross-sells to customers who had withdrawn email consent 70 s before
their store purchase). Without stitching there is no identity stage: each reader's events reach the
shard on its own channel, and the shard must hold them itself.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.records import Decision, EraseRequest, Event, ShardProgress, SourcePosition
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import HELD_EVENT_PREFIX, customer_of_key, held_event_key, is_held_of
from nextclick.operators.state.store import ShardStore
from tests.helpers import HOUR, MIN, T0, consent, default_rules, make_event, one_shard_savepoint, raw_entries

BOUND = MIN


def at(event: Event, topic: str, offset: int) -> Event:
    return msgspec.structs.replace(event, source=SourcePosition(topic, 0, offset))


def shard(root: Path, bound: int | None, resume: dict[str, int] | None = None, keep: int = 64) -> ShardLogic:
    ctx = ShardContext(state_dir=root, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + 10 * HOUR),
                       sync=False, await_frontier=True, direct=True, order_bound_ms=bound, keep_checkpoints=keep)
    return ShardLogic(ctx, resume)


def the_probes_batches(customer: str = "c1", offset: int = 0) -> list[list[object]]:
    """The web reader's batch arrives first: consent, then its withdrawal 70 s after the store purchase."""
    granted = at(consent(T0 - 30 * MIN, customer=customer, event_id=f"{customer}-granted"), "web", offset)
    withdrawal = at(consent(T0 + 70_000, granted=False, customer=customer, event_id=f"{customer}-withdrawal"),
                    "web", offset + 1)
    purchase = at(make_event("store_purchase", T0, customer=customer, event_id=f"{customer}-purchase",
                             order_id="o1", amount=50.0), "store", offset)
    return [[granted, withdrawal, ShardProgress(0, "web#0", T0 + 80_000, 2)],
            [purchase, ShardProgress(0, "store#0", T0 + 90_000, 2)]]


def cross_sells(out: list[object]) -> list[str]:
    return [d.customer for d in out if isinstance(d, Decision) and d.rule_id == "post_purchase_cross_sell"]


def erase_c1_and_read_what_stays(logic: ShardLogic, root: Path) -> list[bytes]:
    """Erase c1, commit, purge: every raw entry of the store that still holds c1's withdrawal."""
    logic.on_batch([EraseRequest("c1", "dsr-1", None, requested_at=T0 + 100_000)])
    logic.snapshot()
    logic.store.purge()
    logic.store.close()
    return [k for k, v in raw_entries(root / "shard-0000") if b"c1-withdrawal" in k + v]


def test_a_purchase_read_after_a_later_withdrawal_is_applied_first(tmp_path: Path) -> None:
    """In event time the purchase came while the customer still consented: a cross-sell. One reader
    holds nothing and applies what comes as it comes."""
    ordered = shard(tmp_path / "ordered", BOUND)
    out = [item for batch in the_probes_batches() for item in ordered.on_batch(batch)[0]]
    assert cross_sells(out) == ["c1"]
    as_read = shard(tmp_path / "as-read", None)
    out = [item for batch in the_probes_batches() for item in as_read.on_batch(batch)[0]]
    assert cross_sells(out) == []


def test_what_is_held_at_a_checkpoint_is_held_again_after_a_resume(tmp_path: Path) -> None:
    first, second = the_probes_batches()
    before = shard(tmp_path, BOUND)
    assert before.on_batch(first)[0] == []  # the store partition has not reported
    resume = before.snapshot()
    before.store.close()
    # SIGKILL after that checkpoint: the input resumes after the withdrawal, which the shard holds.
    after = shard(tmp_path, BOUND, resume)
    assert after.state is not None and after.state.held.order is not None and after.state.held.order.held == 2
    assert cross_sells(after.on_batch([ShardProgress(0, "web#0", T0 + 80_000, 2), *second])[0]) == ["c1"]
    after.snapshot()
    assert list(after.store.scan(HELD_EVENT_PREFIX)) == []  # let go: no longer stored


def test_what_several_readers_held_is_let_go_when_one_resumes_it(tmp_path: Path) -> None:
    """A rescale to one process resumes a shard that holds events: they still wait for the frontier,
    and so does what is read after them; then read order again."""
    first, second = the_probes_batches()
    before = shard(tmp_path, BOUND)
    before.on_batch(first)
    resume = before.snapshot()
    before.store.close()
    one = shard(tmp_path, None, resume)
    assert one.on_batch([second[0]])[0] == []
    out = one.on_batch([ShardProgress(0, "web#0", T0 + 80_000, 2), second[1]])[0]
    assert cross_sells(out) == ["c1"]
    assert one.state is not None and one.state.held.order is None


def test_live_input_holds_nothing(tmp_path: Path) -> None:
    """Every partition caught up (floor None): the frontier is the clock and events go at once."""
    logic = shard(tmp_path, BOUND)
    logic.on_batch([ShardProgress(0, "web#0", None, 2), ShardProgress(0, "store#0", None, 2)])
    late = at(make_event("store_purchase", T0 + 10 * HOUR, event_id="now", order_id="o9", amount=50.0), "store", 7)
    out = logic.on_batch([at(consent(T0 + 10 * HOUR - MIN, event_id="c-now"), "web", 5), late])[0]
    assert cross_sells(out) == ["c1"]
    assert logic.state is not None and logic.state.held.order is not None and logic.state.held.order.held == 0


def test_an_erasure_takes_its_customers_held_events_out_of_the_shards_state(tmp_path: Path) -> None:
    """Held events are in the shard's checkpoints: an erased customer's from before the erasure must
    not wait there, nor leave a copy in an undo record; someone else's stay held."""
    logic = shard(tmp_path, BOUND)
    first, _ = the_probes_batches()
    other, _ = the_probes_batches("c2", offset=10)
    logic.on_batch(first)
    logic.snapshot()  # held and stored
    logic.on_batch(other)
    logic.snapshot()  # the undo record of this checkpoint holds what the one before stored
    assert logic.state is not None and logic.state.held.order is not None and logic.state.held.order.held == 4
    logic.on_batch([EraseRequest("c1", "dsr-1", None, requested_at=T0 + 100_000)])
    assert sorted(e.event_id for e in logic.state.held.order.events()) == ["c2-granted", "c2-withdrawal"]
    logic.snapshot()
    logic.store.purge()
    logic.store.close()
    entries = raw_entries(tmp_path / "shard-0000")
    assert not [k for k, v in entries if b"c1-withdrawal" in k + v or b"c1-granted" in k + v]
    assert any(b"c2-withdrawal" in v for _, v in entries)


def test_an_erasure_leaves_no_copy_of_held_events_let_go_before_it(tmp_path: Path) -> None:
    """A held event let go has its key deleted at the next checkpoint, whose undo record keeps the event."""
    logic = shard(tmp_path, BOUND)
    first, second = the_probes_batches()
    logic.on_batch(first)
    logic.snapshot()  # held and stored
    logic.on_batch(second)  # let go
    logic.snapshot()  # its key deleted: the undo record of this checkpoint holds it
    assert not erase_c1_and_read_what_stays(logic, tmp_path)


def test_an_erasure_removes_held_events_stored_before_the_undo_records_kept(tmp_path: Path) -> None:
    """Undo records are pruned (state.keep_checkpoints): a key stored long ago is in none of them."""
    logic = shard(tmp_path, BOUND, keep=1)
    first, _ = the_probes_batches()
    logic.on_batch(first)
    for n in range(4):  # someone else's events, checkpoint after checkpoint: the first undo records go
        logic.on_batch([at(make_event("page_view", T0 + n, customer="c9", event_id=f"pv{n}"), "web", 50 + n)])
        logic.snapshot()
    logic.store.purge()
    assert not erase_c1_and_read_what_stays(logic, tmp_path)


def test_held_events_move_with_their_customer_in_a_reshard(tmp_path: Path) -> None:
    """A re-shard routes keys by their customer: a held event's key names its customer, and no other."""
    from nextclick.operators.tools.savepoint import reshard

    key = held_event_key("c1", b"web\0" + bytes(12))
    assert customer_of_key(key) == "c1" and is_held_of(key, b"c1") and not is_held_of(key, b"c")
    logic = shard(tmp_path / "state", BOUND)
    batches = [the_probes_batches(f"c{n}", offset=10 * n)[0] for n in range(8)]
    for batch in batches:
        logic.on_batch(batch)
    resume = logic.snapshot()
    logic.store.close()
    assert resume is not None
    one_shard_savepoint(tmp_path / "state" / "shard-0000", tmp_path / "sp", int(resume["seq"]))
    reshard(tmp_path / "sp", tmp_path / "sp4", 4)
    from nextclick.operators.state.keys import shard_of

    held: dict[str, int] = {}
    for n in range(4):
        store = ShardStore.open_read_only(tmp_path / "sp4" / f"shard-{n:04d}")
        try:
            for k, _ in store.scan(HELD_EVENT_PREFIX):
                customer = customer_of_key(k)
                assert customer is not None and shard_of(customer, 4) == n
                held[customer] = held.get(customer, 0) + 1
        finally:
            store.close()
    assert held == {f"c{n}": 2 for n in range(8)}


def test_bench_held_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """bench.held runs (the figure itself is for docs/performance.md, not for a test)."""
    from bench import held

    held.main(["--events", "2000", "--customers", "500", "--repeat", "1"])
    assert "several readers (held)" in capsys.readouterr().out
