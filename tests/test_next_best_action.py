"""Next best action without a broker: the judgement on a view record agrees with the engine on the same
interaction, changes nothing, and says what it could not know."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from nextclick.operators.engine.steps import on_event
from nextclick.operators.engine.view import profile_view
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.tools.next_best_action import NextBestActionError, consent_tie, judge
from tests.helpers import DAY, MIN, T0, Customer, consent, default_rules, make_event, write_rules

NOW = T0 + 40 * DAY


def view(customer: Customer, at: int) -> dict[str, Any]:
    return profile_view(f"profiles/{customer.customer}", customer.profile, customer.ruleset, at)


def engine_decides(customer: Customer, event_type: str, at: int, **attrs: Any) -> str | None:
    """What the flow would decide if this interaction arrived now (on a copy)."""
    out = on_event(copy.deepcopy(customer.profile), make_event(event_type, at, customer=customer.customer, **attrs),
                   customer.ruleset)
    return out.decisions[0].rule_id if out.decisions else None


def outcomes(answer: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {c["rule"]: (c["outcome"], c["reason"]) for c in answer["candidates"]}


def test_a_call_gets_the_follow_up_then_its_cooldown_as_the_engine_would_judge_them() -> None:
    c = Customer()
    c.send("purchase", NOW - 3 * DAY, order_id="o1", amount=80.0, category="shoes")
    c.send("call_center_contact", NOW - 2 * DAY, topic="delivery", outcome="resolved")
    record = view(c, NOW - MIN)
    before = copy.deepcopy(record)
    answer = judge(record, c.ruleset, "call_center", {"outcome": "unresolved", "topic": "delivery"}, NOW)
    assert answer["action"] is not None and answer["action"]["rule"] == "call_center_follow_up"
    assert answer["action"]["rule"] == engine_decides(c, "call_center_contact", NOW, outcome="unresolved")
    assert answer["action"]["action"] == "call_back" and answer["action"]["channel"] == "call_center"
    assert answer["trigger"] == {"type": "call_center_contact", "customer_channel": "call_center",
                                 "attributes": {"outcome": "unresolved", "topic": "delivery"}}
    (candidate,) = answer["candidates"]
    assert candidate["conditions"] == [{"condition": 'trigger.outcome == "unresolved"', "value": "unresolved",
                                        "holds": True, "known": True}]
    # Nothing used: the record is as it was, and asking again gives the same answer.
    assert record == before
    assert judge(record, c.ruleset, "call_center", {"outcome": "unresolved", "topic": "delivery"}, NOW) == answer
    # Without an outcome the condition fails, as it would for the engine.
    assert outcomes(judge(record, c.ruleset, "call_center", {}, NOW)) == {
        "call_center_follow_up": ("not_matched", "conditions failed")}

    # A real unresolved call an hour ago fired the rule: its cooldown (1 day) holds now.
    out = c.send("call_center_contact", NOW - 60 * MIN, outcome="unresolved")
    assert [d.rule_id for d in out.decisions] == ["call_center_follow_up"]
    answer = judge(view(c, NOW - MIN), c.ruleset, "call_center", {"outcome": "unresolved"}, NOW)
    assert answer["action"] is None
    assert outcomes(answer) == {"call_center_follow_up": ("blocked", "cooldown")}
    assert engine_decides(c, "call_center_contact", NOW, outcome="unresolved") is None


@pytest.mark.parametrize("granted", [True, False])
def test_a_lapsed_high_value_visitor_is_won_back_only_with_consent_as_the_engine_decides(granted: bool) -> None:
    c = Customer()
    c.apply(consent(NOW - 300 * DAY, "email", granted))
    for i in range(4):
        c.send("purchase", NOW - (300 - i) * DAY, order_id=f"o{i}", amount=150.0)
    answer = judge(view(c, NOW - MIN), c.ruleset, "web", {"page_type": "home"}, NOW)
    expected = engine_decides(c, "page_view", NOW, page_type="home")
    assert (answer["action"] or {}).get("rule") == expected
    assert expected == ("high_value_winback" if granted else None)
    if not granted:
        assert outcomes(answer)["high_value_winback"] == ("blocked", "opted_out")
    (condition,) = answer["candidates"][0]["conditions"]
    assert condition["value"] == "lapsed_high_value" and condition["known"]


def test_a_complaint_suppresses_promotions_a_day_at_most_longer_than_the_flow(tmp_path: Path) -> None:
    c = Customer()
    c.apply(consent(NOW - 300 * DAY, "email", True))
    for i in range(4):
        c.send("purchase", NOW - (300 - i) * DAY, order_id=f"o{i}", amount=150.0)
    c.send("complaint", NOW - 10 * DAY, topic="late")
    c.send("call_center_contact", NOW - 5 * DAY, outcome="resolved")  # a later call: the view's days bound it
    answer = judge(view(c, NOW - MIN), c.ruleset, "web", {}, NOW)
    assert outcomes(answer)["high_value_winback"] == ("blocked", "complaint_suppression")
    # Past the 30 days: allowed again, as the engine would.
    later = NOW + 21 * DAY
    answer = judge(view(c, later), c.ruleset, "web", {}, later)
    assert (answer["action"] or {}).get("rule") == engine_decides(c, "page_view", later) == "high_value_winback"


def test_a_transient_signal_the_view_does_not_carry_reads_missing_and_is_reported(tmp_path: Path) -> None:
    rules = load_rules(write_rules(tmp_path, """
