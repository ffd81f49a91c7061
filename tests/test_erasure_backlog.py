"""Erasures in an hours-old backlog, read by one process and by a cluster of two: the same decisions.

A backlog after an outage holds each person's anonymous browsing (a cookie on the web), their sign-in
with that cookie later on, and their email consent and a store purchase under their customer id; the
control topic holds an erasure of every other person's customer id, requested after all of it. In a
backlog the erasure is read first (the control topic is not aligned with the inputs, docs/state.md "An
erasure in a backlog"):
the erased customer's own events are not applied, and the cookie the sign-in joins to them is erased
when the sign-in is read, after what the cookie had due by then is decided, as live. So every person
gets the retargeting ad their browsing fell due for twenty minutes before they signed in, and only
those not erased get the cross-sell of their purchase.

With two workers (in one process or in two) each reads half of each topic's partitions, and the identity
stage holds events for event-time order across readers: the same decisions must come out. A recheck
found erased people's ads missing in 4 runs of 6 with two workers; here, with two workers in one
process, 1-12 of 60 were missing in every run until an erasure met in the middle of a run of released
events (another person's sign-in) took the joined cookie's page views still to route in that run ahead
of the sign-in it took (operators/identity/stage.py `_take_erased`). Without the shards deciding what
the cookie had due before erasing it (`fire_before`), every erased person's ad is missing on one process.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import SECRET, FlowSetup, read_decisions, run_to_end, start

pytestmark = pytest.mark.broker

MIN = 60_000
PERSONS = 120
PARTITIONS = 4


def _backlog(now: int) -> tuple[dict[str, list[tuple[bytes, bytes, int]]], list[bytes]]:
    """(topic name -> (key, value, partition)), and the control topic's erasures."""
    web: list[tuple[int, bytes, bytes, int]] = []
    store: list[tuple[int, bytes, bytes, int]] = []
    erasures = []
    for i in range(PERSONS):
        who, cookie = f"er-{i:04d}", f"ck-er-{i:04d}"
        t0 = now - 5 * 60 * MIN + (i * 997 % 120) * MIN  # between five and three hours ago
        part = zlib.crc32(cookie.encode()) % PARTITIONS

        def page(k: int, ts: int, cookie: str = cookie, who: str = who, part: int = part) -> None:
            body = {"event_id": f"{who}-pv{k}", "type": "page_view", "ts": ts, "page_type": "product",
                    "category": "shoes"}
            web.append((ts, cookie.encode(), orjson.dumps(body), part))

        for k in range(3):  # browsing, then nothing for 20 minutes: the ad falls due at t0 + 22m
            page(k, t0 + k * MIN)
        sign_in = {"event_id": f"{who}-login", "type": "login", "ts": t0 + 30 * MIN, "customer_id": who}
        web.append((t0 + 30 * MIN, cookie.encode(), orjson.dumps(sign_in), part))
        consent = {"event_id": f"{who}-consent", "type": "consent", "ts": t0 + 5 * MIN, "customer_id": who,
                   "channel": "email", "purpose": "marketing", "granted": True}
        store.append((t0 + 5 * MIN, who.encode(), orjson.dumps(consent), zlib.crc32(who.encode()) % PARTITIONS))
        purchase = {"event_id": f"{who}-buy", "type": "store_purchase", "ts": t0 + 10 * MIN, "customer_id": who,
                    "order_id": f"o-{who}", "amount": 50.0, "currency": "EUR"}
        store.append((t0 + 10 * MIN, who.encode(), orjson.dumps(purchase),
                      zlib.crc32(who.encode()) % PARTITIONS))
        if i % 2 == 0:
            erasures.append(orjson.dumps({"command": "erase", "request_id": f"dsr-{who}", "customer_id": who,
                                          "requested_at": t0 + 40 * MIN}))
    web.sort()
    store.sort()
    return ({"web": [(k, v, p) for _, k, v, p in web], "store": [(k, v, p) for _, k, v, p in store]}, erasures)


def _persons() -> dict[str, str]:
    """Each person's keys (their cookie's, their customer id's) -> the person: whom a decision is for."""
    out = {}
    for i in range(PERSONS):
        who = f"er-{i:04d}"
        out[pseudonymize("cookie", f"ck-{who}", SECRET.encode())] = who
        out[pseudonymize("customer", who, SECRET.encode())] = who
    return out


def test_erasures_in_a_backlog_give_the_same_decisions_on_one_worker_and_two(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    by_topic, erasures = _backlog(now)
    topics = {name: f"{topic_prefix}.{name}" for name in by_topic}
    ensure_topics(kafka, {topic: PARTITIONS for topic in topics.values()})
    producer = Producer({**kafka, "linger.ms": 5})
    for name, messages in by_topic.items():
        for key, value, partition in messages:
            producer.produce(topics[name], value, key, partition=partition)
    assert producer.flush(30) == 0

    results, persons = {}, _persons()
    for run in ("1 process", "1 process, 2 workers", "2 processes"):
        name = run.replace(" ", "").replace(",", "")
        setup = FlowSetup.create(kafka, tmp_path / name, f"{topic_prefix}{name}", inputs=tuple(topics.values()))
        ensure_topics(kafka, {f"{setup.control}.progress": 1})
        for erasure in erasures:  # on the control topic before the flow starts: read ahead of the backlog
            producer.produce(setup.control, erasure, b"erase")
        assert producer.flush(10) == 0
        if run == "1 process, 2 workers":
            flow = start(setup, stop_at_end=True, args=["--workers", "2"], log=tmp_path / f"{name}.log")
            assert flow.wait(150) == 0, f"see {tmp_path / f'{name}.log'}"
        else:
            run_to_end(setup, processes=int(run[0]), timeout_s=150, log=tmp_path / f"{name}.log")
        decided: dict[str, set[str]] = {}
        for record in read_decisions(kafka, setup.decisions):
            body = orjson.loads(record.body)
            decided.setdefault(body["reasons"]["rule_id"], set()).add(persons.get(body["customer"], body["customer"]))
        results[run] = decided

    everyone = {f"er-{i:04d}" for i in range(PERSONS)}
    kept = {f"er-{i:04d}" for i in range(1, PERSONS, 2)}
    for run, decided in results.items():
        ads = decided.get("browse_abandonment_ad", set())
        assert ads == everyone, f"{run}: ads missing for {sorted(everyone - ads)}"
        assert decided.get("post_purchase_cross_sell") == kept, (
            f"{run}: cross-sells {sorted(decided.get('post_purchase_cross_sell', set()) ^ kept)} "
            f"differ from the persons not erased")
