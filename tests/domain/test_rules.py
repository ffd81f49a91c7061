"""The rules file: the shipped one loads, and every kind of mistake gets an error naming file, rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.conditions.fields import RulesError
from nextclick.operators.infra.clock import parse_duration_ms
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.signals.absence import Absence
from nextclick.operators.signals.count import Count
from nextclick.operators.signals.session import Session
from tests.helpers import DAY, DEFAULT_RULES_PATH, HOUR, MIN, T0, Customer, fired, write_rules

SIGNALS = '''
[signals.views]
kind = "count"
events = ["page_view"]
window = "30m"

[signals.gone]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "1h"
'''

RULE = {
    "id": '"r1"',
    "on": '["page_view"]',
    "when": '["views >= 3"]',
    "action": '"send_email"',
    "channel": '"email"',
}

TAIL = '''
[caps]
email = { limit = 2, window = "24h" }
'''


def rule(**fields: str | None) -> str:
    body = {**RULE, **fields}
    return "[[rule]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items() if v is not None)


def rules_file(tmp_path: Path, *rules: str, signals: str = SIGNALS, tail: str = TAIL) -> Path:
    return write_rules(tmp_path, signals + "\n" + "\n".join(rules or (rule(),)) + "\n" + tail)


def load_error(path: Path) -> str:
    with pytest.raises(RulesError) as err:
        load_rules(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    return message


# --- the shipped file ---------------------------------------------------------------------------

def test_default_rules_load():
    rs = load_rules(DEFAULT_RULES_PATH)
    assert [r.id for r in rs.rules] == ["call_center_follow_up", "cart_abandonment_email", "high_value_winback",
                                       "post_purchase_cross_sell", "browse_abandonment_ad"]
    kinds = {s.name: type(s) for s in rs.signals}
    assert kinds["cart_abandoned"] is Absence and kinds["session"] is Session
    assert kinds["page_views_30m"] is Count
    assert rs.channel_caps["email"].limit == 2 and rs.channel_caps["email"].window_ms == DAY
    assert rs.overall_cap is not None and rs.overall_cap.limit == 4
    assert rs.consent_policy["email"] == "opt_in" and rs.consent_policy["ads"] == "opt_out"
    assert rs.complaint_suppression_ms == 30 * DAY
    assert rs.late.allowed_lateness_ms == 5 * MIN and rs.late.policy == "drop"
    assert rs.dedupe_horizon_ms == DAY
    assert "cart_abandoned" in rs.triggers and "page_view" in rs.triggers
    follow_up = rs.rules[0]
    assert follow_up.promotion is False and follow_up.purpose == "service" and follow_up.expiry_ms == 8 * HOUR


def test_a_minimal_valid_file_loads_with_defaults(tmp_path):
    rs = load_rules(rules_file(tmp_path))
    (r,) = rs.rules
    assert (r.id, r.channel, r.priority, r.cooldown_ms, r.expiry_ms, r.promotion) == ("r1", "email", 0, DAY, DAY, True)
    assert rs.overall_cap is None and rs.consent_policy["sms"] == "opt_in"


# --- every kind of error ------------------------------------------------------------------------

RULE_ERRORS = [
    # (field overrides, field named, words the message must contain)
    ({"when": '["orderz >= 1"]'}, "when", ["unknown attribute", "orderz"]),
    ({"when": '["orders => 1"]'}, "when", ["cannot read condition", "orders => 1"]),
    ({"when": '["orders ~ 1"]'}, "when", ["cannot read condition"]),
    ({"when": '["segment == loyal"]'}, "when", ["quote strings", "loyal"]),
    ({"when": '["segment in \\"loyal\\""]'}, "when", ["needs a list"]),
    ({"when": '"orders >= 1"'}, "when", ["list of conditions"]),
    ({"when": "[3]"}, "when", ["must be a string"]),
    ({"channel": '"fax"'}, "channel", ["fax"]),
    ({"channel": None}, "channel", ["None"]),
    ({"on": '["page_veiw"]'}, "on", ["unknown name", "page_veiw"]),
    ({"on": '["views"]'}, "on", ["['views'] can be read in 'when' but not triggered on"]),  # a window: no trigger
    ({"on": None}, "on", ["at least one"]),
    ({"action": None}, "action", ["required"]),
    ({"action": '""'}, "action", ["non-empty string"]),
    ({"cooldown": '"3 weeks"'}, "cooldown", ["not a duration"]),
    ({"expiry": '"0m"'}, "expiry", ["must be positive"]),
    ({"cooldown": "-5"}, "cooldown", ["no unit"]),
    ({"cooldown": "3600"}, "cooldown", ['3600 has no unit: write "3600s" for seconds']),  # not 3.6 s
    ({"expiry": "1.5"}, "expiry", ["no unit"]),
    ({"expiry": '"0"'}, "expiry", ["must be positive"]),  # "0" reads as the configuration reads it: nothing
    ({"cooldown": "true"}, "cooldown", ["not a duration"]),
    ({"chanel": '"email"'}, "chanel", ["unknown field"]),
    ({"priority": '"high"'}, "priority", ["integer"]),
    ({"promotion": '"no"'}, "promotion", ["true or false"]),
    ({"offer": "5"}, "offer", ["string"]),
]


@pytest.mark.parametrize(("overrides", "field", "words"), RULE_ERRORS,
                         ids=[f"{f}-{i}" for i, (_, f, _w) in enumerate(RULE_ERRORS)])
def test_a_bad_rule_is_named_with_its_field(tmp_path, overrides, field, words):
    message = load_error(rules_file(tmp_path, rule(id='"good"'), rule(**overrides)))
    assert "rule 'r1'" in message and f"field '{field}'" in message, message
    for word in words:
        assert word in message, message


def test_a_bad_rule_id_is_reported(tmp_path):
    message = load_error(rules_file(tmp_path, rule(id='"Cart Reminder"')))
    assert "'Cart Reminder'" in message and "field 'id'" in message


def test_duplicate_rule_id(tmp_path):
    message = load_error(rules_file(tmp_path, rule(), rule(channel='"ads"')))
    assert "rule 'r1'" in message and "field 'id'" in message and "duplicate" in message


SIGNAL_ERRORS = [
    ('kind = "count"\nevents = ["page_view"]\nwindow = "soon"', "window", ["not a duration"]),
    ('kind = "count"\nevents = ["page_view"]', "window", ["required"]),
    ('kind = "count"\nevents = ["page_vue"]\nwindow = "1h"', "events", ["page_vue"]),
    ('kind = "count"\nevents = []\nwindow = "1h"', "events", ["at least one"]),
    ('kind = "sum"\nevents = ["purchase"]\nwindow = "1h"', "field", ["required for kind 'sum'"]),
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\ntype = "hopping"', "type", ["tumbling"]),
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nwindw = "2h"', "windw", ["unknown field"]),
    # A field a kind does not use is an error, not silently ignored.
    ('kind = "count"\nevents = ["page_view"]\nwindow = "1h"\nfield = "category"', "field", ["unknown field"]),
    ('kind = "average"\nevents = ["page_view"]\nwindow = "1h"', "kind", ["average"]),
    ('kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]', "after", ["required"]),
    ('kind = "absence"\nstart = ["add_to_cart"]\ncancel = ["purchase"]\nafter = "1h"\ncarry = "sku"', "carry",
     ["list"]),
    ('kind = "session"\ngap = "0s"', "gap", ["positive"]),
]


@pytest.mark.parametrize(("body", "field", "words"), SIGNAL_ERRORS,
                         ids=[f"{f}-{i}" for i, (_, f, _w) in enumerate(SIGNAL_ERRORS)])
def test_a_bad_signal_is_named_with_its_field(tmp_path, body, field, words):
    path = rules_file(tmp_path, rule(when="[]"), signals=SIGNALS + f"\n[signals.broken]\n{body}\n")
    message = load_error(path)
    assert "signal 'broken'" in message and f"field '{field}'" in message, message
    for word in words:
        assert word in message, message


CAP_ERRORS = [
    ('email = { limit = -1, window = "24h" }', "email.limit"),
    ('email = { limit = "two", window = "24h" }', "email.limit"),
    ('email = { limit = true, window = "24h" }', "email.limit"),
    ('email = { limit = 2 }', "email.window"),
    ('email = { limit = 2, window = "a day" }', "email.window"),
    ('email = 2', "email"),
    ('fax = { limit = 2, window = "24h" }', "fax"),
    ('overall = { window = "24h" }', "overall"),
]


@pytest.mark.parametrize(("line", "field"), CAP_ERRORS)
def test_a_bad_cap_is_named(tmp_path, line, field):
    message = load_error(rules_file(tmp_path, tail=f"\n[caps]\n{line}\n"))
    assert "[caps]" in message and f"field '{field}'" in message, message


@pytest.mark.parametrize(("tail", "where", "field"), [
    ('[consent]\nemail = "maybe"', "[consent]", "email"),
    ('[consent]\nfax = "opt_in"', "[consent]", "fax"),
    ('[late]\npolicy = "keep"', "[late]", "policy"),
    ('[late]\nallowed_lateness = "soonish"', "[late]", "allowed_lateness"),
    ('[suppression]\nafter_complaint = "forever"', "[suppression]", "after_complaint"),
    ('[suppression]\nafter_purchase = "1d"', "[suppression]", "after_purchase"),
    ('[dedupe]\nhorizon = "0d"', "[dedupe]", "horizon"),
    ('[extras]\nx = 1', "top level", "extras"),
])
def test_bad_sections_are_named(tmp_path, tail, where, field):
    message = load_error(rules_file(tmp_path, tail=tail))
    assert where in message and f"field '{field}'" in message, message


@pytest.mark.parametrize("tail", ["caps = 3", 'consent = "opt_in"', "late = 5", "rule = [1]"])
def test_a_section_that_is_not_a_table_is_an_error_not_a_crash(tmp_path, tail):
    path = write_rules(tmp_path, SIGNALS.replace("[signals.views]", tail + "\n[signals.views]", 1)
                       + "\n" + rule() if tail != "rule = [1]" else tail + "\n")
    message = load_error(path)
    assert "must be a table" in message


def test_unreadable_invalid_and_empty_files(tmp_path):
    assert "cannot read" in load_error(tmp_path / "missing.toml")
    assert "invalid TOML" in load_error(write_rules(tmp_path, "[[rule]\nid = 1"))
    assert "at least one [[rule]]" in load_error(write_rules(tmp_path, SIGNALS))


# --- what the conditions mean -------------------------------------------------------------------

def test_parse_duration():
    assert [parse_duration_ms(t) for t in ("250ms", "45s", "30m", "1h", "7d", "1.5h", " 2m ", 500)] == [
        250, 45_000, 30 * MIN, HOUR, 7 * DAY, 90 * MIN, 2 * MIN, 500]
    for bad in ("", "m", "5 weeks", "-5m", "1e3s", True, "5M"):
        with pytest.raises(ValueError):
            parse_duration_ms(bad)


def test_conditions_on_lists_none_and_trigger_attributes(tmp_path):
    path = rules_file(
        tmp_path,
        rule(id='"big"', on='["purchase"]', channel='"ads"', priority="2",
             when='[\'trigger.category in ["shoes", "bags"]\', "trigger.items > 1"]'),
        rule(id='"other"', on='["purchase"]', channel='"ads"', priority="1",
             when='[\'trigger.category not in ["shoes"]\', "last_purchase == 0"]'),
        tail='[consent]\nads = "opt_out"\n',
    )
    rs = load_rules(path)
    c = Customer(rs)
    assert fired(c.send("purchase", T0, category="shoes", items=2, amount=5.0)) == [("big", "ads", "purchase")]
    # a missing attribute never satisfies an ordering; a None value is simply not equal to 0
    assert fired(c.send("purchase", T0 + 1, category="bags", amount=5.0)) == []
    assert fired(c.send("purchase", T0 + 2, category="hats", amount=5.0)) == []


@pytest.mark.parametrize(("on", "condition", "words"), [
    ('["purchase"]', "trigger.ammount >= 10", ["'trigger.ammount'", "purchase", "amount"]),
    ('["page_view", "purchase"]', "trigger.sku == 1", ["'trigger.sku'", "page_view, purchase"]),
    ('["gone"]', "trigger.amount >= 10", ["'trigger.amount'", "gone", "none"]),  # the absence carries nothing
])
def test_a_trigger_attribute_that_what_the_rule_is_on_does_not_carry_is_refused(tmp_path, on, condition, words):
    message = load_error(rules_file(tmp_path, rule(on=on, when=f'["{condition}"]')))
    assert "rule 'r1'" in message and "field 'when'" in message, message
    for word in words:
        assert word in message, message


def test_a_rule_on_an_absence_reads_what_it_carries(tmp_path):
    signals = SIGNALS.replace('after = "1h"', 'after = "1h"\ncarry = ["sku", "amount"]')
    rs = load_rules(rules_file(tmp_path, rule(on='["gone"]', when='["trigger.amount >= 10"]'), signals=signals))
    assert rs.rules[0].when[0].attribute == "trigger.amount"


@pytest.mark.parametrize(("expiry", "lateness", "refused"), [
    ('"2m"', None, True), ('"5m"', None, True), ('"6m"', None, False),
    ('"20m"', '"30m"', True), ('"1h"', '"30m"', False),
])
def test_a_rule_on_an_absence_must_outlive_the_allowed_lateness(tmp_path, expiry, lateness, refused):
    """An outside probe: a cart push with `expiry = "2m"` loaded, and never reached anyone live. An
    absence is decided at its deadline and made once the allowed lateness has passed: expired by then."""
    tail = TAIL + (f"\n[late]\nallowed_lateness = {lateness}\n" if lateness else "")
    path = rules_file(tmp_path, rule(on='["gone"]', when=None, expiry=expiry), tail=tail)
    if not refused:
        assert load_rules(path).rules[0].expiry_ms == parse_duration_ms(expiry.strip('"'))
        return
    message = load_error(path)
    assert f"rule 'r1': field 'expiry': {expiry} is not longer than [late] allowed_lateness" in message
    assert "'gone'" in message and "every one would be expired when sent" in message
