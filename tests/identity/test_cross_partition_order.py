"""Event-time order across the channels of several readers, at the identity stage (operators/identity/order.py).

An outside probe ran a 2-process cluster (and one process with --workers 2) on a backlog where each
customer bought in the store and withdrew email consent on the web 70 s later, or the other way round:
with the default bound of one minute, cross-sells went to customers who had withdrawn and were missing
for some who had not, in every run. Each reader sends on its own channel, and the stage saw the
withdrawal, read later, first.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.identity.guards import default_identity_rules
from nextclick.operators.identity.order import HELD_PREFIX, CrossPartitionOrder
from nextclick.operators.identity.stage import IdentityContext, IdentityLogic
from nextclick.operators.records import Event, Progress, SourcePosition
from tests.helpers import MIN, T0, consent, make_event, raw_entries

BOUND = MIN


def at(event: Event, topic: str, offset: int) -> Event:
    return msgspec.structs.replace(event, source=SourcePosition(topic, 0, offset))


def routed_events(out: list[tuple[str, object]]) -> list[str]:
    return [item.event_id for _, batch in out for item in (batch if isinstance(batch, list) else [batch])
            if isinstance(item, Event)]


def stage(root: Path, bound: int | None) -> IdentityLogic:
    return IdentityLogic(IdentityContext(root, 2, default_identity_rules(), sync=False, order_bound_ms=bound), None)


def the_probes_batches() -> list[list[object]]:
    """The web reader's batch reaches the stage first: the withdrawal, 70 s after the store purchase."""
    withdrawal = at(consent(T0 + 70_000, granted=False, event_id="withdrawal"), "web", 0)
    purchase = at(make_event("store_purchase", T0, event_id="purchase", order_id="o1", amount=50.0), "store", 0)
    return [[withdrawal, Progress("web#0", T0 + 80_000, 2)], [purchase, Progress("store#0", T0 + 90_000, 2)]]


def test_events_more_than_the_bound_apart_reach_the_shards_in_event_time_order(tmp_path: Path) -> None:
    ordered = stage(tmp_path / "ordered", BOUND)
    out = [item for batch in the_probes_batches() for item in ordered.on_batch(batch)[0]]
    assert routed_events(out) == ["purchase", "withdrawal"]
    as_read = stage(tmp_path / "as-read", None)  # one reader: nothing held, read order kept
    out = [item for batch in the_probes_batches() for item in as_read.on_batch(batch)[0]]
    assert routed_events(out) == ["withdrawal", "purchase"]


def test_what_is_held_at_a_checkpoint_is_held_again_after_a_resume(tmp_path: Path) -> None:
    first, second = the_probes_batches()
    before = stage(tmp_path / "s", BOUND)
    assert routed_events(before.on_batch(first)[0]) == []  # the store partition has not reported
    resume = before.snapshot()
    before.state.close()
    # SIGKILL after that checkpoint: the input resumes after the withdrawal, which the stage holds.
    after = IdentityLogic(IdentityContext(tmp_path / "s", 2, default_identity_rules(), sync=False,
                                          order_bound_ms=BOUND), resume)
    assert after.state.order is not None and after.state.order.held == 1
    # Every partition reports again once it reads after the resume; the web one has nothing new.
    assert routed_events(after.on_batch([Progress("web#0", T0 + 80_000, 2), *second])[0]) == \
        ["purchase", "withdrawal"]


def test_what_several_readers_held_is_let_go_when_one_resumes_it(tmp_path: Path) -> None:
    """A rescale to one process resumes a stage that holds events: they still wait for the frontier,
    and so does what is read after them; then read order again, and the store forgets them."""
    first, second = the_probes_batches()
    before = stage(tmp_path / "s", BOUND)
    before.on_batch(first)
    resume = before.snapshot()
    before.state.close()
    one = IdentityLogic(IdentityContext(tmp_path / "s", 2, default_identity_rules(), sync=False), resume)
    assert routed_events(one.on_batch([second[0]])[0]) == []
    out = one.on_batch([Progress("web#0", T0 + 80_000, 2), second[1]])[0]
    assert routed_events(out) == ["purchase", "withdrawal"] and one.state.order is None
    one.snapshot()
    assert list(one.state.store.scan(HELD_PREFIX)) == []


