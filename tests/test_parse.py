"""parse_message: valid events of every type, every dead-letter reason, and that it never raises."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.channels import EVENT_CHANNELS
from operators.identity.pseudonyms import pseudonymize
from operators.infra.config import ParseConfig
from operators.io.deadletter import REASONS, dead_letter_headers
from operators.io.parse import ATTRS_KEYWORD, SCHEMA_DIR, SPECS, load_schema, parse_message
from operators.records import DeadLetter, Event, SourcePosition

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


def test_reason_class_names_are_unique_and_stable():
    assert len(set(REASONS.values())) == len(REASONS)
    assert REASONS["invalid_json"] == "nextclick.parse.InvalidJson"
    assert all(name.startswith(("nextclick.parse.", "nextclick.control.", "nextclick.processing."))
               for name in REASONS.values())


# --- the schema files -------------------------------------------------------------------------------

PURCHASE_ATTRS = ["order_id", "amount", "currency", "items", "category"]
CONTRACT_ATTRS = {
    "page_view": ["page_type", "category"], "add_to_cart": ["sku", "amount", "quantity", "category"],
    "purchase": PURCHASE_ATTRS, "app_purchase": PURCHASE_ATTRS, "store_purchase": PURCHASE_ATTRS,
    "email_open": ["campaign_id"], "email_click": ["campaign_id", "link_category"],
    "app_open": ["app_version"], "call_center_contact": ["topic", "outcome"],
    "consent": ["channel", "purpose", "granted"], "complaint": ["topic", "severity"],
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
    body = {"event_id": draw(st.text(min_size=1, max_size=128)), "type": event_type, "ts": ts, **attrs}
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


@settings(max_examples=200, deadline=None)
@given(event=valid_events(), raw_key=st.text(min_size=1, max_size=16))
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
