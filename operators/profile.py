"""Durable (near-real-time) customer facts and the derived view that rules read.

A profile is a plain dict so that it serialises with orjson at checkpoint speed. Every durable
update is commutative (sums, counts, min/max by event time, last-writer-wins by (ts, event_id)), so
the durable part of a profile does not depend on the order events arrive in.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from operators.channels import CONSENT_FAMILY, PURCHASE_TYPES
from operators.records import Event

Profile = dict[str, Any]

PROFILE_FORMAT = 1
DAY_MS = 86_400_000



def new_profile(customer: str) -> Profile:
    """An empty profile; `version` counts applied events and goes into every decision."""
    return {
        "format": PROFILE_FORMAT,
        "customer": customer,
        "version": 0,
        "first_seen": None,
        "last_seen": None,
        "orders": 0,
        "revenue": 0.0,
        "first_purchase": None,
        "last_purchase": None,
        "last_contact": {},
        "contacts": {},
        # "<channel>:<purpose>" -> [granted, ts, event_id]; latest by (ts, event_id) wins.
        "consent": {},
        "last_complaint": None,
        # Transient state lives under "signals", "timers", "seen", "sent" and "fired", and "prune_at"
        # (when its earliest entry expires) is added while any exists; see windows.py.
        "signals": {},
        "timers": {},
        "seen": {},
        "sent": {},
        "fired": {},
    }


class ProfileEncodeError(ValueError):
    """A profile holds a value that would not read back as written (JSON has no inf or nan)."""


def _finite(value: float, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ProfileEncodeError(f"{what} is not a finite number")
    return value


def encode_profile(profile: Profile) -> bytes:
    """The stored form. orjson writes inf and nan as null, silently: refuse them instead."""
    _finite(profile["revenue"], "revenue")
    for name, state in profile["signals"].items():
        for bucket in state.get("buckets", ()):
            _finite(bucket[1], f"signal {name}")
    return orjson.dumps(profile)


def decode_profile(blob: bytes) -> Profile:
    """A stored profile; raises if the bytes are not one (the caller sets them aside)."""
    profile = orjson.loads(blob)
    if type(profile) is not dict or profile.get("format") != PROFILE_FORMAT or "customer" not in profile:
        raise ValueError("stored bytes are not a profile of this format")
    return profile


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _max(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


def apply_durable(profile: Profile, event: Event) -> None:
    """Fold one event into the durable facts, in place."""
    ts = event.ts
    profile["version"] += 1
    profile["first_seen"] = _min(profile["first_seen"], ts)
    profile["last_seen"] = _max(profile["last_seen"], ts)
    channel = event.channel
    profile["last_contact"][channel] = _max(profile["last_contact"].get(channel), ts)
    profile["contacts"][channel] = profile["contacts"].get(channel, 0) + 1
    if event.type in PURCHASE_TYPES:
        profile["orders"] += 1
        revenue = round(profile["revenue"] + float(event.attrs.get("amount", 0.0)), 2)
        profile["revenue"] = _finite(revenue, "revenue")
        profile["first_purchase"] = _min(profile["first_purchase"], ts)
        profile["last_purchase"] = _max(profile["last_purchase"], ts)
    elif event.type == "consent":
        key = f"{event.attrs['channel']}:{event.attrs.get('purpose', 'marketing')}"
        current = profile["consent"].get(key)
        candidate = [bool(event.attrs["granted"]), ts, event.event_id]
        if current is None or (candidate[1], candidate[2]) > (current[1], current[2]):
            profile["consent"][key] = candidate
    elif event.type == "complaint":
        profile["last_complaint"] = _max(profile["last_complaint"], ts)


def consent_state(profile: Profile, channel: str, purpose: str = "marketing") -> bool | None:
    """Explicit consent for a decision channel: True, False, or None when the customer never said.

    A revocation for channel "all" (do-not-contact) overrides any per-channel grant that is older.
    """
    family = CONSENT_FAMILY.get(channel, channel)
    # Consent events may name an alias of the family (a "mobile" consent governs "push" decisions).
    keys = [family, *sorted(c for c, f in CONSENT_FAMILY.items() if f == family and c != family), "all"]
    candidates = [c for c in (profile["consent"].get(f"{k}:{purpose}") for k in keys) if c is not None]
    if not candidates:
        return None
    latest = max(candidates, key=lambda c: (c[1], c[2]))
    return bool(latest[0])


def rfm_segment(profile: Profile, now_ms: int) -> tuple[int, int, int, str]:
    """Recency, frequency and monetary scores (1-5) and a segment name derived from them."""
    last = profile["last_purchase"]
    if last is None:
        return (0, 0, 0, "prospect")
    days = max(0, (now_ms - last) // DAY_MS)
    r = 5 if days <= 7 else 4 if days <= 30 else 3 if days <= 90 else 2 if days <= 180 else 1
    n = profile["orders"]
    f = 5 if n >= 20 else 4 if n >= 10 else 3 if n >= 5 else 2 if n >= 2 else 1
    v = profile["revenue"]
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


def preferred_channel(profile: Profile) -> str | None:
    """The channel the customer touches most often (ties broken by most recent contact)."""
    contacts: dict[str, int] = profile["contacts"]
    if not contacts:
        return None
    return max(contacts, key=lambda c: (contacts[c], profile["last_contact"].get(c, 0), c))


def durable_view(profile: Profile, now_ms: int) -> dict[str, Any]:
    """The durable attributes rules can name, flat, with derived values computed on read."""
    r, f, m, segment = rfm_segment(profile, now_ms)
    orders = profile["orders"]
    last = profile["last_purchase"]
    complaint = profile["last_complaint"]
    return {
        "orders": orders,
        "lifetime_value": profile["revenue"],
        "average_order_value": round(profile["revenue"] / orders, 2) if orders else 0.0,
        "first_purchase": profile["first_purchase"],
        "last_purchase": last,
        "days_since_last_purchase": None if last is None else (now_ms - last) // DAY_MS,
        "days_since_complaint": None if complaint is None else (now_ms - complaint) // DAY_MS,
        "recency_score": r,
        "frequency_score": f,
        "monetary_score": m,
        "segment": segment,
        "preferred_channel": preferred_channel(profile),
        "email_contacts": profile["contacts"].get("email", 0),
        "call_center_contacts": profile["contacts"].get("call_center", 0),
    }