[signals.page_views_30m]
kind = "count"
events = ["page_view"]
window = "30m"

[signals.browse_abandoned]
kind = "absence"
start = ["page_view"]
cancel = ["purchase"]
after = "20m"

[[rule]]
id = "busy_browser"
on = ["call_center_contact"]
when = ["page_views_30m >= 1", "browse_abandoned_pending == true"]
action = "offer_help"
channel = "call_center"
priority = 10
cooldown = "1h"
expiry = "1h"
"""))
    c = Customer(rules)
    c.send("page_view", NOW - 2 * MIN)
    answer = judge(view(c, NOW - MIN), rules, "call_center", {}, NOW)
    (candidate,) = answer["candidates"]
    assert candidate["conditions"] == [
        {"condition": "page_views_30m >= 1", "value": None, "holds": False, "known": False},
        {"condition": "browse_abandoned_pending == true", "value": True, "holds": True, "known": True}]
    assert answer["approximated"] == ["page_views_30m"] and answer["action"] is None


def test_requests_the_rules_cannot_judge_are_refused_with_one_line(tmp_path: Path) -> None:
    c = Customer()
    c.send("page_view", NOW - DAY)
    record, rules = view(c, NOW - MIN), default_rules()
    cases = [("fax", {}, None, "channel must be one of"),
             ("store", {}, None, "event=<type>"),
             ("web", {}, "call_center_contact", "event must be an event type on channel 'web'"),
             ("call_center", {"mood": "angry"}, None, "'mood' is not an attribute of call_center_contact"),
             ("store", {"amount": "lots"}, "store_purchase", "amount must be a number"),
             # Only as JSON writes a number: Python's int() and float() take all of these, no event can.
             *(("store", {"amount": text}, "store_purchase", "amount must be a number as JSON writes it")
               for text in ("1_000", "\u0662", "\uff11\uff12", "nan", "inf", "1e400", "+5", " 5")),
             ("store", {"items": "2.5"}, "store_purchase", "items must be an integer"),
             ("call_center", {"outcome": "x" * 200}, None, "not a valid event")]
    for channel, attrs, event_type, message in cases:
        with pytest.raises(NextBestActionError, match=message.replace("(", r"\(")) as info:
            judge(record, rules, channel, attrs, NOW, event_type=event_type)
        assert "\n" not in str(info.value)
    only_web = load_rules(write_rules(tmp_path, """
