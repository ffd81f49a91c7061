"""Durable (near-real-time) facts: what one event adds to them, and the attributes rules read from them.

Every update is commutative (sums, counts, min/max by event time, last-writer-wins by
(ts, event_id), the newest orders of a set), so the facts do not depend on the order events arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from nextclick.operators.channels import CHANNELS, CONSENT_FAMILY, PURCHASE_TYPES
from nextclick.operators.errors import NextclickError
from nextclick.operators.profile.model import Facts, Order
from nextclick.operators.records import Event

DAY_MS = 86_400_000


class OrderLimits(NamedTuple):
    """How many recent orders a profile keeps, and how old the oldest may be next to the newest."""

    keep: int = 10
    max_age_ms: int = 365 * DAY_MS


# One setting per process (every worker thread runs the same configuration): `configure_orders`, from
# `[profile]` (operators/infra/config.py) when the flow is built. Read at each order, never per event.
ORDER_LIMITS = OrderLimits()


def configure_orders(keep: int, max_age_ms: int) -> None:
    """Set the recent-orders bounds for this process (the flow does it before it starts)."""
    global ORDER_LIMITS
    if keep < 0 or max_age_ms < 0:
        raise ValueError("recent orders: the number kept and the age must be at least 0")
    ORDER_LIMITS = OrderLimits(keep, max_age_ms)


def _order_key(order: Order) -> tuple[Any, ...]:
    """The defined order of recent orders: by time, then every field (None before any value), so two
    profiles holding the same orders hold them in the same order and store the same bytes."""
    return (order.ts, order.order_id or "", order.order_id is not None, order.channel, order.amount,
            order.currency or "", order.category or "")


def bound_orders(orders: Iterable[Order], limits: OrderLimits | None = None) -> list[Order]:
    """The orders a profile keeps of these: distinct, within `max_age_ms` of the newest, the newest
    `keep`, oldest first.

    A function of the set of orders alone (the age is judged against the newest order, not a clock), so
    keeping it after every order and after every merge is the same as keeping it once over all of them:
    an order dropped from one side was older than ones that outrank it in the union too.
    """
    limits = limits or ORDER_LIMITS
    kept = sorted(set(orders), key=_order_key)
    if not kept or limits.keep == 0:
        return []
    floor = kept[-1].ts - limits.max_age_ms
    kept = [o for o in kept[-limits.keep:] if o.ts >= floor]
    return kept


def _order_of(event: Event) -> Order:
    """The order an event records: ids and amounts only, never a name or an address."""
    attrs = event.attrs
    order_id, currency, category = attrs.get("order_id"), attrs.get("currency"), attrs.get("category")
    return Order(event.ts, str(order_id) if order_id is not None else None,
                 finite(float(attrs.get("amount", 0.0)), "order amount"),
                 str(currency).upper() if currency is not None else None, event.channel,
                 str(category) if category is not None else None)


class ProfileEncodeError(NextclickError, ValueError):
    """A profile value that would not be stored as written (a non-finite number): refused where it arises."""


def finite(value: float, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ProfileEncodeError(f"{what} is not a finite number")
    return value


def apply_facts(facts: Facts, event: Event) -> None:
    """Fold one event into the durable facts, in place."""
    ts = event.ts
    facts.version += 1
    first = facts.first_seen
    if first is None or ts < first:
        facts.first_seen = ts
    last = facts.last_seen
    if last is None or ts > last:
        facts.last_seen = ts
    channel = event.channel
    contact = facts.last_contact.get(channel)
    if contact is None or ts > contact:
        facts.last_contact[channel] = ts
    contacts = facts.contacts
    contacts[channel] = contacts.get(channel, 0) + 1
    event_type = event.type
    if event_type in PURCHASE_TYPES:
        facts.orders += 1
        facts.revenue = finite(round(facts.revenue + float(event.attrs.get("amount", 0.0)), 2), "revenue")
        first = facts.first_purchase
        if first is None or ts < first:
            facts.first_purchase = ts
        last = facts.last_purchase
        if last is None or ts > last:
            facts.last_purchase = ts
        facts.recent_orders = bound_orders([*facts.recent_orders, _order_of(event)])
    elif event_type == "consent":
        attrs = event.attrs
        key = f"{attrs['channel']}:{attrs.get('purpose', 'marketing')}"
        current = facts.consent.get(key)
        if current is None or (ts, event.event_id) > (current[1], current[2]):
            facts.consent[key] = [bool(attrs["granted"]), ts, event.event_id]
    elif event_type == "complaint":
        last = facts.last_complaint
        if last is None or ts > last:
            facts.last_complaint = ts


def merge(facts: Facts, other: Facts) -> None:
    """Fold another profile's facts into these, in place (identity stitching).

    Every fact is a commutative monoid, as `apply_facts` already treats it: counts and sums add,
    first is the minimum and last the maximum, consent goes to the latest by (ts, event_id). So the
    result is the same whichever profile absorbs the other, and the same as if one profile had
    applied both profiles' events.
    """
    facts.version += other.version
    facts.first_seen = _earliest(facts.first_seen, other.first_seen)
    facts.last_seen = _latest(facts.last_seen, other.last_seen)
    facts.orders += other.orders
    facts.revenue = finite(round(facts.revenue + other.revenue, 2), "revenue")
    facts.first_purchase = _earliest(facts.first_purchase, other.first_purchase)
    facts.last_purchase = _latest(facts.last_purchase, other.last_purchase)
    last_contact = facts.last_contact
    for channel, ts in other.last_contact.items():
        current = last_contact.get(channel)
        if current is None or ts > current:
            last_contact[channel] = ts
    contacts = facts.contacts
    for channel, n in other.contacts.items():
        contacts[channel] = contacts.get(channel, 0) + n
    consent = facts.consent
    for key, entry in other.consent.items():
        mine = consent.get(key)
        if mine is None or (entry[1], entry[2]) > (mine[1], mine[2]):
            consent[key] = list(entry)
    facts.last_complaint = _latest(facts.last_complaint, other.last_complaint)
    if other.recent_orders:
        facts.recent_orders = bound_orders([*facts.recent_orders, *other.recent_orders])


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def consent_keys(channel: str, purpose: str) -> tuple[str, ...]:
    """The consent entries that decide a decision on `channel` for `purpose`, computed once per rule:
    the channel's family, the family's aliases (a "mobile" consent governs "push"), and "all"."""
    family = CONSENT_FAMILY.get(channel, channel)
    names = [family, *sorted(c for c, f in CONSENT_FAMILY.items() if f == family and c != family), "all"]
    return tuple(f"{name}:{purpose}" for name in names)


def consent_state(facts: Facts, keys: tuple[str, ...]) -> bool | None:
    """Explicit consent: True, False, or None when the customer never said (then the channel's policy
    decides). The latest by (ts, event_id) of the entries named by `keys` wins, so a revocation for
    "all" overrides any older per-channel grant and a newer grant overrides an older "all"."""
    consent = facts.consent
    latest: list[Any] | None = None
    for key in keys:
        entry = consent.get(key)
        if entry is not None and (latest is None or (entry[1], entry[2]) > (latest[1], latest[2])):
            latest = entry
    return None if latest is None else bool(latest[0])


def rfm(facts: Facts, now_ms: int) -> tuple[int, int, int, str]:
    """Recency, frequency and monetary scores (1-5) and the segment they make (docs/rules.md)."""
    last = facts.last_purchase
    if last is None:
        return (0, 0, 0, "prospect")
    days = max(0, (now_ms - last) // DAY_MS)
    r = 5 if days <= 7 else 4 if days <= 30 else 3 if days <= 90 else 2 if days <= 180 else 1
    n = facts.orders
    f = 5 if n >= 20 else 4 if n >= 10 else 3 if n >= 5 else 2 if n >= 2 else 1
    v = facts.revenue
    m = 5 if v >= 2000 else 4 if v >= 1000 else 3 if v >= 300 else 2 if v >= 100 else 1
    if r >= 4 and f >= 4:
        segment = "champion"
    elif r >= 3 and f >= 3:
        segment = "loyal"
    elif r <= 2 and m >= 3:
        segment = "lapsed_high_value"
    elif r <= 2:
        segment = "lapsed"
    elif f == 1:
        segment = "new_customer"
    else:
        segment = "active"
    return (r, f, m, segment)


def preferred_channel(facts: Facts) -> str | None:
    """The channel the customer touches most often (ties broken by most recent contact, then name)."""
    contacts = facts.contacts
    if not contacts:
        return None
    last = facts.last_contact
    return max(contacts, key=lambda c: (contacts[c], last.get(c, 0), c))


def _days_since(at: int | None, now_ms: int) -> int | None:
    return None if at is None else (now_ms - at) // DAY_MS


def recent_orders(facts: Facts, now_ms: int) -> list[Order]:
    """The recent orders still within the age bound as of `now_ms`, oldest first."""
    floor = now_ms - ORDER_LIMITS.max_age_ms
    return [o for o in facts.recent_orders if o.ts >= floor]


def _last_order(facts: Facts) -> Order | None:
    orders = facts.recent_orders
    return orders[-1] if orders else None


def _last_order_field(facts: Facts, name: str) -> Any:
    last = _last_order(facts)
    return None if last is None else getattr(last, name)


def _hours_since_contact(channel: str) -> Callable[[Facts, int], int | None]:
    """Whole hours from the newest event on `channel` to `now_ms` (None: none on that channel yet)."""
    def hours(facts: Facts, now_ms: int) -> int | None:
        at = facts.last_contact.get(channel)
        return None if at is None else (now_ms - at) // 3_600_000
    return hours


# The durable attributes a rule can name, each computed on read as of the trigger's time.
ATTRIBUTES: dict[str, Callable[[Facts, int], Any]] = {
    "orders": lambda f, _now: f.orders,
    "lifetime_value": lambda f, _now: f.revenue,
    "average_order_value": lambda f, _now: round(f.revenue / f.orders, 2) if f.orders else 0.0,
    "first_purchase": lambda f, _now: f.first_purchase,
    "last_purchase": lambda f, _now: f.last_purchase,
    "days_since_last_purchase": lambda f, now: _days_since(f.last_purchase, now),
    "days_since_complaint": lambda f, now: _days_since(f.last_complaint, now),
    "recency_score": lambda f, now: rfm(f, now)[0],
    "frequency_score": lambda f, now: rfm(f, now)[1],
    "monetary_score": lambda f, now: rfm(f, now)[2],
    "segment": lambda f, now: rfm(f, now)[3],
    "preferred_channel": lambda f, _now: preferred_channel(f),
    "email_contacts": lambda f, _now: f.contacts.get("email", 0),
    "call_center_contacts": lambda f, _now: f.contacts.get("call_center", 0),
    # The newest recent order (missing when none is kept): "last week's web order".
    "last_order_channel": lambda f, _now: _last_order_field(f, "channel"),
    "last_order_category": lambda f, _now: _last_order_field(f, "category"),
    "last_order_amount": lambda f, _now: _last_order_field(f, "amount"),
    "hours_since_last_order": lambda f, now: None if (o := _last_order(f)) is None else (now - o.ts) // 3_600_000,
    # The customer's newest event on each touch channel (`last_contact`, kept since the first profile
    # format): "no email opened or clicked for 72 hours", "called us within the last day".
    **{f"hours_since_last_{channel}_contact": _hours_since_contact(channel) for channel in CHANNELS},
}


_INTEGER, _NUMBER = frozenset({"integer"}), frozenset({"integer", "number"})
SEGMENTS = ("prospect", "champion", "loyal", "lapsed_high_value", "lapsed", "new_customer", "active")
# What each attribute above can hold: its JSON types and the values it takes (None: any), so that the
# rules loader refuses a condition that can never hold (`segment == "loyl"`, `orders == true`).
ATTRIBUTE_KINDS: dict[str, tuple[frozenset[str], tuple[str, ...] | None]] = {
    **dict.fromkeys(("orders", "first_purchase", "last_purchase", "days_since_last_purchase", "days_since_complaint",
                     "recency_score", "frequency_score", "monetary_score", "email_contacts", "call_center_contacts",
                     "hours_since_last_order", *(f"hours_since_last_{c}_contact" for c in CHANNELS)), (_INTEGER, None)),
    **dict.fromkeys(("lifetime_value", "average_order_value", "last_order_amount"), (_NUMBER, None)),
    "segment": (frozenset({"string"}), SEGMENTS),
    "preferred_channel": (frozenset({"string"}), tuple(CHANNELS)),
    "last_order_channel": (frozenset({"string"}), tuple(CHANNELS)),
    "last_order_category": (frozenset({"string"}), None),
}


def durable_view(facts: Facts, now_ms: int) -> dict[str, Any]:
    """Every durable attribute as of `now_ms` (`nextclick profile get`, `rules explain`)."""
    return {name: get(facts, now_ms) for name, get in ATTRIBUTES.items()}
