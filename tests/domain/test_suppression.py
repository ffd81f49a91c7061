"""Complaint suppression per channel and purpose, and the purpose and promotion flags decisions carry."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from nextclick.operators.conditions.fields import RulesError
from nextclick.operators.io.decisions import encode_decision
from nextclick.operators.rules.loader import load_rules
from tests.helpers import DAY, HOUR, MIN, T0, Customer, consent, fired, reasons, write_rules

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "decision.v1.json").read_text())

RULES = '''
[[rule]]
id = "promo_email"
on = ["page_view"]
action = "send_email"
channel = "email"
priority = 30
cooldown = "1ms"

[[rule]]
id = "newsletter_email"
on = ["email_open"]
action = "send_email"
channel = "email"
purpose = "newsletter"
cooldown = "1ms"

[[rule]]
id = "promo_ad"
on = ["page_view"]
action = "show_ad"
channel = "ads"
priority = 20
cooldown = "1ms"

[[rule]]
id = "order_update"
on = ["purchase"]
action = "send_email"
channel = "email"
purpose = "service"
promotion = false
cooldown = "1ms"

[consent]
email = "opt_out"
ads = "opt_out"
purposes = ["marketing", "service", "newsletter"]

[suppression]
after_complaint = "30d"   # every other promotion

[[suppression.scope]]
channels = ["email"]
purposes = ["marketing"]
after_complaint = "14d"   # no promotional email for 14 days

[[suppression.scope]]
channels = ["ads"]
after_complaint = "0s"    # ads are not held back at all
'''


KEY = "0123456789abcdef0123456789abcdef"  # a pseudonymous key, as the decision schema wants


def customer(tmp_path: Path, text: str = RULES) -> Customer:
    c = Customer(load_rules(write_rules(tmp_path, text)), customer=KEY)
    c.send("complaint", T0, topic="delivery")
    return c


def test_promotional_email_is_held_for_its_scope_and_other_promotions_for_the_default(tmp_path):
    c = customer(tmp_path)
    # email marketing is held back 14 days; the ad, next in priority, is not held back at all
    out = c.send("page_view", T0 + HOUR)
    assert fired(out) == [("promo_ad", "ads", "page_view")]
    assert reasons(out) == [("promo_email", "complaint_suppression")]
    assert reasons(c.send("page_view", T0 + 14 * DAY - 1)) == [("promo_email", "complaint_suppression")]
    assert fired(c.send("page_view", T0 + 14 * DAY)) == [("promo_email", "email", "page_view")]
    # a newsletter on email is a promotion no scope covers: the default 30 days
    assert reasons(c.send("email_open", T0 + 29 * DAY)) == [("newsletter_email", "complaint_suppression")]
    assert fired(c.send("email_open", T0 + 30 * DAY)) == [("newsletter_email", "email", "email_open")]


def test_a_service_message_is_never_suppressed_and_says_so(tmp_path):
    c = customer(tmp_path)
    out = c.send("purchase", T0 + MIN, amount=10.0)
    assert fired(out) == [("order_update", "email", "purchase")]
    decision = out.decisions[0]
    assert (decision.purpose, decision.promotion) == ("service", False)
    body = orjson.loads(encode_decision(decision)[1])
    assert (body["purpose"], body["promotion"]) == ("service", False)
    jsonschema.validate(body, SCHEMA)


def test_the_first_scope_that_covers_a_rule_decides(tmp_path):
    text = RULES.replace('[[suppression.scope]]\nchannels = ["email"]', '[[suppression.scope]]\nchannels = ["ads"]\n'
                         'purposes = ["marketing"]\nafter_complaint = "1h"\n\n[[suppression.scope]]\n'
                         'channels = ["email"]', 1)
    c = customer(tmp_path, text)
    assert reasons(c.send("page_view", T0 + HOUR - 1)) == [("promo_email", "complaint_suppression"),
                                                           ("promo_ad", "complaint_suppression")]
    rs = c.ruleset
    assert [rs.suppression_ms(r) for r in rs.rules] == [14 * DAY, 30 * DAY, HOUR, 0]


def test_a_scope_an_earlier_one_covers_whole_is_refused(tmp_path):
    """It could never apply (an outside probe: accepted without a word); one that overlaps in part is fine."""
    text = RULES.replace('[[suppression.scope]]\nchannels = ["email"]', '[[suppression.scope]]\n'
                         'channels = ["ads", "email"]\nafter_complaint = "1h"\n\n[[suppression.scope]]\n'
                         'channels = ["email"]', 1)
    with pytest.raises(RulesError, match=r"\[\[suppression.scope\]\] #2: field 'channels': this scope never applies: "
                                         r"#1 comes first"):
        load_rules(write_rules(tmp_path, text))


def test_without_scopes_after_complaint_covers_every_promotion_as_before(tmp_path):
    text = RULES[:RULES.index("[[suppression.scope]]")]
    rs = load_rules(write_rules(tmp_path, text))
    assert [rs.suppression_ms(r) for r in rs.rules] == [30 * DAY, 30 * DAY, 30 * DAY, 0]


@pytest.mark.parametrize(("scope", "field"), [
    ('channels = ["fax"]\nafter_complaint = "1d"', "channels"),
    ('purposes = "marketing"\nafter_complaint = "1d"', "purposes"),
    ('channels = ["email"]', "after_complaint"),
    ('channels = ["email"]\nafter_complaint = "-1d"', "after_complaint"),
    ('channels = ["email"]\nafter_complaint = "1d"\nchanel = "x"', "chanel"),
])
def test_a_bad_scope_is_named(tmp_path, scope, field):
    path = write_rules(tmp_path, RULES[:RULES.index("[[suppression.scope]]")] + f"[[suppression.scope]]\n{scope}\n")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert "[[suppression.scope]] #1" in str(err.value) and f"field '{field}'" in str(err.value), str(err.value)


def test_default_rules_decisions_say_promotion_or_service():
    c = Customer()
    c.apply(consent(T0, "email", True))
    follow_up = c.send("call_center_contact", T0 + MIN, outcome="unresolved").decisions[0]
    cross_sell = c.send("purchase", T0 + 2 * MIN, amount=50.0).decisions[0]
    assert (follow_up.purpose, follow_up.promotion) == ("service", False)
    assert (cross_sell.purpose, cross_sell.promotion) == ("marketing", True)
