"""Transient signals in event time: sliding and tumbling windows, sessions, absences and late events."""

from __future__ import annotations

import dataclasses

from nextclick.operators.channels import EVENT_CHANNELS
from nextclick.operators.engine.steps import due_at, next_deadline, prune
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.records import Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.signals.absence import Absence
from nextclick.operators.signals.base import Signal
from nextclick.operators.signals.count import Count
from nextclick.operators.signals.distinct import Distinct
from nextclick.operators.signals.last import Last
from nextclick.operators.signals.session import Session
from nextclick.operators.signals.sum import Sum
from nextclick.operators.signals.window import Window
from tests.helpers import (
    DEFAULT_RULES_PATH,
    HOUR,
    MIN,
    SEC,
    T0,
    Customer,
    apply_transient,
    default_rules,
    fired,
    make_event,
    signal_view,
    write_rules,
)


def feed(signals: tuple[Signal, ...], *events: Event) -> Profile:
    profile = new_profile("c1")
    for e in events:
        apply_transient(profile, e, signals)
    return profile


def value(profile: Profile, signals: tuple[Signal, ...], name: str, at: int):
    return signal_view(profile, signals, at)[name]


PV = frozenset({"page_view"})
ALL_TYPES = frozenset(EVENT_CHANNELS)


# --- sliding windows ----------------------------------------------------------------------------

def test_sliding_count_includes_an_event_for_exactly_its_window():
    sig = (Count("pv", PV, Window(30 * MIN, True, 1)),)
    p = feed(sig, make_event("page_view", T0 + 7), make_event("page_view", T0 + 10 * MIN))
    assert value(p, sig, "pv", T0 + 6) == 0  # before the first event
    assert value(p, sig, "pv", T0 + 7) == 1  # at the first event
    assert value(p, sig, "pv", T0 + 10 * MIN) == 2
    assert value(p, sig, "pv", T0 + 7 + 30 * MIN - 1) == 2  # last millisecond of the first event's window
    assert value(p, sig, "pv", T0 + 7 + 30 * MIN) == 1  # 30 minutes old: out
    assert value(p, sig, "pv", T0 + 40 * MIN) == 0


def test_default_30m_page_view_window_counts_an_event_for_30_minutes_and_forgets_it_a_bucket_later():
    rs = default_rules()
    sig = tuple(s for s in rs.signals if s.name == "page_views_30m")
    assert isinstance(sig[0], Count) and sig[0].window.bucket_ms == MIN
    p = feed(sig, make_event("page_view", T0 + 30 * SEC), make_event("page_view", T0 + 20 * MIN))
    assert value(p, sig, "page_views_30m", T0 + 20 * MIN) == 2
    assert value(p, sig, "page_views_30m", T0 + 30 * SEC + 30 * MIN - 1) == 2
    # Buckets are one minute wide: the edge is blurred by at most one bucket, never more.
    assert value(p, sig, "page_views_30m", T0 + 31 * MIN) == 1
    assert value(p, sig, "page_views_30m", T0 + 51 * MIN) == 0


def test_sliding_count_ignores_other_event_types_and_keeps_bounded_state():
    sig = (Count("pv", PV, Window(30 * MIN, True, MIN)),)
    events = [make_event("page_view", T0 + i * SEC) for i in range(600)] + [make_event("app_open", T0)]
    p = feed(sig, *events)
    assert value(p, sig, "pv", T0 + 10 * MIN) == 600
    assert len(p.signals["pv"]) == 10


def test_tumbling_window_resets_at_each_window_boundary():
    sig = (Count("pv", PV, Window(HOUR, False)),)
    p = feed(sig, make_event("page_view", T0 + 10 * MIN), make_event("page_view", T0 + 50 * MIN))
    assert value(p, sig, "pv", T0 + 59 * MIN) == 2
    assert value(p, sig, "pv", T0 + HOUR) == 0
    apply_transient(p, make_event("page_view", T0 + 61 * MIN), sig)
    assert value(p, sig, "pv", T0 + 61 * MIN) == 1
    assert value(p, sig, "pv", T0 + 59 * MIN) == 2


def test_sum_adds_the_field_and_treats_missing_as_zero():
    sig = (Sum("cart", frozenset({"add_to_cart"}), Window(HOUR, True, 2 * MIN), "amount"),)
    p = feed(sig, make_event("add_to_cart", T0, amount=10.1), make_event("add_to_cart", T0 + MIN, amount=0.2),
             make_event("add_to_cart", T0 + 2 * MIN))
    assert value(p, sig, "cart", T0 + 2 * MIN) == 10.3
    assert value(p, sig, "cart", T0 + 2 * HOUR) == 0


