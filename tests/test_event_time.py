"""Timers in event time, through the real broker: a backlog hours old gives the decisions live traffic gives.

After downtime the wall clock is hours ahead of the events being read. Absences must fire when the
input's event-time frontier passes their deadline (operators/frontier.py), not when the clock does:
otherwise a cart is "abandoned" before the purchase 30 minutes later is read, and a cookie's cart
fires (blocked: no consent) before the sign-in that would have moved it to a consenting customer.

Every backlog here lies between five and two hours in the past: every transient signal has expired
by the end of a run, so two runs minutes apart must leave the same profiles.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.io.parse import parse_ts
from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import (
    SECRET,
    FlowSetup,
    Message,
    assert_same_decisions,
    assert_same_profiles,
    dedupe,
    produce,
    read_decisions,
    read_profiles,
    run_to_end,
    start,
    workload,
)
from tests.helpers import consume_all

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MIN = 60_000
HOUR = 60 * MIN
WEB_TYPES = {"page_view", "add_to_cart", "purchase", "login", "identify", "consent"}


def key(id_type: str, raw: str) -> str:
    return pseudonymize(id_type, raw, SECRET.encode())


def _msg(who: str, kafka_key: str, body: dict[str, Any]) -> Message:
    return who, kafka_key.encode(), orjson.dumps(body)


class Story:
    """Three customers whose decisions depend on when a timer fires, among thousands of others."""

    def __init__(self, now: int) -> None:
        self.t0 = t0 = now - 4 * HOUR
        # Others: 1,200 customers over two hours around the stories (carts, purchases, sessions...).
        self.background = workload(1200, seed=5, start_ms=t0 - 30 * MIN, span_ms=110 * MIN)

        def ev(eid: str, etype: str, ts: int, **fields: Any) -> dict[str, Any]:
            return {"event_id": eid, "type": etype, "ts": ts, **fields}

        buyer, abandoner, customer, cookie, email = "buyer-1", "abandoner-1", "C-stitch", "ck-stitch", "s@example.org"
        late_customer, late_cookie = "C-late", "ck-late"
        self.buyer, self.abandoner = key("customer", buyer), key("customer", abandoner)
        self.late_customer = key("customer", late_customer)
        self.customer, self.email = key("customer", customer), key("email", email)
        cart = {"sku": "sku-7", "amount": 80.0, "quantity": 1, "category": "shoes"}
        self.special: list[tuple[int, Message]] = [
            # A buyer: cart, then the purchase 30 minutes later (on another topic, in the two-topic run).
            (t0 - 10 * MIN, _msg(buyer, buyer, ev("b1", "consent", t0 - 10 * MIN, customer_id=buyer,
                                                    channel="email", purpose="marketing", granted=True))),
            (t0, _msg(buyer, buyer, ev("b2", "add_to_cart", t0, customer_id=buyer, **cart))),
            (t0 + 30 * MIN, _msg(buyer, buyer, ev("b3", "store_purchase", t0 + 30 * MIN, customer_id=buyer,
                                                  order_id="o-b", amount=80.0, currency="EUR"))),
            # An abandoned cart: one reminder.
            (t0 - 5 * MIN, _msg(abandoner, abandoner, ev("a1", "consent", t0 - 5 * MIN, customer_id=abandoner,
                                                         channel="email", purpose="marketing", granted=True))),
            (t0 + MIN, _msg(abandoner, abandoner, ev("a2", "add_to_cart", t0 + MIN, customer_id=abandoner,
                                                     **cart))),
            # A visitor's cart by cookie; 5 minutes later they sign in as a customer who consented to email.
            (t0 - HOUR, _msg(customer, customer, ev("s1", "consent", t0 - HOUR, customer_id=customer,
                                                    channel="email", purpose="marketing", granted=True))),
            (t0 + 2 * MIN, _msg(cookie, cookie, ev("s2", "add_to_cart", t0 + 2 * MIN, **cart))),
            (t0 + 7 * MIN, _msg(cookie, cookie, ev("s3", "login", t0 + 7 * MIN, customer_id=customer,
                                                   email=email, method="password"))),
            # A visitor's cart by cookie, and the sign-in 3 minutes after its hour and the allowed lateness
            # passed: the cart was abandoned on the cookie's profile, which has no consent (no email).
            # Judged after the merge, on the customer's, when the merge reached the shard first.
            (t0 - HOUR, _msg(late_customer, late_customer, ev("l1", "consent", t0 - HOUR, customer_id=late_customer,
                                                              channel="email", purpose="marketing", granted=True))),
            (t0 + 3 * MIN, _msg(late_cookie, late_cookie, ev("l2", "add_to_cart", t0 + 3 * MIN, **cart))),
            (t0 + 71 * MIN, _msg(late_cookie, late_cookie, ev("l3", "login", t0 + 71 * MIN,
                                                              customer_id=late_customer, method="password"))),
            # A producer with a fast clock, right after the buyer's cart (placed there, dated four minutes
            # ahead of the clock): read as "now", it made its partition look caught up, the frontier
            # jumped to the clock and the buyer's cart fired before the purchase was read.
            (t0 + 1, _msg("fast-clock", "fast-clock", ev("f1", "page_view", now + 4 * MIN,
                                                         page_type="home", category="shoes"))),
        ]

    def one_topic(self) -> list[Message]:
        """Everything on one topic, in event-time order (the fast clock's event where it is placed)."""
        timed = [(orjson.loads(m[2])["ts"], i, m) for i, m in enumerate(self.background)]
        timed += [(ts, -1, m) for ts, m in self.special]
        return [m for _, _, m in sorted(timed, key=lambda x: (x[0], x[1]))]

    def two_topics(self) -> tuple[list[Message], list[Message]]:
        """Web events on one topic, the rest (store purchases, call center, email, app) on another."""
        web: list[Message] = []
        rest: list[Message] = []
        for m in self.one_topic():
            (web if orjson.loads(m[2])["type"] in WEB_TYPES else rest).append(m)
        return web, rest


def _decisions(kafka: dict[str, str], topic: str) -> list[tuple[str, dict[str, Any], dict[str, bytes]]]:
    out = []
    for m in consume_all(kafka, [topic], idle_s=1.0, timeout_s=60):
        out.append((m.key().decode(), orjson.loads(m.value()), dict(m.headers() or ())))
    return out


def _check(story: Story, decisions: list[tuple[str, dict[str, Any], dict[str, bytes]]], now: int) -> None:
    carts = [(k, body) for k, body, _ in decisions if body["reasons"]["rule_id"] == "cart_abandonment_email"]
    # The buyer bought 30 minutes after the cart: no reminder, as live.
    assert [k for k, _ in carts if k == story.buyer] == []
    # The abandoned cart: exactly one reminder, still valid.
    mine = [body for k, body in carts if k == story.abandoner]
    assert len(mine) == 1, mine
    expiry = [parse_ts(h["ce_expirytime"].decode()) for k, body, h in decisions
              if k == story.abandoner and body["reasons"]["rule_id"] == "cart_abandonment_email"]
    assert expiry[0] > now
    # The stitched cart: judged on the merged, consenting profile; it goes to the customer's email key.
    stitched = [body for k, body in carts if k == story.customer]
    assert len(stitched) == 1, [body["customer"] for _, body in carts]
    assert stitched[0]["address"] == {"id_type": "email", "key": story.email}
    # The cart abandoned before the late sign-in: judged on the cookie's profile, with no consent.
    assert [k for k, _ in carts if k == story.late_customer] == []


def test_a_backlog_hours_old_gives_the_decisions_live_traffic_would(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    story = Story(now)
    single = f"{topic_prefix}.all"
    web, rest = f"{topic_prefix}.web", f"{topic_prefix}.rest"
    ensure_topics(kafka, {single: 1, web: 1, rest: 1})
    produce(kafka, single, story.one_topic(), 1)
    web_events, rest_events = story.two_topics()
    produce(kafka, web, web_events, 1)
    produce(kafka, rest, rest_events, 1)

    one = FlowSetup.create(kafka, tmp_path / "one", f"{topic_prefix}.one", inputs=[single])
    run_to_end(one, log=tmp_path / "one.log")
    one_decisions = _decisions(kafka, one.decisions)
    _check(story, one_decisions, now)

    two = FlowSetup.create(kafka, tmp_path / "two", f"{topic_prefix}.two", inputs=[web, rest])
    ensure_topics(kafka, {f"{two.control}.progress": 1})
    run_to_end(two, log=tmp_path / "two.log")
    two_decisions = _decisions(kafka, two.decisions)
    _check(story, two_decisions, now)
    assert consume_all(kafka, [one.dead_letter, two.dead_letter]) == []

    # A restart in the middle: the one-topic backlog, SIGKILLed halfway through and started again.
    crashed = FlowSetup.create(kafka, tmp_path / "crashed", f"{topic_prefix}.crashed", inputs=[single])
    proc = start(crashed, stop_at_end=True, log=tmp_path / "crashed.log")
    decisions_topic = crashed.decisions
    deadline = time.monotonic() + 60
    # Halfway: once the first decisions are out (the buyer's cart is read by then, not its purchase).
    while not consume_all(kafka, [decisions_topic], idle_s=0.2, timeout_s=2) and time.monotonic() < deadline:
        assert proc.poll() is None, "the flow ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_to_end(crashed, log=tmp_path / "crashed.log")
    assert_same_profiles(read_profiles(one.state_dir, one.shards), read_profiles(crashed.state_dir, crashed.shards))
    assert_same_decisions(dedupe(read_decisions(kafka, one.decisions)),
                          dedupe(read_decisions(kafka, crashed.decisions)))


def test_one_event_from_a_fast_clock_in_a_backlog_fires_no_timer_early(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """A backlog three hours old on one partition; right after a buyer's cart, a page view dated four
    minutes ahead of the clock (a producer whose clock runs fast: the parser takes up to five). Read as
    "now", it made the partition look caught up: the frontier jumped to the clock and the cart fired
    before the purchase 30 minutes later, thousands of messages on, was read."""
    now = int(time.time() * 1000)
    t0 = now - 3 * HOUR
    buyer, abandoner = "buyer-fc", "abandoner-fc"
    cart = {"sku": "sku-7", "amount": 80.0, "quantity": 1, "category": "shoes"}

    def ev(who: str, eid: str, etype: str, ts: int, **fields: Any) -> Message:
        return _msg(who, who, {"event_id": eid, "type": etype, "ts": ts, **fields})

    filler = [ev(f"visitor-{i}", f"v{i}", "page_view", t0 + 2 + i * 300, page_type="home", customer_id=f"visitor-{i}")
              for i in range(6000)]  # 30 minutes of others' page views: several of the source's batches
    messages = [ev(who, f"{who}-c", "consent", t0 - 10 * MIN, customer_id=who, channel="email", purpose="marketing",
                   granted=True) for who in (buyer, abandoner)]
    messages += [ev(buyer, "b-cart", "add_to_cart", t0, customer_id=buyer, **cart),
                 ev(abandoner, "a-cart", "add_to_cart", t0 + 1, customer_id=abandoner, **cart),
                 ev("fast-clock", "f1", "page_view", now + 4 * MIN, page_type="home"),
                 *filler,
                 ev(buyer, "b-buy", "purchase", t0 + 30 * MIN, customer_id=buyer, order_id="o-1", amount=80.0,
                    currency="EUR")]
    topic = f"{topic_prefix}.fast"
    ensure_topics(kafka, {topic: 1})
    produce(kafka, topic, messages, 1)
    setup = FlowSetup.create(kafka, tmp_path / "run", f"{topic_prefix}.fc", inputs=[topic])
    run_to_end(setup, log=tmp_path / "run.log")
    carts = [k for k, body, _ in _decisions(kafka, setup.decisions)
             if body["reasons"]["rule_id"] == "cart_abandonment_email"]
    assert carts == [key("customer", abandoner)]


def test_live_a_shard_that_opens_after_the_input_caught_up_still_fires_by_the_clock(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    from nextclick.operators.infra.clock import ManualClock
    from nextclick.operators.infra.config import Config
    from nextclick.operators.tools.profiles import read_profile
    from tests.helpers import FlowThread

    t0 = 1_795_428_000_000
    topics = {"web": f"{topic_prefix}.web", "decisions": f"{topic_prefix}.decisions",
              "dead_letter": f"{topic_prefix}.dlq", "control": f"{topic_prefix}.control"}
    ensure_topics(kafka, {t: 1 for t in topics.values()})
    config = Config().replace(
        kafka=kafka, state={"dir": str(tmp_path / "state"), "shards": 8}, privacy={"secret": SECRET},
        topics={"inputs": (topics["web"],), "decisions": topics["decisions"], "dead_letter": topics["dead_letter"],
                "control": topics["control"]})
    clock = ManualClock(t0)
    with FlowThread(config, clock, tmp_path / "recovery") as flow:
        # The empty input is caught up: the frontier (the clock) goes to every shard before any has state.
        time.sleep(1.5)
        producer = Producer(kafka)
        for body in ({"event_id": "l1", "type": "consent", "ts": t0, "customer_id": "live-1", "channel": "email",
                      "purpose": "marketing", "granted": True},
                     {"event_id": "l2", "type": "add_to_cart", "ts": t0 + 1000, "customer_id": "live-1",
                      "sku": "s", "amount": 20.0, "quantity": 1}):
            producer.produce(topics["web"], orjson.dumps(body), b"live-1")
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 30
        customer = key("customer", "live-1")
        while "cart_abandoned" not in (read_profile(tmp_path / "state", 8, customer) or {}).get("signals", {}):
            assert time.monotonic() < deadline, "the cart was not applied"
            time.sleep(0.1)
        clock.set(t0 + 1000 + 65 * MIN + 1)  # its hour and the allowed lateness pass on the clock
        got: list[Any] = []
        while not got and time.monotonic() < deadline:
            assert not flow.failures, flow.failures
            got = consume_all(kafka, [topics["decisions"]], idle_s=0.5, timeout_s=3)
    assert [orjson.loads(m.value())["reasons"]["rule_id"] for m in got] == ["cart_abandonment_email"]
