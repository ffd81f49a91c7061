"""End to end through the real broker: a scripted multi-channel story in, exact decisions out.

The flow runs in a thread on a manual clock. Customers' events arrive on several topics, and
across topics Kafka gives no order, so the story is fed in phases, each waiting until what the next
depends on has been applied (as a real customer's consent is applied before their next purchase):
consents first; then the other events except bob's store purchase; then that purchase. Last, the
clock moves past alice's cart deadline so the absence fires with no new event. Then the input is
stopped (EOF) and everything on the output topics is compared exactly.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from confluent_kafka import Producer

from nextclick.flows.targeting import build_flow
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.io.decisions import DECISION_SOURCE, DECISION_TYPE, rfc3339
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.rules.arbitration import decision_id
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import consume_all

pytestmark = pytest.mark.broker

SECRET = "e2e-test-secret"
T0 = 1_795_428_000_000  # 2026-11-22T10:00:00Z
MIN = 60_000
CHANNELS = ("web", "email", "mobile", "store", "call_center")


def customer_key(name: str) -> str:
    return pseudonymize("customer", name, SECRET.encode())


def story() -> list[tuple[str, str, dict[str, Any]]]:
    """(channel, kafka key, payload). PII rides along in places; it must never come out."""
    def ev(eid: str, etype: str, minute: float, who: str, **attrs: Any) -> dict[str, Any]:
        return {"event_id": eid, "type": etype, "ts": T0 + int(minute * MIN), "customer_id": who, **attrs}

    return [
        ("web", "cookie-a", ev("a-1", "consent", 0, "alice", channel="email", granted=True,
                               email="alice@example.com")),
        ("web", "cookie-a", ev("a-2", "page_view", 1, "alice", page_type="product", category="shoes")),
        ("web", "cookie-a", ev("a-3", "add_to_cart", 2, "alice", sku="sku-1", amount=80.0, quantity=1)),
        ("email", "bob@example.com", ev("b-1", "consent", 0, "bob", channel="email", granted=True)),
        ("mobile", "device-b", ev("b-2", "app_purchase", 3, "bob", order_id="o-b1", amount=120.0,
                                  currency="EUR", name="Bob Example")),
        ("store", "bob", ev("b-3", "store_purchase", 5, "bob", order_id="o-b2", amount=40.0)),
        ("call_center", "carol", ev("c-1", "call_center_contact", 4, "carol", topic="billing",
                                     outcome="unresolved", note="lives at 1 Example Road")),
        ("web", "cookie-d", ev("d-1", "purchase", 4, "dave", order_id="o-d1", amount=60.0)),
        ("web", "cookie-e", ev("e-1", "consent", 0, "erin", channel="email", granted=True)),
        ("web", "cookie-e", ev("e-2", "add_to_cart", 1, "erin", sku="sku-9", amount=35.0)),
        ("web", "cookie-e", ev("e-3", "purchase", 6, "erin", order_id="o-e1", amount=35.0)),
    ]


MALFORMED = b'{"event_id": "bad-1", "type": "page_view", "ts": '


def wait_until(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_for(kafka: dict[str, str], topic: str, count: int, timeout_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = consume_all(kafka, [topic], idle_s=0.5, timeout_s=10)
        if len(msgs) >= count or time.monotonic() > deadline:
            return msgs
        time.sleep(0.5)


def test_story_gives_exact_decisions_and_dead_letter(kafka: dict[str, str], topic_prefix: str,
                                                     tmp_path: Path) -> None:
    topics = {ch: f"{topic_prefix}.{ch}" for ch in CHANNELS}
    decisions_topic, dlq_topic = f"{topic_prefix}.decisions", f"{topic_prefix}.dead_letter"
    control_topic = f"{topic_prefix}.control"
    ensure_topics(kafka, {**{t: 1 for t in topics.values()}, decisions_topic: 2, dlq_topic: 1, control_topic: 1})
    producer = Producer(kafka)

    def send(events: list[tuple[str, str, dict[str, Any]]]) -> None:
        for channel, key, payload in events:
            producer.produce(topics[channel], orjson.dumps(payload), key.encode())
        assert producer.flush(10) == 0

    events = story()
    consents = [e for e in events if e[2]["type"] == "consent"]
    last = [e for e in events if e[2]["event_id"] == "b-3"]
    send(consents)
    producer.produce(topics["web"], MALFORMED, b"cookie-x", headers=[("origin", b"web-sdk")])

    def profile(who: str) -> dict[str, Any] | None:
        return read_profile(tmp_path / "state", 4, customer_key(who))

    config = Config().replace(
        kafka=kafka,
        topics={"inputs": tuple(topics.values()), "decisions": decisions_topic, "dead_letter": dlq_topic,
                "control": control_topic},
        state={"dir": str(tmp_path / "state"), "shards": 4, "recovery_dir": str(tmp_path / "recovery")},
        privacy={"secret": SECRET},
    )
    (tmp_path / "recovery").mkdir()
    init_db_dir(tmp_path / "recovery", 1)
    clock = ManualClock(T0 + 10 * MIN)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            run_main(build_flow(config, clock=clock, stop=stop, readers=1), epoch_interval=timedelta(milliseconds=500),
                     recovery_config=RecoveryConfig(str(tmp_path / "recovery")))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: all(profile(who) is not None for who in ("alice", "bob", "erin")), "consents")
        send([e for e in events if e not in consents and e not in last])
        # The decisions that events trigger.
        assert len(wait_for(kafka, decisions_topic, 3)) == 3, failures
        send(last)
        wait_until(lambda: (profile("bob") or {"facts": {}})["facts"].get("orders") == 2, "bob's second purchase")
        # Phase two: nothing arrives, the clock passes alice's deadline (cart + 60 min + 5 min lateness).
        clock.set(T0 + 70 * MIN)
        assert len(wait_for(kafka, decisions_topic, 5)) == 5, failures
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures
    assert not thread.is_alive()

    decisions = consume_all(kafka, [decisions_topic])
    got = {}
    for msg in decisions:
        headers = dict(msg.headers())
        body = orjson.loads(msg.value())
        assert msg.key() == body["customer"].encode() == headers["ce_subject"]
        assert headers["ce_specversion"] == b"1.0" and headers["content-type"] == b"application/json"
        assert headers["ce_type"] == DECISION_TYPE.encode() and headers["ce_source"] == DECISION_SOURCE.encode()
        got[headers["ce_id"].decode()] = (body["action"], body["channel"], body["offer"], body["reasons"],
                                          headers["ce_time"].decode(), headers["ce_expirytime"].decode())

    TYPES = {"b-2": "app_purchase", "b-3": "store_purchase", "c-1": "call_center_contact", "e-3": "purchase"}

    def expect(who: str, rule: str, trigger_id: str, action: str, channel: str, offer: str | None,
               signals: dict[str, Any], at: int, valid_ms: int) -> tuple[str, tuple[Any, ...]]:
        # An event's decision id covers its type (arbitration.decision_id); a fired absence's names its signal.
        on = None if trigger_id.startswith("cart_abandoned:") else TYPES[trigger_id]
        return decision_id(customer_key(who), rule, trigger_id, on), (
            action, channel, offer, {"rule_id": rule, "signals": signals}, rfc3339(at), rfc3339(at + valid_ms))

    expected = dict([
        expect("bob", "post_purchase_cross_sell", "b-2", "send_email", "email", "cross-sell",
               {"trigger.amount": 120.0}, T0 + 3 * MIN, 3 * 1440 * MIN),
        expect("carol", "call_center_follow_up", "c-1", "call_back", "call_center", None,
               {"trigger.outcome": "unresolved"}, T0 + 4 * MIN, 8 * 60 * MIN),
        # Bob has no email address (a customer id and a cookie): his first cross-sell went out with
        # `address: null`, which uses no cooldown (docs/rules.md, caps), so his second purchase decides again.
        expect("bob", "post_purchase_cross_sell", "b-3", "send_email", "email", "cross-sell",
               {"trigger.amount": 40.0}, T0 + 5 * MIN, 3 * 1440 * MIN),
        expect("erin", "post_purchase_cross_sell", "e-3", "send_email", "email", "cross-sell",
               {"trigger.amount": 35.0}, T0 + 6 * MIN, 3 * 1440 * MIN),
        # Fired by the clock: alice's cart at +2 min, no purchase by +62 min.
        expect("alice", "cart_abandonment_email", f"cart_abandoned:{T0 + 2 * MIN}", "send_email", "email",
               "cart-reminder-10pct", {"trigger.amount": 80.0}, T0 + 62 * MIN, 1440 * MIN),
    ])
    # Not there: dave (no email consent), erin's cart (she bought).
    assert got == expected

    dead = consume_all(kafka, [dlq_topic])
    assert len(dead) == 1
    record = dead[0]
    assert (record.key(), record.value()) == (b"cookie-x", MALFORMED)
    assert record.headers() == [
        ("origin", b"web-sdk"),
        ("__connect.errors.topic", topics["web"].encode()),
        ("__connect.errors.partition", b"0"),
        ("__connect.errors.offset", b"2"),  # after the two web consents
        ("__connect.errors.exception.class.name", b"nextclick.parse.InvalidJson"),
        ("__connect.errors.exception.message", b"message value is not valid JSON"),
        ("nextclick.errors.reason", b"invalid_json"),
    ]

    # The profile was checkpointed to RocksDB and reads back with the tool's reader.
    bob = read_profile(tmp_path / "state", 4, customer_key("bob"))
    assert bob is not None and bob["facts"]["orders"] == 2 and bob["facts"]["revenue"] == 160.0
    alice = read_profile(tmp_path / "state", 4, customer_key("alice"))
    assert alice is not None and "cart_abandoned" not in alice["signals"]

    # No PII anywhere in what came out.
    blob = b"".join(m.value() + b"".join(v for _, v in m.headers()) for m in decisions)
    for pii in (b"alice@example.com", b"Bob Example", b"Example Road", b"alice", b"cookie-a"):
        assert pii not in blob
