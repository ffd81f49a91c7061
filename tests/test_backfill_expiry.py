"""Backfill-aware expiry: a decision already past its `ce_expirytime` when it is made is not sent, and is
counted (`nextclick_decisions_expired_total`); one still valid goes out with its event-time expiry.

Expiry stays event time (trigger time + the rule's `expiry`), so a replay re-emits identical bytes and
state never depends on the wall clock; only whether a stale decision reaches the topic does.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.io.decisions import encode_decision, expired
from nextclick.operators.io.topics import ensure_topics
from tests.helpers import DAY, HOUR, T0, Customer, FlowThread, consume_all, fired


def test_a_decision_is_expired_from_its_expiry_on():
    c = Customer()
    (decision,) = c.send("call_center_contact", T0, outcome="unresolved").decisions
    assert decision.expires_at == T0 + 8 * HOUR  # the follow-up's expiry, from the trigger's event time
    assert not expired(decision, T0 + 8 * HOUR - 1)
    assert expired(decision, T0 + 8 * HOUR)
    # the message itself does not depend on when it is made: a replay gives the same bytes
    assert encode_decision(decision) == encode_decision(decision)


def test_an_expired_decision_still_starts_its_cooldown():
    """State is a function of the input alone: a backfilled trigger counts as it would have live."""
    c = Customer()
    assert fired(c.send("call_center_contact", T0, outcome="unresolved"))
    assert c.send("call_center_contact", T0 + HOUR, outcome="unresolved").blocked[0].reason == "cooldown"


@pytest.mark.broker
def test_a_backfill_sends_only_the_decisions_still_valid(kafka: dict[str, str], topic_prefix: str,
                                                          tmp_path: Path) -> None:
    now = T0 + 2 * DAY
    inputs, decisions = f"{topic_prefix}.in", f"{topic_prefix}.decisions"
    ensure_topics(kafka, {inputs: 1, decisions: 1, f"{topic_prefix}.dlq": 1, f"{topic_prefix}.control": 1})
    producer = Producer(kafka)
    for event in (
        # two days ago: its call-back expired 8 hours after the call
        {"event_id": "old-1", "type": "call_center_contact", "ts": T0, "customer_id": "olga", "outcome": "unresolved"},
        # an hour ago: still valid for 7 hours
        {"event_id": "new-1", "type": "call_center_contact", "ts": now - HOUR, "customer_id": "nina",
         "outcome": "unresolved"},
    ):
        producer.produce(inputs, orjson.dumps(event), event["customer_id"].encode())
    assert producer.flush(10) == 0
    before = metrics.counter_values(metrics.EXPIRED).get(("call_center_follow_up", "call_center"), 0)
    config = Config().replace(
        kafka=kafka, privacy={"secret": "s"}, state={"dir": str(tmp_path / "state"), "shards": 2},
        topics={"inputs": (inputs,), "decisions": decisions, "dead_letter": f"{topic_prefix}.dlq",
                "control": f"{topic_prefix}.control"})
    got = []
    with FlowThread(config, ManualClock(now), tmp_path / "recovery"):
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            got = consume_all(kafka, [decisions], idle_s=0.5, timeout_s=5)
    bodies = [orjson.loads(m.value()) for m in got]
    assert [b["trigger"]["id"] for b in bodies] == ["new-1"]  # the old one came first and was not sent
    headers = dict(got[0].headers())
    assert headers["ce_expirytime"] == b"2026-11-20T07:00:00.000Z"  # event time + 8h: 7 hours from now
    after = metrics.counter_values(metrics.EXPIRED)[("call_center_follow_up", "call_center")]
    assert after - before == 1
