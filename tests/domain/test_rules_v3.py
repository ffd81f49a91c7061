"""Rules v3 (issue 26): any/all/not groups, reachability, rules outside the caps, decision parameters,
absences that do not restart, and the event attributes they need (page_view.product_id,
add_to_cart.channel). Each mistake in a rules file names the file, the rule and the field."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from nextclick.operators.conditions.fields import RulesError
from nextclick.operators.conditions.model import Condition, Group
from nextclick.operators.events.schemas import event_attributes
from nextclick.operators.io.decisions import decision_body, encode_decision
from nextclick.operators.rules.loader import check_rules, load_rules
from nextclick.operators.signals.absence import Fixed, Tally
from nextclick.operators.tools.explain import explain, render
from nextclick.operators.tools.scenarios import ScenarioError, load_scenario
from tests.helpers import HOUR, MIN, SEC, T0, Customer, consent, fired, make_event, reasons, write_rules

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "decision.v1.json").read_text())

SIGNALS = '''
[signals.views]
kind = "count"
events = ["page_view"]
window = "30m"

[signals.opens]
kind = "count"
events = ["email_open"]
window = "30d"
'''


def rules(tmp_path: Path, *bodies: str, signals: str = SIGNALS, tail: str = "") -> Path:
    return write_rules(tmp_path, signals + "\n" + "\n".join(bodies) + "\n" + tail)


def rule(rule_id: str = "r1", *, on: str = '["page_view"]', channel: str = "email", priority: int = 10,
         **extra: str) -> str:
    lines = [f'id = "{rule_id}"', f"on = {on}", 'action = "act"', f'channel = "{channel}"',
             f"priority = {priority}", *(f"{k} = {v}" for k, v in extra.items())]
    return "[[rule]]\n" + "\n".join(lines) + "\n"


def errors(path: Path) -> list[str]:
    ruleset, found = check_rules(path)
    assert ruleset is None
    return [str(e) for e in found]


def one_error(path: Path) -> str:
    found = errors(path)
    assert len(found) == 1, found
    assert found[0].startswith(str(path)), found[0]
    return found[0]


KEY = "0" * 32  # a customer key as the decision schema wants it


def granted(customer: Customer, *channels: str, purpose: str = "marketing") -> None:
    for channel in channels:
        customer.apply(consent(T0, channel, True, purpose, customer=customer.customer))


# -- groups ----------------------------------------------------------------------------------------


def test_groups_parse_into_any_all_not_with_their_text(tmp_path):
    path = rules(tmp_path, rule(when='''[
  { any = ["views >= 3", 'trigger.category == "shoes"'] },
  { not = "opens == 0" },
  { not = ["views >= 10", { all = ["opens >= 1"] }] },
]'''))
    when = load_rules(path).rule("r1").when
    assert [type(w) for w in when] == [Group, Group, Group]
    assert when[0].kind == "any" and isinstance(when[0].items[0], Condition)
    assert when[0].text == "any(views >= 3, trigger.category == \"shoes\")"
    assert when[2].text == "not(views >= 10, all(opens >= 1))"
    assert [c.attribute for c in load_rules(path).rule("r1").conditions] == [
        "views", "trigger.category", "opens", "views", "opens"]


@pytest.mark.parametrize(("when", "words"), [
    ('[{ anyy = ["views >= 3"] }]', "a group is a table with one key, any, all or not; got keys ['anyy']"),
    ('[{ any = ["views >= 3"], not = "opens == 0" }]', "a group is a table with one key"),
    ("[{ any = [] }]", "'any' needs a non-empty list"),
    ('[{ all = "views >= 3" }]', "'all' needs a non-empty list"),
    ('[{ any = ["views ~ 3"] }]', "cannot read condition 'views ~ 3'"),
    ('[{ not = { any = ["viewz >= 3"] } }]', "unknown attribute 'viewz'"),
    ('[{ any = ["trigger.amount > 1"] }]', "'trigger.amount' is not an attribute of what the rule is on"),
])
def test_a_mistake_inside_a_group_names_file_rule_and_when(tmp_path, when, words):
    message = one_error(rules(tmp_path, rule(when=when)))
    assert "rule 'r1': field 'when'" in message and words in message, message


def groups_customer(tmp_path: Path) -> Customer:
    path = rules(tmp_path, rule(when='''[
  { any = ['trigger.category == "shoes"', "views >= 3"] },
  { not = ["opens == 0", "views >= 2"] },
]''', cooldown='"1m"'))
    customer = Customer(load_rules(path))
    granted(customer, "email")
    return customer


def test_any_holds_when_one_item_holds_and_not_negates_all_of_its_list(tmp_path):
    customer = groups_customer(tmp_path)
    # shoes: any holds; views 1 -> not(opens == 0 and views >= 2) holds
    assert fired(customer.send("page_view", T0 + MIN, category="shoes")) == [("r1", "email", "page_view")]
    # bags, views 2: any fails
    assert fired(customer.send("page_view", T0 + 3 * MIN, category="bags")) == []
    # bags, views 3: any holds through views; opens == 0 and views >= 2: not fails
    assert fired(customer.send("page_view", T0 + 5 * MIN, category="bags")) == []
    customer.send("email_open", T0 + 6 * MIN, campaign_id="x")
    out = customer.send("page_view", T0 + 7 * MIN, category="bags")
    assert fired(out) == [("r1", "email", "page_view")]
    # the decision's signals name every condition the groups hold, with its value
    assert out.decisions[0].signals == {"trigger.category": "bags", "views": 4, "opens": 1}


def test_a_rule_with_groups_has_one_cooldown(tmp_path):
    path = rules(tmp_path, rule(when='[{ any = [\'trigger.category == "shoes"\', "views >= 3"] }]'))
    customer = Customer(load_rules(path))
    granted(customer, "email")
    assert fired(customer.send("page_view", T0 + MIN, category="shoes")) == [("r1", "email", "page_view")]
    customer.send("page_view", T0 + 2 * MIN, category="bags")
    assert reasons(customer.send("page_view", T0 + 3 * MIN, category="bags")) == [("r1", "cooldown")]


def test_explain_shows_a_group_with_the_values_it_read(tmp_path):
    path = rules(tmp_path, rule(when='[{ any = [\'trigger.category == "shoes"\', "views >= 3"] }]',
                                params='{ cat = "trigger.category" }'))
    ruleset = load_rules(path)
    story = [(1, "ana", make_event("consent", T0, customer="ana", channel="email", granted=True,
                                   purpose="marketing")),
             (2, "ana", make_event("page_view", T0 + MIN, customer="ana", category="shoes"))]
    entries = [e for e in explain(ruleset, story) if e["trigger"] == "page_view"]
    condition = entries[0]["rules"][0]["conditions"][0]
    assert condition == {"condition": "any(trigger.category == \"shoes\", views >= 3)",
                         "value": {"trigger.category": "shoes", "views": 1}, "holds": True}
    assert entries[0]["decision"]["params"] == {"cat": "shoes"}
    assert "params {'cat': 'shoes'}" in render(entries[0])


# -- reachability ----------------------------------------------------------------------------------


def reach_rules(tmp_path: Path) -> Path:
    return rules(tmp_path, rule("mail", priority=20, require_address="true"),
                 rule("ad", channel="ads", priority=10, require_address="true"),
                 tail='[caps]\nemail = { limit = 1, window = "24h" }\n[consent]\nads = "opt_out"\n')


def test_an_unreachable_channel_is_blocked_uses_no_cooldown_and_falls_through(tmp_path):
    customer = Customer(load_rules(reach_rules(tmp_path)))
    granted(customer, "email")
    customer.profile.ids = {"cookie": ["k1"]}
    out = customer.send("page_view", T0 + MIN)
    assert reasons(out) == [("mail", "unreachable")] and fired(out) == [("ad", "ads", "page_view")]
    assert "mail" not in customer.profile.history.fired and "email" not in customer.profile.history.sent
    customer.profile.ids = {"cookie": ["k1"], "email": ["e1"]}
    assert fired(customer.send("page_view", T0 + 2 * MIN)) == [("mail", "email", "page_view")]


def test_unknown_identifiers_do_not_block_and_rules_without_the_option_are_unchanged(tmp_path):
    customer = Customer(load_rules(reach_rules(tmp_path)))
    granted(customer, "email")
    assert customer.profile.ids == {}  # not known (a profile stored before identifiers were recorded)
    assert fired(customer.send("page_view", T0 + MIN)) == [("mail", "email", "page_view")]
    plain = Customer(load_rules(rules(tmp_path, rule("mail"))))
    granted(plain, "email")
    plain.profile.ids = {"cookie": ["k1"]}
    assert fired(plain.send("page_view", T0 + MIN)) == [("mail", "email", "page_view")]


def test_require_address_and_capped_must_be_booleans(tmp_path):
    assert "rule 'r1': field 'require_address': must be true or false" in one_error(
        rules(tmp_path, rule(require_address='"yes"')))
    assert "rule 'r1': field 'capped': must be true or false" in one_error(rules(tmp_path, rule(capped="1")))


# -- caps by purpose -------------------------------------------------------------------------------

CAPS = '[caps]\nemail = { limit = 1, window = "24h" }\noverall = { limit = 1, window = "24h" }\n'


def test_a_rule_outside_the_caps_is_not_held_back_and_not_counted(tmp_path):
    path = rules(tmp_path, rule("promo", cooldown='"1m"'),
                 rule("service", on='["complaint"]', purpose='"service"', promotion="false", capped="false",
                      cooldown='"1m"'), tail=CAPS)
    customer = Customer(load_rules(path))
    granted(customer, "email")
    granted(customer, "email", purpose="service")
    # the service message first: it does not count, so the promotion still has its one a day
    assert fired(customer.send("complaint", T0 + MIN, topic="x")) == [("service", "email", "complaint")]
    assert "email" not in customer.profile.history.sent
    out = customer.send("page_view", T0 + 2 * MIN)
    assert reasons(out) == [("promo", "complaint_suppression")]
    # after the cap is full, the service message still goes out
    customer2 = Customer(load_rules(path), customer="c2")
    customer2.apply(consent(T0, "email", True, customer="c2"))
    customer2.apply(consent(T0, "email", True, "service", customer="c2"))
    assert fired(customer2.send("page_view", T0 + MIN)) == [("promo", "email", "page_view")]
    assert reasons(customer2.send("page_view", T0 + 3 * MIN)) == [("promo", "frequency_cap_channel")]
    assert fired(customer2.send("complaint", T0 + 4 * MIN, topic="x")) == [("service", "email", "complaint")]


def test_caps_purposes_scope_the_caps(tmp_path):
    path = rules(tmp_path, rule("promo", cooldown='"1m"'),
                 rule("service", on='["complaint"]', purpose='"service"', promotion="false", cooldown='"1m"'),
                 tail=CAPS + 'purposes = ["marketing"]\n')
    ruleset = load_rules(path)
    assert ruleset.capped_purposes == frozenset({"marketing"})
    assert [c.capped for c in ruleset.by_trigger["complaint"]] == [False]
    customer = Customer(ruleset)
    granted(customer, "email")
    granted(customer, "email", purpose="service")
    assert fired(customer.send("page_view", T0 + MIN)) == [("promo", "email", "page_view")]
    assert fired(customer.send("complaint", T0 + 2 * MIN, topic="x")) == [("service", "email", "complaint")]
    # without `purposes`, the same service message is capped, as before
    plain = Customer(load_rules(rules(tmp_path, rule("promo", cooldown='"1m"'),
                                      rule("service", on='["complaint"]', purpose='"service"',
                                           promotion="false"), tail=CAPS)))
    granted(plain, "email")
    granted(plain, "email", purpose="service")
    plain.send("page_view", T0 + MIN)
    assert reasons(plain.send("complaint", T0 + 2 * MIN, topic="x")) == [("service", "frequency_cap_channel")]


def test_a_bad_caps_purposes_is_named(tmp_path):
    message = one_error(rules(tmp_path, rule(), tail=CAPS + 'purposes = "marketing"\n'))
    assert "[caps]: field 'purposes': must be a non-empty list of purposes" in message


# -- decision parameters ---------------------------------------------------------------------------


def test_params_carry_trigger_and_profile_values_into_the_decision_body(tmp_path):
    path = rules(tmp_path, rule(when='["views >= 1"]', params='{ product_id = "trigger.product_id", '
                                                            'segment = "segment", views = "views" }'))
    customer = Customer(load_rules(path), customer=KEY)
    granted(customer, "email")
    out = customer.send("page_view", T0 + MIN, product_id="P-1")
    decision = out.decisions[0]
    assert decision.params == {"product_id": "P-1", "segment": "prospect", "views": 1}
    assert decision.signals == {"views": 1}  # what the conditions read, as before
    body = orjson.loads(encode_decision(decision)[1])
    assert body["params"] == {"product_id": "P-1", "segment": "prospect", "views": 1}
    jsonschema.validate(body, SCHEMA)


def test_a_rule_without_params_makes_the_same_body_as_before(tmp_path):
    customer = Customer(load_rules(rules(tmp_path, rule())))
    granted(customer, "email")
    decision = customer.send("page_view", T0 + MIN).decisions[0]
    assert decision.params is None and "params" not in decision_body(decision)


def test_a_missing_param_value_is_null(tmp_path):
    customer = Customer(load_rules(rules(tmp_path, rule(params='{ product_id = "trigger.product_id" }'))),
                        customer=KEY)
    granted(customer, "email")
    body = decision_body(customer.send("page_view", T0 + MIN).decisions[0])
    assert body["params"] == {"product_id": None}
    jsonschema.validate(body, SCHEMA)


@pytest.mark.parametrize(("params", "field", "words"), [
    ('{ p = "viewz" }', "params.p", "unknown attribute 'viewz'"),
    ('{ p = "trigger.amount" }', "params.p", "'trigger.amount' is not an attribute of what the rule is on"),
    ('{ Product = "views" }', "params.Product", "lowercase letters, digits and _"),
    ('{ p = 3 }', "params", "must be a table of <name> = \"<attribute>\""),
    ('"views"', "params", "must be a table"),
])
def test_a_bad_param_is_named_with_its_field(tmp_path, params, field, words):
    message = one_error(rules(tmp_path, rule(params=params)))
    assert f"rule 'r1': field '{field}'" in message and words in message, message


# -- absences that do not restart ------------------------------------------------------------------

ABSENCE = '''
[signals.cart]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "30m"
carry = ["sku"]
restart = false
'''


def absence_customer(tmp_path: Path, signal: str = ABSENCE) -> Customer:
    path = rules(tmp_path, rule(on='["cart"]', params='{ sku = "trigger.sku" }'), signals=signal)
    customer = Customer(load_rules(path))
    granted(customer, "email")
    return customer


def test_restart_false_counts_from_the_first_start(tmp_path):
    customer = absence_customer(tmp_path)
    assert isinstance(customer.ruleset.signals[0], Fixed)
    customer.send("add_to_cart", T0 + MIN, sku="A")
    customer.send("add_to_cart", T0 + 20 * MIN, sku="B")
    assert customer.profile.signals["cart"][:2] == [T0 + MIN, T0 + 31 * MIN]
    out = customer.tick(T0 + 36 * MIN)  # deadline + 5 minutes of lateness
    assert fired(out) == [("r1", "email", "cart")] and out.decisions[0].params == {"sku": "A"}


def test_restart_false_keeps_the_earliest_start_whatever_the_arrival_order(tmp_path):
    early, late = (make_event("add_to_cart", T0 + MIN, sku="A"), make_event("add_to_cart", T0 + 3 * MIN, sku="B"))
    one, other = absence_customer(tmp_path), absence_customer(tmp_path)
    one.apply_all([early, late])
    other.apply_all([late, early])
    assert one.profile.signals["cart"] == other.profile.signals["cart"] == [T0 + MIN, T0 + 31 * MIN, {"sku": "A"}]
    signal = one.ruleset.signals[0]
    assert signal.merge([T0 + 3 * MIN, T0 + 33 * MIN, {"sku": "B"}], [T0 + MIN, T0 + 31 * MIN, {"sku": "A"}]) == \
        [T0 + MIN, T0 + 31 * MIN, {"sku": "A"}]
    assert signal.merge([T0, T0 + 30 * MIN, {"sku": "A"}], [T0, T0 + 30 * MIN, {"sku": "B"}])[2] == {"sku": "B"}


def test_restart_false_with_totals_and_where(tmp_path):
    customer = absence_customer(tmp_path, ABSENCE + 'count = "items"\nwhere = [\'channel == "mobile"\']\n')
    signal = customer.ruleset.signals[0]
    assert isinstance(signal, Tally) and not signal.restart
    customer.send("add_to_cart", T0 + MIN, sku="A", channel="mobile")
    customer.send("add_to_cart", T0 + 2 * MIN, sku="W", channel="web")  # not a start: where
    customer.send("add_to_cart", T0 + 20 * MIN, sku="B", channel="mobile")
    assert customer.profile.signals["cart"] == [T0 + MIN, T0 + 31 * MIN, {"sku": "A"}, {"items": 2}]
    merged = signal.merge([T0 + 5 * MIN, T0 + 35 * MIN, {"sku": "C"}, {"items": 1}],
                          customer.profile.signals["cart"])
    assert merged == [T0 + MIN, T0 + 31 * MIN, {"sku": "A"}, {"items": 3}]


def test_the_default_still_restarts_and_a_bad_restart_is_named(tmp_path):
    customer = absence_customer(tmp_path, ABSENCE.replace("restart = false\n", ""))
    customer.send("add_to_cart", T0 + MIN, sku="A")
    customer.send("add_to_cart", T0 + 20 * MIN, sku="B")
    assert customer.profile.signals["cart"][:2] == [T0 + 20 * MIN, T0 + 50 * MIN]
    message = one_error(rules(tmp_path, rule(on='["cart"]'), signals=ABSENCE.replace("false", '"no"')))
    assert "signal 'cart': field 'restart': must be true" in message


# -- the data model --------------------------------------------------------------------------------


def test_page_view_keeps_a_product_id_and_add_to_cart_its_channel():
    assert "product_id" in event_attributes("page_view")
    assert "channel" in event_attributes("add_to_cart")


def test_rules_can_read_the_new_attributes(tmp_path):
    path = rules(tmp_path, rule(on='["add_to_cart"]', when='[\'trigger.channel == "mobile"\']'),
                 rule("r2", when='[\'trigger.product_id == "P-1"\']'))
    customer = Customer(load_rules(path))
    granted(customer, "email")
    assert fired(customer.send("add_to_cart", T0 + MIN, sku="A", channel="web")) == []
    assert fired(customer.send("add_to_cart", T0 + 2 * MIN, sku="A", channel="mobile")) == [
        ("r1", "email", "add_to_cart")]
    assert fired(customer.send("page_view", T0 + 3 * MIN, product_id="P-1")) == [("r2", "email", "page_view")]


# -- scenarios -------------------------------------------------------------------------------------


def scenario(tmp_path: Path, step: str) -> Path:
    return write_rules(tmp_path, f'description = "x"\n[[step]]\n{step}\n', "story.toml")


@pytest.mark.parametrize(("step", "words"), [
    ('at = "+0m"\nevent = "login"\nids = ["mail"]', "step 1: field 'ids': must be a list of identifier types"),
    ('advance = "+1m"\nids = ["email"]', "field(s) ['ids'] belong to event steps"),
])
def test_a_bad_ids_field_in_a_scenario_is_named(tmp_path, step, words):
    with pytest.raises(ScenarioError) as err:
        load_scenario(scenario(tmp_path, step))
    assert words in str(err.value)


def test_a_scenario_sets_the_profile_identifiers(tmp_path):
    from nextclick.operators.tools.scenarios import run_scenario

    path = write_rules(tmp_path, '''description = "x"
[[step]]
at = "+0m"
event = "consent"
attrs = { channel = "email", granted = true }
ids = ["cookie"]
[[step]]
at = "+1m"
event = "page_view"
blocked = [{ rule = "mail", reason = "unreachable" }]
decisions = [{ rule = "ad", params = { p = "prospect" } }]
''', "story.toml")
    ruleset = load_rules(rules(tmp_path, rule("mail", priority=20, require_address="true"),
                               rule("ad", channel="ads", priority=10, params='{ p = "segment" }'),
                               tail='[consent]\nads = "opt_out"\n'))
    checks = run_scenario(load_scenario(path), ruleset)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_load_rules_raises_the_first_mistake(tmp_path):
    with pytest.raises(RulesError, match="field 'when'"):
        load_rules(rules(tmp_path, rule(when="[{ any = [] }]")))


# -- related events: unmatched ---------------------------------------------------------------------

UNMATCHED = '''
[signals.unclicked]
kind = "unmatched"
events = ["email_open"]
matched_by = ["email_click"]
by = "campaign_id"
window = "14d"
max_keys = 3
'''


def unmatched_customer(tmp_path: Path) -> Customer:
    path = rules(tmp_path, rule(on='["email_open"]', when='["unclicked >= 2"]', channel="ads"),
                 signals=UNMATCHED, tail='[consent]\nads = "opt_out"\n')
    return Customer(load_rules(path))


def test_unmatched_counts_opens_with_no_click_of_the_same_campaign(tmp_path):
    customer = unmatched_customer(tmp_path)
    customer.send("email_open", T0 + MIN, campaign_id="A")
    customer.send("email_click", T0 + 2 * MIN, campaign_id="C")  # a click, but of another campaign
    assert fired(customer.send("email_open", T0 + 3 * MIN, campaign_id="B")) == [("r1", "ads", "email_open")]
    other = unmatched_customer(tmp_path)
    other.send("email_open", T0 + MIN, campaign_id="A")
    other.send("email_click", T0 + 2 * MIN, campaign_id="A")
    assert fired(other.send("email_open", T0 + 3 * MIN, campaign_id="B")) == []
    signal = other.ruleset.signals[0]
    state = other.profile.signals["unclicked"]
    assert signal.value("unclicked", state, T0 + 3 * MIN) == 1
    # the window is exact: the open of B counts until 14 days after it, not a bucket longer
    assert signal.value("unclicked", state, T0 + 3 * MIN + 14 * 24 * 60 * MIN - 1) == 1
    assert signal.value("unclicked", state, T0 + 3 * MIN + 14 * 24 * 60 * MIN) == 0


def test_unmatched_is_the_same_whatever_the_order_and_merges_symmetrically(tmp_path):
    # seconds apart: within the allowed lateness, so every order applies them all
    events = [make_event("email_open", T0 + i * SEC, campaign_id=c)
              for i, c in enumerate(["A", "B", "C", "D", "B"], start=1)]
    events.append(make_event("email_click", T0 + 9 * SEC, campaign_id="C"))
    one, other = unmatched_customer(tmp_path), unmatched_customer(tmp_path)
    one.apply_all(events)
    other.apply_all(list(reversed(events)))
    state = one.profile.signals["unclicked"]
    assert state == other.profile.signals["unclicked"]
    # at most max_keys (3): A, seen least recently, went
    assert state == [["B", T0 + 5 * SEC, None], ["C", T0 + 3 * SEC, T0 + 9 * SEC], ["D", T0 + 4 * SEC, None]]
    signal = one.ruleset.signals[0]
    a = [["A", T0, None], ["C", None, T0 + 9 * MIN]]
    b = [["C", T0 + 3 * MIN, None], ["E", T0 + 8 * MIN, None]]
    assert signal.merge(a, b) == signal.merge(b, a) == [
        ["A", T0, None], ["C", T0 + 3 * MIN, T0 + 9 * MIN], ["E", T0 + 8 * MIN, None]]
    assert signal.prune([["A", T0, T0 + 20 * MIN]], T0 + 14 * 24 * 60 * MIN + MIN) == [["A", None, T0 + 20 * MIN]]


@pytest.mark.parametrize(("replace", "new", "field", "words"), [
    ('matched_by = ["email_click"]', 'matched_by = ["email_clik"]', "matched_by", "unknown name(s) ['email_clik']"),
    ('by = "campaign_id"', 'by = "link_category"', "by", "'link_category' is not an attribute of email_open"),
    ('events = ["email_open"]', 'events = ["email_open", "email_click"]', "matched_by",
     "['email_click'] also in 'events'"),
    ("max_keys = 3", "max_keys = 5000", "max_keys", "must be at most 1000"),
    ("max_keys = 3", 'bucket = "1m"', "bucket", "unknown field"),
])
def test_a_bad_unmatched_signal_is_named(tmp_path, replace, new, field, words):
    path = rules(tmp_path, rule(on='["email_open"]'), signals=UNMATCHED.replace(replace, new))
    found = errors(path)
    assert any(f"signal 'unclicked': field '{field}'" in e and words in e for e in found), found


# -- address preference ----------------------------------------------------------------------------


def test_addresses_set_the_types_per_channel_for_the_address_and_the_reachability_gate(tmp_path):
    from nextclick.operators.rules.addressing import address

    path = rules(tmp_path, rule("ad", channel="ads", require_address="true"),
                 tail='[consent]\nads = "opt_out"\n[addresses]\nads = ["email", "device"]\n')
    ruleset = load_rules(path)
    assert ruleset.address_types["ads"] == ("email", "device") and ruleset.address_types["web"] == ("cookie",)
    customer = Customer(ruleset)
    customer.profile.ids = {"cookie": ["k1"]}
    assert reasons(customer.send("page_view", T0 + MIN)) == [("ad", "unreachable")]
    customer.profile.ids = {"cookie": ["k1"], "email": ["e1"]}
    decision = customer.send("page_view", T0 + 2 * MIN).decisions[0]
    addressed = address(decision, customer.profile.ids)
    assert addressed.address == ("email", "e1")
    assert addressed.reachable == ("email", "ads", "web")
    assert "address_types" not in decision_body(addressed)


def test_without_addresses_decisions_are_addressed_as_before(tmp_path):
    from nextclick.operators.rules.addressing import address

    customer = Customer(load_rules(rules(tmp_path, rule("ad", channel="ads"), tail='[consent]\nads = "opt_out"\n')))
    decision = customer.send("page_view", T0 + MIN).decisions[0]
    assert decision.address_types is None
    assert address(decision, {"cookie": ["k1"], "email": ["e1"]}).address == ("cookie", "k1")


@pytest.mark.parametrize(("line", "field"), [
    ('ads = ["email", "mail"]', "ads"), ("ads = []", "ads"), ('ads = ["email", "email"]', "ads"),
    ('adz = ["email"]', "adz"),
])
def test_a_bad_address_preference_is_named(tmp_path, line, field):
    message = one_error(rules(tmp_path, rule(), tail=f"[addresses]\n{line}\n"))
    assert f"[addresses]: field '{field}'" in message


# -- traps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cap", "field"), [
    ('email = { limit = 2, window = "24h", promotions_only = true }', "email.promotions_only"),
    ('email = { limit = 2, windw = "24h" }', "email.windw"),
])
def test_an_unknown_key_in_a_cap_is_refused_by_name(tmp_path, cap, field):
    message = one_error(rules(tmp_path, rule(), tail=f"[caps]\n{cap}\n"))
    assert f"[caps]: field '{field}': unknown field" in message


def test_a_compound_duration_reads_as_in_scenarios(tmp_path):
    from nextclick.operators.conditions.fields import duration_ms
    from nextclick.operators.tools.scenarios import offset_ms

    assert duration_ms("1d12h") == offset_ms("+1d12h") == 36 * HOUR
    assert duration_ms("30m") == 30 * MIN and duration_ms(1500) == 1500 and duration_ms("1.5h") == 90 * MIN
    ruleset = load_rules(rules(tmp_path, rule(cooldown='"1d12h"')))
    assert ruleset.rule("r1").cooldown_ms == 36 * HOUR
    assert "field 'cooldown': not a duration" in one_error(rules(tmp_path, rule(cooldown='"1d12"')))


def test_a_rule_on_a_window_says_it_is_not_a_trigger(tmp_path):
    message = one_error(rules(tmp_path, rule(on='["opens", "page_view"]')))
    assert "field 'on': ['opens'] can be read in 'when' but not triggered on" in message


def test_scenario_signals_compare_only_the_attributes_named(tmp_path):
    from nextclick.operators.tools.scenarios import run_scenario

    ruleset = load_rules(rules(tmp_path, rule(when='["views >= 1", "opens == 0"]')))
    path = write_rules(tmp_path, '''description = "x"
[[step]]
at = "+0m"
event = "consent"
attrs = { channel = "email", granted = true }
[[step]]
at = "+1m"
event = "page_view"
decisions = [{ rule = "r1", signals = { views = 1 } }]
''', "story.toml")
    checks = run_scenario(load_scenario(path), ruleset)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    wrong = write_rules(tmp_path, path.read_text().replace("views = 1", "views = 2"), "wrong.toml")
    assert not all(c.ok for c in run_scenario(load_scenario(wrong), ruleset))


@pytest.mark.parametrize(("on", "condition", "words"), [
    ('["purchase"]', "trigger.items > '2'", "'trigger.items' is integer, compared with a string: never true"),
    ('["purchase"]', 'trigger.amount == "10"', "is number, compared with a string"),
    ('["page_view"]', "trigger.category == 3", "'trigger.category' is string, compared with int"),
    ('["page_view"]', 'trigger.category in [1, 2]', "compared with int"),
    ('["login"]', 'trigger.method == "pasword"', "is one of ['password', 'sso'"),
    ('["consent"]', 'trigger.channel in ["fax", "mail"]', "never matches"),
    ('["cart"]', 'trigger.value >= "10"', "'trigger.value' is integer or number, compared with a string"),
    ('["cart"]', "trigger.sku == 5", "'trigger.sku' is string, compared with int"),
])
def test_a_comparison_that_can_never_be_true_is_refused(tmp_path, on, condition, words):
    signals = SIGNALS + ABSENCE.replace('restart = false', 'sum = { value = "amount" }')
    message = one_error(rules(tmp_path, rule(on=on, when=f'["{condition}"]' if "'" in condition
                                             else f"['{condition}']"), signals=signals))
    assert "rule 'r1': field 'when'" in message and words in message, message


@pytest.mark.parametrize(("on", "condition"), [
    ('["purchase"]', "trigger.items > 2.5"), ('["purchase"]', "trigger.amount != 'x'"),
    ('["page_view"]', "trigger.category not in [1]"), ('["login"]', 'trigger.method in ["sso", "pasword"]'),
    ('["consent"]', "trigger.granted == 1"), ('["page_view", "purchase"]', 'trigger.category == "shoes"'),
])
def test_comparisons_that_can_be_true_still_load(tmp_path, on, condition):
    load_rules(rules(tmp_path, rule(on=on, when=f'["{condition}"]' if "'" in condition else f"['{condition}']")))


# -- absences that start when a condition becomes true ---------------------------------------------

BIG_CART = '''
[signals.big_cart]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "30m"
carry = ["sku"]
restart = false
start_when = ["cart_value >= 150"]

[signals.cart_value]
kind = "sum"
events = ["add_to_cart"]
field = "amount"
window = "2h"
bucket = "1m"
reset_on = ["purchase"]
'''


def test_start_when_starts_on_the_event_that_makes_it_true(tmp_path):
    path = rules(tmp_path, rule(on='["big_cart"]', params='{ sku = "trigger.sku" }'), signals=BIG_CART)
    ruleset = load_rules(path)
    # declared first, applied after the sum it reads
    assert [s.name for s in ruleset.signals][-1] == "big_cart"
    customer = Customer(ruleset)
    granted(customer, "email")
    customer.send("add_to_cart", T0 + MIN, sku="A", amount=100.0)
    assert "big_cart" not in customer.profile.signals
    customer.send("add_to_cart", T0 + 10 * MIN, sku="B", amount=60.0)  # 160: this add starts it
    customer.send("add_to_cart", T0 + 20 * MIN, sku="C", amount=10.0)  # does not restart it
    assert customer.profile.signals["big_cart"] == [T0 + 10 * MIN, T0 + 40 * MIN, {"sku": "B"}]
    out = customer.tick(T0 + 45 * MIN)
    assert fired(out) == [("r1", "email", "big_cart")] and out.decisions[0].params == {"sku": "B"}


def test_start_when_a_purchase_cancels_and_the_cart_starts_again_from_zero(tmp_path):
    customer = Customer(load_rules(rules(tmp_path, rule(on='["big_cart"]'), signals=BIG_CART)))
    customer.send("add_to_cart", T0 + MIN, sku="A", amount=200.0)
    customer.send("purchase", T0 + 2 * MIN, amount=200.0)
    customer.send("add_to_cart", T0 + 3 * MIN, sku="B", amount=20.0)
    assert "big_cart" not in customer.profile.signals


@pytest.mark.parametrize(("start_when", "words"), [
    ('["cart_valu >= 150"]', "unknown attribute 'cart_valu'"),
    ('["big_cart_pending == true"]', "an absence cannot read itself"),
    ('["trigger.items > 1"]', "'trigger.items' is not an attribute of its start events"),
    ('"cart_value >= 150"', "must be a list of conditions"),
    # Never true, as in a rule's `when`: the absence would never start.
    ('[\'trigger.amount >= "100"\']', "'trigger.amount' is number, compared with a string: never true"),
    ('[\'segment == "loyl"\']', "'loyl' never matches"),
    ('["orders == true"]', "'orders' is integer, compared with bool: never true"),
])
def test_a_bad_start_when_is_named(tmp_path, start_when, words):
    signals = BIG_CART.replace('["cart_value >= 150"]', start_when)
    message = one_error(rules(tmp_path, rule(on='["page_view"]'), signals=signals))
    assert "signal 'big_cart': field 'start_when'" in message and words in message, message


FIRST_CART = '''
[signals.first_cart]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "10m"
'''
LATER_CART = '''
[signals.later_cart]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "20m"
start_when = ["first_cart_pending == true"]
'''


@pytest.mark.parametrize("first_declared", [True, False])
def test_an_absence_reads_another_gated_one_as_it_stands_after_the_event_in_any_order(tmp_path, first_declared):
    """`later_cart` starts when `first_cart` is pending: both start on the one add, whichever is written first
    (before, the one declared first read the other as it was before the event)."""
    first = FIRST_CART.replace('after = "10m"', 'after = "10m"\nstart_when = ["cart_value >= 100"]')
    signals = (first + LATER_CART if first_declared else LATER_CART + first) + BIG_CART[BIG_CART.index(
        "[signals.cart_value]"):]
    ruleset = load_rules(rules(tmp_path, rule(on='["later_cart"]'), signals=signals))
    assert [s.name for s in ruleset.signals][-2:] == ["first_cart", "later_cart"]
    customer = Customer(ruleset)
    customer.send("add_to_cart", T0 + MIN, sku="A", amount=120.0)
    assert {"first_cart", "later_cart"} <= set(customer.profile.signals)


def test_two_absences_whose_start_when_read_each_other_are_refused(tmp_path):
    """Which one starts would depend on the order they are written in (an outside probe: swapping the two
    tables changed which absence ever fired)."""
    signals = (FIRST_CART.replace('after = "10m"', 'after = "10m"\nstart_when = ["later_cart_pending == false"]')
               + LATER_CART.replace("== true", "== false"))
    found = errors(rules(tmp_path, rule(on='["later_cart"]'), signals=signals))
    assert len(found) == 2 and all("whose start_when reads it in turn" in e for e in found), found
    assert "signal 'first_cart': field 'start_when': reads 'later_cart'" in found[0] + found[1]


def test_capped_true_on_a_purpose_the_caps_leave_out_is_refused(tmp_path):
    """The two settings contradict each other; before, the rule went out uncapped without a word."""
    path = rules(tmp_path, rule(purpose='"service"', capped="true"),
                 tail='[caps]\nemail = { limit = 1, window = "1h" }\npurposes = ["marketing"]\n'
                      '[[rule]]\nid = "promo"\non = ["page_view"]\naction = "a"\nchannel = "email"\n')
    message = one_error(path)
    assert "rule 'r1': field 'capped': true, but its purpose 'service' is not in [caps] purposes" in message, message


def test_a_rule_id_or_signal_name_longer_than_64_characters_is_refused(tmp_path):
    """They name the rule in every decision, metric label and log line, as the tracking plan's names (64)."""
    message = one_error(rules(tmp_path, rule("r" * 65)))
    assert "[[rule]] #1: field 'id': at most 64 characters; got 65" in message, message
    assert "r" * 65 not in message
    message = one_error(rules(tmp_path, rule(), signals=SIGNALS + '[signals.' + "v" * 65 + ']\nkind = "count"\n'
                              'events = ["page_view"]\nwindow = "1h"\n'))
    assert "the name is 65 characters; at most 64" in message, message
    load_rules(rules(tmp_path, rule("r" * 64)))


