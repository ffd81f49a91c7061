"""Recent orders in the profile: bounded by count and age, no PII, merged commutatively, read by rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.engine.merge import merge_into
from nextclick.operators.engine.steps import on_event
from nextclick.operators.profile import facts as facts_module
from nextclick.operators.profile.codec import decode_profile, encode_profile, profile_as_dict
from nextclick.operators.profile.facts import ATTRIBUTES, DAY_MS, bound_orders, configure_orders, recent_orders
from nextclick.operators.profile.model import Order, Profile, new_profile
from tests.helpers import MIN, consent, default_rules, make_event

T0 = 1_795_428_000_000


@pytest.fixture()
def small_limits() -> Iterator[None]:
    """Three orders, at most two days apart: small enough for short stories to meet both bounds."""
    before = facts_module.ORDER_LIMITS
    configure_orders(3, 2 * DAY_MS)
    yield
    facts_module.ORDER_LIMITS = before


def test_an_order_keeps_its_ids_and_amounts_but_no_personal_data() -> None:
    profile = new_profile("c1")
    on_event(profile, make_event("purchase", T0, order_id="o-1", amount=120.0, currency="eur", category="shoes",
                                 email="alice@example.com", name="Alice"), default_rules())
    on_event(profile, make_event("store_purchase", T0 + MIN, order_id="o-2", amount=40.0), default_rules())
    stored = profile_as_dict(decode_profile(encode_profile(profile)))
    assert stored["facts"]["recent_orders"] == [[T0, "o-1", 120.0, "EUR", "web", "shoes"],
                                                [T0 + MIN, "o-2", 40.0, None, "store", None]]
    assert "alice" not in str(stored).lower()
    now = T0 + 3 * 3_600_000
    assert ATTRIBUTES["last_order_channel"](profile.facts, now) == "store"
    assert ATTRIBUTES["hours_since_last_order"](profile.facts, now) == 2
    assert ATTRIBUTES["last_order_amount"](profile.facts, now) == 40.0
    assert ATTRIBUTES["last_order_channel"](new_profile("c2").facts, now) is None


def test_orders_are_bounded_by_count_and_by_age(small_limits: None) -> None:
    profile = new_profile("c1")
    rules = default_rules()
    for n, day in enumerate((0, 1, 1.5, 2, 2.5)):
        on_event(profile, make_event("purchase", T0 + int(day * DAY_MS), event_id=f"e{n}", order_id=f"o{n}",
                                     amount=10.0), rules)
    assert [o.order_id for o in profile.facts.recent_orders] == ["o2", "o3", "o4"]  # the newest three
    on_event(profile, make_event("app_purchase", T0 + 5 * DAY_MS, event_id="e9", order_id="o9", amount=1.0), rules)
    assert [o.order_id for o in profile.facts.recent_orders] == ["o9"]  # the others are > 2 days older
    # Read as of a clock: an order older than the bound is not shown even before a newer one comes.
    assert recent_orders(profile.facts, T0 + 8 * DAY_MS) == []
    assert profile.facts.orders == 6  # the counts keep every order


orders = st.builds(Order, ts=st.integers(T0, T0 + 4 * DAY_MS), order_id=st.sampled_from(["a", "b", None]),
                   amount=st.sampled_from([1.0, 2.5]), currency=st.sampled_from(["EUR", None]),
                   channel=st.sampled_from(["web", "store", "mobile"]), category=st.sampled_from(["x", None]))


def _with(order_list: list[Order]) -> Profile:
    profile = new_profile("P")
    profile.facts.recent_orders = bound_orders(order_list)
    return profile


def _merged(*profiles: Profile) -> list[Any]:
    result = decode_profile(encode_profile(profiles[0]))
    for other in profiles[1:]:
        merge_into(result, decode_profile(encode_profile(other)), default_rules())
    return profile_as_dict(result)["facts"]["recent_orders"]


@settings(max_examples=200, deadline=None)
@given(a=st.lists(orders, max_size=6), b=st.lists(orders, max_size=6), c=st.lists(orders, max_size=6))
def test_merging_recent_orders_is_commutative_associative_and_as_if_one_profile_saw_them(
        a: list[Order], b: list[Order], c: list[Order]) -> None:
    configure_orders(3, 2 * DAY_MS)
    try:
        p, q, r = _with(a), _with(b), _with(c)
        assert _merged(p, q) == _merged(q, p)
        assert _merged(_with(bound_orders([*a, *b])), r) == _merged(p, _with(bound_orders([*b, *c])))
        one = profile_as_dict(_with([*a, *b, *c]))["facts"]["recent_orders"]
        assert _merged(p, q, r) == _merged(r, p, q) == one
        assert len(one) <= 3
    finally:
        configure_orders(facts_module.OrderLimits().keep, facts_module.OrderLimits().max_age_ms)


def test_limits_refuse_negative_values() -> None:
    with pytest.raises(ValueError):
        configure_orders(-1, 0)


RULE_ON_LAST_ORDER = """
[[rule]]
id = "store_order_follow_up"
description = "A call-center contact after a store order: ask how it went."
on = ["call_center_contact"]
when = ['last_order_channel == "store"', "hours_since_last_order < 48"]
action = "call_back"
channel = "call_center"
priority = 10
expiry = "8h"
purpose = "service"
promotion = false
"""


def test_a_rule_reads_the_last_orders_channel_and_age(tmp_path: Path) -> None:
    from nextclick.operators.rules.loader import load_rules
    from tests.helpers import write_rules

    rules = load_rules(write_rules(tmp_path, RULE_ON_LAST_ORDER))

    def fired(orders: list[tuple[str, int]], call_at: int) -> list[str]:
        profile = new_profile("c1")
        on_event(profile, consent(T0 - MIN, channel="call_center", purpose="service"), rules)
        for n, (event_type, ts) in enumerate(orders):
            on_event(profile, make_event(event_type, ts, event_id=f"o{n}", order_id=f"o{n}", amount=5.0), rules)
        out = on_event(profile, make_event("call_center_contact", call_at, event_id="call", topic="billing",
                                           outcome="resolved"), rules)
        return [d.rule_id for d in out.decisions]

    assert fired([("purchase", T0), ("store_purchase", T0 + MIN)], T0 + 3_600_000) == ["store_order_follow_up"]
    assert fired([("store_purchase", T0), ("purchase", T0 + MIN)], T0 + 3_600_000) == []  # the last was web
    assert fired([("store_purchase", T0)], T0 + 3 * DAY_MS) == []  # too long ago
    assert fired([], T0) == []  # no order: the attribute is missing, the condition false
