"""Durable customer facts: what a profile says about a customer after a stream of events."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextclick.operators.engine.steps import on_event
from nextclick.operators.profile import dedupe
from nextclick.operators.profile import facts as facts_module
from nextclick.operators.profile.facts import apply_facts, durable_view, preferred_channel
from nextclick.operators.profile.facts import rfm as rfm_segment
from nextclick.operators.profile.model import Facts, new_profile
from nextclick.operators.records import Event
from tests.helpers import DAY, HOUR, MIN, T0, consent, default_rules, durable_part, make_event


def profile_after(*events: Event) -> Facts:
    facts = Facts()
    for event in events:
        apply_facts(facts, event)
    return facts


apply_durable = apply_facts


def consent_state(facts: Facts, channel: str, purpose: str = "marketing") -> bool | None:
    return facts_module.consent_state(facts, facts_module.consent_keys(channel, purpose))


# --- orders, value, purchases -------------------------------------------------------------------

def test_every_purchase_type_counts_as_an_order_and_adds_its_amount():
    p = profile_after(
        make_event("purchase", T0 + 2 * HOUR, amount=19.99),
        make_event("app_purchase", T0, amount=5.01),
        make_event("store_purchase", T0 + HOUR, amount=75),
        make_event("add_to_cart", T0 + 3 * HOUR, amount=1000),  # a cart is not an order
        make_event("page_view", T0 - HOUR),
    )
    view = durable_view(p, T0 + 3 * HOUR)
    assert view["orders"] == 3
    assert view["lifetime_value"] == 100.0
    assert view["average_order_value"] == 33.33
    assert view["first_purchase"] == T0
    assert view["last_purchase"] == T0 + 2 * HOUR
    assert p.first_seen == T0 - HOUR and p.last_seen == T0 + 3 * HOUR
    assert p.version == 5


def test_a_profile_without_purchases_is_a_prospect_with_zero_aov():
    view = durable_view(profile_after(make_event("page_view", T0)), T0)
    assert view["orders"] == 0
    assert view["average_order_value"] == 0.0
    assert view["last_purchase"] is None and view["days_since_last_purchase"] is None
    assert view["segment"] == "prospect"


def test_purchase_without_amount_counts_as_order_worth_nothing():
    view = durable_view(profile_after(make_event("purchase", T0)), T0)
    assert (view["orders"], view["lifetime_value"]) == (1, 0.0)


def test_lifetime_value_has_no_float_drift():
    p = profile_after(*[make_event("purchase", T0 + i, amount=0.1) for i in range(30)])
    assert durable_view(p, T0)["lifetime_value"] == 3.0


# --- RFM ----------------------------------------------------------------------------------------

def test_big_spender_who_stopped_buying_is_lapsed_high_value():
    p = profile_after(make_event("purchase", T0, amount=250), make_event("purchase", T0 + DAY, amount=150))
    now = T0 + DAY + 100 * DAY
    assert rfm_segment(p, now) == (2, 2, 3, "lapsed_high_value")
    view = durable_view(p, now)
    assert view["segment"] == "lapsed_high_value"
    assert view["days_since_last_purchase"] == 100


def test_rfm_segments_over_time():
    small = profile_after(make_event("purchase", T0, amount=20))
    assert rfm_segment(small, T0 + DAY)[3] == "new_customer"
    assert rfm_segment(small, T0 + 200 * DAY) == (1, 1, 1, "lapsed")
    frequent = profile_after(*[make_event("purchase", T0 + i * HOUR, amount=120) for i in range(10)])
    assert rfm_segment(frequent, T0 + 2 * DAY) == (5, 4, 4, "champion")
    assert rfm_segment(frequent, T0 + 60 * DAY)[3] == "loyal"
    assert rfm_segment(frequent, T0 + 120 * DAY)[3] == "lapsed_high_value"
    two = profile_after(make_event("purchase", T0, amount=20), make_event("purchase", T0 + 1, amount=20))
    assert rfm_segment(two, T0 + DAY)[3] == "active"


# --- contacts and channels ----------------------------------------------------------------------

def test_last_contact_per_channel_is_the_latest_event_time_not_the_latest_arrival():
    p = profile_after(
        make_event("email_open", T0 + 2 * HOUR),
        make_event("email_click", T0 + HOUR),  # arrives later, happened earlier
        make_event("page_view", T0),
        make_event("call_center_contact", T0 + 5 * MIN, outcome="resolved"),
    )
    assert p.last_contact == {"email": T0 + 2 * HOUR, "web": T0, "call_center": T0 + 5 * MIN}
    view = durable_view(p, T0 + 3 * HOUR)
    assert view["email_contacts"] == 2 and view["call_center_contacts"] == 1


def test_preferred_channel_is_the_most_used_with_ties_to_the_most_recent():
    assert preferred_channel(Facts()) is None
    p = profile_after(make_event("page_view", T0), make_event("page_view", T0 + 1), make_event("email_open", T0 + 2))
    assert durable_view(p, T0)["preferred_channel"] == "web"
    apply_durable(p, make_event("email_click", T0 - 5))
    # web 2, email 2: email's last contact (T0+2) is more recent than web's (T0+1)
    assert preferred_channel(p) == "email"
    apply_durable(p, make_event("app_open", T0 + 10))
    assert preferred_channel(p) == "email"


# --- consent ------------------------------------------------------------------------------------

def test_latest_consent_by_event_time_wins_whatever_the_arrival_order():
    grant, revoke = consent(T0, granted=True), consent(T0 + MIN, granted=False)
    assert consent_state(profile_after(grant, revoke), "email") is False
    assert consent_state(profile_after(revoke, grant), "email") is False
    assert consent_state(profile_after(grant), "email") is True
    assert consent_state(Facts(), "email") is None


def test_consent_ties_on_time_are_broken_by_event_id():
    a = consent(T0, granted=True, event_id="a")
    b = consent(T0, granted=False, event_id="b")
    assert consent_state(profile_after(a, b), "email") is False
    assert consent_state(profile_after(b, a), "email") is False


def test_consent_is_per_purpose_and_defaults_to_marketing():
    p = profile_after(make_event("consent", T0, channel="email", granted=True))  # no purpose attr
    assert consent_state(p, "email") is True
    assert consent_state(p, "email", "service") is None
    assert consent_state(p, "sms") is None


def test_all_channel_revocation_is_do_not_contact():
    p = profile_after(consent(T0, "email", True), consent(T0, "ads", True), consent(T0 + MIN, "all", False))
    for channel in ("email", "ads", "sms", "push", "web", "call_center"):
        assert consent_state(p, channel) is False, channel
    # ...until the customer grants a channel again, after the revocation
    apply_durable(p, consent(T0 + HOUR, "email", True))
    assert consent_state(p, "email") is True
    assert consent_state(p, "ads") is False


def test_an_older_blanket_grant_does_not_override_a_newer_channel_revocation():
    p = profile_after(consent(T0 + MIN, "email", False), consent(T0, "all", True))
    assert consent_state(p, "email") is False
    assert consent_state(p, "ads") is True


def test_mobile_consent_governs_push_decisions():
    p = profile_after(consent(T0, "push", True), consent(T0 + MIN, "mobile", False))
    assert consent_state(p, "push") is False
    p = profile_after(consent(T0, "mobile", True))
    assert consent_state(p, "push") is True


# --- complaint ----------------------------------------------------------------------------------

def test_complaint_remembers_the_latest_complaint_time():
    p = profile_after(make_event("complaint", T0 + DAY, topic="late"), make_event("complaint", T0, topic="rude"))
    assert p.last_complaint == T0 + DAY
    assert durable_view(p, T0 + 4 * DAY)["days_since_complaint"] == 3
    assert durable_view(Facts(), T0)["days_since_complaint"] is None


# --- properties: order independence and idempotence ----------------------------------------------

_TYPES = ["page_view", "add_to_cart", "purchase", "app_purchase", "store_purchase", "email_open", "email_click",
          "app_open", "call_center_contact", "consent", "complaint"]


@st.composite
def event_lists(draw, max_size: int = 25, span_ms: int = 6 * HOUR) -> list[Event]:
    n = draw(st.integers(min_value=1, max_value=max_size))
    events = []
    for i in range(n):
        type_ = draw(st.sampled_from(_TYPES))
        ts = T0 + draw(st.integers(min_value=0, max_value=span_ms))
        attrs: dict = {}
        if type_ in ("purchase", "app_purchase", "store_purchase", "add_to_cart"):
            attrs["amount"] = draw(st.integers(min_value=0, max_value=50_000)) / 100
            attrs["category"] = draw(st.sampled_from(["shoes", "hats", "bags"]))
        elif type_ == "consent":
            attrs = {"channel": draw(st.sampled_from(["email", "ads", "all", "mobile"])),
                     "granted": draw(st.booleans()), "purpose": "marketing"}
        elif type_ == "call_center_contact":
            attrs["outcome"] = draw(st.sampled_from(["resolved", "unresolved"]))
        elif type_ == "page_view":
            attrs["category"] = draw(st.sampled_from(["shoes", "hats", "bags"]))
        # Few distinct timestamps make (ts, event_id) ties likely; ids are distinct.
        events.append(make_event(type_, ts, event_id=f"e{i:03d}", **attrs))
    return events


PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(data=st.data(), events=event_lists())
def test_durable_facts_do_not_depend_on_arrival_order(data, events):
    ruleset = default_rules()
    shuffled = data.draw(st.permutations(events))
    a, b = new_profile("c1"), new_profile("c1")
    for e in events:
        on_event(a, e, ruleset)
    for e in shuffled:
        on_event(b, e, ruleset)
    assert durable_part(a) == durable_part(b)
    assert durable_view(a.facts, T0 + DAY) == durable_view(b.facts, T0 + DAY)


@PROPS
@given(data=st.data(), events=event_lists())
def test_a_redelivered_event_changes_nothing(data, events):
    ruleset = default_rules()
    once = new_profile("c1")
    once_decisions = []
    for e in events:
        once_decisions += on_event(once, e, ruleset).decisions
    # The same stream with redeliveries sprinkled right after the original.
    twice = new_profile("c1")
    twice_decisions = []
    for e in events:
        twice_decisions += on_event(twice, e, ruleset).decisions
        if data.draw(st.booleans()):
            before = copy.deepcopy(twice)
            out = on_event(twice, e, ruleset)
            assert out.duplicate and not out.decisions and not out.blocked
            assert twice == before
    assert twice == once
    assert twice_decisions == once_decisions
    # And replaying the whole stream again afterwards is a no-op too.
    before = copy.deepcopy(once)
    assert all(on_event(once, e, ruleset).duplicate for e in events)
    assert once == before


@given(st.dictionaries(st.text(max_size=4), st.integers(min_value=-(10**13), max_value=10**13), max_size=40),
       st.integers(min_value=-(10**13), max_value=10**13))
def test_the_dedupe_window_forgets_what_expired_and_bounds_the_rest(seen: dict[str, int], ref: int) -> None:
    kept = {event_id: until for event_id, until in seen.items() if until > ref}
    window = dict(seen)
    bounds = dedupe.prune(window, ref)
    assert list(window.items()) == list(kept.items())  # arrival order kept: the oldest goes first at the cap
    assert bounds == ((min(kept.values()), max(kept.values())) if kept else None)
