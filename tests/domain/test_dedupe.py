"""A redelivered event changes nothing: the dedupe window (operators/profile/dedupe.py).

The cases outside probes found: a late purchase retried counted twice (its id expired on arrival), and
two sources reusing an id lost the second one's event."""

from __future__ import annotations

from nextclick.operators.profile import dedupe
from tests.helpers import DAY, MIN, SEC, T0, Customer, consent, make_event


def purchase(ts: int, event_id: str = "order-1") -> object:
    return make_event("purchase", ts, event_id=event_id, order_id="O-1", amount=100.0, currency="EUR", items=1,
                      category="shoes")


def test_a_late_purchase_retried_counts_once() -> None:
    c = Customer()
    c.send("page_view", T0 + 2 * DAY, event_id="pv", page_type="home")
    assert c.apply(purchase(T0)).lates == 1  # two days old: late, but its order still counts ...
    assert c.apply(purchase(T0)).duplicates == 1  # ... once
    assert (c.profile.facts.orders, c.profile.facts.revenue) == (1, 100.0)


def test_an_id_is_kept_for_the_horizon_of_its_event_time() -> None:
    c = Customer()
    horizon = c.ruleset.dedupe_horizon_ms
    c.send("page_view", T0, event_id="a", page_type="home")
    c.send("page_view", T0 + horizon - MIN, event_id="b", page_type="home")
    assert c.send("page_view", T0, event_id="a", page_type="home").duplicates == 1
    c.send("page_view", T0 + horizon + 10 * MIN, event_id="c", page_type="home")  # past a's horizon
    assert c.send("page_view", T0 + horizon + 10 * MIN, event_id="a", page_type="home").duplicates == 0


def test_a_burst_of_more_ids_than_the_window_holds_forgets_the_oldest() -> None:
    """The bound a replay storm cannot pass: 256 ids a customer; a redelivery after that many newer
    events of the customer counts again (docs/data-contract.md says so)."""
    c = Customer()
    c.send("page_view", T0, event_id="first", page_type="home")
    for n in range(dedupe.MAX_SEEN_IDS):
        c.send("page_view", T0 + (n + 1) * 10, event_id=f"pv-{n}", page_type="home")
    assert len(c.profile.seen) == dedupe.MAX_SEEN_IDS
    assert c.send("page_view", T0 + 10, event_id="pv-0", page_type="home").duplicates == 1
    assert c.send("page_view", T0, event_id="first", page_type="home").duplicates == 0


def test_an_event_id_is_unique_per_source_so_two_systems_may_reuse_one() -> None:
    """A web shop's order 1001 and a store till's sale 1001 are two purchases, and a call center's
    contact 1001 a third event; a retry from the same source is still a duplicate (the probe case)."""
    c = Customer()
    web = purchase(T0, event_id="1001")
    store = make_event("store_purchase", T0 + SEC, event_id="1001", order_id="S-9", amount=45.0, currency="EUR",
                       items=1, category="bags")
    call = make_event("call_center_contact", T0 + 2 * SEC, event_id="1001", resolved=False)
    assert [c.apply(e).duplicates for e in (web, store, call)] == [0, 0, 0]
    assert [c.apply(e).duplicates for e in (web, store, call)] == [1, 1, 1]
    assert (c.profile.facts.orders, c.profile.facts.revenue) == (2, 145.0)


def test_an_id_remembered_before_ids_were_kept_per_source_and_type_still_counts() -> None:
    c = Customer()
    c.profile.seen["1001"] = T0 + DAY  # a bare id, as an earlier release stored it
    assert c.apply(purchase(T0, event_id="1001")).duplicates == 1 and c.profile.facts.orders == 0
    c.profile.seen["web/1002"] = T0 + DAY  # an id within its source, as the release before this one did
    assert c.apply(purchase(T0, event_id="1002")).duplicates == 1 and c.profile.facts.orders == 0


def test_an_id_a_source_reused_for_another_type_is_another_event() -> None:
    """An outside probe: a consent withdrawal sent with the id of an earlier page view from the web was
    dropped as a duplicate, and the purchase after it sent a marketing email. A redelivery repeats its
    type; another type under the same id is another event."""
    c = Customer()
    c.grant_email(T0)
    c.send("page_view", T0 + SEC, event_id="X", page_type="home")
    withdrawal = consent(T0 + 2 * SEC, granted=False, event_id="X")
    assert c.apply(withdrawal).duplicates == 0
    assert c.send("purchase", T0 + 3 * SEC, amount=50.0).decisions == []  # no cross-sell: consent withdrawn
    assert c.apply(withdrawal).duplicates == 1  # its redelivery is still one