@pytest.mark.parametrize("kind", ["count", "absence"])
def test_a_signal_where_no_event_can_meet_is_named(tmp_path, kind):
    body = ('kind = "count"\nevents = ["add_to_cart"]\nwindow = "1h"' if kind == "count" else
            'kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "30m"')
    signals = f'[signals.big_adds]\n{body}\nwhere = [\'amount >= "100"\']\n'
    message = one_error(rules(tmp_path, rule(on='["page_view"]'), signals=signals))
    assert "signal 'big_adds': field 'where'" in message and "'amount' is number, compared with a string" in message


def test_rules_test_drops_what_the_flow_drops_as_expired(tmp_path):
    from nextclick.operators.tools.scenarios import report_line, run_scenario

    ruleset = load_rules(rules(tmp_path, rule(on='["cart"]', expiry='"2h"'), signals=ABSENCE))
    story = '''description = "x"
[[step]]
at = "+0m"
event = "consent"
attrs = { channel = "email", granted = true }
[[step]]
at = "+1m"
event = "add_to_cart"
attrs = { sku = "A" }
[[step]]
advance = "+5h"
'''
    checks = run_scenario(load_scenario(write_rules(tmp_path, story, "late.toml")), ruleset)
    failed = [report_line(c) for c in checks if not c.ok]
    assert failed == ["FAIL late.toml step 3 (+5h clock): expired: expected none; got r1/email/cart"]
    listed = write_rules(tmp_path, story + 'expired = [{ rule = "r1" }]\n', "listed.toml")
    assert all(c.ok for c in run_scenario(load_scenario(listed), ruleset))
    # within its expiry it is a decision, as before
    on_time = write_rules(tmp_path, story.replace("+5h", "+2h") + 'decisions = [{ rule = "r1" }]\n', "ok.toml")
    assert all(c.ok for c in run_scenario(load_scenario(on_time), ruleset))


