"""Decisions go to one topic, or to one topic per channel when the configured name has {channel}."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config, decision_topic, load_config
from nextclick.operators.io.topics import ensure_topics
from tests.helpers import FlowThread, consume_all

T0 = 1_795_428_000_000


def test_decision_topic_template() -> None:
    assert decision_topic("nextclick.decisions", "email") == "nextclick.decisions"
    assert decision_topic("crm.{channel}.decisions", "call_center") == "crm.call_center.decisions"
    config = load_config(None, {"NEXTCLICK_TOPICS__DECISIONS": "d.{channel}"})
    assert config.topics.decisions == "d.{channel}"


@pytest.mark.broker
def test_decisions_split_by_channel(kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    inputs = f"{topic_prefix}.in"
    template = f"{topic_prefix}.decisions.{{channel}}"
    email, call_center = decision_topic(template, "email"), decision_topic(template, "call_center")
    ensure_topics(kafka, {inputs: 1, email: 1, call_center: 1, f"{topic_prefix}.dlq": 1,
                          f"{topic_prefix}.control": 1})
    producer = Producer(kafka)
    for event in (
        {"event_id": "b-1", "type": "consent", "ts": T0, "customer_id": "bob", "channel": "email", "granted": True},
        {"event_id": "b-2", "type": "purchase", "ts": T0 + 60_000, "customer_id": "bob", "amount": 50.0},
        {"event_id": "c-1", "type": "call_center_contact", "ts": T0 + 60_000, "customer_id": "carol",
         "outcome": "unresolved"},
    ):
        producer.produce(inputs, orjson.dumps(event), event["customer_id"].encode())
    assert producer.flush(10) == 0
    config = Config().replace(
        kafka=kafka, privacy={"secret": "s"}, state={"dir": str(tmp_path / "state"), "shards": 2},
        topics={"inputs": (inputs,), "decisions": template, "dead_letter": f"{topic_prefix}.dlq",
                "control": f"{topic_prefix}.control"})
    with FlowThread(config, ManualClock(T0 + 5 * 60_000), tmp_path / "recovery"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {t: consume_all(kafka, [t], idle_s=0.5, timeout_s=5) for t in (email, call_center)}
            if all(got.values()):
                break
    assert [orjson.loads(m.value())["reasons"]["rule_id"] for m in got[email]] == ["post_purchase_cross_sell"]
    assert [orjson.loads(m.value())["reasons"]["rule_id"] for m in got[call_center]] == ["call_center_follow_up"]
