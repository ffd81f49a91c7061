"""The channel vocabulary, defined once: where touches arrive, where decisions go, what consent covers.

The JSON Schemas (the consent event's `channel` enum, the decision body's `channel` enum) must list
the same names; tests/domain/test_channels.py holds them to it.
"""

from __future__ import annotations

# Channels a touch can arrive on. An event type maps to exactly one channel (see `EVENT_CHANNELS`).
CHANNELS = ("web", "email", "mobile", "store", "call_center")

# Every event type the flow understands, with the channel it belongs to. Each has a JSON Schema in
# `schemas/events/<type>.json`; adding a type means adding both.
EVENT_CHANNELS: dict[str, str] = {
    "page_view": "web",
    "add_to_cart": "web",
    "purchase": "web",
    "email_open": "email",
    "email_click": "email",
    "app_open": "mobile",
    "app_purchase": "mobile",
    "store_purchase": "store",
    "call_center_contact": "call_center",
    "consent": "web",
    "complaint": "call_center",
    # Identity: the identifiers they name are linked into one profile (operators/identity/).
    "login": "web",
    "identify": "web",
}

# Event types that count as a purchase for the durable facts and the purchase suppressions.
PURCHASE_TYPES = frozenset({"purchase", "app_purchase", "store_purchase"})

# The identifier types an event can name (the payload's `id_type`); a customer key is the keyed hash
# of one (operators/identity/pseudonyms.py).
ID_TYPES = frozenset({"customer", "cookie", "device", "email", "phone"})

# Channels a decision can be sent on (a rule's `channel`, caps and consent policy per channel).
DECISION_CHANNELS = ("email", "ads", "sms", "push", "web", "call_center")

# The consent family a channel's consent counts for: a "mobile" consent governs "push" decisions.
CONSENT_FAMILY: dict[str, str] = {"email": "email", "ads": "ads", "sms": "sms", "push": "push",
                                  "mobile": "push", "web": "web", "call_center": "call_center"}

# What a consent event may name: every family member, or "all" (do not contact at all).
CONSENT_CHANNELS = (*CONSENT_FAMILY, "all")