def test_the_end_of_the_input_releases_everything(tmp_path: Path) -> None:
    logic = stage(tmp_path / "s", BOUND)
    first, second = the_probes_batches()
    logic.on_batch(first + [second[0]])  # the store partition never reports
    assert routed_events(logic.on_eof()[0]) == []  # the frontier is still unknown: nothing is let go
    logic.on_batch([Progress("store#0", None, 2), Progress("web#0", None, 2)])
    assert logic.state.order is not None and logic.state.order.held == 0


EVENTS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 10 * MIN)), max_size=40)


@given(EVENTS, st.integers(0, 2 * MIN), st.lists(st.integers(0, 12 * MIN), max_size=6))
@settings(max_examples=200, deadline=None)
def test_the_order_keeps_each_partition_and_puts_events_more_than_the_bound_apart_in_time_order(
        read: list[tuple[str, int]], bound: int, floors: list[int]) -> None:
    """Whatever the partitions hold and however the frontier moves: every event comes out once, each
    partition's in the order read, and of two events of different partitions more than the bound apart
    whose partitions are in time order, the earlier first."""
    order = CrossPartitionOrder(bound, lambda: 1 << 62)  # no event ahead of the clock here
    events = [make_event("page_view", ts, event_id=f"{p}{i}") for i, (p, ts) in enumerate(read)]
    events = [at(e, p, i) for i, (e, (p, _)) in enumerate(zip(events, read))]
    for e in events:
        order.hold(e)
    out: list[Event] = []
    for floor in sorted(floors):
        out += order.release(True, floor)
    out += order.release(True, None)
    assert sorted(e.event_id for e in out) == sorted(e.event_id for e in events) and order.held == 0
    for p in "abc":
        assert [e.event_id for e in out if e.source.topic == p] == [e.event_id for e in events if e.source.topic == p]
    monotone = {p: all(x.ts <= y.ts for x, y in zip(q, q[1:]))
                for p in "abc" for q in [[e for e in events if e.source.topic == p]]}
    position = {e.event_id: n for n, e in enumerate(out)}
    for x in events:
        for y in events:
            if x.source.topic != y.source.topic and monotone[x.source.topic] and monotone[y.source.topic] \
                    and y.ts - x.ts > bound:
                assert position[x.event_id] < position[y.event_id], (x, y)


def test_an_event_ahead_of_the_clock_goes_with_its_neighbours_or_last_waits_for_the_frontier() -> None:
    """As the sources judge it (operators/io/alignment.ahead_waits). A recheck probe: with two readers, a
    page view dated a minute ahead in the middle of a backlog five hours old held the rest of its
    partition until the input had caught up, and 33 decisions changed (cross-sells missing, cart emails
    and cross-sells after withdrawals extra)."""
    now = T0 + 300 * MIN
    order = CrossPartitionOrder(BOUND, lambda: now)
    web = [at(make_event("page_view", ts, event_id=eid), "web", i) for i, (eid, ts) in enumerate(
        [("w0", T0), ("fast", now + MIN), ("w2", T0 + 2 * MIN), ("w3", T0 + 30 * MIN)])]
    store = [at(make_event("page_view", ts, event_id=eid), "store", i) for i, (eid, ts) in enumerate(
        [("s0", T0 + MIN), ("s1", T0 + 3 * MIN)])]
    for e in web + store:
        order.hold(e)
    released = [e.event_id for e in order.release(True, T0 + 2 * MIN)]  # limit: T0 + 3 min
    assert released == ["w0", "s0", "fast", "w2", "s1"]  # "fast" went as w2's time, and w2 with it
    # Last in its partition (the quiet store topic's last sale, from a till whose clock runs fast): it
    # waits until the frontier reaches its own time less the bound, after a withdrawal minutes older.
    order = CrossPartitionOrder(BOUND, lambda: now)
    order.hold(at(make_event("purchase", now + 30_000, event_id="fast-sale"), "store", 0))
    order.hold(at(consent(now - 2 * MIN, granted=False, event_id="withdrawal"), "web", 0))
    assert [e.event_id for e in order.release(True, now - 2 * MIN)] == ["withdrawal"]
    assert [e.event_id for e in order.release(True, now - 20_000)] == ["fast-sale"]


