"""parse_message: valid events of every type, every dead-letter reason, and that it never raises.

Also: the fast path (msgspec) and the slow path (orjson + fastjsonschema) give the same result for
valid, near-valid, arbitrary and hostile messages; duplicated keys, blank identifiers, and dead-letter
messages that do not depend on the clock.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.channels import EVENT_CHANNELS, ID_TYPES
from nextclick.operators.events.schemas import ATTRS_KEYWORD, SCHEMA_DIR, SPECS, _fast_type, load_schema
from nextclick.operators.identity.guards import default_identity_rules
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.deadletter import REASONS, TS_SKEW_HEADER, dead_letter_headers
from nextclick.operators.io.jsonkeys import duplicate_key
from nextclick.operators.io.parse import _parse_fast, parse_message, parse_message_slow
from nextclick.operators.records import DeadLetter, Event, SourcePosition

SECRET = b"test-secret"
NOW = 1_795_000_000_000  # 2026-11-18T11:06:40Z
SRC = SourcePosition("nextclick.web", 7, 123456)
CFG = ParseConfig()
KEY = b"cookie-raw-4711"
HEADERS = [("traceparent", b"00-abc-01"), ("content-type", b"application/json")]
PII = {"email": "alice.secret@example.com", "phone": "+49 170 5550199", "name": "Alice Secretname",
       "first_name": "Alicefirst", "last_name": "Secretlast", "address": "Geheimweg 7, Berlin",
       "note": "calls after 6pm only", "free_text": "my diagnosis is private", "ip": "203.0.113.77"}

# type -> (kept attributes in the payload, expected attrs)
VALID: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "page_view": ({"page_type": "product", "category": "shoes"},
                  {"page_type": "product", "category": "shoes"}),
    "add_to_cart": ({"sku": "SKU-1", "amount": 19.99, "quantity": 2, "category": "shoes"},
                    {"sku": "SKU-1", "amount": 19.99, "quantity": 2, "category": "shoes"}),
    "purchase": ({"order_id": "O-1", "amount": 120, "currency": "EUR", "items": 3, "category": "shoes"},
                 {"order_id": "O-1", "amount": 120, "currency": "EUR", "items": 3, "category": "shoes"}),
    "app_purchase": ({"amount": 0.5}, {"amount": 0.5}),
    "store_purchase": ({"amount": 9, "currency": "usd", "items": 0},
                       {"amount": 9, "currency": "usd", "items": 0}),
    "email_open": ({"campaign_id": "C-9"}, {"campaign_id": "C-9"}),
    "email_click": ({"campaign_id": "C-9", "link_category": "sale"},
                    {"campaign_id": "C-9", "link_category": "sale"}),
    "app_open": ({"app_version": "5.2.1"}, {"app_version": "5.2.1"}),
    "call_center_contact": ({"topic": "delivery", "outcome": "solved"},
                            {"topic": "delivery", "outcome": "solved"}),
    "consent": ({"channel": "email", "granted": False}, {"channel": "email", "granted": False,
                                                          "purpose": "marketing"}),
    "complaint": ({"topic": "billing", "severity": "high"}, {"topic": "billing", "severity": "high"}),
    "login": ({"method": "password"}, {"method": "password"}),
    "identify": ({"source": "newsletter"}, {"source": "newsletter"}),
}
DEFAULT_ID_TYPE = {"web": "cookie", "email": "email", "mobile": "device", "store": "customer",
                   "call_center": "customer"}


def payload(event_type: str = "purchase", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": "evt-1", "type": event_type, "ts": NOW - 60_000}
    body.update(VALID[event_type][0])
    body.update(fields)
    return body


def parse(value: Any, key: bytes | None = KEY, headers: Any = HEADERS,
          config: ParseConfig = CFG) -> Event | DeadLetter:
    if isinstance(value, dict):
        value = orjson.dumps(value)
    return parse_message(key, value, headers, SRC, secret=SECRET, now_ms=NOW, config=config)


def expect_event(value: Any, **kw: Any) -> Event:
    result = parse(value, **kw)
    assert isinstance(result, Event), result
    return result


# --- valid events -----------------------------------------------------------------------------------

def test_every_type_has_a_schema_and_an_example():
    assert set(VALID) == set(EVENT_CHANNELS) == set(SPECS)
    for event_type in EVENT_CHANNELS:
        assert (SCHEMA_DIR / f"{event_type}.json").is_file()


@pytest.mark.parametrize("event_type", sorted(EVENT_CHANNELS))
def test_valid_event_of_every_type(event_type):
    body = payload(event_type, **PII, unknown_field={"nested": [1, 2, "x"]}, another="zzz-extra")
    event = expect_event(body)
    channel = EVENT_CHANNELS[event_type]
    assert event.type == event_type
    assert event.channel == channel
    assert event.event_id == "evt-1"
    assert event.ts == NOW - 60_000
    assert event.attrs == VALID[event_type][1]
    assert event.source == SRC
    raw = KEY.decode()
    assert event.customer == pseudonymize(DEFAULT_ID_TYPE[channel], raw, SECRET)
    text = repr(event)
    for secret_value in [raw, *PII.values(), "zzz-extra", "nested"]:
        assert secret_value not in text


def test_rfc3339_with_offset_is_converted_to_utc_ms():
    event = expect_event(payload(ts="2026-11-18T09:00:00.250+01:00"))
    expected = datetime(2026, 11, 18, 8, 0, 0, 250_000, tzinfo=UTC)
    assert event.ts == int(expected.timestamp() * 1000)
    assert expect_event(payload(ts="2026-11-18T08:00:00Z")).ts == int(expected.timestamp()) * 1000
    assert expect_event(payload(ts="2026-11-18t03:30:00-04:30")).ts == int(expected.timestamp()) * 1000


def test_customer_id_wins_and_id_type_applies_to_key():
    event = expect_event(payload(customer_id="CUST-99", id_type="email"))
    assert event.customer == pseudonymize("customer", "CUST-99", SECRET)
    assert "CUST-99" not in repr(event)
    event = expect_event(payload(id_type="email"), key=b"a@example.com")
    assert event.customer == pseudonymize("email", "a@example.com", SECRET)


def test_explicit_purpose_and_integral_float_counts():
    event = expect_event(payload("consent", purpose="analytics", channel="all", granted=True))
    assert event.attrs == {"channel": "all", "purpose": "analytics", "granted": True}
    event = expect_event(payload("add_to_cart", quantity=2.0))
    assert event.attrs["quantity"] == 2 and type(event.attrs["quantity"]) is int


def test_max_age_zero_disables_the_age_check():
    assert expect_event(payload(ts=1000), config=ParseConfig(max_age_ms=0)).ts == 1000


# --- dead letters -----------------------------------------------------------------------------------

PLANTED = "alice.secret@example.com"
BAD: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("too_large", KEY, orjson.dumps(payload(note=PLANTED + "x" * 70_000)), "too_large"),
    ("none", KEY, None, "empty_value"),
    ("empty", KEY, b"", "empty_value"),
    ("latin1", KEY, '{"email": "alice.secr\u00e9t@example.com"}'.encode("latin-1"), "invalid_utf8"),
    ("surrogate", KEY, b'{"email": "\xed\xa0\x80' + PLANTED.encode() + b'"}', "invalid_utf8"),
    ("json", KEY, b'{"email": "' + PLANTED.encode() + b'",', "invalid_json"),
    ("nan", KEY, b'{"amount": NaN, "email": "' + PLANTED.encode() + b'"}', "invalid_json"),
    ("bom", KEY, b'\xef\xbb\xbf{"type": "purchase"}', "invalid_json"),
    ("array", KEY, orjson.dumps([PLANTED]), "not_an_object"),
    ("string", KEY, orjson.dumps(PLANTED), "not_an_object"),
    ("no_type", KEY, orjson.dumps({"event_id": "e", "ts": NOW, "email": PLANTED}), "missing_type"),
    ("null_type", KEY, orjson.dumps({"type": None, "email": PLANTED}), "missing_type"),
    ("unknown_type", KEY, orjson.dumps(payload(type=PLANTED)), "unknown_type"),
    ("list_type", KEY, orjson.dumps(payload(type=[PLANTED])), "unknown_type"),
    ("no_event_id", KEY, orjson.dumps({k: v for k, v in payload(email=PLANTED).items() if k != "event_id"}),
     "missing_event_id"),
    ("empty_event_id", KEY, orjson.dumps(payload(event_id="", email=PLANTED)), "missing_event_id"),
    ("event_id_type", KEY, orjson.dumps(payload(event_id=12345)), "schema_violation"),
    ("event_id_long", KEY, orjson.dumps(payload(event_id=PLANTED * 10)), "schema_violation"),
    ("amount_negative", KEY, orjson.dumps(payload(amount=-17.25)), "schema_violation"),
    ("amount_string", KEY, orjson.dumps(payload(amount="17.25")), "schema_violation"),
    ("amount_missing", KEY, orjson.dumps({k: v for k, v in payload().items() if k != "amount"}),
     "schema_violation"),
    ("sku_missing", KEY, orjson.dumps({k: v for k, v in payload("add_to_cart").items() if k != "sku"}),
     "schema_violation"),
    ("quantity_bool", KEY, orjson.dumps(payload("add_to_cart", quantity=True)), "schema_violation"),
    ("quantity_zero", KEY, orjson.dumps(payload("add_to_cart", quantity=0)), "schema_violation"),
    ("items_fraction", KEY, orjson.dumps(payload(items=1.5)), "schema_violation"),
    ("currency", KEY, orjson.dumps(payload(currency="EURO")), "schema_violation"),
    ("category_too_long", KEY, orjson.dumps(payload(category=PLANTED * 10)), "schema_violation"),
    ("consent_channel", KEY, orjson.dumps(payload("consent", channel=PLANTED)), "schema_violation"),
    ("consent_granted", KEY, orjson.dumps(payload("consent", granted="yes")), "schema_violation"),
    ("pii_not_string", KEY, orjson.dumps(payload(email=[PLANTED])), "schema_violation"),
    ("id_type", KEY, orjson.dumps(payload(id_type=PLANTED)), "schema_violation"),
    ("customer_id_type", KEY, orjson.dumps(payload(customer_id=4711)), "schema_violation"),
    ("ts_missing", KEY, orjson.dumps({k: v for k, v in payload(email=PLANTED).items() if k != "ts"}),
     "invalid_ts"),
    ("ts_bool", KEY, orjson.dumps(payload(ts=True)), "invalid_ts"),
    ("ts_naive", KEY, orjson.dumps(payload(ts="2026-11-19T08:00:00")), "invalid_ts"),
    ("ts_garbage", KEY, orjson.dumps(payload(ts=PLANTED)), "invalid_ts"),
    ("ts_fraction", KEY, orjson.dumps(payload(ts=NOW + 0.5)), "invalid_ts"),
    ("ts_bad_date", KEY, orjson.dumps(payload(ts="2026-02-30T08:00:00Z")), "invalid_ts"),
    ("ts_year_zero", KEY, orjson.dumps(payload(ts="0000-01-01T00:00:00Z")), "invalid_ts"),
    ("ts_object", KEY, orjson.dumps(payload(ts={"ms": NOW})), "invalid_ts"),
    ("ts_future", KEY, orjson.dumps(payload(ts=NOW + 3_600_000, email=PLANTED)), "ts_in_future"),
    ("ts_huge", KEY, b'{"event_id":"e","type":"purchase","amount":1,"ts":' + b"9" * 40 + b"}",
     "ts_in_future"),
    ("ts_old", KEY, orjson.dumps(payload(ts=NOW - 40 * 86_400_000, email=PLANTED)), "ts_too_old"),
    ("no_key", None, orjson.dumps(payload(email=PLANTED)), "missing_identifier"),
    ("empty_key", b"", orjson.dumps(payload(email=PLANTED, customer_id="")), "missing_identifier"),
    ("bad_key", b"\xff" + PLANTED.encode(), orjson.dumps(payload(email=PLANTED)), "missing_identifier"),
    ("placeholder_key", b"undefined", orjson.dumps(payload(email=PLANTED)), "invalid_identifier"),
    ("placeholder_both", b"null", orjson.dumps(payload(customer_id="NULL")), "invalid_identifier"),
    ("placeholder_no_key", None, orjson.dumps(payload(customer_id="null")), "missing_identifier"),
    ("huge_key", PLANTED.encode() * 20, orjson.dumps(payload()), "invalid_identifier"),
    ("huge_customer_id", KEY, orjson.dumps(payload(customer_id=PLANTED * 20)), "invalid_identifier"),
    ("blank_event_id", KEY, orjson.dumps(payload(event_id="   ")), "missing_event_id"),
    ("control_event_id", KEY, orjson.dumps(payload(event_id="\x00e1")), "missing_event_id"),
]


def test_bad_cases_cover_every_reason():
    # internal_error never happens for any input; unknown_command belongs to the control topic;
    # processing_error comes from the shards (tests/test_poison.py).
    assert {reason for *_, reason in BAD} == set(REASONS) - {"internal_error", "unknown_command", "processing_error"}


@pytest.mark.parametrize(("key", "value", "reason"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_dead_letter_reason(key, value, reason):
    result = parse(value, key=key)
    assert isinstance(result, DeadLetter)
    assert result.reason == reason, result.message
    assert result.key == key and result.value == value
    assert result.headers == tuple(HEADERS)
    assert result.source == SRC
    assert result.message
    for planted in (PLANTED, "17.25", "EURO", "2026-11-19T08:00:00", KEY.decode()):
        assert planted not in result.message


def test_schema_violation_names_the_field():
    result = parse(payload(amount=-17.25))
    assert isinstance(result, DeadLetter)
    assert "data.amount" in result.message and "-17.25" not in result.message
    result = parse({k: v for k, v in payload("add_to_cart").items() if k != "sku"})
    assert isinstance(result, DeadLetter) and "sku" in result.message


def test_seconds_instead_of_ms_gets_a_hint():
    result = parse(payload(ts=NOW // 1000 - 60))
    assert isinstance(result, DeadLetter) and result.reason == "ts_too_old"
    assert "seconds" in result.message
    result = parse(payload(ts=NOW - 40 * 86_400_000))
    assert isinstance(result, DeadLetter) and "seconds" not in result.message


def test_too_large_is_checked_first():
    result = parse(b"\xff" * (CFG.max_message_bytes + 1))
    assert isinstance(result, DeadLetter) and result.reason == "too_large"


def test_headers_none_and_malformed_headers():
    result = parse(b"", headers=None)
    assert isinstance(result, DeadLetter) and result.headers == ()
    result = parse(b"", headers=[("only-one",)])
    assert isinstance(result, DeadLetter) and result.reason == "empty_value"


def test_dead_letter_headers():
    result = parse(payload(amount=-1))
    assert isinstance(result, DeadLetter)
    headers = dead_letter_headers(result)
    assert headers[: len(HEADERS)] == HEADERS
    assert headers[len(HEADERS):] == [
        ("__connect.errors.topic", b"nextclick.web"),
        ("__connect.errors.partition", b"7"),
        ("__connect.errors.offset", b"123456"),
        ("__connect.errors.exception.class.name", b"nextclick.parse.SchemaViolation"),
        ("__connect.errors.exception.message", result.message.encode()),
        ("nextclick.errors.reason", b"schema_violation"),
    ]
    assert sum(name.startswith("__connect.errors.") for name, _ in headers) == 5


def test_a_producer_cannot_forge_a_dead_letters_error_headers():
    """A message carrying its own `__connect.errors.*` or `nextclick.errors.*` headers (an outside probe:
    a forged topic, offset, reason and truncation mark, read first by a reader taking the first header
    of a name): those are not copied; its other headers are, in order."""
    forged = [("__connect.errors.topic", b"other.topic"), ("traceparent", b"00-abc-01"),
              ("nextclick.errors.reason", b"ts_in_future"), ("nextclick.errors.truncated", b"1"),
              ("x-app", b"shop"), ("NEXTCLICK.ERRORS.REASON", b"forged"), ("__Connect.Errors.Topic", b"forged"),
              (" nextclick.errors.step", b"forged")]
    result = parse(payload(amount=-1), headers=forged)
    assert isinstance(result, DeadLetter)
    headers = dead_letter_headers(result)
    assert headers[:2] == [("traceparent", b"00-abc-01"), ("x-app", b"shop")]
    assert dict(headers)["__connect.errors.topic"] == b"nextclick.web"
    assert [n for n, _ in headers].count("__connect.errors.topic") == 1
    assert [v for n, v in headers if n == "nextclick.errors.reason"] == [b"schema_violation"]
    assert "nextclick.errors.truncated" not in dict(headers)
    assert b"forged" not in [v for _, v in headers]  # nor in another letter case, or with a blank before it


def test_reason_class_names_are_unique_and_stable():
    assert len(set(REASONS.values())) == len(REASONS)
    assert REASONS["invalid_json"] == "nextclick.parse.InvalidJson"
    assert all(name.startswith(("nextclick.parse.", "nextclick.control.", "nextclick.processing."))
               for name in REASONS.values())


# --- the schema files -------------------------------------------------------------------------------

PURCHASE_ATTRS = ["order_id", "amount", "currency", "items", "category"]
CONTRACT_ATTRS = {
    "page_view": ["page_type", "category", "product_id"],
    "add_to_cart": ["sku", "amount", "quantity", "category", "channel"],
    "purchase": PURCHASE_ATTRS, "app_purchase": PURCHASE_ATTRS, "store_purchase": PURCHASE_ATTRS,
    "email_open": ["campaign_id"], "email_click": ["campaign_id", "link_category"],
    "app_open": ["app_version"], "call_center_contact": ["topic", "outcome"],
    "consent": ["channel", "purpose", "granted"], "complaint": ["topic", "severity"],
    "login": ["method"], "identify": ["source"],
}


def test_schema_files_are_valid_2020_12_and_agree_with_the_compiled_validators():
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources = []
    for path in sorted((p for p in SCHEMA_DIR.iterdir() if p.name.endswith(".json")), key=lambda p: p.name):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry().with_resources(resources)
    for event_type in VALID:
        schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
        assert schema[ATTRS_KEYWORD] == CONTRACT_ATTRS[event_type]
        validator = Draft202012Validator(schema, registry=registry)
        merged = load_schema(event_type)
        Draft202012Validator.check_schema(merged)
        for body, ok in [(payload(event_type, **PII), True), (payload(event_type, email=5), False),
                         (payload(event_type, event_id=""), False)]:
            assert validator.is_valid(body) is ok
            assert Draft202012Validator(merged).is_valid(body) is ok


# --- properties -------------------------------------------------------------------------------------

def _attr_strategy(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    kind = prop["type"]
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=prop.get("minimum", -(2**63)), max_value=prop.get("maximum", 2**63 - 1))
    if kind == "number":
        low, high = prop.get("minimum", -1e300), prop.get("maximum", 1e300)
        return st.integers(min_value=int(low), max_value=int(min(high, 2**53))) | st.floats(
            min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    if "pattern" in prop:
        return st.text(alphabet=string.ascii_letters, min_size=3, max_size=3)
    return st.text(max_size=prop.get("maxLength", 128))


KNOWN_FIELDS = {name for spec in SPECS.values() for name in load_schema(spec.type)["properties"]}


# Event ids that tell events apart: not blank, no control characters (test_dead_letter_reason has those).
EVENT_IDS = st.text(min_size=1, max_size=128).filter(
    lambda e: not e.isspace() and not any(ord(c) < 32 or ord(c) == 127 for c in e))


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], int]:
    event_type = draw(st.sampled_from(sorted(EVENT_CHANNELS)))
    schema = load_schema(event_type)
    required = set(schema["required"])
    attrs: dict[str, Any] = {}
    for name in schema[ATTRS_KEYWORD]:
        if name in required or draw(st.booleans()):
            attrs[name] = draw(_attr_strategy(schema["properties"][name]))
    ts_ms = draw(st.integers(min_value=NOW - CFG.max_age_ms, max_value=NOW + CFG.max_future_skew_ms))
    if draw(st.booleans()):
        ts: Any = ts_ms
    else:
        offset = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
        local = datetime.fromtimestamp(ts_ms / 1000, timezone(timedelta(minutes=offset)))
        local = local.replace(microsecond=(ts_ms % 1000) * 1000)
        ts = local.isoformat(timespec="milliseconds")
    body = {"event_id": draw(EVENT_IDS), "type": event_type, "ts": ts, **attrs}
    extras = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in KNOWN_FIELDS),
                                  st.none() | INT64 | st.text(max_size=10), max_size=3))
    body.update(extras)
    body.update(draw(st.dictionaries(st.sampled_from(sorted(PII)), st.text(max_size=20), max_size=3)))
    expected = dict(attrs)
    if event_type == "consent":
        expected.setdefault("purpose", "marketing")
    return body, expected, ts_ms


def _check_result(result: object) -> None:
    assert isinstance(result, (Event, DeadLetter))
    if isinstance(result, DeadLetter):
        assert result.reason in REASONS and result.reason != "internal_error", result.message


@settings(max_examples=200, deadline=None)
@given(key=st.none() | st.binary(max_size=20), value=st.none() | st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(key, value):
    _check_result(parse(value, key=key))


# Keys that name someone: not blank, and not a placeholder the identity rules block (test_a_placeholder_names_nobody).
NON_BLANK_KEYS = st.text(min_size=1, max_size=16).filter(
    lambda k: not k.isspace() and not any(default_identity_rules().blocked(t, k) for t in ID_TYPES))


@settings(max_examples=200, deadline=None)
@given(event=valid_events(), raw_key=NON_BLANK_KEYS)
def test_valid_events_round_trip(event, raw_key):
    body, expected, ts_ms = event
    result = parse(body, key=raw_key.encode())
    assert isinstance(result, Event), result
    assert result.customer == pseudonymize(DEFAULT_ID_TYPE[result.channel], raw_key, SECRET)
    assert result.event_id == body["event_id"]
    assert result.type == body["type"]
    assert result.ts == ts_ms
    assert result.attrs == expected


INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson.dumps can write
JSON_VALUES = st.recursive(st.none() | st.booleans() | INT64 | st.text(max_size=8)
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    body, _, _ = draw(valid_events())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(st.sampled_from(["drop", "retype", "garbage", "stringify"]))
        fields = sorted(body, key=str)
        if op == "drop" and fields:
            body.pop(draw(st.sampled_from(fields)))
        elif op == "retype" and fields:
            body[draw(st.sampled_from(fields))] = draw(JSON_VALUES)
        elif op == "garbage":
            body[draw(st.text(max_size=12))] = draw(JSON_VALUES)
        elif op == "stringify":
            numeric = [k for k in fields
                       if isinstance(body[k], (int, float)) and not isinstance(body[k], bool)]
            if numeric:
                name = draw(st.sampled_from(numeric))
                body[name] = str(body[name])
    raw = orjson.dumps(body)
    byte_op = draw(st.sampled_from(["none", "truncate", "inject"]))
    if byte_op == "truncate":
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    elif byte_op == "inject":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\ud800"]))
        raw = raw[:at] + junk + raw[at:]
    return raw


@settings(max_examples=200, deadline=None)
@given(value=mutated_messages(), key=st.none() | st.binary(max_size=12))
def test_near_valid_messages_never_raise(value, key):
    _check_result(parse(value, key=key))


def test_pathological_inputs_never_raise():
    for value in [b"[" * 5000, b'{"a":' * 2000, b"9" * 10_000, b'{"type":"purchase","ts":1e308}',
                  b'{"type":{"x":1}}', b'{"type":"consent","event_id":"e","ts":"9999-12-31T23:59:60+23:59"}',
                  bytearray(b'{"type": "page_view"}'), memoryview(b"{}")]:
        _check_result(parse(value))


# --- the fast path and the slow path agree ----------------------------------------------------------

CONFIGS = [CFG, ParseConfig(max_age_ms=0), ParseConfig(max_amount=250.5)]


def _event_view(event: Event) -> tuple[Any, ...]:
    """Everything an Event carries, with exact types: 2 and 2.0, or 0.0 and -0.0, differ here."""
    return (event.event_id, event.type, type(event.ts), event.ts, event.customer, event.channel,
            [(k, type(v).__name__, repr(v)) for k, v in event.attrs.items()], event.source, event.raw)


def _dead_letter_view(dl: DeadLetter) -> tuple[Any, ...]:
    return (dl.reason, dl.message, dl.measured, dl.key, dl.value, dl.headers, dl.source)


def assert_paths_agree(value: Any, key: bytes | None = KEY, headers: Any = HEADERS,
                       config: ParseConfig = CFG, now: int = NOW) -> Event | DeadLetter:
    """The fast path accepts only what the slow path accepts, as the same Event; parse_message is
    the slow path's result in every case. Returns that result."""
    slow = parse_message_slow(key, value, headers, SRC, secret=SECRET, now_ms=now, config=config)
    fast = _parse_fast(key, value, headers, SRC, SECRET, now, config)  # raises on a fast-path bug
    full = parse_message(key, value, headers, SRC, secret=SECRET, now_ms=now, config=config)
    if fast is not None:
        assert isinstance(slow, Event), (value, slow)
        assert _event_view(fast) == _event_view(slow)
        assert fast == slow
    if isinstance(slow, Event):
        assert isinstance(full, Event) and _event_view(full) == _event_view(slow)
    else:
        assert isinstance(full, DeadLetter) and _dead_letter_view(full) == _dead_letter_view(slow)
    return slow


