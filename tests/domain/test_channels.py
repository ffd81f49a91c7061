"""The channel vocabulary is defined once, in operators/channels.py; the schemas must agree with it."""

from __future__ import annotations

import json
from pathlib import Path

from nextclick.operators.channels import CHANNELS, CONSENT_CHANNELS, CONSENT_FAMILY, DECISION_CHANNELS, EVENT_CHANNELS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_every_event_type_has_a_schema_and_a_touch_channel() -> None:
    assert {p.stem for p in (SCHEMAS / "events").glob("*.json")} - {"_envelope"} == set(EVENT_CHANNELS)
    assert set(EVENT_CHANNELS.values()) <= set(CHANNELS)


def test_the_decision_schema_lists_the_decision_channels() -> None:
    schema = json.loads((SCHEMAS / "decision.v1.json").read_text())
    assert schema["properties"]["channel"]["enum"] == list(DECISION_CHANNELS)


def test_the_consent_schema_lists_the_consent_channels() -> None:
    schema = json.loads((SCHEMAS / "events" / "consent.json").read_text())
    assert sorted(schema["properties"]["channel"]["enum"]) == sorted(CONSENT_CHANNELS)
    # Every decision channel has a consent family, so consent can be checked for every decision.
    assert set(DECISION_CHANNELS) <= set(CONSENT_FAMILY)
