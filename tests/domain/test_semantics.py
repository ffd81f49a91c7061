"""Documented semantics, pinned: each test fails when the code changes what docs/rules.md promises.

- A condition on a missing value is false for every operator but `==` and `!=`, which compare with
  null (so `!= <value>` holds). In a rule's `when` and in a signal's `where` alike.
- A sent decision counts towards a frequency cap for exactly the cap's window: at `window` after it,
  it no longer counts (the channel's cap and the overall cap alike).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.conditions.compiler import View
from nextclick.operators.conditions.fields import RulesError
from nextclick.operators.records import Trigger
from nextclick.operators.rules.loader import load_rules
from tests.helpers import HOUR, MIN, T0, Customer, fired, reasons, write_rules

# Each holds for the value 2; on a missing value, only `!=` holds.
OPERATORS = ["> 1", ">= 1", "< 100", "<= 100", "in [2, 3]", "not in [7]", "== 2", "!= 7"]


def rules(condition: str) -> str:
    return f'''
[signals.dear_carts]
kind = "count"
events = ["add_to_cart"]
where = ["quantity {condition}"]
window = "1h"

[[rule]]
id = "when_rule"
on = ["purchase"]
when = ["trigger.items {condition}"]
action = "show_ad"
channel = "ads"
cooldown = "1ms"

[[rule]]
id = "durable"
on = ["app_open"]
when = ["days_since_last_purchase {condition.replace("100", "100000")}"]
action = "show_ad"
channel = "ads"
cooldown = "1ms"

[consent]
ads = "opt_out"
'''


@pytest.mark.parametrize("condition", OPERATORS)
def test_a_condition_on_a_missing_value_is_false_except_equality(tmp_path: Path, condition: str) -> None:
    c = Customer(load_rules(write_rules(tmp_path, rules(condition))))
    missing_holds = condition.startswith("!=")
    # a rule's `when` over a trigger attribute
    assert fired(c.send("purchase", T0, amount=1.0, items=2)) == [("when_rule", "ads", "purchase")]
    assert bool(fired(c.send("purchase", T0 + 1, amount=1.0))) is missing_holds
    # over a durable attribute: a customer who never bought has no days_since_last_purchase
    prospect = Customer(c.ruleset, customer="c2")
    assert bool(fired(prospect.send("app_open", T0))) is missing_holds
    # a signal's `where` over an event attribute
    c.send("add_to_cart", T0 + 2, quantity=2)
    c.send("add_to_cart", T0 + 3)
    view = View(c.profile, Trigger("page_view", "t", T0 + 4, {}), c.ruleset.getters)
    assert view.get("dear_carts") == (2 if missing_holds else 1)


def test_a_mismatched_type_is_false_not_an_error(tmp_path: Path) -> None:
    # A trigger attribute's type is declared (its schema), and so are a profile attribute's and the
    # attributes a signal's `where` reads, so `rules check` refuses the comparison
    # (tests/domain/test_rules_v3.py). A value of another type that reaches the engine all the same
    # (an event built without the parser) makes the condition false at run time, not an error.
    text = rules("> 'one'")
    with pytest.raises(RulesError, match="'quantity' is integer, compared with a string: never true"):
        load_rules(write_rules(tmp_path, text))
    text = text.replace("quantity > 'one'", "quantity > 1").replace("trigger.items > 'one'", "trigger.items > 100")
    with pytest.raises(RulesError, match="'days_since_last_purchase' is integer, compared with a string: never true"):
        load_rules(write_rules(tmp_path, text))
    text = text.replace("days_since_last_purchase > 'one'", "days_since_last_purchase > 100000")
    c = Customer(load_rules(write_rules(tmp_path, text)))
    assert fired(c.send("purchase", T0, amount=1.0, items="two")) == []
    c.send("add_to_cart", T0 + 1, quantity="two")
    assert View(c.profile, Trigger("page_view", "t", T0 + 2, {}), c.ruleset.getters).get("dear_carts") == 0


CAPS = '''
[[rule]]
id = "call"
on = ["call_center_contact"]
action = "call_back"
channel = "call_center"
cooldown = "1ms"

[[rule]]
id = "ad"
on = ["page_view"]
action = "show_ad"
channel = "ads"
cooldown = "1ms"

[caps]
overall = { limit = 1, window = "1h" }

[consent]
call_center = "opt_out"
ads = "opt_out"
'''


def test_a_sent_decision_counts_towards_the_overall_cap_for_exactly_its_window(tmp_path: Path) -> None:
    c = Customer(load_rules(write_rules(tmp_path, CAPS)))
    assert fired(c.send("call_center_contact", T0))
    assert reasons(c.send("page_view", T0 + HOUR - 1)) == [("ad", "frequency_cap_overall")]
    assert fired(c.send("page_view", T0 + HOUR)) == [("ad", "ads", "page_view")]


def test_a_cooldown_ends_exactly_cooldown_after_the_decision(tmp_path: Path) -> None:
    text = CAPS.replace('cooldown = "1ms"', 'cooldown = "10m"', 1).replace('overall = { limit = 1, window = "1h" }', "")
    c = Customer(load_rules(write_rules(tmp_path, text)))
    assert fired(c.send("call_center_contact", T0))
    assert reasons(c.send("call_center_contact", T0 + 10 * MIN - 1)) == [("call", "cooldown")]
    assert fired(c.send("call_center_contact", T0 + 10 * MIN))