@settings(max_examples=300, deadline=None)
@given(event=valid_events(), raw_key=NON_BLANK_KEYS, config=st.sampled_from(CONFIGS),
       indent=st.booleans())
def test_fast_path_takes_every_valid_event_and_builds_the_slow_paths_event(event, raw_key, config, indent):
    body, _, _ = event
    value = orjson.dumps(body, option=orjson.OPT_INDENT_2 if indent else 0)
    result = assert_paths_agree(value, key=raw_key.encode(), config=config)
    if isinstance(result, Event):  # (an amount above max_amount is refused by both)
        assert _parse_fast(raw_key.encode(), value, HEADERS, SRC, SECRET, NOW, config) is not None


@settings(max_examples=300, deadline=None)
@given(value=mutated_messages(), key=st.none() | st.binary(max_size=12), config=st.sampled_from(CONFIGS))
def test_paths_agree_on_near_valid_messages(value, key, config):
    assert_paths_agree(value, key=key, config=config)


@settings(max_examples=200, deadline=None)
@given(key=st.none() | st.binary(max_size=20), value=st.none() | st.binary(max_size=300))
def test_paths_agree_on_arbitrary_bytes(key, value):
    assert_paths_agree(value, key=key)


# Raw JSON the fast path's decoder reads differently from orjson, or only skims (in fields no schema
# names): number ranges, UTF-8, escapes, nesting, duplicates, integral floats.
HOSTILE_VALUES = [
    b"1e400", b"-1e400", b"1" * 400, b"1e-400", b"9223372036854775807", b"9223372036854775808",
    b"18446744073709551616", b"-9223372036854775809", b"2.0", b"1E2", b"-0", b"-0.0", b"1.5",
    b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\x80"', b'"\xf4\x90\x80\x80"', b'"\xf0\x90\x80\x80"',
    b'"caf\xc3\xa9"', b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\udc00"', b'"\\u003a"', b'"\\u003A:"',
    b'"a:b"', b'"\\\\u003a"', b'"\x01"', b'"\\u0000"', b'" "', b'"\\t"', b'"\\u3000"', b"NaN", b"tru",
    b"null", b"true", b"{}", b"[]", b'{"a":1,"a":2}', b'[{"k":1},{"k":1,"k":1}]', b'{"a":{"b":[{"c":":"}]}}',
    b"[" * 600 + b"]" * 600, b"[" * 1100 + b"]" * 1100, b'"EUR"', b'"EURO"', b'"eur\\n"', b'"email"',
    b'"page_view"', b'"2026-11-18T11:05:40Z"', b'"2026-11-18T11:05:40\\u003a00Z"', b"1795000000000",
    b"250", b"250.5", b"250.6", b"251", b"1000000000", b"1000000001", b"0", b"-1",
]
HOSTILE_KEYS = [
    b'"x"', b'"x:y"', b'"type"', b'"\\u0074ype"', b'"event_id"', b'"ts"', b'"amount"', b'"quantity"',
    b'"items"', b'"currency"', b'"customer_id"', b'"id_type"', b'"email"', b'"purpose"', b'"granted"',
    b'"\xff"', b'"\\ud800"', b'""',
]


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    body, _, _ = draw(valid_events())
    raw = orjson.dumps(body)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        member = draw(st.sampled_from(HOSTILE_KEYS)) + draw(st.sampled_from([b":", b" : ", b":\n"])) \
            + draw(st.sampled_from(HOSTILE_VALUES))
        if draw(st.booleans()):
            raw = raw[:-1] + b"," + member + b"}"
        else:
            raw = b"{" + member + b"," + raw[1:]
    return raw


