"""Rules v3 (issue 26), the items closed last: a decision with no address uses up no cooldown or cap
(with or without require_address), the last contact per channel read by rules, and window edges."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.profile.facts import ATTRIBUTES
from nextclick.operators.rules.loader import check_rules, load_rules
from tests.helpers import HOUR, MIN, T0, Customer, consent, fired, reasons, write_rules

MAIL = '''
[[rule]]
id = "mail"
on = ["page_view"]
action = "send_email"
channel = "email"
priority = 20
cooldown = "1d"

[[rule]]
id = "ad"
on = ["app_open"]
action = "show_ad"
channel = "ads"
priority = 10
cooldown = "1d"

[caps]
email = { limit = 1, window = "24h" }
overall = { limit = 1, window = "24h" }

[consent]
ads = "opt_out"
'''


def test_a_decision_with_no_address_uses_no_cooldown_or_cap_without_require_address(tmp_path: Path) -> None:
    customer = Customer(load_rules(write_rules(tmp_path, MAIL)))
    customer.apply(consent(T0, "email", True))
    customer.profile.ids = {"customer": ["c1"]}  # known, and nothing addresses email: address null
    assert fired(customer.send("page_view", T0 + MIN)) == [("mail", "email", "page_view")]
    assert customer.profile.history.fired == {} and customer.profile.history.sent == {}
    # a link a moment later: the next trigger is not held back by the unaddressed decision
    customer.profile.ids = {"customer": ["c1"], "email": ["e1"]}
    assert fired(customer.send("page_view", T0 + 2 * MIN)) == [("mail", "email", "page_view")]
    # this one had an address: it starts the cooldown and counts towards the caps as before
    assert "mail" in customer.profile.history.fired
    assert [b.reason for b in customer.send("page_view", T0 + 3 * MIN).blocked] == ["cooldown"]
    assert [b.reason for b in customer.send("app_open", T0 + 4 * MIN).blocked] == ["frequency_cap_overall"]


def test_unknown_identifiers_still_use_the_cooldown(tmp_path: Path) -> None:
    """A profile with no identifiers recorded (stored before they were) is not 'no address': its
    decisions carry no address field at all and count as before (the engine-equivalence case)."""
    customer = Customer(load_rules(write_rules(tmp_path, MAIL)))
    customer.apply(consent(T0, "email", True))
    assert fired(customer.send("page_view", T0 + MIN)) == [("mail", "email", "page_view")]
    assert [b.reason for b in customer.send("page_view", T0 + 2 * MIN).blocked] == ["cooldown"]


CONTACT = '''
[[rule]]
id = "quiet"
on = ["app_open"]
when = ["hours_since_last_email_contact >= 72", { not = "hours_since_last_call_center_contact < 24" }]
action = "send_push"
channel = "push"
cooldown = "1m"

[consent]
push = "opt_out"
'''


def test_the_last_contact_per_channel_is_read_in_whole_hours(tmp_path: Path) -> None:
    names = {f"hours_since_last_{c}_contact" for c in ("web", "email", "mobile", "store", "call_center")}
    assert names <= set(ATTRIBUTES)
    customer = Customer(load_rules(write_rules(tmp_path, CONTACT)))
    assert fired(customer.send("app_open", T0)) == []  # no email event: missing, false
    customer.send("email_open", T0 + HOUR, campaign_id="x")
    assert fired(customer.send("app_open", T0 + 72 * HOUR + 59 * MIN)) == []  # 71 h 59 m: 71
    out = customer.send("app_open", T0 + 73 * HOUR)  # the email open counts, not the app opens
    assert fired(out) == [("quiet", "push", "app_open")]
    assert out.decisions[0].signals == {"hours_since_last_email_contact": 72,
                                        "hours_since_last_call_center_contact": None}
    customer.send("call_center_contact", T0 + 80 * HOUR, outcome="resolved")
    assert fired(customer.send("app_open", T0 + 103 * HOUR + 59 * MIN)) == []  # 23 h since the call
    assert fired(customer.send("app_open", T0 + 104 * HOUR)) == [("quiet", "push", "app_open")]
    assert ATTRIBUTES["hours_since_last_mobile_contact"](customer.profile.facts, T0 + 104 * HOUR) == 0


WEEK = '''
[signals.views_7d]
kind = "count"
events = ["page_view"]
window = "7d"

[signals.views_1h]
kind = "count"
events = ["page_view"]
window = "1h"

[signals.views_10m]
kind = "count"
events = ["page_view"]
window = "10m"

[[rule]]
id = "r"
on = ["page_view"]
when = ["views_7d >= 1"]
action = "a"
channel = "web"
'''


def test_a_window_edge_is_late_by_less_than_a_minute_by_default(tmp_path: Path) -> None:
    from nextclick.operators.signals.window import default_bucket_ms

    ruleset = load_rules(write_rules(tmp_path, WEEK))
    buckets = {s.name: s.window.bucket_ms for s in ruleset.signals}  # type: ignore[attr-defined]
    assert buckets == {"views_7d": MIN, "views_1h": MIN, "views_10m": 20_000}
    assert default_bucket_ms(10_000) == 1000 and default_bucket_ms(365 * 24 * HOUR) == MIN
    customer = Customer(ruleset)
    customer.send("page_view", T0 + 30 * 1000)  # 30 s into its minute bucket
    week = 7 * 24 * HOUR
    read = ruleset.getters["views_7d"]

    def at(ts: int) -> int:
        from nextclick.operators.records import Trigger

        return int(read(customer.profile, Trigger("page_view", "t", ts, {})))

    assert at(T0 + 30 * 1000 + week - 1) == 1  # the last millisecond of its window
    assert at(T0 + week + MIN - 2) == 1  # its bucket still touches the window: less than a minute late
    assert at(T0 + week + MIN - 1) == 0  # was up to 7d5h36m with window / 30 alone


def test_the_shipped_rules_keep_their_buckets_so_their_decisions_do_not_change() -> None:
    from tests.helpers import default_rules

    buckets = {s.name: s.window.bucket_ms for s in default_rules().signals if hasattr(s, "window")}
    assert buckets == {"page_views_30m": MIN, "page_views_2h": 4 * MIN, "cart_value_1h": 2 * MIN,
                       "categories_1h": 2 * MIN}


BASE_RULE = '[[rule]]\nid = "r"\non = ["page_view"]\naction = "a"\nchannel = "web"\n'
UNKNOWN_KEYS = {
    "count": '[signals.s]\nkind = "count"\nevents = ["page_view"]\nwindow = "1h"\nbogus = 1\n',
    "sum": '[signals.s]\nkind = "sum"\nevents = ["add_to_cart"]\nfield = "amount"\nwindow = "1h"\nbogus = 1\n',
    "distinct": '[signals.s]\nkind = "distinct"\nevents = ["page_view"]\nfield = "category"\nwindow = "1h"\n'
                'bogus = 1\n',
    "last": '[signals.s]\nkind = "last"\nevents = ["page_view"]\nwindow = "1h"\nbogus = 1\n',
    "absence": '[signals.s]\nkind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "1h"\n'
               'bogus = 1\n',
    "session": '[signals.s]\nkind = "session"\nbogus = 1\n',
    "unmatched": '[signals.s]\nkind = "unmatched"\nevents = ["email_open"]\nmatched_by = ["email_click"]\n'
                 'by = "campaign_id"\nwindow = "1d"\nbogus = 1\n',
    "grouped": '[signals.s]\nkind = "count"\nevents = ["page_view"]\nby = "category"\nwindow = "1h"\nbogus = 3\n',
    "rule": BASE_RULE + "bogus = 1\n",
    "late": "[late]\nbogus = 1\n",
    "dedupe": "[dedupe]\nbogus = 1\n",
    "caps": "[caps]\nbogus = 1\n",
    "cap": '[caps]\nemail = { limit = 1, window = "1h", bogus = 1 }\n',
    "consent": '[consent]\nbogus = "opt_in"\n',
    "suppression": "[suppression]\nbogus = 1\n",
    "scope": '[[suppression.scope]]\nafter_complaint = "1d"\nbogus = 1\n',
    "addresses": '[addresses]\nbogus = ["email"]\n',
    "top level": "bogus = 1\n",
}


@pytest.mark.parametrize("table", sorted(UNKNOWN_KEYS))
def test_an_unknown_key_anywhere_in_a_rules_file_is_refused_by_name(tmp_path: Path, table: str) -> None:
    text = UNKNOWN_KEYS[table]
    ruleset, errors = check_rules(write_rules(tmp_path, text if table == "rule" else BASE_RULE + "\n" + text))
    assert ruleset is None and any("bogus" in str(e) for e in errors), errors


def test_a_rule_on_an_unknown_type_gets_one_error_not_a_second_about_its_attributes(tmp_path: Path) -> None:
    """A type the plan does not have (a typo, a plan not given): one line for `on`, none for the trigger's
    attributes the rule then reads."""
    text = '[[rule]]\nid = "x"\non = ["wishlist_add"]\naction = "send_email"\nchannel = "email"\n' \
           'when = [\'trigger.sku == "a"\']\n'
    ruleset, errors = check_rules(write_rules(tmp_path, text))
    assert ruleset is None and len(errors) == 1, errors
    assert "field 'on': unknown name(s) ['wishlist_add']" in str(errors[0])


# Mistakes that loaded and then stopped the flow at its first decision (numbers past what a decision
# can carry), or that changed decisions without a word (a shadowed attribute, a purpose no rule has).
MISTAKES = {
    "priority past 2**53": (BASE_RULE + "priority = 99999999999999999999\n", "field 'priority': must be an integer"),
    "expiry past year 9999": (BASE_RULE + 'expiry = "100000000d"\n', "field 'expiry': must be at most 36500d"),
    "cooldown past 64 bits": (BASE_RULE + 'cooldown = "9999999999999999999999h"\n',
                              "field 'cooldown': must be at most 36500d"),
    "signal window": (BASE_RULE + '[signals.pv]\nkind = "count"\nevents = ["page_view"]\nwindow = "99999999999d"\n',
                      "signal 'pv': field 'window': must be at most 36500d"),
    "cap limit": (BASE_RULE + '[caps]\nemail = { limit = 99999999999999999999, window = "1d" }\n',
                  "field 'email.limit': must be an integer from 0 to"),
    "signal shadows orders": (BASE_RULE + '[signals.orders]\nkind = "count"\nevents = ["page_view"]\nwindow = "1h"\n',
                              "signal 'orders': it gives the attribute 'orders', which is a profile attribute's"),
    "two signals, one attribute": (
        BASE_RULE + '[signals.cart]\nkind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\n'
                    'after = "1h"\n[signals.cart_pending]\nkind = "count"\nevents = ["page_view"]\nwindow = "1h"\n',
        "signal 'cart_pending': it gives the attribute 'cart_pending', which signal 'cart' gives too"),
    "signal named like an event type": (
        BASE_RULE + '[signals.purchase]\nkind = "count"\nevents = ["page_view"]\nwindow = "1h"\n',
        "signal 'purchase': the name is an event type's"),
    "signal name with a dot": (BASE_RULE + '[signals."a.max"]\nkind = "count"\nevents = ["page_view"]\nwindow = "1h"\n',
                               "signal 'a.max': the name must be lowercase letters, digits and _"),
    "cap purpose typo": (BASE_RULE + '[caps]\npurposes = ["marketting"]\nemail = { limit = 1, window = "1d" }\n',
                         "[caps]: field 'purposes': no rule has the purpose(s) ['marketting']"),
    "scope purpose typo": (BASE_RULE + '[[suppression.scope]]\npurposes = ["marketting"]\nafter_complaint = "1d"\n',
                           "[[suppression.scope]] #1: field 'purposes': no rule has the purpose(s) ['marketting']"),
    "rule purpose typo": (BASE_RULE + 'purpose = "marketting"\n',
                          "rule 'r': field 'purpose': 'marketting' is not one of the consent purposes"),
    "rule purpose in capitals": (BASE_RULE + 'purpose = "Marketing"\n',
                                 "field 'purpose': 'Marketing' is not one of the consent purposes"),
    "consent purposes not a list": (BASE_RULE + '[consent]\npurposes = "marketing"\n',
                                    "[consent]: field 'purposes': must be a non-empty list of purposes"),
    "scope with no channel": (BASE_RULE + '[[suppression.scope]]\nchannels = []\nafter_complaint = "1d"\n',
                              "field 'channels': must name at least one channel"),
    "segment typo": (BASE_RULE + 'when = [\'segment == "loyl"\']\n', "'segment' is one of ["),
    "orders compared with true": (BASE_RULE + "when = ['orders == true']\n", "'orders' is integer, compared with bool"),
    "in an empty list": (BASE_RULE + "when = ['segment in []']\n", "'in' an empty list: never true"),
    "groups nested 17 deep": (BASE_RULE + "when = [" + "{ not = " * 17 + "'orders > 1'" + " }" * 17 + "]\n",
                              "groups are nested more than 16 deep"),
    # Found by a marketer probe: each loaded, and its rule never fired.
    "a date-time literal": (BASE_RULE + "when = ['last_purchase >= 2026-11-01T00:00:00Z']\n",
                            "a date-time is not a value an attribute holds: times are epoch milliseconds (write "
                            "1793491200000 for 2026-11-01T00:00:00+00:00)"),
    "a local date": (BASE_RULE + "when = ['last_purchase >= 2026-11-01']\n", "a date or a time of day"),
    "a NaN threshold": (BASE_RULE + "when = ['lifetime_value >= nan']\n",
                        "nan is not a number a condition can compare"),
    "a table": (BASE_RULE + "when = ['orders == {n = 1}']\n", "a table is not a value an attribute holds"),
    "a list under ==": (BASE_RULE + "when = ['orders == [1]']\n", "a list is not a value an attribute holds"),
    "a trigger name the rule is not on": (BASE_RULE + "when = ['trigger == \"page_veiw\"']\n",
                                          "the rule is on ['page_view']: 'page_veiw' never matches"),
    "caps for no purpose": (BASE_RULE + '[caps]\npurposes = []\nemail = { limit = 1, window = "1d" }\n',
                            "[caps]: field 'purposes': must be a non-empty list of purposes"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_mistake_that_used_to_load_is_refused_by_name(tmp_path: Path, mistake: str) -> None:
    text, words = MISTAKES[mistake]
    ruleset, errors = check_rules(write_rules(tmp_path, text))
    assert ruleset is None and len(errors) == 1 and words in str(errors[0]), errors


def test_a_rules_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"\xff\xfe[[rule]]\n")
    ruleset, errors = check_rules(path)
    assert ruleset is None and [str(e) for e in errors] == [f"{path}: invalid TOML: not UTF-8 text (byte 0 cannot be "
                                                            "decoded)"]


def test_every_profile_attribute_declares_what_it_holds() -> None:
    """The rules loader refuses never-true comparisons, and signals named like profile attributes, from
    these kinds: an attribute added without one would be neither checked nor protected."""
    from nextclick.operators.profile.facts import ATTRIBUTE_KINDS

    assert set(ATTRIBUTE_KINDS) == set(ATTRIBUTES)


def test_a_purpose_the_consent_source_sends_is_declared_once_and_then_gated_like_marketing(tmp_path: Path) -> None:
    """A deployment's own purpose loads once `[consent] purposes` names it, and then its revocation holds
    on an opt_out channel, where an undeclared typo would have reached the customer who opted out."""
    text = BASE_RULE.replace('channel = "web"', 'channel = "ads"') + 'purpose = "newsletter"\ncooldown = "1ms"\n'
    ruleset, errors = check_rules(write_rules(tmp_path, text))
    assert ruleset is None and "'newsletter' is not one of the consent purposes ['marketing', 'service']" in \
        str(errors[0]), errors
    ruleset = load_rules(write_rules(tmp_path, text + '[consent]\nads = "opt_out"\n'
                                                      'purposes = ["marketing", "service", "newsletter"]\n'))
    c = Customer(ruleset=ruleset)
    assert [d[1] for d in fired(c.send("page_view", T0))] == ["ads"]
    c.send("consent", T0 + 1, channel="all", purpose="newsletter", granted=False)
    assert reasons(c.send("page_view", T0 + 2)) == [("r", "opted_out")]
