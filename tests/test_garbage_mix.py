"""Hostile input end to end: the same clean stream alone and with garbage and duplicates mixed in.

A deterministic multi-channel stream (30 customers, ~300 events, four rules firing) runs through the
real flow twice: once alone, once with ~10% assorted garbage and a few duplicate events interleaved.
The decisions must be identical (ce_id and body, byte for byte); every garbage message must come out
on the dead-letter topic exactly once, byte-identical, with the reason matching its kind; duplicates
are dropped and counted, never dead-lettered. Finally one dead letter is replayed onto its source
topic unchanged and is refused again for the same reason.

Determinism: each customer's events live on one topic (one partition), so their order is fixed; all
event times fall in [T0, T0 + 15 min] and the clock stays at T0 + 16 min while the input is read, so
no timer (the shortest is 20 min + 5 min lateness) fires before every event is applied. Then the
clock jumps three hours and the absences (abandoned carts, abandoned browsing) fire on the clock.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.io.topics import ensure_topics
from tests.helpers import FlowThread, consume_all
from tests.waits import committed_versions, due_timers

pytestmark = pytest.mark.broker

SECRET = "garbage-mix-secret"
MIN = 60_000
T0 = 1_795_428_000_000  # 2026-11-22T10:00:00Z
NOW_READING = T0 + 16 * MIN  # no timer is due before T0 + 25 min
NOW_TIMERS = T0 + 3 * 60 * MIN
CHANNELS = ("web", "email", "mobile", "store", "call_center")
GARBAGE_HEADER = ("origin", b"garbage-mix")

Headers = list[tuple[str, str | bytes | None]]
Msg = tuple[str, bytes | None, bytes | None, Headers]  # channel, key, value, headers


def clean_stream(seed: int = 11, customers: int = 30) -> list[Msg]:
    """Per customer: events on one home topic, in event-time order, all within 15 minutes."""
    rng = random.Random(seed)
    out: list[Msg] = []
    for i in range(customers):
        who = f"cust-{i:02d}"
        home = CHANNELS[i % len(CHANNELS)]
        ts = T0 + rng.randrange(0, 60_000)
        n = 0
        events: list[dict[str, Any]] = []

        def add(etype: str, _who: str = who, _events: list[dict[str, Any]] = events, **attrs: Any) -> None:
            nonlocal ts, n
            n += 1
            ts += rng.randrange(5_000, 40_000)
            _events.append({"event_id": f"{_who}-{n}", "type": etype, "ts": ts, "customer_id": _who, **attrs})

        if rng.random() < 0.75:
            add("consent", channel="email", granted=True)
        for _ in range(rng.randrange(3, 8)):
            add("page_view", page_type="product", category=rng.choice(["shoes", "bags", "hats"]))
        if rng.random() < 0.5:
            add("email_open", campaign_id=f"c-{rng.randrange(3)}")
            add("email_click", campaign_id="c-1", link_category="sale")
        if rng.random() < 0.4:
            add("app_open", app_version="5.2.1")
        kind = i % 4
        if kind in (0, 1):
            add("add_to_cart", sku=f"sku-{i}", amount=float(rng.randrange(15, 150)), quantity=1, category="shoes")
        if kind == 1:
            add(rng.choice(["purchase", "app_purchase", "store_purchase"]), order_id=f"o-{i}",
                amount=float(rng.randrange(25, 300)), currency="EUR")
        if kind == 3 or rng.random() < 0.3:
            add("call_center_contact", topic="billing", outcome=rng.choice(["unresolved", "solved"]))
        for _ in range(rng.randrange(1, 4)):
            add("page_view", page_type="home")
        for body in events:
            out.append((home, who.encode(), orjson.dumps(body), []))
    # Interleave customers while keeping each customer's order: a stable sort on event time.
    out.sort(key=lambda m: orjson.loads(m[2] or b"{}")["ts"])
    return out


def garbage(marker: int) -> list[tuple[str, bytes | None, bytes]]:
    """(reason, key, value) of every kind of garbage; `marker` makes each value unique."""
    m = f"g{marker}"
    ok: dict[str, Any] = {"event_id": f"{m}-e", "type": "page_view", "ts": T0 + 5 * MIN, "customer_id": "cust-00"}
    return [
        ("invalid_json", b"cust-00", b'{"event_id": "' + m.encode() + b'", "type": "page_view", "ts": '),
        ("invalid_utf8", b"cust-00", b'{"note": "caf\xe9 ' + m.encode() + b'"}'),
        ("not_an_object", b"cust-00", orjson.dumps([ok])),
        ("missing_type", b"cust-00", orjson.dumps({k: v for k, v in ok.items() if k != "type"})),
        ("unknown_type", b"cust-00", orjson.dumps({**ok, "type": "page_vue"})),
        ("missing_event_id", b"cust-00", orjson.dumps({k: v for k, v in ok.items() if k != "event_id"} | {"m": m})),
        ("schema_violation", b"cust-00", orjson.dumps({**ok, "type": "purchase", "amount": "12.50"})),
        ("invalid_ts", b"cust-00", orjson.dumps({**ok, "ts": "yesterday at noon"})),
        ("ts_in_future", b"cust-00", orjson.dumps({**ok, "ts": NOW_READING + 60 * MIN})),
        ("ts_too_old", b"cust-00", orjson.dumps({**ok, "ts": (T0 + 5 * MIN) // 1000})),
        ("too_large", b"cust-00", orjson.dumps({**ok, "note": "x" * 70_000})),
        ("missing_identifier", None, orjson.dumps({k: v for k, v in ok.items() if k != "customer_id"})),
    ]


def mixed_stream(clean: list[Msg], seed: int = 5) -> tuple[list[Msg], dict[bytes, str], int]:
    """The clean stream with ~10% garbage and 5 duplicates; (stream, garbage value -> reason, duplicates)."""
    rng = random.Random(seed)
    kinds = [g for marker in range(3) for g in garbage(marker)]  # 36 garbage messages
    expected: dict[bytes, str] = {}
    out: list[Msg] = list(clean)
    for reason, key, value in kinds:
        at = rng.randrange(len(out) + 1)
        expected[value] = reason
        out.insert(at, (rng.choice(CHANNELS), key, value, [GARBAGE_HEADER]))
    # Duplicates: an exact copy of a clean message, later on the same topic (so after the original).
    dups = 0
    for index in rng.sample(range(len(clean)), 5):
        original = clean[index]
        at = out.index(original)
        out.insert(rng.randrange(at + 1, len(out) + 1), original)
        dups += 1
    return out, expected, dups


def _sum(counter: Any) -> float:
    return sum(metrics.counter_values(counter).values())


def _processed() -> float:
    return _sum(metrics.EVENTS) + _sum(metrics.DUPLICATES) + _sum(metrics.DEAD_LETTERS)


def _wait(cond: Any, timeout_s: float, what: str, flow: FlowThread) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert not flow.failures, flow.failures
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Run:
    """Topics, config and a producer for one run of the flow."""

    def __init__(self, kafka: dict[str, str], prefix: str, tmp: Path) -> None:
        self.kafka = kafka
        self.topics = {ch: f"{prefix}.{ch}" for ch in CHANNELS}
        self.decisions, self.dlq, self.control = f"{prefix}.decisions", f"{prefix}.dead_letter", f"{prefix}.control"
        ensure_topics(kafka, {**{t: 1 for t in self.topics.values()}, self.decisions: 2, self.dlq: 1,
                              self.control: 1})
        self.config = Config().replace(
            kafka=kafka,
            topics={"inputs": tuple(self.topics.values()), "decisions": self.decisions,
                    "dead_letter": self.dlq, "control": self.control},
            state={"dir": str(tmp / "state"), "shards": 4},
            privacy={"secret": SECRET},
        )
        self.recovery = tmp / "recovery"
        self.clock = ManualClock(NOW_READING)

    def produce(self, stream: list[Msg]) -> None:
        producer = Producer(self.kafka)
        for channel, key, value, headers in stream:
            producer.produce(self.topics[channel], value, key, headers=headers)
        assert producer.flush(30) == 0

    def run(self, stream: list[Msg], *, after: Any = None) -> tuple[dict[str, bytes], list[Any], float]:
        """Feed `stream`, apply it, fire timers; (ce_id -> body, dead letters, duplicates counted)."""
        self.produce(stream)
        dups_before = _sum(metrics.DUPLICATES)
        start, events = _processed(), _sum(metrics.EVENTS)
        state = Path(self.config.state.dir)
        with FlowThread(self.config, self.clock, self.recovery) as flow:
            _wait(lambda: _processed() - start >= len(stream), 60, "the input to be applied", flow)
            # Committed, every applied event's profile with it: the timer index now holds every due timer.
            _wait(lambda: committed_versions(state) == _sum(metrics.EVENTS) - events, 30, "the input committed",
                  flow)
            self.clock.set(NOW_TIMERS)
            # Every timer due by then has fired, and its epoch (decisions flushed first) is committed.
            _wait(lambda: due_timers(state, NOW_TIMERS) == 0, 30, "the due timers", flow)
            if after is not None:
                after(flow)
        assert _processed() - start == len(stream) + (1 if after else 0)
        decisions = consume_all(self.kafka, [self.decisions])
        got: dict[str, bytes] = {}
        for msg in decisions:
            ce_id = dict(msg.headers())["ce_id"].decode()
            assert ce_id not in got, "a decision was emitted twice"
            got[ce_id] = msg.value()
        return got, consume_all(self.kafka, [self.dlq]), _sum(metrics.DUPLICATES) - dups_before


def _original_headers(headers: list[tuple[str, bytes]]) -> Headers:
    """What a replay tool sends back: the record's headers without the ones the DLQ added."""
    return [(k, v) for k, v in headers if not k.startswith(("__connect.errors.", "nextclick.errors."))]


