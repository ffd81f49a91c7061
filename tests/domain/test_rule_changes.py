"""A rules file changed between two runs applies to the decisions made before the change.

An outside probe (a marketer) changed a rule's cooldown and a channel's cap window between restarts:
a cooldown shortened from a day to an hour still blocked for a day, one lengthened from 2 hours to a day
let the next email out at the old end, and a cap window lengthened from 1 to 6 hours forgot the email
sent before. The history now keeps when each decision went out and judges it by the rules in force.
Each test stores the profile (encode and decode, as a restart reads it) between the two rule sets.
"""

from __future__ import annotations

from pathlib import Path

from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.rules.model import RuleSet
from tests.helpers import HOUR, MIN, T0, Customer, consent, fired, reasons, write_rules


def ruleset(tmp_path: Path, name: str, *, cooldown: str, cap: str = "") -> RuleSet:
    text = f"""
[consent]
email = "opt_in"
{f'''
[caps]
email = {{ limit = 1, window = "{cap}" }}
''' if cap else ''}
[[rule]]
id = "browse_email"
on = ["page_view"]
action = "send_browse_email"
channel = "email"
priority = 10
cooldown = "{cooldown}"
"""
    return load_rules(write_rules(tmp_path, text, name))


def restarted(customer: Customer, rules: RuleSet) -> None:
    """The profile as the next run reads it from the store, judged by that run's rules."""
    customer.profile = decode_profile(encode_profile(customer.profile))
    customer.ruleset = rules


def first_email(tmp_path: Path, rules: RuleSet) -> Customer:
    customer = Customer(rules)
    customer.apply(consent(T0, "email", True))
    assert fired(customer.send("page_view", T0 + MIN)) == [("browse_email", "email", "page_view")]
    return customer


def test_a_cooldown_shortened_between_runs_lets_the_next_email_out_at_the_new_end(tmp_path: Path) -> None:
    customer = first_email(tmp_path, ruleset(tmp_path, "day.toml", cooldown="1d"))
    restarted(customer, ruleset(tmp_path, "hour.toml", cooldown="1h"))
    assert reasons(customer.send("page_view", T0 + 30 * MIN)) == [("browse_email", "cooldown")]
    assert fired(customer.send("page_view", T0 + 2 * HOUR)) == [("browse_email", "email", "page_view")]


def test_a_cooldown_lengthened_between_runs_holds_the_email_sent_before(tmp_path: Path) -> None:
    customer = first_email(tmp_path, ruleset(tmp_path, "two.toml", cooldown="2h"))
    restarted(customer, ruleset(tmp_path, "day.toml", cooldown="1d"))
    customer.tick(T0 + 3 * HOUR)  # a timer turn past the old end: what it prunes, it judges by the new rules
    assert reasons(customer.send("page_view", T0 + 2 * HOUR + 2 * MIN)) == [("browse_email", "cooldown")]
    assert reasons(customer.send("page_view", T0 + 20 * HOUR)) == [("browse_email", "cooldown")]
    assert fired(customer.send("page_view", T0 + 25 * HOUR)) == [("browse_email", "email", "page_view")]


def test_a_cap_window_lengthened_between_runs_counts_the_email_sent_before(tmp_path: Path) -> None:
    customer = first_email(tmp_path, ruleset(tmp_path, "one.toml", cooldown="0s", cap="1h"))
    restarted(customer, ruleset(tmp_path, "six.toml", cooldown="0s", cap="6h"))
    customer.tick(T0 + 3 * HOUR)
    assert reasons(customer.send("page_view", T0 + 4 * HOUR)) == [("browse_email", "frequency_cap_channel")]
    assert fired(customer.send("page_view", T0 + 7 * HOUR)) == [("browse_email", "email", "page_view")]


def test_the_view_shows_a_cooldowns_end_by_the_rules_in_force(tmp_path: Path) -> None:
    from nextclick.operators.engine.view import profile_view

    customer = first_email(tmp_path, ruleset(tmp_path, "day.toml", cooldown="1d"))
    hour = ruleset(tmp_path, "hour.toml", cooldown="1h")
    restarted(customer, hour)
    view = profile_view("profiles/c1", customer.profile, hour, T0 + 2 * MIN)
    assert view["recent_decisions"]["rules"]["browse_email"] == {"at": T0 + MIN, "until": T0 + MIN + HOUR}


CART = """
[signals.{name}]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "1h"

[[rule]]
id = "cart_email"
on = ["{name}"]
action = "send_cart_email"
channel = "email"
"""


def test_a_renamed_signals_state_is_dropped_and_named_not_kept_for_good(tmp_path: Path) -> None:
    """A cart pending under the old name will not fire under the new one; its state goes at the profile's
    next prune and the outcome names the signal, for the shard's one warning and metric (an outside probe: the old
    state stayed in every profile for good and the start said nothing)."""
    from nextclick.operators.infra import metrics
    from nextclick.operators.shard.common import account

    customer = Customer(load_rules(write_rules(tmp_path, CART.format(name="cart_abandoned"), "old.toml")))
    customer.send("add_to_cart", T0, sku="s", amount=30.0)
    assert "cart_abandoned" in customer.profile.signals
    restarted(customer, load_rules(write_rules(tmp_path, CART.format(name="cart_left"), "new.toml")))
    assert fired(customer.tick(T0 + 2 * HOUR)) == []  # its deadline passed: nothing fires under either name
    out = customer.tick(T0 + 25 * HOUR)  # the next prune (the event id's dedupe entry expires after a day)
    assert out.stale_signals == ["cart_abandoned"]
    assert customer.profile.signals == {}
    before = metrics.counter_values(metrics.STALE_SIGNAL_STATE).get(("cart_abandoned",), 0.0)
    account(out, [], {})
    assert metrics.counter_values(metrics.STALE_SIGNAL_STATE)[("cart_abandoned",)] - before == 1
