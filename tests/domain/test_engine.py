"""Arbitration with the default rules, decisions' contents, and transient state that always expires."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextclick.operators.engine.steps import on_event, on_timers
from nextclick.operators.profile.codec import encode_profile
from nextclick.operators.profile.facts import apply_facts
from nextclick.operators.profile.model import new_profile
from nextclick.operators.records import Event
from nextclick.operators.rules.arbitration import decision_id
from nextclick.operators.rules.loader import load_rules
from tests.domain.test_profile import event_lists
from tests.helpers import (
    DAY,
    DEFAULT_RULES_PATH,
    HOUR,
    MIN,
    T0,
    Customer,
    consent,
    default_rules,
    fired,
    make_event,
    reasons,
    transient_parts,
    write_rules,
)


def browse(c: Customer, start: int, pages: int = 3) -> None:
    for i in range(pages):
        c.send("page_view", start + i * MIN, category="shoes")


# --- consent ------------------------------------------------------------------------------------

def test_email_needs_explicit_consent():
    c = Customer()
    out = c.send("purchase", T0, amount=50.0)
    assert out.decisions == [] and reasons(out) == [("post_purchase_cross_sell", "no_consent")]
    c.grant_email(T0 + MIN)
    assert fired(c.send("purchase", T0 + 2 * MIN, amount=50.0)) == [
        ("post_purchase_cross_sell", "email", "purchase")]


def test_revoked_email_consent_is_opted_out():
    c = Customer()
    c.grant_email(T0)
    c.apply(consent(T0 + MIN, "email", False))
    assert reasons(c.send("purchase", T0 + 2 * MIN, amount=50.0)) == [("post_purchase_cross_sell", "opted_out")]


def test_ads_are_opt_out_allowed_without_consent_blocked_after_revocation():
    c = Customer()
    browse(c, T0)
    assert fired(c.tick(T0 + 30 * MIN)) == [("browse_abandonment_ad", "ads", "browse_abandoned")]
    d = Customer(customer="c2")
    d.apply(consent(T0 - MIN, "all", False, customer="c2"))
    browse(d, T0)
    out = d.tick(T0 + 30 * MIN)
    assert out.decisions == [] and reasons(out) == [("browse_abandonment_ad", "opted_out")]


def test_browse_ad_needs_three_pages_within_two_hours():
    c = Customer()
    browse(c, T0, pages=2)
    assert c.tick(T0 + 30 * MIN).decisions == []
    assert c.profile.signals.get("browse_abandoned") is None


# --- complaint ----------------------------------------------------------------------------------

def test_complaint_suppresses_promotions_for_30_days_but_not_the_service_follow_up():
    c = Customer()
    c.grant_email(T0)
    c.send("complaint", T0 + MIN, topic="delivery")
    assert reasons(c.send("purchase", T0 + HOUR, amount=50.0)) == [
        ("post_purchase_cross_sell", "complaint_suppression")]
    assert fired(c.send("call_center_contact", T0 + 2 * HOUR, outcome="unresolved")) == [
        ("call_center_follow_up", "call_center", "call_center_contact")]
    assert reasons(c.send("purchase", T0 + MIN + 30 * DAY - 1, amount=50.0)) == [
        ("post_purchase_cross_sell", "complaint_suppression")]
    assert fired(c.send("purchase", T0 + MIN + 30 * DAY, amount=50.0)) == [
        ("post_purchase_cross_sell", "email", "purchase")]


# --- cooldown and caps --------------------------------------------------------------------------

def test_cooldown_is_per_rule():
    c = Customer()
    assert fired(c.send("call_center_contact", T0, outcome="unresolved"))
    assert reasons(c.send("call_center_contact", T0 + HOUR, outcome="unresolved")) == [
        ("call_center_follow_up", "cooldown")]
    browse(c, T0 + 2 * HOUR)  # another rule is not cooled down
    assert fired(c.tick(T0 + 3 * HOUR)) == [("browse_abandonment_ad", "ads", "browse_abandoned")]
    assert fired(c.send("call_center_contact", T0 + DAY, outcome="unresolved"))


def lapsed_customer() -> Customer:
    """Spent 400 a hundred days ago, consented to email then; now a lapsed high-value customer."""
    c = Customer()
    c.grant_email(T0)
    assert fired(c.send("purchase", T0 + MIN, amount=400.0)) == [("post_purchase_cross_sell", "email", "purchase")]
    return c


def test_third_email_in_24h_is_blocked_by_the_channel_cap():
    c = lapsed_customer()
    now = T0 + 100 * DAY
    assert fired(c.send("page_view", now)) == [("high_value_winback", "email", "page_view")]
    c.send("add_to_cart", now + MIN, amount=30.0)
    assert fired(c.tick(now + 67 * MIN)) == [("cart_abandonment_email", "email", "cart_abandoned")]
    out = c.send("purchase", now + 2 * HOUR, amount=50.0)
    assert out.decisions == [] and reasons(out) == [("post_purchase_cross_sell", "frequency_cap_channel")]
    # 24 hours after the first of the two, the cap has room again
    assert fired(c.send("purchase", now + DAY + 4 * DAY, amount=50.0)) == [
        ("post_purchase_cross_sell", "email", "purchase")]


def test_fifth_decision_in_24h_is_blocked_by_the_overall_cap():
    c = Customer()
    c.grant_email(T0)
    assert fired(c.send("call_center_contact", T0 + MIN, outcome="unresolved"))
    browse(c, T0 + 2 * MIN)
    assert fired(c.tick(T0 + 30 * MIN)) == [("browse_abandonment_ad", "ads", "browse_abandoned")]
    assert fired(c.send("purchase", T0 + 40 * MIN, amount=50.0))
    c.send("add_to_cart", T0 + 41 * MIN, amount=30.0)
    assert fired(c.tick(T0 + 110 * MIN)) == [("cart_abandonment_email", "email", "cart_abandoned")]
    browse(c, T0 + 8 * HOUR)
    out = c.tick(T0 + 8 * HOUR + 30 * MIN)
    assert out.decisions == [] and reasons(out) == [("browse_abandonment_ad", "frequency_cap_overall")]


def test_purchase_cancels_a_pending_cart_reminder():
    c = Customer()
    c.grant_email(T0)
    c.send("add_to_cart", T0, amount=30.0)
    assert fired(c.send("store_purchase", T0 + 59 * MIN, amount=50.0)) == [
        ("post_purchase_cross_sell", "email", "store_purchase")]
    assert c.tick(T0 + 3 * HOUR).decisions == []


# --- priority -----------------------------------------------------------------------------------

EXTRA = '''
[[rule]]
id = "purchase_thanks_ad"
on = ["purchase"]
action = "show_ad"
channel = "ads"
priority = 60
cooldown = "1h"
'''


def test_one_decision_per_trigger_by_priority_falling_back_past_blocked_rules(tmp_path):
    text = DEFAULT_RULES_PATH.read_text().replace("# --- arbitration", EXTRA + "\n# --- arbitration")
    c = Customer(load_rules(write_rules(tmp_path, text)))
    c.grant_email(T0)
    out = c.send("purchase", T0 + MIN, amount=50.0)
    assert fired(out) == [("purchase_thanks_ad", "ads", "purchase")] and out.blocked == []
    out = c.send("purchase", T0 + 2 * MIN, amount=50.0)  # thanks ad cooling down: the cross-sell wins
    assert fired(out) == [("post_purchase_cross_sell", "email", "purchase")]
    assert reasons(out) == [("purchase_thanks_ad", "cooldown")]
    out = c.send("purchase", T0 + 3 * MIN, amount=50.0)
    assert out.decisions == []
    assert reasons(out) == [("purchase_thanks_ad", "cooldown"), ("post_purchase_cross_sell", "cooldown")]


# --- the decision itself ------------------------------------------------------------------------

def test_decision_carries_rule_signals_version_expiry_and_a_deterministic_id():
    def run(customer: str) -> list:
        c = Customer(customer=customer)
        c.apply(consent(T0, "email", True, customer=customer, event_id="consent-1"))
        c.apply(make_event("add_to_cart", T0 + MIN, customer=customer, event_id="cart-1", amount=25.0, sku="A"))
        out = c.tick(T0 + 2 * HOUR)
        c.apply(make_event("purchase", T0 + 3 * HOUR, customer=customer, event_id="order-1", amount=80.0))
        return out.decisions + c.outcomes[-1].decisions

    first, second = run("c1"), run("c1")
    reminder, cross_sell = first
    assert reminder.rule_id == "cart_abandonment_email" and reminder.action == "send_email"
    assert reminder.offer == "cart-reminder-10pct" and reminder.priority == 80
    assert reminder.trigger_id == f"cart_abandoned:{T0 + MIN}"
    assert reminder.decided_at == T0 + 61 * MIN and reminder.expires_at == T0 + 61 * MIN + DAY
    assert reminder.signals == {"trigger.amount": 25.0}
    assert reminder.profile_version == 2
    assert cross_sell.trigger_id == "order-1" and cross_sell.profile_version == 3
    assert cross_sell.expires_at == T0 + 3 * HOUR + 3 * DAY
    assert [d.decision_id for d in first] == [d.decision_id for d in second]
    assert reminder.decision_id == decision_id("c1", "cart_abandonment_email", f"cart_abandoned:{T0 + MIN}")
    other = run("c2")
    assert {d.decision_id for d in other}.isdisjoint(d.decision_id for d in first)


def test_absences_due_in_one_turn_are_decided_in_deadline_order(tmp_path):
    """A cart at T (its reminder due at T+60m), three page views at T+30m (the browse ad due at T+50m),
    one message a day at most. In event time the ad goes and the reminder is capped, however far the
    frontier jumps: one turn past both deadlines decides as two turns, one each. (An outside probe: the
    reminder, declared first, won whenever both fell in one turn, so a backlog's decisions changed with
    the process count and after a SIGKILL.)"""
    text = DEFAULT_RULES_PATH.read_text().replace('overall = { limit = 4, window = "24h" }',
                                                  'overall = { limit = 1, window = "24h" }')
    rules = load_rules(write_rules(tmp_path, text))
    lateness = rules.late.allowed_lateness_ms

    def story():
        profile = new_profile("c1")
        profile.ids = {"customer": ["c1"], "email": ["e1"], "cookie": ["k1"]}
        on_event(profile, consent(T0 - MIN), rules)
        on_event(profile, make_event("add_to_cart", T0, sku="s", amount=80.0), rules)
        for n in range(3):
            on_event(profile, make_event("page_view", T0 + 30 * MIN + n, page_type="product"), rules)
        return profile

    one_turn = on_timers(story(), rules, T0 + 70 * MIN + lateness).decisions
    profile = story()
    two_turns = [*on_timers(profile, rules, T0 + 55 * MIN + lateness).decisions,
                 *on_timers(profile, rules, T0 + 70 * MIN + lateness).decisions]
    assert [d.rule_id for d in one_turn] == [d.rule_id for d in two_turns] == ["browse_abandonment_ad"]


def test_two_sources_events_with_one_id_make_two_decisions_with_two_ids():
    """Event ids are unique per source: web order 1001 and app order 1001 are two purchases. Each gets
    its cross-sell (past the cooldown), and a consumer deduping by decision id must keep both (an
    outside probe: both carried one ce_id, and the second order's email was dropped)."""
    rules = default_rules()
    profile = new_profile("c1")
    on_event(profile, consent(T0 - MIN), rules)
    web = on_event(profile, make_event("purchase", T0, event_id="1001", amount=50.0, order_id="w1"), rules)
    app = on_event(profile, make_event("app_purchase", T0 + 4 * DAY, event_id="1001", amount=60.0,
                                       order_id="a1"), rules)
    [first] = [d for d in web.decisions if d.rule_id == "post_purchase_cross_sell"]
    [second] = [d for d in app.decisions if d.rule_id == "post_purchase_cross_sell"]
    assert first.trigger_id == second.trigger_id == "1001"  # the body still says which event
    assert first.decision_id != second.decision_id


def test_decision_ids_differ_per_rule_and_trigger():
    ids = {decision_id("c1", "r", "t"), decision_id("c1", "r", "t2"), decision_id("c1", "r2", "t"),
           decision_id("c2", "r", "t")}
    assert len(ids) == 4


# --- expiry: nothing transient outlives its lifetime ---------------------------------------------

@st.composite
def streams(draw) -> list[tuple[str, Event | int]]:
    events = draw(event_lists(max_size=30, span_ms=3 * DAY))
    steps: list[tuple[str, Event | int]] = []
    for e in events:
        steps.append(("event", e))
        if draw(st.integers(0, 5)) == 0:
            steps.append(("event", e))  # a redelivery
        if draw(st.integers(0, 5)) == 0:
            steps.append(("tick", e.ts + draw(st.integers(0, 3 * HOUR))))
    return steps


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=streams())
def test_transient_state_expires_back_to_the_durable_baseline(steps):
    ruleset = default_rules()
    profile, baseline = new_profile("c1"), new_profile("c1")
    newest = T0
    for _kind, item in steps:
        if isinstance(item, Event):
            out = on_event(profile, item, ruleset)
            if not out.duplicate:
                apply_facts(baseline.facts, item)
            newest = max(newest, item.ts)
        else:
            on_timers(profile, ruleset, item)
    # past every lifetime: the longest is the 30-day win-back cooldown
    on_timers(profile, ruleset, newest + 40 * DAY)
    for key, part in transient_parts(profile).items():
        assert not part, key  # empty, or (prune_at, expire_at) gone
    assert profile == baseline
    assert len(encode_profile(profile)) == len(encode_profile(baseline))