def test_an_erasure_takes_its_persons_held_events_out_of_the_stages_state(tmp_path: Path) -> None:
    """Held events are in the stage's checkpoints: an erased person's from before the erasure must not
    wait there for the frontier, and no undo record may keep a copy (an outside probe found their keys in
    the identity store's files, in undo pre-images of the held list, after the erasure)."""
    from nextclick.operators.records import EraseRequest

    logic = stage(tmp_path / "s", BOUND)
    first, _ = the_probes_batches()
    withdrawal = first[0]
    assert isinstance(withdrawal, Event)
    logic.on_batch([withdrawal])
    logic.snapshot()  # held and stored
    later = at(make_event("page_view", T0 + 200_000, customer=withdrawal.customer, event_id="after"), "web", 1)
    other = at(make_event("page_view", T0 + 100, customer="someone-else", event_id="other"), "web", 2)
    logic.on_batch([later, other])
    logic.snapshot()  # the undo record of this checkpoint holds what the one before stored
    assert logic.state.order is not None and logic.state.order.held == 3
    erase = EraseRequest(withdrawal.customer, "dsr-1", None, requested_at=T0 + 100_000)
    assert routed_events(logic.on_batch([erase])[0]) == []
    # The page view after the erasure is new data: it still waits, as does someone else's.
    assert sorted(e.event_id for e in logic.state.order.events()) == ["after", "other"]
    # Read after the erasure, dated before it: not held (nor stored), dropped as the erased person's.
    again = at(make_event("page_view", T0 + 50_000, customer=withdrawal.customer, event_id="replayed"), "web", 3)
    assert routed_events(logic.on_batch([again])[0]) == [] and logic.state.order.held == 2
    logic.snapshot()
    logic.state.store.purge()
    logic.state.close()
    entries = raw_entries(tmp_path / "s" / "identity" / "shard-0000")
    assert not [k for k, v in entries if b"withdrawal" in k + v or b"replayed" in k + v]
    assert any(b"other" in v for _, v in entries)  # someone else's held event is still stored


def test_an_erasure_leaves_no_copy_of_its_persons_events_that_were_held_and_let_go(tmp_path: Path) -> None:
    """The recheck of that probe: a held event let go before the erasure had its key deleted at a
    checkpoint, whose undo record kept the event; the erasure must remove it there too."""
    from nextclick.operators.records import EraseRequest

    logic = stage(tmp_path / "s", BOUND)
    first, second = the_probes_batches()
    logic.on_batch(first)
    logic.snapshot()  # the withdrawal held and stored
    logic.on_batch(second)  # both let go
    logic.snapshot()  # its key deleted: the undo record of this checkpoint holds the event
    assert logic.state.order is not None and logic.state.order.held == 0
    withdrawal = first[0]
    assert isinstance(withdrawal, Event)
    logic.on_batch([EraseRequest(withdrawal.customer, "dsr-1", None, requested_at=T0 + 100_000)])
    logic.snapshot()
    logic.state.store.purge()
    logic.state.close()
    entries = raw_entries(tmp_path / "s" / "identity" / "shard-0000")
    assert not [k for k, v in entries if b"withdrawal" in k + v or withdrawal.customer.encode() in k + v]