def test_garbage_and_duplicates_change_no_decision(kafka: dict[str, str], topic_prefix: str,
                                                    tmp_path: Path) -> None:
    clean = clean_stream()
    mixed, expected_garbage, dups = mixed_stream(clean)
    assert 250 <= len(clean) <= 400 and len(expected_garbage) == 36
    assert 0.08 <= len(expected_garbage) / len(mixed) <= 0.13

    baseline, base_dead, base_dups = Run(kafka, f"{topic_prefix}a", tmp_path / "a").run(clean)
    assert base_dead == [] and base_dups == 0
    rules = {orjson.loads(v)["reasons"]["rule_id"] for v in baseline.values()}
    assert rules == {"post_purchase_cross_sell", "call_center_follow_up", "cart_abandonment_email",
                     "browse_abandonment_ad"}, rules
    assert len(baseline) >= 15

    mixed_run = Run(kafka, f"{topic_prefix}b", tmp_path / "b")
    replayed: dict[str, Any] = {}

    def replay(flow: FlowThread) -> None:
        # A DLQ record goes back onto its source topic unchanged: same key, value, original headers.
        dead = consume_all(kafka, [mixed_run.dlq])
        assert len(dead) == len(expected_garbage)
        record = next(d for d in dead if dict(d.headers())["nextclick.errors.reason"] == b"invalid_utf8")
        headers = record.headers()
        source_topic = dict(headers)["__connect.errors.topic"].decode()
        producer = Producer(kafka)
        producer.produce(source_topic, record.value(), record.key(), headers=_original_headers(headers))
        assert producer.flush(10) == 0
        replayed.update(topic=source_topic, key=record.key(), value=record.value(), headers=headers)
        start = len(dead)
        _wait(lambda: len(consume_all(kafka, [mixed_run.dlq], idle_s=0.3)) > start, 30, "the replay", flow)

    got, dead, counted_dups = mixed_run.run(mixed, after=replay)

    # Same decisions, byte for byte.
    assert got.keys() == baseline.keys()
    assert got == baseline
    # Duplicates: dropped and counted, not dead-lettered.
    assert counted_dups == dups
    # Every garbage message exactly once, byte-identical, with the reason of its kind (plus the replay).
    assert len(dead) == len(expected_garbage) + 1
    first, again = dead[:-1], dead[-1]
    assert sorted(d.value() for d in first) == sorted(expected_garbage)
    for record in first:
        headers = record.headers()
        named = dict(headers)
        assert named["nextclick.errors.reason"].decode() == expected_garbage[record.value()]
        assert headers[0] == GARBAGE_HEADER
        assert named["__connect.errors.topic"].decode() in mixed_run.topics.values()
        assert record.key() == (None if expected_garbage[record.value()] == "missing_identifier" else b"cust-00")
    # The replayed record: refused again for the same reason, same bytes, same original headers.
    again_headers = again.headers()
    assert (again.key(), again.value()) == (replayed["key"], replayed["value"])
    assert _original_headers(again_headers) == _original_headers(replayed["headers"]) == [GARBAGE_HEADER]
    assert dict(again_headers)["nextclick.errors.reason"] == b"invalid_utf8"
    assert dict(again_headers)["__connect.errors.topic"].decode() == replayed["topic"]
    assert dict(again_headers)["__connect.errors.offset"] != dict(replayed["headers"])["__connect.errors.offset"]
