"""The decision message contract: CloudEvents binary-mode headers and a body that fits its schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson

from operators.io.decisions import DECISION_TYPE, encode_decision
from operators.records import Decision
from operators.rules.arbitration import decision_id

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
