"""Signal options: `where` filters, `by` groups, `reset_on`, and an absence's totals since it began.

Each is an option of a kind (operators/signals/options.py, groups.py, absence.py); these tests drive
them through the engine as a rules file declares them, and check the mistakes the loader refuses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.conditions.compiler import View
from nextclick.operators.conditions.fields import RulesError
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.model import new_profile
from nextclick.operators.records import Trigger
from nextclick.operators.rules.loader import check_rules, load_rules
from nextclick.operators.rules.model import RuleSet
from tests.helpers import DAY, HOUR, MIN, T0, Customer, fired, transient_parts, write_rules

TAIL = '''
[consent]
ads = "opt_out"
'''


def ruleset(tmp_path: Path, signals: str, rules: str) -> RuleSet:
    return load_rules(write_rules(tmp_path, signals + "\n" + rules + "\n" + TAIL))


def read(c: Customer, attribute: str, ts: int, **trigger_attrs: object) -> object:
    """What a rule judging a trigger at `ts` with these attributes reads."""
    return View(c.profile, Trigger("page_view", "t", ts, dict(trigger_attrs)), c.ruleset.getters).get(attribute)


def rule(on: str, when: str, rule_id: str = "r", cooldown: str = "1ms") -> str:
    return (f'[[rule]]\nid = "{rule_id}"\non = {on}\nwhen = {when}\naction = "show_ad"\nchannel = "ads"\n'
            f'cooldown = "{cooldown}"\n')


def load_error(tmp_path: Path, text: str) -> str:
    path = write_rules(tmp_path, text + TAIL)
    with pytest.raises(RulesError) as err:
        load_rules(path)
    return str(err.value)


# --- where ---------------------------------------------------------------------------------------

PRODUCT_VIEWS = '''
[signals.product_views]
kind = "count"
events = ["page_view"]
where = ['page_type == "product"']
window = "20m"
'''


def test_where_counts_only_the_events_that_meet_it(tmp_path):
    c = Customer(ruleset(tmp_path, PRODUCT_VIEWS, rule('["page_view"]', '["product_views >= 4"]')))
    for i in range(3):
        assert fired(c.send("page_view", T0 + i * MIN, page_type="home", category="shoes")) == []
    # 3 home pages and 1 product page are 1 product page, not 4
    assert fired(c.send("page_view", T0 + 3 * MIN, page_type="product", category="shoes")) == []
    assert read(c, "product_views", T0 + 3 * MIN) == 1
    for i in range(4, 6):
        c.send("page_view", T0 + i * MIN, page_type="product")
    assert fired(c.send("page_view", T0 + 6 * MIN, page_type="product")) == [("r", "ads", "page_view")]


def test_where_uses_the_rules_semantics_for_missing_attributes(tmp_path):
    signals = '''
[signals.not_home]
kind = "count"
events = ["page_view"]
where = ['page_type != "home"']
window = "1h"

[signals.dear]
kind = "sum"
events = ["add_to_cart"]
field = "amount"
where = ["amount >= 100", 'category in ["shoes", "bags"]']
window = "1h"
'''
    c = Customer(ruleset(tmp_path, signals, rule('["page_view"]', "[]")))
    c.send("page_view", T0)  # no page_type: != compares with null, so it counts
    c.send("page_view", T0 + 1, page_type="home")
    c.send("add_to_cart", T0 + 2, amount=150.0)  # no category: `in` on a missing value is false
    c.send("add_to_cart", T0 + 3, amount=150.0, category="shoes")
    c.send("add_to_cart", T0 + 4, amount=99.0, category="shoes")
    assert read(c, "not_home", T0 + 5) == 1
    assert read(c, "dear", T0 + 5) == 150.0


@pytest.mark.parametrize(("signal", "words"), [
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nwhere = ["amount > 5"]',
     ["field 'where'", "'amount' is not an attribute of page_view", "category", "page_type"]),
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nwhere = ["page_type = 5"]',
     ["field 'where'", "cannot read condition"]),
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nwhere = []', ["field 'where'", "list of conditions"]),
    ('kind = "sum"\nevents = ["page_view"]\nwindow = "1h"\nfield = "amount"', ["field 'field'", "'amount'"]),
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nby = "sku"', ["field 'by'", "'sku'"]),
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nby = "category"\nmax_groups = 0',
     ["field 'max_groups'", "from 1 to"]),
    ('kind = "last"\nevents = ["page_view"]\nwindow = "1h"\nby = "category"', ["field 'by'", "unknown field"]),
    ('kind = "sum"\nevents = ["add_to_cart"]\nfield = "amount"\nwindow = "1h"\nreset_on = ["purchace"]',
     ["field 'reset_on'", "purchace"]),
    ('kind = "sum"\nevents = ["add_to_cart"]\nfield = "amount"\nwindow = "1h"\nreset_on = ["add_to_cart"]',
     ["field 'reset_on'", "both count and reset"]),
    ('kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "1h"\nsum = { total = "items" }',
     ["field 'sum'", "'items' is not an attribute of add_to_cart"]),
    ('kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "1h"\ncarry = ["amount"]\n'
     'sum = { amount = "amount" }', ["field 'sum'", "named twice"]),
    ('kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "1h"\ncount = "Items"',
     ["field 'count'", "lowercase"]),
    ('kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "1h"\ncarry = ["page_type"]',
     ["field 'carry'", "'page_type' is not an attribute of add_to_cart"]),
])
def test_a_bad_option_is_named_with_file_signal_and_field(tmp_path, signal, words):
    message = load_error(tmp_path, f"[signals.s]\n{signal}\n\n" + rule('["page_view"]', "[]"))
    assert message.startswith(str(tmp_path / "rules.toml")) and "signal 's'" in message, message
    for word in words:
        assert word in message, message


# --- by -------------------------------------------------------------------------------------------

BY_CATEGORY = '''
[signals.product_views_20m]
kind = "count"
events = ["page_view"]
where = ['page_type == "product"']
by = "category"
window = "20m"
'''


def test_four_shoes_and_a_bag_is_four_in_the_shoes_group(tmp_path):
    c = Customer(ruleset(tmp_path, BY_CATEGORY,
                         rule('["page_view"]', '["product_views_20m.same_as_trigger >= 4"]', cooldown="1h")))
    seen = [fired(c.send("page_view", T0 + i * MIN, page_type="product", category=cat))
            for i, cat in enumerate(["shoes", "shoes", "bags", "shoes", "shoes"])]
    assert seen == [[], [], [], [], [("r", "ads", "page_view")]]
    assert c.outcomes[-1].decisions[0].signals == {"product_views_20m.same_as_trigger": 4}
    at = T0 + 5 * MIN
    assert read(c, "product_views_20m.max", at) == 4 and read(c, "product_views_20m.top", at) == "shoes"
    assert read(c, "product_views_20m.same_as_trigger", at, category="bags") == 1
    assert read(c, "product_views_20m.same_as_trigger", at, category="hats") == 0
    assert read(c, "product_views_20m.same_as_trigger", at) is None  # the trigger has no category


def test_one_number_is_one_group_however_the_producer_wrote_it(tmp_path):
    """Two carts of 10, one sent as 10 and one as 10.0, are one group (as `distinct` counts them one
    value): a marketer probe saw "the same amount twice" fire only on the third cart."""
    by_amount = '[signals.carts_by_amount]\nkind = "count"\nevents = ["add_to_cart"]\nby = "amount"\nwindow = "1h"\n'
    c = Customer(ruleset(tmp_path, by_amount, rule('["add_to_cart"]', '["carts_by_amount.same_as_trigger >= 2"]')))
    assert fired(c.send("add_to_cart", T0, sku="a", amount=10)) == []
    assert fired(c.send("add_to_cart", T0 + MIN, sku="b", amount=10.0)) == [("r", "ads", "add_to_cart")]
    assert read(c, "carts_by_amount.same_as_trigger", T0 + MIN, amount=10) == 2


def test_grouped_values_follow_the_window_per_group(tmp_path):
    c = Customer(ruleset(tmp_path, BY_CATEGORY, rule('["page_view"]', "[]")))
    c.send("page_view", T0, page_type="product", category="bags")
    c.send("page_view", T0 + MIN, page_type="product", category="bags")
    c.send("page_view", T0 + 15 * MIN, page_type="product", category="shoes")
    assert read(c, "product_views_20m.top", T0 + 16 * MIN) == "bags"
    # 20 minutes after the bags, only the shoes are in the window
    assert read(c, "product_views_20m.max", T0 + 22 * MIN) == 1
    assert read(c, "product_views_20m.top", T0 + 22 * MIN) == "shoes"
    c.send("page_view", T0 + 30 * MIN, page_type="home")
    assert set(c.profile.signals["product_views_20m"]) == {"shoes"}  # the quiet group left state on its own
    c.tick(T0 + 2 * DAY)  # past the dedupe horizon too
    assert not any(transient_parts(c.profile).values())


def test_past_max_groups_the_least_recently_seen_group_is_dropped(tmp_path):
    c = Customer(ruleset(tmp_path, BY_CATEGORY.replace('window = "20m"', 'window = "20m"\nmax_groups = 2'),
                         rule('["page_view"]', "[]")))
    for i, cat in enumerate(["shoes", "shoes", "bags", "shoes", "hats"]):
        c.send("page_view", T0 + i * MIN, page_type="product", category=cat)
    assert set(c.profile.signals["product_views_20m"]) == {"shoes", "hats"}  # bags: seen least recently
    c.send("page_view", T0 + 5 * MIN, page_type="product", category="bags")
    assert set(c.profile.signals["product_views_20m"]) == {"hats", "bags"}  # shoes, busiest but seen before hats
    assert read(c, "product_views_20m.same_as_trigger", T0 + 5 * MIN, category="bags") == 1  # from zero again


def test_grouped_sum_and_distinct(tmp_path):
    signals = '''
[signals.spend_by_category]
kind = "sum"
events = ["add_to_cart"]
field = "amount"
by = "category"
window = "1h"

[signals.skus_by_category]
kind = "distinct"
events = ["add_to_cart"]
field = "sku"
by = "category"
window = "1h"
'''
    c = Customer(ruleset(tmp_path, signals, rule('["add_to_cart"]', "[]")))
    for i, (sku, cat, amount) in enumerate([("a", "shoes", 10.1), ("b", "shoes", 20.2), ("a", "shoes", 10.1),
                                            ("c", "bags", 99.0)]):
        c.send("add_to_cart", T0 + i * MIN, sku=sku, category=cat, amount=amount)
    at = T0 + 5 * MIN
    assert read(c, "spend_by_category.max", at) == 99.0 and read(c, "spend_by_category.top", at) == "bags"
    assert read(c, "spend_by_category.same_as_trigger", at, category="shoes") == 40.4
    assert read(c, "skus_by_category.max", at) == 2 and read(c, "skus_by_category.top", at) == "shoes"


def test_same_as_trigger_on_a_trigger_that_carries_no_such_attribute_is_refused(tmp_path):
    message = load_error(tmp_path, BY_CATEGORY + rule('["app_open"]', '["product_views_20m.same_as_trigger >= 4"]'))
    assert "rule 'r'" in message and "field 'when'" in message and "'category'" in message, message
    assert "app_open" in message


def test_a_grouped_signal_has_no_plain_value(tmp_path):
    message = load_error(tmp_path, BY_CATEGORY + rule('["page_view"]', '["product_views_20m >= 4"]'))
    assert "unknown attribute 'product_views_20m'" in message and "product_views_20m.max" in message


# --- reset_on -------------------------------------------------------------------------------------

CART = '''
[signals.cart_value_2h]
kind = "sum"
events = ["add_to_cart"]
field = "amount"
window = "2h"
reset_on = ["purchase", "app_purchase", "store_purchase"]
'''


def test_a_purchase_resets_the_cart_sum(tmp_path):
    c = Customer(ruleset(tmp_path, CART, rule('["page_view"]', '["cart_value_2h >= 200"]')))
    c.send("add_to_cart", T0, amount=300.0)
    assert read(c, "cart_value_2h", T0 + MIN) == 300.0
    c.send("purchase", T0 + 2 * MIN, amount=300.0)
    c.send("add_to_cart", T0 + 3 * MIN, amount=20.0)
    assert read(c, "cart_value_2h", T0 + 4 * MIN) == 20.0
    assert fired(c.send("page_view", T0 + 5 * MIN)) == []


def test_a_reset_does_not_depend_on_the_order_events_arrive_in(tmp_path):
    rs = ruleset(tmp_path, CART, rule('["page_view"]', "[]"))
    orders = {"in order": [("add_to_cart", 0, 300.0), ("purchase", 2, 300.0), ("add_to_cart", 3, 20.0)],
              "purchase first": [("purchase", 2, 300.0), ("add_to_cart", 3, 20.0), ("add_to_cart", 0, 300.0)]}
    values = {}
    for name, events in orders.items():
        c = Customer(rs)
        for event_type, minute, amount in events:
            assert not c.send(event_type, T0 + minute * MIN, amount=amount).late
        values[name] = read(c, "cart_value_2h", T0 + 4 * MIN)
    assert values == {"in order": 20.0, "purchase first": 20.0}


def test_where_and_reset_on_together(tmp_path):
    """Both options on one signal: the filter still filters and the reset still resets (each wraps the
    one before it; they once shared a variable, and the filter then called itself forever)."""
    signals = CART + 'where = ["amount >= 50"]\n'

    c = Customer(ruleset(tmp_path, signals, rule('["page_view"]', "[]")))
    c.send("add_to_cart", T0, amount=300.0)
    c.send("add_to_cart", T0 + MIN, amount=20.0)  # filtered out
    assert read(c, "cart_value_2h", T0 + MIN) == 300.0
    c.send("purchase", T0 + 2 * MIN, amount=300.0)
    c.send("add_to_cart", T0 + 3 * MIN, amount=60.0)
    assert read(c, "cart_value_2h", T0 + 4 * MIN) == 60.0


def test_the_reset_mark_expires_with_the_window(tmp_path):
    c = Customer(ruleset(tmp_path, CART, rule('["page_view"]', "[]")))
    c.send("purchase", T0, amount=5.0)
    assert c.profile.signals["cart_value_2h@reset"] == T0
    c.tick(T0 + 2 * HOUR - 1 + c.ruleset.late.allowed_lateness_ms)
    assert "cart_value_2h@reset" in c.profile.signals
    c.tick(T0 + 2 * HOUR + c.ruleset.late.allowed_lateness_ms)
    assert "cart_value_2h@reset" not in c.profile.signals


@pytest.mark.parametrize("signal", [
    'kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nreset_on = ["add_to_cart"]',
    'kind = "distinct"\nevents = ["page_view"]\nfield = "category"\nwindow = "1h"\nreset_on = ["add_to_cart"]',
    'kind = "last"\nevents = ["page_view"]\nfield = "category"\nwindow = "1h"\nreset_on = ["add_to_cart"]',
    'kind = "count"\nevents = ["page_view"]\nby = "category"\nwindow = "1h"\nreset_on = ["add_to_cart"]',
])
def test_every_windowed_kind_resets(tmp_path, signal):
    rs = ruleset(tmp_path, f"[signals.s]\n{signal}\n", rule('["page_view"]', "[]"))
    c = Customer(rs)
    c.send("page_view", T0, category="shoes")
    assert c.profile.signals.get("s")
    c.send("add_to_cart", T0 + MIN, amount=1.0)
    assert "s" not in c.profile.signals
    c.send("page_view", T0 + 2 * MIN, category="bags")
    assert c.profile.signals.get("s")


# --- an absence's totals since it began -----------------------------------------------------------

ABANDONED = '''
[signals.cart_abandoned]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase", "app_purchase", "store_purchase"]
after = "60m"
carry = ["sku"]
sum = { cart_value = "amount" }
count = "items"
'''


def test_an_absence_carries_the_carts_total_not_only_the_last_item(tmp_path):
    c = Customer(ruleset(tmp_path, ABANDONED, rule('["cart_abandoned"]', '["trigger.cart_value >= 200"]')))
    c.send("add_to_cart", T0, amount=150.0, sku="a")
    c.send("add_to_cart", T0 + 2 * MIN, amount=70.5, sku="b")
    c.send("add_to_cart", T0 + MIN, amount=0.25, sku="c")  # older, out of order: same cart, still counts
    out = c.tick(T0 + 2 * HOUR)
    assert fired(out) == [("r", "ads", "cart_abandoned")]
    assert out.decisions[0].trigger_id == f"cart_abandoned:{T0 + 2 * MIN}"  # the pending absence's latest start
    assert out.decisions[0].signals == {"trigger.cart_value": 220.75}


def test_buy_then_add_20_is_a_20_cart(tmp_path):
    rs = ruleset(tmp_path, ABANDONED, rule('["cart_abandoned"]', '["trigger.cart_value >= 200"]', "vip")
                 + rule('["cart_abandoned"]', '["trigger.cart_value < 200", "trigger.items >= 1"]', "small"))
    c = Customer(rs)
    c.send("add_to_cart", T0, amount=300.0)
    c.send("purchase", T0 + 5 * MIN, amount=300.0)
    c.send("add_to_cart", T0 + 10 * MIN, amount=20.0)
    out = c.tick(T0 + 3 * HOUR)
    assert fired(out) == [("small", "ads", "cart_abandoned")]
    assert out.decisions[0].signals == {"trigger.cart_value": 20.0, "trigger.items": 1}


def test_where_on_an_absence_filters_its_start_events_only(tmp_path):
    signals = '''
[signals.product_browse]
kind = "absence"
start = ["page_view"]
cancel = ["add_to_cart"]
after = "20m"
where = ['page_type == "product"']
count = "pages"
'''
    c = Customer(ruleset(tmp_path, signals, rule('["product_browse"]', '["trigger.pages >= 2"]')))
    c.send("page_view", T0, page_type="home")
    assert "product_browse" not in c.profile.signals
    c.send("page_view", T0 + MIN, page_type="product")
    c.send("page_view", T0 + 2 * MIN, page_type="product")
    c.send("page_view", T0 + 3 * MIN, page_type="home")
    out = c.tick(T0 + 2 * HOUR)
    assert fired(out) == [("r", "ads", "product_browse")] and out.decisions[0].signals == {"trigger.pages": 2}


def test_a_rule_reads_only_totals_the_absence_declares(tmp_path):
    message = load_error(tmp_path, ABANDONED + rule('["cart_abandoned"]', '["trigger.cart_total >= 200"]'))
    assert "'trigger.cart_total'" in message and "cart_value" in message and "items" in message, message


# --- rules check: every mistake, not only the first -----------------------------------------------

def test_check_rules_lists_every_mistake_and_none_twice(tmp_path):
    path = write_rules(tmp_path, '''
[signals.views]
kind = "count"
events = ["page_veiw"]
window = "soon"
where = ["amount > 1"]

[signals.ok]
kind = "count"
events = ["page_view"]
window = "1h"

[[rule]]
id = "a"
on = ["page_view"]
when = ["views >= 3", "ok >= 1", "okk >= 2"]
action = "show_ad"
channel = "fax"
cooldown = "1 week"

[[rule]]
id = "B"
on = ["page_view"]
action = "show_ad"
channel = "ads"

[caps]
ads = { limit = -1, window = "1h" }

[late]
policy = "keep"
''')
    ruleset, errors = check_rules(path)
    assert ruleset is None
    messages = [str(e) for e in errors]
    expected = [("signal 'views'", "field 'events'", "page_veiw"), ("signal 'views'", "field 'window'", "soon"),
                ("rule 'a'", "field 'when'", "okk"), ("rule 'a'", "field 'channel'", "fax"),
                ("rule 'a'", "field 'cooldown'", "1 week"), ("rule 'B'", "field 'id'", "lowercase"),
                ("[caps]", "field 'ads.limit'", "from 0 to"), ("[late]", "field 'policy'", "drop")]
    assert len(messages) == len(expected), "\n".join(messages)
    for message, words in zip(messages, expected):
        assert all(w in message for w in words), (message, words)
    # `views >= 3` names a signal that failed to load: its own mistake is reported, not this one
    assert not any("rule 'a'" in m and "views >= 3" in m for m in messages)
    with pytest.raises(RulesError, match=r"page_veiw.*\(and 7 more: `nextclick rules check"):
        load_rules(path)


# --- customer_channel ----------------------------------------------------------------------------

def test_customer_channel_is_the_triggering_events_channel(tmp_path):
    signals = '''
[signals.gone]
kind = "absence"
start = ["app_open"]
cancel = ["app_purchase"]
after = "10m"
'''
    rs = ruleset(tmp_path, signals, rule('["app_open", "page_view", "gone"]', '[\'customer_channel == "mobile"\']'))
    c = Customer(rs)
    assert fired(c.send("page_view", T0)) == []
    assert fired(c.send("app_open", T0 + MIN)) == [("r", "ads", "app_open")]
    assert fired(c.tick(T0 + HOUR)) == []  # an absence fires on the clock: it has no channel
    absence = Trigger("gone", "gone:1", T0, {})
    assert View(c.profile, absence, rs.getters).get("customer_channel") is None


def test_new_profile_reads_nothing_from_unused_options(tmp_path):
    rs = ruleset(tmp_path, BY_CATEGORY + CART, rule('["page_view"]', "[]"))
    p = new_profile("c1")
    view = View(p, Trigger("page_view", "t", T0, {"category": "shoes"}), rs.getters)
    assert [view.get(a) for a in ("product_views_20m.max", "product_views_20m.top",
                                  "product_views_20m.same_as_trigger", "cart_value_2h")] == [0, None, 0, 0]


def test_every_new_state_shape_is_stored_and_read_back_as_it_was(tmp_path):
    rs = ruleset(tmp_path, BY_CATEGORY + CART + ABANDONED, rule('["page_view"]', "[]"))
    c = Customer(rs)
    c.send("page_view", T0, page_type="product", category="shoes")
    c.send("add_to_cart", T0 + MIN, amount=12.5, sku="a")
    c.send("purchase", T0 + 2 * MIN, amount=12.5)
    c.send("add_to_cart", T0 + 3 * MIN, amount=7.0, sku="b")
    assert {"product_views_20m", "cart_value_2h", "cart_value_2h@reset", "cart_abandoned"} <= set(c.profile.signals)
    assert decode_profile(encode_profile(c.profile)) == c.profile
