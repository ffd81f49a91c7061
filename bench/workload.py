"""The seeded reference workload: N events over C customers, Zipf-skewed, slightly out of order.

Mix (by event index, seeded): 60% page_view, 15% add_to_cart, 10% email_open, 5% email_click,
5% purchase, 5% call_center_contact. No consent events, so marketing rules are blocked by consent
and decisions come from `call_center_follow_up` (a service rule) - the arbitration still runs.

Customer keys follow a Zipf law with s=1.1 over C ranks (precomputed CDF + bisect; no numpy).
Event times advance with the index over `span_ms` ending at the generation time, minus a jitter of
up to `jitter_ms` (default 3 s) backwards, so the stream is slightly out of order but well within
the default allowed lateness (5 min) and the parser's age bound (30 days).

Everything goes to ONE input topic (`bench.events` by default, 4 partitions), keyed by customer id,
so a customer's events stay in one partition. Values are pre-serialised with orjson before any
clock starts; `produce_events` pushes the bytes with a batching confluent-kafka producer.

The `identity` variant (`serialise(..., identity=True)`, `bench.run --workload identity`) is the same
stream of event types and times, with web traffic (page views, carts, purchases) as a site sees it:
keyed by a cookie. A known customer's web events carry their cookie next to their customer id (the
first links the two). A share of web events (`ANONYMOUS_SHARE`) come from anonymous visitors instead:
a cookie from a pool as large as the customer base, no customer id (an anonymous purchase is a cart);
`LOGIN_SHARE` of those are a `login` (the visitor's cookie, a customer id, an email), after which the
visitor's anonymous events land on that customer's profile. Email and call-center events carry the
customer id, keyed by it. With the defaults about 24% of all events are anonymous and about 1% are
logins; every event is applied to a profile, so event counts compare with the default workload.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from confluent_kafka import Producer

MIX: tuple[tuple[str, float], ...] = (
    ("page_view", 0.60), ("add_to_cart", 0.15), ("email_open", 0.10), ("email_click", 0.05),
    ("purchase", 0.05), ("call_center_contact", 0.05),
)
CATEGORIES = ("shoes", "outdoor", "kitchen", "books", "toys", "garden", "audio", "beauty")
PAGE_TYPES = ("home", "product", "category", "search", "checkout")
TOPICS = ("billing", "delivery", "returns", "product", "account")
OUTCOMES = ("resolved", "resolved", "unresolved")

ZIPF_S = 1.1


def zipf_cdf(customers: int, s: float = ZIPF_S) -> list[float]:
    weights = itertools.accumulate(1.0 / (rank ** s) for rank in range(1, customers + 1))
    cdf = list(weights)
    total = cdf[-1]
    return [w / total for w in cdf]


def customer_id(rank: int) -> str:
    return f"c{rank:07d}"


def _attrs(event_type: str, rng: random.Random) -> dict[str, Any]:
    if event_type == "page_view":
        return {"page_type": rng.choice(PAGE_TYPES), "category": rng.choice(CATEGORIES)}
    if event_type == "add_to_cart":
        return {"sku": f"sku-{rng.randrange(5000):05d}", "amount": round(rng.uniform(5, 200), 2),
                "quantity": rng.randint(1, 3), "category": rng.choice(CATEGORIES)}
    if event_type == "email_open":
        return {"campaign_id": f"cmp-{rng.randrange(40)}"}
    if event_type == "email_click":
        return {"campaign_id": f"cmp-{rng.randrange(40)}", "link_category": rng.choice(CATEGORIES)}
    if event_type == "purchase":
        return {"order_id": f"o-{rng.getrandbits(48):012x}", "amount": round(rng.uniform(10, 400), 2),
                "currency": "EUR", "items": rng.randint(1, 5), "category": rng.choice(CATEGORIES)}
    if event_type == "call_center_contact":
        return {"topic": rng.choice(TOPICS), "outcome": rng.choice(OUTCOMES)}
    raise ValueError(event_type)


def generate(events: int, customers: int, *, seed: int = 42, end_ms: int | None = None,
             span_ms: int = 2 * 3600 * 1000, jitter_ms: int = 3000, zipf_s: float = ZIPF_S
             ) -> Iterator[dict[str, Any]]:
    """The reference events as dicts (deterministic for a given seed and `end_ms`). `zipf_s`: the skew
    of customers' activity (at 1.1, the busiest customer sends 14% of 200,000 events over 50,000)."""
    rng = random.Random(seed)
    cdf = zipf_cdf(customers, zipf_s)
    types = [t for t, _ in MIX]
    type_cdf = list(itertools.accumulate(w for _, w in MIX))
    end_ms = int(time.time() * 1000) if end_ms is None else end_ms
    start_ms = end_ms - span_ms
    step = span_ms / max(events, 1)
    for i in range(events):
        rank = bisect.bisect_left(cdf, rng.random()) + 1
        event_type = types[min(bisect.bisect_left(type_cdf, rng.random()), len(types) - 1)]
        ts = int(start_ms + i * step) - rng.randrange(jitter_ms + 1)
        event = {"event_id": f"e{seed}-{i:08d}", "type": event_type, "ts": ts,
                 "customer_id": customer_id(min(rank, customers))}
        event.update(_attrs(event_type, rng))
        yield event