def test_distinct_counts_each_value_once_and_forgets_values_that_left_the_window():
    sig = (Distinct("cats", PV, Window(HOUR, True, 2 * MIN), "category"),)
    p = feed(sig, make_event("page_view", T0, category="shoes"),
             make_event("page_view", T0 + 10 * MIN, category="hats"),
             make_event("page_view", T0 + 40 * MIN, category="shoes"), make_event("page_view", T0 + 41 * MIN))
    assert value(p, sig, "cats", T0 + 45 * MIN) == 2
    assert value(p, sig, "cats", T0 + 80 * MIN) == 1  # hats is 70 minutes old; shoes was seen again at +40m
    assert value(p, sig, "cats", T0 + 101 * MIN) == 0


def test_distinct_keeps_at_most_max_distinct_values():
    sig = (Distinct("cats", PV, Window(HOUR, True, 2 * MIN), "category", max_distinct=3),)
    p = feed(sig, *[make_event("page_view", T0 + i, category=f"c{i}") for i in range(10)])
    assert value(p, sig, "cats", T0 + 10) == 3
    assert sorted(v for v, _ in p.signals["cats"]) == ["c7", "c8", "c9"]


def test_last_is_the_value_of_the_latest_event_time():
    sig = (Last("lastcat", PV, Window(HOUR, True, 2 * MIN), "category"),)
    p = feed(sig, make_event("page_view", T0 + MIN, category="hats"), make_event("page_view", T0, category="shoes"))
    assert value(p, sig, "lastcat", T0 + MIN) == "hats"
    assert value(p, sig, "lastcat", T0 + MIN + HOUR) is None
    assert signal_view(new_profile("c1"), sig, T0)["lastcat"] is None


# --- sessions -----------------------------------------------------------------------------------

SESSION = (Session("session", 30 * MIN, frozenset(), ALL_TYPES),)


def test_session_starts_continues_and_ends_after_the_gap():
    p = feed(SESSION, make_event("page_view", T0))
    assert signal_view(p, SESSION, T0) == {"session_active": True, "session_events": 1, "session_minutes": 0}
    apply_transient(p, make_event("app_open", T0 + 20 * MIN), SESSION)
    apply_transient(p, make_event("page_view", T0 + 45 * MIN), SESSION)
    assert signal_view(p, SESSION, T0 + 45 * MIN) == {"session_active": True, "session_events": 3,
                                                      "session_minutes": 45}
    assert signal_view(p, SESSION, T0 + 75 * MIN)["session_active"] is False
    apply_transient(p, make_event("page_view", T0 + 75 * MIN), SESSION)  # exactly one gap later: new session
    assert signal_view(p, SESSION, T0 + 75 * MIN) == {"session_active": True, "session_events": 1,
                                                      "session_minutes": 0}
    p.prune_at = T0  # as the engine would have noted it; prune only looks when something has expired
    prune(p, Customer(default_rules()).ruleset, T0 + 105 * MIN)
    assert p.signals == {}


def test_an_event_from_an_older_session_does_not_replace_the_current_one():
    p = feed(SESSION, make_event("page_view", T0 + 2 * HOUR), make_event("page_view", T0 + 2 * HOUR + 10 * MIN),
             make_event("page_view", T0))  # arrives late, belongs to a session long over
    assert signal_view(p, SESSION, T0 + 2 * HOUR + 10 * MIN) == {"session_active": True, "session_events": 2,
                                                                 "session_minutes": 10}


def test_session_restricted_to_some_events():
    sig = (Session("shop", 30 * MIN, frozenset({"add_to_cart"}), ALL_TYPES),)
    p = feed(sig, make_event("page_view", T0))
    assert signal_view(p, sig, T0)["shop_active"] is False


# --- absences (through the engine with the default rules) ---------------------------------------

def test_cart_abandonment_fires_exactly_once_after_deadline_plus_allowed_lateness():
    c = Customer()
    c.grant_email(T0)
    c.send("add_to_cart", T0 + MIN, sku="A", amount=25.0)
    deadline = T0 + 61 * MIN
    # A timer turn comes by the deadline plus the allowed lateness (earlier ones for expiring windows).
    assert due_at(c.profile, c.ruleset) <= deadline + 5 * MIN
    assert fired(c.tick(deadline)) == []
    assert fired(c.tick(deadline + 5 * MIN - 1)) == []
    assert signal_view(c.profile, c.ruleset.signals, deadline)["cart_abandoned_pending"] is True
    out = c.tick(deadline + 5 * MIN)
    assert fired(out) == [("cart_abandonment_email", "email", "cart_abandoned")]
    assert out.absences == 1
    assert out.decisions[0].decided_at == deadline
    assert out.decisions[0].trigger_id == f"cart_abandoned:{T0 + MIN}"
    assert signal_view(c.profile, c.ruleset.signals, deadline)["cart_abandoned_pending"] is False
    for later in (deadline + 6 * MIN, deadline + HOUR, deadline + 3 * HOUR):
        assert c.tick(later).decisions == [] and c.tick(later).absences == 0