@settings(max_examples=600, deadline=None)
@given(value=hostile_messages(), key=st.sampled_from([KEY, b"", b" ", None]), config=st.sampled_from(CONFIGS))
def test_paths_agree_on_hostile_json(value, key, config):
    assert_paths_agree(value, key=key, config=config)


@pytest.mark.parametrize(("name", "case_key", "value", "reason"), BAD, ids=[c[0] for c in BAD])
def test_paths_agree_on_every_dead_letter_case(name, case_key, value, reason):
    assert assert_paths_agree(value, key=case_key).reason == reason  # type: ignore[union-attr]


def test_paths_agree_on_edge_cases():
    edge: list[tuple[bytes, bytes | None]] = [
        (orjson.dumps(payload("add_to_cart", quantity=2.0)), KEY),  # integral float: slow path's job
        (orjson.dumps(payload(amount=250.5)), KEY),
        (orjson.dumps(payload("consent", purpose="analytics")), KEY),
        (orjson.dumps(payload(ts="2026-11-18T11:05:40.5+00:00", note="a:b")), KEY),
        (orjson.dumps(payload(customer_id="C:1")), None),
        (b'{"type":"page_view","event_id":"e","ts":1794999990000,"page_type":"\\u003a","x":1}', KEY),
        (b'{"type":"page_view","event_id":"e","ts":"2026-11-18T11:05:40\\u003a00Z","x":1}', KEY),
        (orjson.dumps(payload(ts=NOW + CFG.max_future_skew_ms)), KEY),
        (orjson.dumps(payload(ts=NOW - CFG.max_age_ms)), KEY),
        (orjson.dumps(payload(ts=NOW - CFG.max_age_ms - 1)), KEY),
        # integers orjson reads as floats (beyond int64 / uint64): the fast path leaves them alone
        (b'{"type":"page_view","event_id":"e","ts":-9223372036854775809}', KEY),
        (b'{"type":"page_view","event_id":"e","ts":-18446744073709551617}', KEY),
        (b'{"type":"purchase","event_id":"e","ts":1794999990000,"amount":100000000000000000000}', KEY),
        (b'{"type":"purchase","event_id":"e","ts":1794999990000,"amount":9223372036854775808}', KEY),
    ]
    for value, key in edge:
        for config in [*CONFIGS, ParseConfig(max_age_ms=0, max_amount=1e30)]:
            assert_paths_agree(value, key=key, config=config)
    assert _parse_fast(KEY, orjson.dumps(payload("add_to_cart", quantity=2.0)), None, SRC, SECRET, NOW,
                       CFG) is None
    assert expect_event(payload("add_to_cart", quantity=2.0)).attrs["quantity"] == 2


