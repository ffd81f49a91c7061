"""The tracking plan (operators/events/tracking_plan.py): a file adds attributes and event types to the
shipped schemas, without code, and the parser (both paths), `rules check`, `rules test` and `rules explain`
read the same plan; a bad plan is one line naming the file and the field."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.flows.cli import main
from nextclick.operators.events.tracking_plan import SHIPPED, PlanError, TrackingPlan, load_plan
from nextclick.operators.infra.config import FlowConfig, ParseConfig, load_config
from nextclick.operators.io.parse import _parse_fast, parse_message, parse_message_slow
from nextclick.operators.records import DeadLetter, Event, SourcePosition
from nextclick.operators.rules.loader import check_rules, load_configured_rules, load_rules
from nextclick.operators.tools.scenarios import load_scenario, run_scenario
from tests.helpers import write_rules

SECRET = b"plan-secret"
NOW = 1_795_000_000_000
SRC = SourcePosition("nextclick.web", 0, 1)
CFG = ParseConfig()

PLAN = '''
[events.page_view.attributes.referrer_campaign]
type = "string"
max_length = 32
description = "The campaign of the link the visitor came by."

[events.add_to_cart.attributes.size]
type = "string"
enum = ["S", "M", "L"]

[events.wishlist_add]
channel = "web"
description = "A product was added to the wishlist."

[events.wishlist_add.attributes.sku]
type = "string"
min_length = 1
max_length = 64
required = true

[events.wishlist_add.attributes.price]
type = "number"
minimum = 0
maximum = 100000

[events.wishlist_add.attributes.quantity]
type = "integer"
minimum = 1
maximum = 99
'''

RULES = '''
[signals.wishlisted_7d]
kind = "count"
events = ["wishlist_add"]
window = "7d"

[[rule]]
id = "campaign_landing_ad"
on = ["page_view"]
when = ['trigger.referrer_campaign == "spring"']
params = { campaign = "trigger.referrer_campaign" }
action = "show_ad"
channel = "ads"
priority = 20

[[rule]]
id = "wishlist_email"
on = ["wishlist_add"]
when = ["trigger.price >= 100", "wishlisted_7d >= 2", 'customer_channel == "web"']
params = { sku = "trigger.sku" }
action = "send_email"
channel = "email"
priority = 10

[consent]
ads = "opt_out"
email = "opt_out"
'''

SCENARIO = '''
description = "A landing from the spring campaign gets the ad naming it; the second wishlisted item over 100 the email."

[[step]]
at = "+0m"
event = "page_view"
attrs = { page_type = "home", referrer_campaign = "spring" }
decisions = [{ rule = "campaign_landing_ad", channel = "ads", params = { campaign = "spring" } }]

[[step]]
at = "+1m"
event = "page_view"
attrs = { page_type = "home", referrer_campaign = "autumn" }

[[step]]
at = "+2m"
event = "wishlist_add"
attrs = { sku = "A-1", price = 150.0 }

[[step]]
at = "+3m"
event = "wishlist_add"
attrs = { sku = "B-2", price = 120.0, quantity = 2 }
decisions = [{ rule = "wishlist_email", channel = "email", params = { sku = "B-2" }, signals = { wishlisted_7d = 2 } }]
'''


@pytest.fixture()
def plan_file(tmp_path: Path) -> Path:
    return write_rules(tmp_path, PLAN, "plan.toml")


def parse(body: dict[str, Any], plan: Any = None, key: bytes = b"cookie-1") -> Event | DeadLetter:
    value = orjson.dumps(body)
    slow = parse_message_slow(key, value, None, SRC, secret=SECRET, now_ms=NOW, config=CFG, plan=plan)
    fast = _parse_fast(key, value, None, SRC, SECRET, NOW, CFG, plan=plan)
    full = parse_message(key, value, None, SRC, secret=SECRET, now_ms=NOW, config=CFG, plan=plan)
    if fast is not None:  # the fast path, generated from the plan, accepts only what the slow path does
        assert isinstance(slow, Event) and fast == slow
    if isinstance(slow, Event):
        assert full == slow
    else:
        assert isinstance(full, DeadLetter) and full.reason == slow.reason
    return slow


def view(**attrs: Any) -> dict[str, Any]:
    return {"event_id": "e1", "type": "page_view", "ts": NOW - 1000, **attrs}


def test_the_parser_keeps_an_attribute_the_plan_adds_on_both_paths(plan_file: Path) -> None:
    plan = load_plan(plan_file)
    body = view(page_type="home", referrer_campaign="spring")
    dropped = parse(body)
    assert isinstance(dropped, Event) and dropped.attrs == {"page_type": "home"}  # the shipped plan drops it
    kept = parse(body, plan)
    assert isinstance(kept, Event) and kept.attrs == {"page_type": "home", "referrer_campaign": "spring"}
    assert _parse_fast(b"cookie-1", orjson.dumps(body), None, SRC, SECRET, NOW, CFG, plan=plan) == kept
    too_long = parse(view(referrer_campaign="x" * 33), plan)
    assert isinstance(too_long, DeadLetter) and too_long.reason == "schema_violation"
    assert "referrer_campaign" in too_long.message
    cart = parse({"event_id": "e2", "type": "add_to_cart", "ts": NOW, "sku": "A", "size": "XL"}, plan)
    assert isinstance(cart, DeadLetter) and cart.reason == "schema_violation"


def test_a_plan_number_without_bounds_still_refuses_what_json_readers_and_sums_cannot_hold(tmp_path: Path) -> None:
    """An outside probe: a plan integer with no maximum let `"hits": 18446744073709551616` through, and
    the flow stopped where decisions are encoded, at every restart; two `1e308`s made a sum infinite,
    sent as null. Unbounded plan numbers now hold within 2^53 - 1, on both paths."""
    plan = load_plan(write_rules(tmp_path, '[events.page_view.attributes.hits]\ntype = "integer"\n'
                                           '[events.page_view.attributes.score]\ntype = "number"\n', "plan.toml"))
    for raw in (b"18446744073709551616", b"9223372036854775807", b"9007199254740992", b"-9007199254740992"):
        body = b'{"event_id":"e1","type":"page_view","ts":%d,"hits":%s}' % (NOW - 1000, raw)
        for path in (parse_message_slow, parse_message):
            refused = path(b"cookie-1", body, None, SRC, secret=SECRET, now_ms=NOW, config=CFG, plan=plan)
            assert isinstance(refused, DeadLetter) and refused.reason == "schema_violation", (raw, refused)
            assert "hits" in refused.message
    for score in (1e308, -1e16):
        refused = parse(view(score=score), plan)
        assert isinstance(refused, DeadLetter) and refused.reason == "schema_violation"
    kept = parse(view(hits=2**53 - 1, score=-(2**53 - 1)), plan)
    assert isinstance(kept, Event) and kept.attrs == {"hits": 2**53 - 1, "score": -(2**53 - 1)}
    with pytest.raises(PlanError, match=r"attributes.hits.maximum: must be within ±9007199254740991"):
        load_plan(write_rules(tmp_path, '[events.page_view.attributes.hits]\ntype = "integer"\nmaximum = 1e300\n',
                              "plan2.toml"))


def test_a_new_event_type_is_parsed_with_its_channel_bounds_and_required_fields(plan_file: Path) -> None:
    plan = load_plan(plan_file)
    body = {"event_id": "w1", "type": "wishlist_add", "ts": NOW, "sku": "A-1", "price": 12.5, "quantity": 3.0,
            "email": "someone@example.com"}
    unknown = parse(body)
    assert isinstance(unknown, DeadLetter) and unknown.reason == "unknown_type"
    event = parse(body, plan)
    assert isinstance(event, Event) and event.channel == "web" and event.id_type == "cookie"
    assert event.attrs == {"sku": "A-1", "price": 12.5, "quantity": 3} and type(event.attrs["quantity"]) is int
    for bad in ({"sku": "A-1", "price": -1}, {"sku": "A-1", "quantity": 100}, {"price": 1.0}, {"sku": ""}):
        refused = parse({"event_id": "w2", "type": "wishlist_add", "ts": NOW, **bad}, plan)
        assert isinstance(refused, DeadLetter) and refused.reason == "schema_violation", bad
    assert sorted(plan.types - SHIPPED.types) == ["wishlist_add"]


def test_a_rule_reads_a_plan_attribute_through_rules_check_test_and_explain(plan_file: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rules = write_rules(tmp_path, RULES)
    scenario = write_rules(tmp_path, SCENARIO, "scenario.toml")
    # without the plan the rules name what no event carries
    ruleset, errors = check_rules(rules)
    assert ruleset is None and any("unknown name(s) ['wishlist_add']" in str(e) for e in errors)
    assert main(["rules", "check", str(rules), "--tracking-plan", str(plan_file)]) == 0
    assert '"wishlist_add"' in capsys.readouterr().out
    assert main(["rules", "test", str(rules), str(scenario), "--tracking-plan", str(plan_file)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(", 0 failed") and "campaign_landing_ad/ads" in out and "wishlist_email/email" in out
    story = tmp_path / "story.jsonl"
    story.write_bytes(b"\n".join(orjson.dumps(b) for b in (
        {"event_id": "p1", "type": "page_view", "ts": NOW, "customer_id": "ana", "referrer_campaign": "spring",
         "utm_source": "x"},)))
    assert main(["rules", "explain", str(rules), "--events", str(story), "--json",
                 "--tracking-plan", str(plan_file)]) == 0
    entry = orjson.loads(capsys.readouterr().out.splitlines()[0])
    assert entry["decision"]["params"] == {"campaign": "spring"}
    assert entry["dropped"] == ["utm_source"]  # the plan's attribute is kept, not listed as dropped
    # the same in-process, as the flow would load them
    ruleset = load_rules(rules, plan_file)
    assert ruleset.plan.source == str(plan_file)
    assert all(c.ok for c in run_scenario(load_scenario(scenario, ruleset.plan), ruleset))


def test_rules_check_refuses_comparisons_a_plan_attribute_can_never_meet(plan_file: Path, tmp_path: Path) -> None:
    rules = write_rules(tmp_path, '''
[[rule]]
id = "r"
on = ["add_to_cart"]
when = ['trigger.size == "XXL"']
action = "a"
channel = "web"
''')
    ruleset, errors = check_rules(rules, plan_file)
    assert ruleset is None and len(errors) == 1
    assert "'trigger.size' is one of ['S', 'M', 'L']: 'XXL' never matches" in str(errors[0])


@pytest.mark.parametrize(("text", "field", "words"), [
    ('[events.page_view.attributes.x]\ntype = "strng"\n', "events.page_view.attributes.x.type",
     "unknown type 'strng'"),
    ('[events.page_view.attributes.x]\ntype = "number"\nminimum = 5\nmaximum = 1\n',
     "events.page_view.attributes.x", "a bad bound: minimum 5 is above maximum 1"),
    ('[events.page_view.attributes.x]\ntype = "string"\nmaximum = 3\n', "events.page_view.attributes.x.maximum",
     "a bound on numbers"),
    ('[events.page_view.attributes.x]\ntype = "string"\nmax_length = -1\n',
     "events.page_view.attributes.x.max_length", "must be an integer >= 0"),
    ('[events.page_view.attributes.x]\ntype = "number"\nmaximum = 9007199254740993\n',
     "events.page_view.attributes.x.maximum", "exact as a double"),
    ('[events.page_view.attributes.loyalty_email]\ntype = "string"\npii = true\n',
     "events.page_view.attributes.loyalty_email.pii", "personal data cannot be a targeting attribute"),
    ('[events.page_view.attributes.email]\ntype = "string"\n', "events.page_view.attributes.email",
     "personal data cannot be a targeting attribute"),
    # Named like personal data, beyond the envelope's names (each reached the decision topic as a signal).
    ('[events.page_view.attributes.email_address]\ntype = "string"\n', "events.page_view.attributes.email_address",
     "personal data cannot be a targeting attribute"),
    ('[events.page_view.attributes.date_of_birth]\ntype = "string"\n', "events.page_view.attributes.date_of_birth",
     "personal data cannot be a targeting attribute"),
    ('[events.page_view.attributes.full_name]\ntype = "string"\n', "events.page_view.attributes.full_name",
     "personal data cannot be a targeting attribute"),
    ('[events.page_view.attributes.referrer]\ntype = "string"\nrequired = true\n',
     "events.page_view.attributes.referrer.required", "cannot be required: every event producers send today"),
    ('[events.page_view.attributes.category]\ntype = "string"\n', "events.page_view.attributes.category",
     "a duplicate: the shipped schema already declares 'category'"),
    ('[events.page_view.attributes.x]\ntype = "string"\nenum = ["a", "b", "a"]\n',
     "events.page_view.attributes.x.enum", "a duplicate: 'a' is listed twice"),
    ('[events.wishlist_add.attributes.customer_id]\ntype = "string"\n[events.wishlist_add]\nchannel = "web"\n',
     "events.wishlist_add.attributes.customer_id", "a duplicate: the envelope every event carries"),
    ('[events.page_veiw.attributes.x]\ntype = "string"\n', "events.page_veiw.channel",
     "is not a shipped event type"),
    ('[events.wishlist_add]\nchannel = "fax"\n', "events.wishlist_add.channel", "must be one of"),
    ('[events.purchase]\nchannel = "store"\n', "events.purchase.channel", "its channel cannot change"),
    ('[events.page_view.attributes.x]\ntype = "string"\nmaxLength = 3\n', "events.page_view.attributes.x.maxLength",
     "unknown field"),
    ('[event.page_view]\n', "event", "unknown field"),
])
def test_a_bad_plan_is_one_line_naming_the_file_and_the_field(tmp_path: Path, text: str, field: str, words: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_rules(tmp_path, text, "plan.toml")
    with pytest.raises(PlanError) as raised:
        load_plan(plan)
    message = str(raised.value)
    assert message.startswith(f"{plan}: {field}: ") and words in message and "\n" not in message, message
    rules = write_rules(tmp_path, '[[rule]]\nid = "r"\non = ["page_view"]\naction = "a"\nchannel = "web"\n')
    assert main(["rules", "check", str(rules), "--tracking-plan", str(plan)]) == 1
    assert capsys.readouterr().out.strip() == message  # rules check: the same one line
    with pytest.raises(PlanError):
        load_rules(rules, plan)  # what the flow does at start


# A plan that named any of these kept the raw value in profile state (an outside probe found a `distinct`
# signal on `emails` with raw addresses in RocksDB): plurals, digits, run-together words, reversed names.
@pytest.mark.parametrize("name", ["emails", "phones", "addresses", "email2", "phone1", "secondary_emailaddress",
                                  "cellphone", "msisdn", "name_full", "names_first", "ips", "ipv4", "imei",
                                  "street", "gsm", "card_number", "creditcard_last4",
                                  # a later probe's, each accepted before
                                  "social_security_number", "credit_card", "cc_number", "postal_code", "national_id",
                                  "tax_id", "display_name", "nickname", "licence_plate", "license_plate_no",
                                  # and a recheck probe's
                                  "pwd", "account_number", "tax_number", "geo_lat", "latitude", "lng", "addr", "bday",
                                  "salary", "religion", "ethnicity", "health_condition", "plz", "telefon",
                                  "adresse", "geburtsdatum", "vorname", "nachname", "sozialversicherungsnummer"])
def test_an_attribute_named_like_personal_data_in_any_spelling_is_refused(tmp_path: Path, name: str) -> None:
    plan = write_rules(tmp_path, f'[events.page_view.attributes.{name}]\ntype = "string"\n', "plan.toml")
    with pytest.raises(PlanError, match=f"attributes.{name}: personal data cannot be a targeting attribute"):
        load_plan(plan)


@pytest.mark.parametrize("name", ["product_name", "device_class", "referrer_campaign", "loyalty_tier", "coupon_code",
                                  "tips", "hotel_stars", "level2", "status", "gift_card_amount", "panel",
                                  "taxi_distance", "tax_rate", "national_holiday", "card_type", "city", "gender",
                                  "latency_ms", "plan_tier", "long_stay", "account_tier"])
def test_an_attribute_that_only_resembles_personal_data_loads(tmp_path: Path, name: str) -> None:
    plan = write_rules(tmp_path, f'[events.page_view.attributes.{name}]\ntype = "string"\n', "plan.toml")
    assert name in load_plan(plan).attributes("page_view")


def test_a_type_declared_twice_in_the_file_is_refused_with_its_line(tmp_path: Path) -> None:
    plan = write_rules(tmp_path, '[events.wishlist_add]\nchannel = "web"\n[events.wishlist_add]\nchannel = "web"\n',
                       "plan.toml")
    with pytest.raises(PlanError, match=r"plan\.toml: invalid TOML: .*line 3"):
        load_plan(plan)


def test_the_config_key_names_the_plan_and_empty_is_the_shipped_one(tmp_path: Path, plan_file: Path) -> None:
    assert FlowConfig().tracking_plan == "" and load_plan("") is SHIPPED and load_plan(None) is SHIPPED
    config = load_config(None, {"NEXTCLICK_FLOW__TRACKING_PLAN": str(plan_file)})
    assert load_plan(config.flow.tracking_plan).types > SHIPPED.types
    assert load_rules(Path(__file__).resolve().parents[2] / "operators" / "rules" / "default_rules.toml",
                      config.flow.tracking_plan).plan.source == str(plan_file)
    assert load_configured_rules(config).plan.source == str(plan_file)  # what a command that runs the rules loads
    bad = write_rules(tmp_path, '[events.page_view.attributes.email]\ntype = "string"\n', "bad.toml")
    with pytest.raises(PlanError, match="bad.toml: events.page_view.attributes.email: personal data"):
        load_configured_rules(load_config(None, {"NEXTCLICK_FLOW__TRACKING_PLAN": str(bad)}))


def test_a_plan_costs_the_shipped_parser_nothing(plan_file: Path) -> None:
    """The default path is untouched (the same spec objects); a plan compiles its own once, at load."""
    from nextclick.operators.events import schemas

    assert SHIPPED.spec_set() is schemas.default_spec_set()
    plan = load_plan(plan_file)
    assert plan.spec_set() is plan.spec_set() and plan.spec_set(250.0) is plan.spec_set(250.0)
    started = time.perf_counter()
    body = orjson.dumps(view(page_type="home", referrer_campaign="spring"))
    for _ in range(2000):
        assert _parse_fast(b"k", body, None, SRC, SECRET, NOW, CFG, plan=plan) is not None
    assert time.perf_counter() - started < 2.0


WISH = st.fixed_dictionaries({"sku": st.text(min_size=1, max_size=64)}, optional={
    "price": st.one_of(st.integers(0, 100000), st.floats(0, 100000, allow_nan=False)),
    "quantity": st.integers(1, 99),
    "note": st.text(max_size=5),
    "extra": st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.none()),
})
NEAR = st.fixed_dictionaries({}, optional={
    "sku": st.one_of(st.text(max_size=70), st.integers(-(2**63), 2**63 - 1), st.none()),
    "price": st.one_of(st.floats(-10, 2e5), st.integers(-5, 200_001), st.text(max_size=3), st.booleans()),
    "quantity": st.one_of(st.integers(-1, 101), st.floats(0, 100), st.none()),
})


@functools.cache
def _wishlist_plan() -> TrackingPlan:
    path = Path(tempfile.mkdtemp(prefix="plan-")) / "plan.toml"
    path.write_text(PLAN)
    return load_plan(path)


@settings(max_examples=150, deadline=None)
@given(attrs=st.one_of(WISH, NEAR), ts=st.one_of(st.just(NOW), st.just("2026-11-18T11:00:00Z")))
def test_both_parser_paths_agree_on_a_plans_new_type(attrs: dict[str, Any], ts: Any) -> None:
    plan = _wishlist_plan()
    result = parse({"event_id": "w", "type": "wishlist_add", "ts": ts, **attrs}, plan)
    if isinstance(result, Event):
        assert set(result.attrs) <= {"sku", "price", "quantity"}


def test_nextclick_run_refuses_a_bad_plan_before_it_touches_kafka(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The flow reads the plan the config names (flows/targeting.py): a bad one stops `run` at start."""
    bad = tmp_path / "plan.toml"
    bad.write_text('[events.page_view.attributes.email]\ntype = "string"\npii = true\n')
    config = tmp_path / "nextclick.toml"
    config.write_text(f'[flow]\ntracking_plan = "{bad}"\n[privacy]\nsecret = "{"s" * 32}"\n'
                      f'[kafka]\n"bootstrap.servers" = "127.0.0.1:9"\n')
    assert main(["run", "--config", str(config), "--broker-timeout", "1"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("nextclick: error: ") and str(bad) in line and "Connection" not in line


def test_every_mistake_in_a_plan_is_listed_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plan with three mistakes in two types is fixed in one pass: `rules check` lists each, and the
    flow's start line names the first and how many more there are."""
    plan = write_rules(tmp_path, '[events.page_view.attributes.email]\ntype = "string"\n'
                                 '[events.page_view.attributes.ok]\ntype = "string"\n'
                                 '[events.page_view.attributes.size]\ntype = "strng"\n'
                                 '[events.wishlist_add]\nchannel = "fax"\n', "plan.toml")
    with pytest.raises(PlanError) as raised:
        load_plan(plan)
    assert [m.split(": ")[1] for m in raised.value.mistakes] == [
        "events.page_view.attributes.email", "events.page_view.attributes.size.type", "events.wishlist_add.channel"]
    assert str(raised.value).endswith(f"(and 2 more: `nextclick rules check RULES --tracking-plan {plan}` "
                                      "lists them all)")
    rules = write_rules(tmp_path, '[[rule]]\nid = "r"\non = ["page_view"]\naction = "a"\nchannel = "web"\n')
    assert main(["rules", "check", str(rules), "--tracking-plan", str(plan)]) == 1
    assert capsys.readouterr().out.splitlines() == raised.value.mistakes