def test_an_erasure_lets_a_cookies_held_cart_go_before_the_held_sign_in_that_joins_it_to_the_person(
        tmp_path: Path) -> None:
    """A recheck probe, two readers: the erasure of a customer id came while the start of the backlog still
    waited in the hold, the cookie's cart and then its sign-in as that customer. The sign-in went at once
    and erased the cookie; the cart, let go later, counted as the erased person's, and its email, due
    before the sign-in, was never decided (4 runs of 10). The cart goes first, then the cookie's erasure
    with the sign-in's time, so its shard decides what was due by then."""
    from nextclick.operators.identity.pseudonyms import pseudonymize
    from nextclick.operators.records import EraseRequest

    secret = b"s"
    cookie, customer = pseudonymize("cookie", "ck", secret), pseudonymize("customer", "cu", secret)
    logic = stage(tmp_path / "s", BOUND)
    cart = at(make_event("add_to_cart", T0, customer=cookie, event_id="cart", sku="s", amount=20.0, quantity=1,
                         category="bags"), "web", 0)
    cart = msgspec.structs.replace(cart, id_type="cookie")
    sign_in = msgspec.structs.replace(at(make_event("login", T0 + 90 * MIN, customer=cookie, event_id="login"),
                                         "web", 1), id_type="cookie", links=(("customer", customer),))
    assert logic.on_batch([cart, sign_in])[0] == []  # both held: the frontier is not known yet
    out = logic.on_batch([EraseRequest(customer, "dsr-1", None, requested_at=T0 + 100 * MIN)])[0]
    items = [item for _, batch in out for item in (batch if isinstance(batch, list) else [batch])]
    kinds = [(type(i).__name__, getattr(i, "event_id", None) or getattr(i, "customer", None)) for i in items
             if isinstance(i, (Event, EraseRequest))]
    assert kinds.index(("Event", "cart")) < kinds.index(("EraseRequest", cookie)), kinds
    assert [i.fire_before for i in items if isinstance(i, EraseRequest) and i.customer == cookie] == \
        [T0 + 90 * MIN] * len([i for i in items if isinstance(i, EraseRequest) and i.customer == cookie])
    assert logic.state.order is not None and logic.state.order.held == 0


def test_a_sign_in_read_after_its_persons_erasure_waits_behind_the_cookies_earlier_events(tmp_path: Path) -> None:
    """The recheck probe's runs, two readers: the erasure came first, then the cookie's page views (held)
    and its sign-in as the erased person. The sign-in went at once and erased the cookie; the page views,
    let go later, counted as the erased person's and were dropped, with the ad due from them (4 runs of
    6). It waits in the hold behind them, and erases the cookie after they are routed."""
    from nextclick.operators.identity.pseudonyms import pseudonymize
    from nextclick.operators.records import EraseRequest

    secret = b"s"
    cookie, email = pseudonymize("cookie", "ck", secret), pseudonymize("email", "e@x.com", secret)
    logic = stage(tmp_path / "s", BOUND)
    logic.on_batch([EraseRequest(email, "dsr-1", None, requested_at=T0 + 100 * MIN)])
    view = msgspec.structs.replace(at(make_event("page_view", T0, customer=cookie, event_id="view"), "web", 0),
                                   id_type="cookie")
    sign_in = msgspec.structs.replace(at(make_event("login", T0 + 30 * MIN, customer=cookie, event_id="login"),
                                         "web", 1), id_type="cookie", links=(("email", email),))
    assert logic.on_batch([view, sign_in])[0] == []  # both wait for the frontier
    out = logic.on_batch([Progress("web#0", T0 + 40 * MIN, 1)])[0]
    items = [item for _, batch in out for item in (batch if isinstance(batch, list) else [batch])]
    kinds = [(type(i).__name__, getattr(i, "event_id", None) or getattr(i, "customer", None)) for i in items
             if isinstance(i, (Event, EraseRequest))]
    assert kinds.index(("Event", "view")) < kinds.index(("EraseRequest", cookie)), kinds
    assert {i.fire_before for i in items if isinstance(i, EraseRequest) and i.customer == cookie} == {T0 + 30 * MIN}
