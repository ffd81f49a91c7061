"""Pseudonymous customer keys: which raw identifier an event names, and its keyed hash.

The raw identifier (customer id, cookie, device id, email address, phone number) never leaves the
parser: everything downstream sees only `pseudonymize(...)`, a truncated HMAC-SHA256 under the
deployment's secret. The id type is part of the hashed text, so the same string used as a cookie and
as a device id gives two different keys.

An event names one identifier its profile is keyed by (`resolve_identifier`, as ever) and possibly
others (`other_identifiers`): links, which the parser checks against the identity guards on the raw
values (operators/identity/guards.py, `guard_links`) and passes on only as keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from nextclick.operators.channels import ID_TYPES

# What the Kafka key identifies when the payload does not say (`id_type`).
CHANNEL_DEFAULT_ID_TYPE: dict[str, str] = {
    "web": "cookie",
    "email": "email",
    "mobile": "device",
    "store": "customer",
    "call_center": "customer",
}

KEY_HEX_CHARS = 32


_BLOCK = 64  # SHA-256 block size


@lru_cache(maxsize=8)
def _hmac_states(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the HMAC inner and outer key pads (RFC 2104), computed once per secret.

    Copying them is about twice as fast as `hmac.digest`, which re-derives the pads on every call.
    """
    key = bytes(secret)
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))


def pseudonymize(id_type: str, raw_id: str, secret: bytes) -> str:
    """HMAC-SHA256(secret, "<id_type>:<raw_id>") as hex, first 32 characters (128 bits)."""
    inner_pad, outer_pad = _hmac_states(secret)
    inner = inner_pad.copy()
    inner.update(f"{id_type}:{raw_id}".encode())
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return outer.hexdigest()[:KEY_HEX_CHARS]


# Raw identifier -> key, for the identifiers seen last. A hit costs ~0.1 us instead of ~1 us for
# the HMAC. The secret is part of the cache key, so a cached key never outlives a secret change.
# Memory only (about 20 MB when full); it holds raw identifiers just as the parser's input does.
KEY_CACHE_SIZE = 65536


@lru_cache(maxsize=KEY_CACHE_SIZE)
def pseudonymize_cached(id_type: str, raw_id: str, secret: bytes) -> str:
    """`pseudonymize` through a bounded LRU cache of the last `KEY_CACHE_SIZE` identifiers."""
    return pseudonymize(id_type, raw_id, secret)


def resolve_identifier(payload: dict[str, Any], kafka_key: bytes | None,
                       channel: str) -> tuple[str, str] | None:
    """The (id_type, raw_id) an event is about, or None if it names nobody.

    A non-blank string `customer_id` in the payload wins, as ("customer", id). Otherwise the Kafka
    key (strict UTF-8, non-blank) with the payload's `id_type`, or the channel's default id type when
    `id_type` is absent. A key that is not UTF-8, an `id_type` outside `ID_TYPES` or a channel with no
    default gives None rather than a guess (the parser's schema refuses a bad `id_type` earlier).
    Blank means empty or only whitespace: such an id names nobody (it would put every producer's
    blank ids on one profile). Identifiers are otherwise used as sent, never trimmed.
    """
    return identifier_of(payload.get("customer_id"), payload.get("id_type"), kafka_key, channel)


def identifier_of(customer_id: Any, id_type: Any, kafka_key: bytes | None,
                  channel: str) -> tuple[str, str] | None:
    """`resolve_identifier` from the two payload fields it reads (None when a field is absent)."""
    if type(customer_id) is str and customer_id and not customer_id.isspace():
        return ("customer", customer_id)
    if not kafka_key:
        return None
    try:
        raw_id = (kafka_key if type(kafka_key) is bytes else bytes(kafka_key)).decode("utf-8")
    except (UnicodeDecodeError, TypeError, ValueError):
        return None
    if raw_id.isspace():
        return None
    if id_type is None:
        id_type = CHANNEL_DEFAULT_ID_TYPE.get(channel)
        if id_type is None:
            return None
    elif type(id_type) is not str or id_type not in ID_TYPES:
        return None
    return (id_type, raw_id)


def _names(value: Any) -> bool:
    """A non-blank string: an identifier that names someone."""
    return type(value) is str and bool(value) and not value.isspace()


def other_identifiers(primary: tuple[str, str], customer_id: Any, id_type: Any, kafka_key: bytes | None,
                      channel: str, named: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, str]]:
    """The raw identifiers an event names besides `primary` (the one `resolve_identifier` chose): each
    is a link to it (operators/identity/graph.py decides whether it holds).

    - the Kafka key, when a `customer_id` won over it and the key is not that same customer id
      (producers often key by the customer id: then it names nobody new). Its type is the payload's
      `id_type`, else the channel's default, as when the key is the identifier;
    - fields the event type's schema declares as identifiers (`x-nextclick-identifiers`: the email of
      a `login`, the device id of an `identify`...), when they are non-blank strings.
    Each (type, value) once; never `primary` itself.
    """
    out: list[tuple[str, str]] = []
    if kafka_key and _names(customer_id):
        keyed = identifier_of(None, id_type, kafka_key, channel)
        if keyed is not None and keyed[1] != customer_id:
            out.append(keyed)
    for named_type, value in named:
        if _names(value):
            candidate = (named_type, value)
            if candidate != primary and candidate not in out:
                out.append(candidate)
    return out