def test_explain_lists_the_fields_the_parser_dropped(tmp_path):
    from nextclick.operators.tools.explain import read_story

    story = tmp_path / "story.jsonl"
    story.write_bytes(b"\n".join(orjson.dumps(e) for e in [
        {"event_id": "g", "type": "consent", "ts": "2026-11-18T10:00:00Z", "customer_id": "ana",
         "channel": "email", "granted": True},
        {"event_id": "v", "type": "page_view", "ts": "2026-11-18T10:01:00Z", "customer_id": "ana",
         "category": "shoes", "produt_id": "P-1", "color": "red"},
        {"event_id": "o", "type": "email_open", "ts": "2026-11-18T10:02:00Z", "customer_id": "ana",
         "campaing": "x"},
    ]) + b"\n")
    ruleset = load_rules(rules(tmp_path, rule(when='["views >= 1"]')))
    entries = list(explain(ruleset, read_story(story)))
    view = next(e for e in entries if e["trigger"] == "page_view")
    assert view["dropped"] == ["color", "produt_id"] and view["rules"][0]["outcome"] == "decided"
    assert "dropped: color, produt_id (not in the page_view schema: rules cannot read them)" in render(view)
    opened = next(e for e in entries if e["trigger"] == "email_open")  # no rule on it: still said
    assert opened["dropped"] == ["campaing"] and opened["note"] == "no rule is on email_open"
    assert all("dropped" not in e for e in entries if e["trigger"] == "consent")


def test_addresses_require_makes_require_address_every_rules_default(tmp_path):
    path = rules(tmp_path, rule("mail", priority=20), rule("ad", channel="ads", require_address="false"),
                 tail='[consent]\nads = "opt_out"\n[addresses]\nrequire = true\n')
    ruleset = load_rules(path)
    assert ruleset.rule("mail").require_address and not ruleset.rule("ad").require_address
    customer = Customer(ruleset)
    granted(customer, "email")
    customer.profile.ids = {"phone": ["p1"]}
    out = customer.send("page_view", T0 + MIN)
    assert reasons(out) == [("mail", "unreachable")] and fired(out) == [("ad", "ads", "page_view")]
    assert "[addresses]: field 'require': must be true" in one_error(
        rules(tmp_path, rule(), tail='[addresses]\nrequire = "yes"\n'))
