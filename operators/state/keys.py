"""Where a customer's state lives: which shard, which directory, and the keys inside a shard's store.

    p<customer>                 the profile (format 2 MessagePack; QUARANTINED when set aside)
    t<due: 8 bytes><customer>   the customer's next timer; keys sort by due time
    q<customer>                 a quarantined profile's record: why, and the stored bytes
    h<customer>\0<where read>   an event held for event-time order across readers (without identity
                                stitching: operators/shard/shard_state.py), until the frontier lets it go
    s:positions                 the input positions of the events this shard applied
    x<digest of a customer>     when it was erased (operators/state/erased.py): not the key itself
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

PROFILE_PREFIX = b"p"
TIMER_PREFIX = b"t"
# A profile set aside for inspection: `q<customer>` holds why and the stored bytes, and the profile
# key holds QUARANTINED so that a lookup finds it without a second read.
QUARANTINE_PREFIX = b"q"
QUARANTINED = b"Q"
# Per-shard records: the input positions (next offset per topic partition) this shard has seen.
POSITIONS_KEY = b"s:positions"
# An event held at the checkpoint, stored under its customer so that an erasure and a re-shard find it.
HELD_EVENT_PREFIX = b"h"
DUE = struct.Struct(">Q")


def shard_of(customer: str, shards: int) -> int:
    """Stable across processes and runs (never Python's salted `hash`)."""
    return zlib.crc32(customer.encode()) % shards


def shard_path(state_dir: str | Path, shard: int) -> Path:
    return Path(state_dir) / f"shard-{shard:04d}"


def profile_key(customer: str) -> bytes:
    return PROFILE_PREFIX + customer.encode()


def timer_key(due_ms: int, customer: str) -> bytes:
    return TIMER_PREFIX + DUE.pack(due_ms) + customer.encode()


def is_timer_of(key: bytes, customer: bytes) -> bool:
    """Whether `key` is one of this customer's timer keys (exactly: not another id ending the same way)."""
    return key[:1] == TIMER_PREFIX and key[1 + DUE.size:] == customer


def quarantine_key(customer: str) -> bytes:
    return QUARANTINE_PREFIX + customer.encode()


def held_event_key(customer: str, where: bytes) -> bytes:
    """`where`: what makes the event's key its own (operators/event_order.py `where_read`)."""
    return HELD_EVENT_PREFIX + customer.encode() + b"\0" + where


def is_held_of(key: bytes, customer: bytes) -> bool:
    """Whether `key` is one of this customer's held events (exactly: not another id starting the same way)."""
    return key[:1] == HELD_EVENT_PREFIX and key[1:len(customer) + 2] == customer + b"\0"


def customer_of_key(key: bytes) -> str | None:
    """The customer a shard key belongs to (None for the shard's own records): how re-sharding routes keys."""
    prefix = key[:1]
    if prefix == PROFILE_PREFIX or prefix == QUARANTINE_PREFIX:
        return key[1:].decode()
    if prefix == TIMER_PREFIX:
        return key[1 + DUE.size:].decode()
    if prefix == HELD_EVENT_PREFIX:
        return key[1:key.index(b"\0")].decode()
    return None