def test_purchase_after_the_cart_cancels_the_reminder():
    c = Customer()
    c.grant_email(T0)
    c.send("add_to_cart", T0 + MIN, amount=25.0)
    c.send("purchase", T0 + 30 * MIN, amount=5.0)
    assert "cart_abandoned" not in c.profile.signals  # nothing pending, no timer for it
    assert c.tick(T0 + 5 * HOUR).decisions == []


def test_purchase_before_the_cart_does_not_cancel_it():
    c = Customer()
    c.grant_email(T0)
    c.send("add_to_cart", T0 + 2 * MIN, amount=25.0)
    c.send("app_purchase", T0 + MIN, amount=5.0)  # earlier in event time, arrives after
    assert fired(c.tick(T0 + 2 * HOUR)) == [("cart_abandonment_email", "email", "cart_abandoned")]


def test_a_second_cart_restarts_the_hour_and_only_one_reminder_goes_out():
    c = Customer()
    c.grant_email(T0)
    c.send("add_to_cart", T0, amount=25.0, sku="A")
    c.send("add_to_cart", T0 + 30 * MIN, amount=40.0, sku="B")
    assert c.tick(T0 + 66 * MIN).decisions == []
    out = c.tick(T0 + 96 * MIN)
    assert fired(out) == [("cart_abandonment_email", "email", "cart_abandoned")]
    assert out.decisions[0].signals == {"trigger.amount": 40.0}


def test_a_later_event_past_deadline_plus_lateness_fires_the_absence_before_it_is_applied():
    c = Customer()
    c.grant_email(T0)
    c.send("add_to_cart", T0, amount=25.0)
    assert c.send("page_view", T0 + 64 * MIN).decisions == []  # within the allowed lateness: not yet
    out = c.send("purchase", T0 + 65 * MIN, amount=5.0)  # the purchase is too late to cancel
    assert out.absences == 1
    assert fired(out) == [("cart_abandonment_email", "email", "cart_abandoned")]
    # the decision saw the profile before the purchase was applied
    assert out.decisions[0].profile_version == 2 + 1


def test_late_events_are_counted_kept_out_of_signals_and_do_not_trigger_rules():
    c = Customer()
    c.grant_email(T0)
    c.send("page_view", T0 + HOUR)
    view_before = signal_view(c.profile, c.ruleset.signals, T0 + HOUR)
    late = [c.send("page_view", T0 + 54 * MIN), c.send("call_center_contact", T0 + 30 * MIN, outcome="unresolved"),
            c.send("add_to_cart", T0 + 50 * MIN, amount=99.0)]
    assert all(o.late for o in late)
    assert all(not o.decisions and not o.blocked for o in late)
    assert signal_view(c.profile, c.ruleset.signals, T0 + HOUR) == view_before
    assert "cart_abandoned" not in c.profile.signals
    assert c.profile.facts.version == 5 and c.profile.facts.contacts == {"web": 4, "call_center": 1}
    # exactly at the lateness bound is on time
    out = c.send("call_center_contact", T0 + 55 * MIN, outcome="unresolved")
    assert not out.late
    assert fired(out) == [("call_center_follow_up", "call_center", "call_center_contact")]


def test_late_events_enter_signals_under_the_apply_policy_but_still_trigger_nothing(tmp_path):
    text = DEFAULT_RULES_PATH.read_text().replace('policy = "drop"', 'policy = "apply"')
    c = Customer(load_rules(write_rules(tmp_path, text)))
    c.send("page_view", T0 + HOUR)
    out = c.send("page_view", T0 + 40 * MIN)
    assert out.late
    assert signal_view(c.profile, c.ruleset.signals, T0 + HOUR)["page_views_30m"] == 2
    out = c.send("call_center_contact", T0 + 41 * MIN, outcome="unresolved")
    assert out.late and out.decisions == []


def test_absence_signal_ignores_a_late_start_older_than_the_pending_one():
    sig = (Absence("gone", frozenset({"add_to_cart"}), frozenset({"purchase"}), HOUR),)
    p = feed(sig, make_event("add_to_cart", T0 + 10 * MIN), make_event("add_to_cart", T0))
    assert p.signals["gone"][1] == T0 + 70 * MIN  # [since, deadline, carried]
    rules = dataclasses.replace(default_rules(), signals=sig)
    assert next_deadline(p, rules) == T0 + 70 * MIN
