"""The decision message contract: CloudEvents binary-mode headers and a body that fits its schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson

from nextclick.operators.io.decisions import DECISION_TYPE, encode_decision
from nextclick.operators.records import Decision
from nextclick.operators.rules.arbitration import decision_id

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "decision.v1.json").read_text())


def sample(**changes: object) -> Decision:
    customer = "0123456789abcdef0123456789abcdef"
    base = dict(decision_id=decision_id(customer, "cart_abandonment_email", "cart_abandoned:1000"),
                customer=customer, rule_id="cart_abandonment_email", action="send_email", channel="email",
                offer="cart-reminder-10pct", priority=80, trigger="cart_abandoned", trigger_id="cart_abandoned:1000",
                decided_at=3_601_000, expires_at=3_601_000 + 86_400_000, profile_version=7,
                signals={"trigger.amount": 80.0})
    base.update(changes)
    return Decision(**base)  # type: ignore[arg-type]


def test_body_matches_the_published_schema() -> None:
    _, value, _ = encode_decision(sample())
    jsonschema.validate(orjson.loads(value), SCHEMA)
    _, value, _ = encode_decision(sample(offer=None, signals={}))
    jsonschema.validate(orjson.loads(value), SCHEMA)


def test_headers_are_cloudevents_binary_mode_and_deterministic() -> None:
    key, value, headers = encode_decision(sample())
    h = dict(headers)
    assert key == b"0123456789abcdef0123456789abcdef" == h["ce_subject"] == h["ce_partitionkey"]
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_type"] == DECISION_TYPE.encode()
    assert h["ce_time"] == b"1970-01-01T01:00:01.000Z"
    assert h["ce_expirytime"] == b"1970-01-02T01:00:01.000Z"
    assert h["content-type"] == b"application/json"
    assert h["ce_id"] == orjson.loads(value)["decision_id"].encode()
    # Same input, same message: consumers can dedupe a replay on (ce_source, ce_id).
    assert encode_decision(sample()) == (key, value, headers)
    assert dict(encode_decision(sample(trigger_id="cart_abandoned:2000",
                                       decision_id=decision_id(sample().customer, "cart_abandonment_email",
                                                               "cart_abandoned:2000")))[2])["ce_id"] != h["ce_id"]


def test_how_to_reach_the_customer_is_an_additive_optional_part_of_the_body() -> None:
    """Decisions of a profile whose identifiers are known say where it can be reached; a v1 consumer that
    ignores unknown fields reads the rest as before, and both shapes fit the published schema."""
    email = "fedcba9876543210fedcba9876543210"
    _, plain, _ = encode_decision(sample())
    _, addressed, _ = encode_decision(sample(reachable=("email", "web"), address=("email", email)))
    _, unaddressable, _ = encode_decision(sample(channel="sms", reachable=("email",), address=None))
    body = orjson.loads(addressed)
    assert body["reachable"] == ["email", "web"] and body["address"] == {"id_type": "email", "key": email}
    assert {k: v for k, v in body.items() if k not in ("reachable", "address")} == orjson.loads(plain)
    assert "reachable" not in orjson.loads(plain) and "address" not in orjson.loads(plain)
    assert orjson.loads(unaddressable)["address"] is None
    for value in (plain, addressed, unaddressable):
        jsonschema.validate(orjson.loads(value), SCHEMA)
    with_raw = orjson.loads(addressed)
    with_raw["address"]["key"] = "someone@example.com"
    try:
        jsonschema.validate(with_raw, SCHEMA)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema must only accept a pseudonymous key as the address")