def test_fast_path_events_are_real_events():
    value = orjson.dumps(payload("consent", channel="email", granted=True))
    event = _parse_fast(KEY, value, HEADERS, SRC, SECRET, NOW, CFG)
    assert isinstance(event, Event) and event.attrs["purpose"] == "marketing"
    assert event.raw == (KEY, value, tuple(HEADERS))
    with pytest.raises(AttributeError):
        event.ts = 0  # type: ignore[misc]
    assert "raw=" not in repr(event) and event == Event(**{n: getattr(event, n) for n in Event.__struct_fields__})


def test_max_amount_bounds_both_paths():
    tight = ParseConfig(max_amount=100.0)
    assert isinstance(_parse_fast(KEY, orjson.dumps(payload(amount=100)), None, SRC, SECRET, NOW, tight), Event)
    for amount in (100.01, 101, 1e9):
        result = assert_paths_agree(orjson.dumps(payload(amount=amount)), config=tight)
        assert isinstance(result, DeadLetter) and result.reason == "schema_violation"
    assert isinstance(assert_paths_agree(orjson.dumps(payload(amount=1e9))), Event)


def test_the_fast_structs_mirror_the_schemas():
    import msgspec

    for event_type, spec in SPECS.items():
        schema = load_schema(event_type)
        fields = {f.encode_name: f for f in msgspec.structs.fields(spec.struct)}
        assert set(fields) == set(schema["properties"]) - {"type"}
        assert {n for n, f in fields.items() if f.required} == set(schema["required"]) - {"type"}
        assert spec.struct.__struct_config__.tag == event_type


