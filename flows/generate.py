"""Synthetic multi-channel events: scripted personas over a background of ordinary traffic.

Personas behave the way real customers do, so every default rule, cap, suppression and consent
path shows up: browsers, cart abandoners, buyers who come back and buy, loyal buyers, lapsed
high-value customers, customers who opted out or never consented, complainers, callers, and an
anonymous shopper who fills a cart before signing in (identity stitching). Web events carry the
visitor's cookie as Kafka key next to the customer id, which links the two. Some messages carry PII
fields (they must be dropped) and a few are garbage (they must be dead-lettered).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import orjson
from confluent_kafka import Producer

from nextclick.operators.channels import EVENT_CHANNELS
from nextclick.operators.infra.clock import Clock

MINUTE = 60_000
DAY = 86_400_000
CATEGORIES = ("shoes", "jackets", "bags", "watches", "outdoor", "kitchen")


@dataclass(frozen=True)
class Planned:
    """One message to send once the clock reaches `at_ms` (its event time, unless it is garbage)."""

    at_ms: int
    channel: str
    key: bytes | None
    value: bytes
    persona: str


def topic_for(topics: Sequence[str], channel: str) -> str:
    """One topic per channel when the names say so (`*.web`, `*.email`...), else the first topic."""
    for topic in topics:
        if topic.rsplit(".", 1)[-1] == channel:
            return topic
    return topics[0]


class _Script:
    def __init__(self, persona: str, customer: str, start: int, rng: random.Random) -> None:
        self.persona, self.customer, self.t, self.rng = persona, customer, start, rng
        self.out: list[Planned] = []
        self.n = 0

    def wait(self, minutes: float) -> _Script:
        self.t += int(minutes * MINUTE)
        return self

    def emit(self, event_type: str, at: int | None = None, key: str | None = None, anonymous: bool = False,
             **attrs: Any) -> _Script:
        """One event; `anonymous`: without the customer id (only the Kafka key names the visitor)."""
        self.n += 1
        ts = self.t if at is None else at
        channel = EVENT_CHANNELS[event_type]
        body = {"event_id": f"{self.customer}-{self.n}", "type": event_type, "ts": ts,
                **({} if anonymous else {"customer_id": self.customer}), **attrs}
        # The identifier the channel knows is the Kafka key; the payload names the customer.
        kafka_key = key or {"web": f"cookie-{self.customer}", "mobile": f"device-{self.customer}",
                            "email": f"{self.customer}@example.com"}.get(channel, self.customer)
        self.out.append(Planned(ts if at is None else self.t, channel, kafka_key.encode(),
                                orjson.dumps(body), self.persona))
        return self

    def browse(self, views: int, gap_min: float = 1.5) -> _Script:
        for _ in range(views):
            self.emit("page_view", page_type="product", category=self.rng.choice(CATEGORIES)).wait(gap_min)
        return self

    def consent(self, granted: bool = True, channel: str = "email") -> _Script:
        return self.emit("consent", channel=channel, purpose="marketing", granted=granted)


def _persona(name: str, customer: str, start: int, rng: random.Random) -> list[Planned]:
    s = _Script(name, customer, start, rng)
    amount = round(rng.uniform(25, 180), 2)
    if name == "browser":
        s.browse(rng.randint(4, 7))
    elif name == "cart_abandoner":
        s.consent().browse(3).emit("add_to_cart", sku=f"sku-{rng.randint(1, 999)}", amount=amount,
                                   quantity=1, category=rng.choice(CATEGORIES))
    elif name == "cart_then_buyer":
        s.consent().browse(2).emit("add_to_cart", sku="sku-42", amount=amount, quantity=1).wait(8)
        s.emit("purchase", order_id=f"o-{customer}", amount=amount, currency="EUR", items=1)
    elif name == "loyal_buyer":
        s.consent().emit("app_open", app_version="5.2").wait(2)
        s.emit("app_purchase", order_id=f"o1-{customer}", amount=amount, currency="EUR", items=2).wait(20)
        s.emit("store_purchase", order_id=f"o2-{customer}", amount=round(amount / 2 + 20, 2), currency="EUR")
    elif name == "lapsed_high_value":
        for days in (300, 240, 180):
            s.emit("purchase", at=start - days * DAY, order_id=f"h{days}-{customer}",
                   amount=round(rng.uniform(150, 400), 2), currency="EUR", items=2)
        s.consent().emit("page_view", page_type="home").wait(3)
        s.emit("purchase", order_id=f"o-{customer}", amount=amount, currency="EUR").wait(5)
        s.emit("add_to_cart", sku="sku-7", amount=amount, quantity=1)
    elif name == "opted_out":
        s.consent(granted=False, channel="all").emit("purchase", order_id=f"o-{customer}", amount=amount)
    elif name == "no_consent":
        s.browse(1).emit("purchase", order_id=f"o-{customer}", amount=amount, currency="EUR")
    elif name == "complainer":
        s.consent().emit("complaint", topic="late_delivery", severity="high", note="Call me on +44 7700 900123").wait(2)
        s.emit("purchase", order_id=f"o-{customer}", amount=amount).wait(1)
        s.emit("call_center_contact", topic="delivery", outcome="unresolved", name="Jane Example")
    elif name == "caller":
        s.emit("call_center_contact", topic="billing", outcome="unresolved", email=f"{customer}@example.com")
    elif name == "anonymous_shopper":
        # Browses and fills a cart known only by a cookie, then signs in (cookie, customer id, email): the
        # anonymous profile merges into the customer's, and the abandoned cart's email goes to the email key.
        cookie = f"anon-{customer}"
        for _ in range(3):
            s.emit("page_view", key=cookie, anonymous=True, page_type="product",
                   category=rng.choice(CATEGORIES)).wait(1.5)
        s.emit("add_to_cart", key=cookie, anonymous=True, sku=f"sku-{rng.randint(1, 999)}", amount=amount,
               quantity=1, category=rng.choice(CATEGORIES)).wait(4)
        s.emit("login", key=cookie, email=f"{customer}@example.com", method="password").wait(1)
        s.consent()
    else:
        raise ValueError(f"unknown persona {name!r}")
    return s.out


PERSONAS = ("browser", "cart_abandoner", "cart_then_buyer", "loyal_buyer", "lapsed_high_value",
            "opted_out", "no_consent", "complainer", "caller", "anonymous_shopper")


def garbage(rng: random.Random, at: int, n: int) -> Planned:
    """A message that must be dead-lettered: broken JSON, no event_id, or seconds for milliseconds."""
    kind = n % 3
    if kind == 0:
        value = b'{"event_id": "broken-%d", "type": "page_view", "ts": ' % n
    elif kind == 1:
        value = orjson.dumps({"type": "page_view", "ts": at, "customer_id": f"visitor-{n}"})
    else:
        value = orjson.dumps({"event_id": f"sdk-seconds-{n}", "type": "app_open", "ts": at // 1000,
                              "customer_id": f"visitor-{n}"})
    return Planned(at, "web" if kind < 2 else "mobile", f"garbage-{n}".encode(), value, "garbage")


def plan(start_ms: int, *, personas_each: int = 2, seed: int = 7, spread_min: float = 10) -> list[Planned]:
    """The scripted part: `personas_each` customers of every persona, starting within `spread_min`."""
    rng = random.Random(seed)
    out: list[Planned] = []
    for name in PERSONAS:
        for i in range(personas_each):
            begin = start_ms + int(rng.uniform(0, spread_min) * MINUTE)
            out += _persona(name, f"{name}-{i}", begin, rng)
    return sorted(out, key=lambda p: p.at_ms)


def background(rng: random.Random, at: int, customers: int, n: int) -> Planned:
    """Ordinary traffic: mostly page views and email opens from a pool of visitors."""
    customer = f"visitor-{rng.randint(1, customers)}"
    roll = rng.random()
    if roll < 0.7:
        event_type, attrs = "page_view", {"page_type": "category", "category": rng.choice(CATEGORIES)}
    elif roll < 0.85:
        event_type, attrs = "email_open", {"campaign_id": "weekly"}
    elif roll < 0.95:
        event_type, attrs = "app_open", {"app_version": "5.2"}
    else:
        event_type, attrs = "email_click", {"campaign_id": "weekly", "link_category": "sale"}
    body = {"event_id": f"bg-{n}", "type": event_type, "ts": at, "customer_id": customer, **attrs}
    return Planned(at, EVENT_CHANNELS[event_type], customer.encode(), orjson.dumps(body), "background")


@dataclass
class GenerationStats:
    sent: int = 0
    by_channel: dict[str, int] | None = None
    garbage: int = 0


def stream(producer: Producer, topics: Sequence[str], clock: Clock, scripted: list[Planned], *,
           rate: float, customers: int, duration_ms: int, garbage_every: int = 0, seed: int = 7,
           stop: threading.Event | None = None, on_sent: Callable[[Planned], None] | None = None) -> GenerationStats:
    """Send `scripted` messages when the clock reaches them, plus `rate` background events per real
    second, for `duration_ms` of clock time (scripted messages due later are not sent); every
    `garbage_every`-th background message is followed by a garbage one."""
    rng = random.Random(seed + 1)
    stats = GenerationStats(by_channel={})
    start = clock.now_ms()
    pending: Iterator[Planned] = iter(scripted)
    upcoming = next(pending, None)
    started_real = time.monotonic()
    n = 0
    while not (stop and stop.is_set()):
        now = clock.now_ms()
        if now - start > duration_ms:
            break
        batch: list[Planned] = []
        while upcoming is not None and upcoming.at_ms <= now:
            batch.append(upcoming)
            upcoming = next(pending, None)
        due_background = int((time.monotonic() - started_real) * rate) - n
        for _ in range(max(0, due_background)):
            n += 1
            batch.append(background(rng, now - rng.randint(0, 2000), customers, n))
            if garbage_every and n % garbage_every == 0:
                stats.garbage += 1
                batch.append(garbage(rng, now, n))
        for item in batch:
            producer.produce(topic_for(topics, item.channel), item.value, item.key)
            stats.sent += 1
            assert stats.by_channel is not None
            stats.by_channel[item.channel] = stats.by_channel.get(item.channel, 0) + 1
            if on_sent:
                on_sent(item)
        producer.poll(0)
        time.sleep(0.02)
    producer.flush(30)
    return stats