# --- edges: each bound is pinned by a test that fails if it moves by one ---------------------------

CAP_RULES = '''
[[rule]]
id = "follow_up"
on = ["call_center_contact"]
action = "call_back"
channel = "call_center"
cooldown = "1ms"

[caps]
call_center = { limit = 1, window = "1h" }

[consent]
call_center = "opt_out"
'''


def test_a_sent_decision_counts_towards_the_cap_for_exactly_the_cap_window(tmp_path):
    c = Customer(load_rules(write_rules(tmp_path, CAP_RULES)))
    assert fired(c.send("call_center_contact", T0))
    # One millisecond before the window has passed, the cap is still full...
    assert reasons(c.send("call_center_contact", T0 + HOUR - 1)) == [("follow_up", "frequency_cap_channel")]
    # ...and at exactly one window later the first decision no longer counts.
    assert fired(c.send("call_center_contact", T0 + HOUR)) == [("follow_up", "call_center", "call_center_contact")]


def test_a_rule_with_no_cooldown_fires_on_every_trigger_within_the_caps(tmp_path):
    """`cooldown = "0s"`: a marketer's "every purchase" (it was refused as "must be positive")."""
    rules = CAP_RULES.replace('cooldown = "1ms"', 'cooldown = "0s"').replace("limit = 1", "limit = 3")
    c = Customer(load_rules(write_rules(tmp_path, rules)))
    for _ in range(3):  # the same millisecond each time: nothing cools down
        assert fired(c.send("call_center_contact", T0)) == [("follow_up", "call_center", "call_center_contact")]
    assert reasons(c.send("call_center_contact", T0)) == [("follow_up", "frequency_cap_channel")]
    assert c.profile.history.fired == {}  # nothing to remember, nothing to expire


def test_a_window_bucket_leaves_state_exactly_when_it_expires():
    c = Customer()
    c.send("email_open", T0)  # no signal counts email opens: only the dedupe id is transient
    c.send("page_view", T0 + 30 * MIN + 5, page_type="home")
    views = c.profile.signals["page_views_30m"]
    (start, _), = views
    lateness = c.ruleset.late.allowed_lateness_ms
    expiry = start + MIN - 1 + 30 * MIN  # the bucket's last millisecond in the window, plus the window
    c.tick(expiry - 1 + lateness)
    assert "page_views_30m" in c.profile.signals
    c.tick(expiry + lateness)
    assert "page_views_30m" not in c.profile.signals