def test_a_pattern_dollar_means_end_of_string_as_in_the_slow_path():
    import fastjsonschema
    import msgspec

    prop = {"type": "string", "pattern": "^[a-z]{2}$"}
    fast = _fast_type("x.json: property 'p'", prop)
    slow = fastjsonschema.compile(prop)
    assert msgspec.convert("ab", fast) == slow("ab") == "ab"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert("ab\n", fast)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        slow("ab\n")


@pytest.mark.parametrize("prop", [{"type": "string", "format": "email"}, {"type": "object"},
                                  {"type": "number", "exclusiveMinimum": 0}, {"enum": [1, "a"]},
                                  {"description": "no type"}, {"type": "string", "default": ["x"]}])
def test_a_schema_keyword_the_fast_path_cannot_honour_stops_the_import(prop):
    with pytest.raises(ValueError, match="x.json"):
        _fast_type("x.json: property 'p'", prop)


# --- duplicated keys ---------------------------------------------------------------------------------

def _reason_and_message(value: bytes, key: bytes | None = KEY) -> tuple[str, str]:
    result = assert_paths_agree(value, key=key)
    assert isinstance(result, DeadLetter), value
    return result.reason, result.message


def test_a_duplicated_type_is_invalid_json_naming_the_key_not_the_values():
    for value in [b'{"type":"teleport","type":"page_view","event_id":"e","ts":1794999990000}',
                  b'{"type":"page_view","event_id":"e","ts":1794999990000,"type":"page_view"}',
                  b'{"type":"page_view","event_id":"e","ts":1794999990000,"\\u0074ype":"page_view"}']:
        reason, message = _reason_and_message(value)
        assert reason == "invalid_json"
        assert message == ("message value has key 'type' more than once in the top-level object "
                           "(a duplicated key is ambiguous JSON)")
        assert "teleport" not in message and "page_view" not in message