[[rule]]
id = "w"
on = ["page_view"]
when = []
action = "show"
channel = "web"
priority = 1
cooldown = "1h"
expiry = "1h"
"""))
    with pytest.raises(NextBestActionError, match="no rule in the rules file is on call_center_contact"):
        judge(record, only_web, "call_center", {}, NOW)
    # A store purchase named explicitly is judged (the cross-sell fires on its amount).
    answer = judge(record, rules, "store", {"amount": "45.5", "order_id": "s1"}, NOW, event_type="store_purchase")
    assert answer["trigger"]["attributes"] == {"amount": 45.5, "order_id": "s1"}
    # 2.0 is an integer to the flow's parser (JSON Schema), so it is to the service too.
    answer = judge(record, rules, "store", {"amount": "45", "items": "2.0"}, NOW, event_type="store_purchase")
    assert answer["trigger"]["attributes"] == {"amount": 45, "items": 2}
    assert outcomes(answer)["post_purchase_cross_sell"] == ("blocked", "no_consent")  # email is opt-in


def test_an_attribute_the_tracking_plan_adds_is_judged_as_the_flow_reads_it(tmp_path: Path) -> None:
    """The flow's rules come with the flow's tracking plan: an interaction attribute only the plan declares
    is typed, parsed and read by the rules as the flow would (not refused as unknown)."""
    plan = write_rules(tmp_path, '[events.call_center_contact.attributes.queue]\ntype = "string"\n'
                                 'enum = ["billing", "vip"]\n', "plan.toml")
    rules = load_rules(write_rules(tmp_path, '''
[[rule]]
id = "vip_call_back"
on = ["call_center_contact"]
when = ['trigger.queue == "vip"']
action = "call_back"
channel = "call_center"
cooldown = "1d"
purpose = "service"
promotion = false

[consent]
call_center = "opt_out"
'''), plan)
    c = Customer(rules)
    c.send("purchase", NOW - 3 * DAY, order_id="o1", amount=80.0, category="shoes")
    answer = judge(view(c, NOW - MIN), rules, "call_center", {"queue": "vip"}, NOW)
    assert answer["action"] is not None and answer["action"]["rule"] == "vip_call_back"
    assert answer["trigger"]["attributes"] == {"queue": "vip"}
    assert engine_decides(c, "call_center_contact", NOW, queue="vip") == "vip_call_back"
    with pytest.raises(NextBestActionError, match="queue"):
        judge(view(c, NOW - MIN), rules, "call_center", {"queue": "gold"}, NOW)  # outside the plan's enum


@pytest.mark.parametrize("withdrawal_id_first", [True, False])
def test_consent_entries_at_the_same_millisecond_are_judged_opted_out_and_said_so(withdrawal_id_first: bool) -> None:
    """An email grant and an `all` withdrawal at one millisecond: the flow takes the later event id, which
    the view does not carry. Next best action errs on the safe side (opted out) and says it approximated."""
    c = Customer()
    at = NOW - DAY
    grant, withdrawal = ("ev-b", "ev-a") if withdrawal_id_first else ("ev-a", "ev-b")
    c.apply(consent(at, "email", True, event_id=grant))
    c.apply(consent(at, "all", False, event_id=withdrawal))
    record = view(c, NOW - MIN)
    assert record["consent"] == {"all:marketing": {"granted": False, "ts": at},
                                 "email:marketing": {"granted": True, "ts": at}}
    attrs = {"amount": "50", "order_id": "s1", "currency": "EUR"}
    answer = judge(record, c.ruleset, "store", attrs, NOW, event_type="store_purchase")
    assert answer["action"] is None
    assert outcomes(answer)["post_purchase_cross_sell"] == ("blocked", "opted_out")
    assert answer["approximated"] == ["consent_tie"]
    flow = engine_decides(c, "store_purchase", NOW, amount=50.0, order_id="s1", currency="EUR")
    # The flow takes the later event id: opted out too when it is the withdrawal's; when it is the grant's,
    # the flow sends and next best action errs on the safe side (and says so).
    assert flow == (None if not withdrawal_id_first else "post_purchase_cross_sell")

    # A millisecond apart there is no tie: the later one decides, exactly, and nothing is approximated.
    c.apply(consent(at + 1, "email", True))
    answer = judge(view(c, NOW - MIN), c.ruleset, "store", attrs, NOW, event_type="store_purchase")
    assert (answer["action"] or {}).get("rule") == "post_purchase_cross_sell" and answer["approximated"] == []


def test_consent_tie_is_a_disagreement_at_the_latest_millisecond_of_the_keys_judged() -> None:
    keys = ("email:marketing", "all:marketing")
    assert not consent_tie({}, keys)
    assert consent_tie({"email:marketing": [True, 5, ""], "all:marketing": [False, 5, ""]}, keys)
    assert not consent_tie({"email:marketing": [False, 5, ""], "all:marketing": [False, 5, ""]}, keys)  # agree
    assert not consent_tie({"email:marketing": [True, 6, ""], "all:marketing": [False, 5, ""]}, keys)  # later wins
    assert not consent_tie({"sms:marketing": [True, 5, ""], "all:marketing": [False, 5, ""]}, keys)  # not judged


@pytest.mark.parametrize("text", ["1e308", "99999999999999999999", "9223372036854775808", "-1e19"])
def test_an_integer_beyond_64_bits_is_refused_with_one_line(text: str) -> None:
    c = Customer()
    c.send("page_view", NOW - DAY)
    with pytest.raises(NextBestActionError, match="items must be an integer within 64 bits"):
        judge(view(c, NOW - MIN), c.ruleset, "store", {"amount": "5", "items": text}, NOW, event_type="store_purchase")
