"""The typed profile: one customer's state, in parts that each have one owning module.

    Profile
      facts    Facts            durable facts             operators/profile/facts.py
                 (recent_orders: the last N orders, no PII)
      signals  {name: state}    transient signals         operators/signals/ (one module per kind)
      history  History          cooldowns and caps        operators/profile/history.py
      seen     {event_id: until} the dedupe window        operators/profile/dedupe.py
      prune_at, expire_at       when the earliest / the last transient entry expires (event time)
      ids      {id type: [key]} the identifiers it holds   operators/identity/ (set by the shard)

Merging two profiles (identity stitching) is `operators/engine/merge.py`, each part merged by its
owner: `facts.merge`, `history.merge`, `dedupe.merge`, and every signal kind's `merge`.

Equal profiles store the same bytes (operators/profile/codec.py sorts every dict but `seen`, whose
order is its arrival order and says which id goes first at the cap). The lists whose order carries
no meaning have a defined one, kept by their owners: a distinct signal's members by value,
a channel's `sent` entries by time, recent orders by
(ts, order id, ...), count and sum buckets by start. `ids` keep their link order, which
says which key addresses a decision.

msgspec Structs: attribute access as fast as slotted classes, checked by mypy, and encoded to
MessagePack (operators/profile/codec.py) several times faster than JSON. A signal's state is the
plain list its kind defines (the kinds are pluggable, so the profile cannot name their types).
`gc=False`: a profile never takes part in a reference cycle, so the collector need not track it
(the shards keep tens of thousands of them alive).
"""

from __future__ import annotations

from typing import Any

import msgspec

# Version 1: a JSON object (orjson). Version 2: this Struct in MessagePack. codec.py reads both.
PROFILE_FORMAT = 2


class Order(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One recent order, without PII: what an interaction needs to talk about it ("last week's web order").

    Frozen (hashable: merged as a set) and stored as a list (compact). `order_id` and `category` are None
    when the event did not say; `currency` too."""

    ts: int
    order_id: str | None
    amount: float
    currency: str | None
    channel: str
    category: str | None


class Facts(msgspec.Struct, gc=False):
    """Durable facts: they keep their value for months and do not depend on arrival order."""

    version: int = 0  # events applied; goes into every decision
    first_seen: int | None = None
    last_seen: int | None = None
    orders: int = 0
    revenue: float = 0.0
    first_purchase: int | None = None
    last_purchase: int | None = None
    last_contact: dict[str, int] = msgspec.field(default_factory=dict)
    contacts: dict[str, int] = msgspec.field(default_factory=dict)
    # "<channel>:<purpose>" -> [granted, ts, event_id]; the latest by (ts, event_id) wins.
    consent: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    last_complaint: int | None = None
    # The newest orders on every channel, oldest first, bounded by count and age (facts.ORDER_LIMITS).
    recent_orders: list[Order] = msgspec.field(default_factory=list)


class History(msgspec.Struct, gc=False):
    """What was decided, for cooldowns and frequency caps; every entry carries when it expires."""

    fired: dict[str, list[int]] = msgspec.field(default_factory=dict)  # rule -> [ts, until]
    sent: dict[str, list[list[int]]] = msgspec.field(default_factory=dict)  # channel -> [[ts, until], ...]


class Profile(msgspec.Struct, gc=False):
    customer: str
    facts: Facts = msgspec.field(default_factory=Facts)
    signals: dict[str, Any] = msgspec.field(default_factory=dict)
    history: History = msgspec.field(default_factory=History)
    seen: dict[str, int] = msgspec.field(default_factory=dict)  # event_id -> until (arrival order)
    prune_at: int | None = None
    expire_at: int | None = None
    # The pseudonymous keys of the identifiers this profile holds, by id type, oldest link first:
    # how a decision says where the customer can be reached. Empty until known (a profile stored
    # before they were recorded, or built by a caller that does not know its identifier's type).
    ids: dict[str, list[str]] = msgspec.field(default_factory=dict)
    format: int = PROFILE_FORMAT

    def note_expiry(self, expires_at: int) -> None:
        """A transient entry was added or extended: keep `prune_at` (the earliest expiry, so pruning
        can skip until something has expired) and `expire_at` (the latest: when all of it is gone)."""
        prune_at = self.prune_at
        if prune_at is None or expires_at < prune_at:
            self.prune_at = expires_at
        expire_at = self.expire_at
        if expire_at is None or expires_at > expire_at:
            self.expire_at = expires_at


def new_profile(customer: str) -> Profile:
    return Profile(customer)