def test_duplicates_are_refused_at_any_depth_and_unknown_key_names_are_withheld():
    base = orjson.dumps(payload())[:-1]
    reason, message = _reason_and_message(base + b',"extra":{"a":1,"b":[{"z":1,"' + PLANTED.encode()
                                          + b'":2,"' + PLANTED.encode() + b'":3}]}}')
    assert reason == "invalid_json" and PLANTED not in message
    assert "a key that is not a schema field more than once in an object nested 3 level(s) deep" in message
    reason, message = _reason_and_message(base + b',"' + PLANTED.encode() + b'":1,"' + PLANTED.encode() + b'":1}')
    assert reason == "invalid_json" and PLANTED not in message and "top-level" in message
    assert _reason_and_message(b'[{"a":1,"a":1}]')[0] == "invalid_json"  # before not_an_object
    # the same key in two different objects is no duplicate
    assert isinstance(assert_paths_agree(base + b',"x":{"amount":1},"y":[{"amount":2},{"amount":3}]}'), Event)


def test_escaped_colons_do_not_hide_a_duplicate():
    # Each `\u003a` decodes to a colon the text does not have, which could balance a duplicate's
    # extra key in the colon count; texts with such an escape are always scanned.
    value = (b'{"type":"page_view","event_id":"e","ts":1794999990000,"page_type":"\\u003a",'
             b'"category":"x","category":"y"}')
    assert _reason_and_message(value)[0] == "invalid_json"
    value = (b'{"type":"page_view","event_id":"e","ts":"2026-11-18T11\\u003a05:40Z",'
             b'"category":"x","category":"y"}')
    assert _reason_and_message(value)[0] == "invalid_json"
    assert isinstance(assert_paths_agree(value.replace(b',"category":"y"', b"")), Event)