ANONYMOUS_SHARE = 0.3  # of web events: an anonymous visitor's
LOGIN_SHARE = 0.04  # of anonymous visitors' events: a sign-in
WEB_TYPES = frozenset({"page_view", "add_to_cart", "purchase"})


def with_identity(events: Iterator[dict[str, Any]], customers: int, *,
                  seed: int = 42) -> Iterator[tuple[str, dict[str, Any]]]:
    """(Kafka key, event) of the `identity` variant (module docstring), from the reference events."""
    rng = random.Random(seed + 7)
    for event in events:
        customer = event["customer_id"]
        if event["type"] not in WEB_TYPES:
            yield customer, event
            continue
        if rng.random() >= ANONYMOUS_SHARE:  # a known customer: their cookie and their customer id
            yield f"k{customer[1:]}", event
            continue
        visitor = rng.randrange(1, customers + 1)
        cookie = f"a{visitor:07d}"
        if rng.random() < LOGIN_SHARE:
            yield cookie, {"event_id": event["event_id"], "type": "login", "ts": event["ts"],
                           "customer_id": customer_id(visitor), "email": f"{customer_id(visitor)}@example.com",
                           "method": "password"}
            continue
        del event["customer_id"]
        if event["type"] == "purchase":  # anonymous visitors do not buy: they fill carts
            event = {"event_id": event["event_id"], "type": "add_to_cart", "ts": event["ts"], "sku": "sku-00001",
                     "amount": event["amount"], "quantity": 1, "category": event["category"]}
        yield cookie, event


def serialise(events: int, customers: int, *, identity: bool = False, **kwargs: Any) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs ready to produce: the key is the customer id (in the `identity` variant, the
    cookie for web events), the value orjson bytes."""
    stream = generate(events, customers, **kwargs)
    if identity:
        return [(key.encode(), orjson.dumps(e))
                for key, e in with_identity(stream, customers, seed=kwargs.get("seed", 42))]
    return [(e["customer_id"].encode(), orjson.dumps(e)) for e in stream]


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4", "enable.idempotence": False, "acks": "1"}


def produce_events(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce every record and wait for all acks; returns the seconds it took."""
    producer = Producer(producer_config(bootstrap))
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    started = time.perf_counter()
    produce = producer.produce
    for n, (key, value) in enumerate(records):
        while True:
            try:
                produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 10000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"workload production failed: {remaining} undelivered, errors: {failures[:3]}")
    return time.perf_counter() - started


class LiveEvents:
    """Fresh events for the latency phase: the reference mix with `ts` = now and the send time in the id.

    `event_id` is `L<seq>-<send_ns>`, so a decision's `trigger.id` gives back the send time without
    shared state. Every `probe_every`-th event is a `call_center_contact` with outcome "unresolved" for a
    never-seen customer: `call_center_follow_up` needs no consent and its 1-day cooldown never blocks a
    new customer, so those events always yield a decision.
    """

    def __init__(self, customers: int, *, seed: int = 7, probe_every: int = 10, first_seq: int = 0) -> None:
        self._rng = random.Random(seed)
        self._cdf = zipf_cdf(customers)
        self._types = [t for t, _ in MIX]
        self._type_cdf = list(itertools.accumulate(w for _, w in MIX))
        self._customers = customers
        self._probe_every = probe_every
        self._seq = first_seq  # separate streams (warm-up, measurement) never share a probe customer

    def next(self) -> tuple[bytes, bytes]:
        rng = self._rng
        seq = self._seq
        self._seq += 1
        now_ns = time.time_ns()
        if seq % self._probe_every == 0:
            cust = f"probe-{seq:09d}"
            event: dict[str, Any] = {"type": "call_center_contact", "topic": "billing", "outcome": "unresolved"}
        else:
            rank = bisect.bisect_left(self._cdf, rng.random()) + 1
            cust = customer_id(min(rank, self._customers))
            event_type = self._types[min(bisect.bisect_left(self._type_cdf, rng.random()), len(self._types) - 1)]
            event = {"type": event_type, **_attrs(event_type, rng)}
        event.update(event_id=f"L{seq}-{now_ns}", ts=now_ns // 1_000_000, customer_id=cust)
        return cust.encode(), orjson.dumps(event)


def send_ns_of(trigger_id: str) -> int | None:
    """The send time a `LiveEvents` id carries, or None for any other id."""
    parsed = parse_live_id(trigger_id)
    return None if parsed is None else parsed[1]


def parse_live_id(event_id: str) -> tuple[int, int] | None:
    """(seq, send ns) of a `LiveEvents` id `L<seq>-<send ns>`, or None for any other id."""
    if not event_id.startswith("L"):
        return None
    seq, _, ns = event_id[1:].partition("-")
    return (int(seq), int(ns)) if seq.isdigit() and ns.isdigit() else None