@st.composite
def json_with_known_duplicates(draw: st.DrawFn, depth: int = 0) -> tuple[str, bool]:
    """(JSON text, whether some object in it has a key twice), written by hand so keys can repeat."""
    keys = st.sampled_from(["a", "b", "a:b", ":", "\\u0061", "\\u003a", "\\\"", "k\\u003ab"])
    scalars = st.sampled_from(['1', '"x"', '":"', '"\\u003a"', '"a:b:c"', 'null', '"\\\\u003a"', '2.5'])
    if depth >= 3 or draw(st.booleans()):
        return draw(scalars), False
    if draw(st.booleans()):
        items = [draw(json_with_known_duplicates(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        return "[" + ",".join(t for t, _ in items) + "]", any(d for _, d in items)
    members = [(draw(keys), draw(json_with_known_duplicates(depth + 1))) for _ in range(draw(st.integers(0, 4)))]
    decoded = [json.loads(f'"{k}"') for k, _ in members]
    dup = len(set(decoded)) != len(decoded) or any(d for _, (_, d) in members)
    sep = draw(st.sampled_from([":", " : "]))
    return "{" + ",".join(f'"{k}"{sep}{t}' for k, (t, _) in members) + "}", dup


@settings(max_examples=500, deadline=None)
@given(case=json_with_known_duplicates())
def test_duplicate_key_finds_exactly_the_texts_with_a_duplicate(case):
    text, has_duplicate = case
    raw = text.encode()
    assert (duplicate_key(raw, orjson.loads(raw)) is not None) is has_duplicate, text


# --- blank identifiers -------------------------------------------------------------------------------

@pytest.mark.parametrize("blank", [" ", "   ", "\t", "\n", " \r\n ", "\u3000", "\u00a0"])
def test_a_blank_customer_id_names_nobody(blank):
    # With a usable Kafka key the key is the identifier, as with an empty customer_id ...
    event = assert_paths_agree(orjson.dumps(payload(customer_id=blank)))
    assert isinstance(event, Event) and event.customer == pseudonymize("cookie", KEY.decode(), SECRET)
    # ... and without one the event names nobody.
    for key in (None, b"", blank.encode()):
        result = assert_paths_agree(orjson.dumps(payload(customer_id=blank)), key=key)
        assert isinstance(result, DeadLetter) and result.reason == "missing_identifier"
        assert result.message == ("no identifier: neither a non-blank 'customer_id' in the payload nor "
                                  "a non-blank UTF-8 Kafka key")


@pytest.mark.parametrize("placeholder", [
    "null", "NULL ", "undefined", "0", "00000000-0000-0000-0000-000000000000",
    # found by an outside probe: 8 cookies' purchases with customer_id "NaN" made one customer of 8 orders
    "NaN", "(null)", '"null"', "#N/A", "false", "${customer_id}", "{{customer_id}}", "\u200bnull", "ｎｕｌｌ",
    # and by the next one: only invisible characters, other template styles, typographic quotes
    "\u200b", "\u2060", "{customer_id}", "<customer_id>", "#{customer_id}", "%{customer_id}", "<%= customer_id %>",
    "$customer_id", "__CUSTOMER_ID__", "\u201cnull\u201d",
    # and by its recheck: more template styles, blank letters and marks, quotes twice or unpaired
    "%s", "%(customer_id)s", "*|CUSTOMER_ID|*", "[customer_id]", "{ customer_id }", "{customer.id}",
    "%%customer_id%%", "\u3164", "\u2800", "\u034f", "\U000e0020", "\u201dnull\u201d", '"\u201cnull\u201d"',
    # and by a consumer probe: ASCII control characters only (a C string's NUL keyed everyone on one profile)
    "\x00", "\x00\x00", "\x01", "\x7f", "\x1b\x00", "null\x00"])
def test_a_placeholder_names_nobody(placeholder):
    """A hard-coded placeholder must not gather everyone who carries it on one profile: as a customer id
    it is passed over for the key (counted as a refused link), and as the key it is dead-lettered."""
    event = assert_paths_agree(orjson.dumps(payload(customer_id=placeholder)))
    assert isinstance(event, Event) and event.customer == pseudonymize("cookie", KEY.decode(), SECRET)
    assert event.blocked == ("customer",) and event.links == ()
    result = assert_paths_agree(orjson.dumps(payload()), key=placeholder.encode())
    assert isinstance(result, DeadLetter) and result.reason == "invalid_identifier"
    assert placeholder.strip() not in result.message.replace("'null'", "").replace("'undefined'", "")
    login = assert_paths_agree(orjson.dumps(payload("login", customer_id=placeholder, email="ana@example.com")))
    assert isinstance(login, Event) and login.customer == pseudonymize("cookie", KEY.decode(), SECRET)
    assert login.links == (("email", pseudonymize("email", "ana@example.com", SECRET)),)


def test_identifiers_are_used_as_sent_otherwise():
    event = assert_paths_agree(orjson.dumps(payload(customer_id=" CUST-1 ")))
    assert isinstance(event, Event) and event.customer == pseudonymize("customer", " CUST-1 ", SECRET)
    event = assert_paths_agree(orjson.dumps(payload()), key=b" ck-1")
    assert isinstance(event, Event) and event.customer == pseudonymize("cookie", " ck-1", SECRET)


# --- dead-letter messages do not depend on the clock -------------------------------------------------

@pytest.mark.parametrize(("ts", "reason"), [(NOW + 3_600_000, "ts_in_future"), (NOW - 40 * 86_400_000, "ts_too_old"),
                                            (NOW // 1000 - 60, "ts_too_old")])
def test_a_replayed_dead_letter_has_the_same_message(ts, reason):
    value = orjson.dumps(payload(ts=ts))
    read: list[DeadLetter] = []
    for now in (NOW, NOW + 1, NOW + 7 * 60_000):
        result = assert_paths_agree(value, now=now)
        assert isinstance(result, DeadLetter) and result.reason == reason
        assert result.measured == ((TS_SKEW_HEADER, str(ts - now)),)
        read.append(result)
    messages = {dict(dead_letter_headers(dl))["__connect.errors.exception.message"] for dl in read}
    assert len(messages) == 1, messages
    assert {dict(dead_letter_headers(dl))[TS_SKEW_HEADER] for dl in read} == {
        str(ts - now).encode() for now in (NOW, NOW + 1, NOW + 7 * 60_000)}


def test_the_ts_messages_state_the_rule():
    future = parse(payload(ts=NOW + 3_600_000))
    assert isinstance(future, DeadLetter)
    assert future.message == ("field 'ts' is ahead of the clock by more than the limit of 300000 ms "
                              "(parse.max_future_skew_ms)")
    old = parse(payload(ts=NOW // 1000))
    assert isinstance(old, DeadLetter)
    assert old.message == ("field 'ts' is older than the limit of 2592000000 ms (parse.max_age_ms) "
                           "(was it seconds? a 10-digit ts reads as epoch seconds)")
    headers = dead_letter_headers(old)
    assert headers[-1] == (TS_SKEW_HEADER, str(NOW // 1000 - NOW).encode())
    assert [name for name, _ in headers].count(TS_SKEW_HEADER) == 1
    assert TS_SKEW_HEADER not in dict(dead_letter_headers(parse(payload(amount=-1))))  # type: ignore[arg-type]


# --- the benchmark harness runs ----------------------------------------------------------------------

def test_bench_parse_smoke(capsys):
    from bench.parse import main

    main(["--events", "300", "--customers", "30", "--rounds", "1", "--batch", "100"])
    out = capsys.readouterr().out
    assert "slow / fast" in out and "x ref" in out


@pytest.mark.parametrize("path", [parse_message, parse_message_slow])
def test_a_consent_for_a_purpose_no_rule_reads_is_dead_lettered_by_both_paths(path: Any) -> None:
    """A withdrawal written "Marketing" would revoke nothing, and the customer would keep receiving what
    they refused: with the rules' purposes given, it is a schema violation naming them."""
    purposes = frozenset({"marketing", "service"})

    def consent(**fields: Any) -> Event | DeadLetter:
        body = orjson.dumps(payload("consent", channel="email", granted=False, **fields))
        return path(KEY, body, HEADERS, SRC, secret=SECRET, now_ms=NOW, config=CFG, consent_purposes=purposes)

    refused = consent(purpose="Marketing")
    assert isinstance(refused, DeadLetter) and refused.reason == "schema_violation"
    assert refused.message == ("consent: data.purpose is not one of the consent purposes ['marketing', 'service'] "
                               "(the rules file's [consent] purposes; compared exactly, in lower case): it would "
                               "grant or revoke nothing")
    # The message names the field, never its value: a producer's free text may be an email address.
    leaked = consent(purpose="jane.doe@example.com")
    assert isinstance(leaked, DeadLetter) and "jane.doe" not in leaked.message
    assert refused.value == orjson.dumps(payload("consent", channel="email", granted=False, purpose="Marketing"))
    assert isinstance(consent(purpose="service"), Event)
    assert isinstance(consent(), Event)  # no purpose: marketing


@pytest.mark.parametrize(("body", "message"), [({"event_id": "e"}, "field 'type' is missing"),
                                               ({"type": None}, "field 'type' is null"),
                                               ({"type": ""}, "field 'type' is empty")])
def test_a_missing_type_says_whether_it_was_absent_null_or_empty(body: dict[str, object], message: str) -> None:
    result = parse(orjson.dumps({"ts": NOW, **body}))
    assert isinstance(result, DeadLetter) and (result.reason, result.message) == ("missing_type", message)


@pytest.mark.parametrize(("field", "value"), [
    ("category", "jane.doe@example.com"), ("category", "gifts for JANE@EXAMPLE.CO.UK"),
    ("order_id", "o-1?ref=a.b+c@mail.example.org")])
def test_an_email_address_inside_a_kept_attribute_is_dead_lettered_not_stored(field: str, value: str) -> None:
    """A consumer probe: `category = "jane.doe@example.com"` went into state, and into decisions that
    carry the trigger's attributes, as sent. Personal data never enters them: the event is refused, and
    the message names the field, not the value."""
    result = assert_paths_agree(orjson.dumps(payload(**{field: value})))
    assert isinstance(result, DeadLetter) and result.reason == "schema_violation"
    assert result.message == (f"purchase: field '{field}' holds an email address: kept attributes go into profiles "
                              "and decisions as sent, and personal data never does (an identifier goes in its own "
                              "field, where it is pseudonymized)")
    assert value not in result.message
    for fine in ("spring@2026", "a@b", "bags & shoes"):  # an at sign alone is no address
        assert isinstance(assert_paths_agree(orjson.dumps(payload(**{field: fine}))), Event)
    # The at sign escaped in the JSON (a recheck probe: the fast path let it through, the slow one did not).
    escaped = orjson.dumps(payload(**{field: value})).replace(b"@", b"\\u0040")
    assert b"@" not in escaped
    result = assert_paths_agree(escaped)
    assert isinstance(result, DeadLetter) and result.reason == "schema_violation"


@pytest.mark.parametrize("value", [
    "jane.doe%40example.com", "?ref=jane%40EXAMPLE.com&x=1", "jane.doe\uff20example.com", "jane\ufe6bexample.org",
    "jane&#64;example.com", "jane&#x40;example.com", "jane&commat;example.com", "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"])
def test_an_email_address_written_with_an_encoded_at_sign_is_dead_lettered_too(value: str) -> None:
    """The outside probe's note: percent-encoded or full-width at signs passed the check; whoever decodes
    the attribute further down (a URL's query, an HTML template, NFKC) reads an address."""
    for body in (orjson.dumps(payload(category=value)),
                 orjson.dumps(payload(category=value)).replace(b"%", b"\\u0025").replace(b"&", b"\\u0026")):
        result = assert_paths_agree(body)
        assert isinstance(result, DeadLetter) and result.reason == "schema_violation", (value, body)
        assert value not in result.message
    for fine in ("50%40off", "100%", "&#169; 2026", "a\uff20b", "tom &amp; jerry"):
        assert isinstance(assert_paths_agree(orjson.dumps(payload(category=fine))), Event), fine


@pytest.mark.parametrize(("event_id", "kind"), [
    ("jane.a1@example.com", "an email address"), ("jane.a1%40example.com", "an email address"),
    ("+4915112345678", "a phone number"), ("+49 151 1234-5678", "a phone number"),
    ("+1 (415) 555-0100", "a phone number")])
def test_an_event_id_that_holds_personal_data_is_dead_lettered(event_id: str, kind: str) -> None:
    """An outside probe: `event_id = "jane.a1@example.com"` went into a decision's trigger.id and the
    dedupe keys in RocksDB as sent. Both paths refuse it, naming the field and never the value."""
    for body in (orjson.dumps(payload(event_id=event_id)),
                 orjson.dumps(payload(event_id=event_id)).replace(b"+", b"\\u002b")):
        result = assert_paths_agree(body)
        assert isinstance(result, DeadLetter) and result.reason == "schema_violation", (event_id, result)
        assert result.message.startswith(f"purchase: field 'event_id' holds {kind}: ")
        assert event_id not in result.message
    for fine in ("evt-1", "+1", "+12", "2026-12-07+01:00", "order+4915112345678", "a@b", "+49abc"):
        assert isinstance(assert_paths_agree(orjson.dumps(payload(event_id=fine))), Event), fine


@pytest.mark.parametrize("value", ["jane@exämple.com", "+4915112345678", "+44 20 7946 0958",
                                   # a recheck probe's variants, each passed before
                                   "jane.doe%2540example.com", "jane.doe%EF%BC%A0example.com",
                                   "jane.doe\u200b@example.com", "tel:+491511234567", "+49%20151%2012345678",
                                   "＋４９１５１１２３４５６７８"])
def test_a_phone_number_or_an_address_at_a_non_ascii_domain_in_a_kept_attribute_is_dead_lettered(value: str) -> None:
    result = assert_paths_agree(orjson.dumps(payload(category=value)))
    assert isinstance(result, DeadLetter) and result.reason == "schema_violation", (value, result)
    assert value not in result.message
