"""Reading a customer's committed profile offline (`nextclick profile get`, tests): through the identity
graph to the shard that holds it, read-only, while the flow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from nextclick.operators.identity.graph import resolve_offline
from nextclick.operators.profile.codec import stored_as_dict
from nextclick.operators.state.keys import (
    QUARANTINED,
    profile_key,
    quarantine_key,
    shard_of,
)
from nextclick.operators.state.layout import family_of_anchor, has_store
from nextclick.operators.state.store import ShardStore


def read_profile(state_dir: str | Path, shards: int, customer: str) -> dict[str, Any] | None:
    """The committed profile of one customer, read-only (works while the flow runs).

    `customer` is the key of any of the customer's identifiers: a linked one reads as the profile it
    belongs to (resolved through the identity graph, operators/identity/graph.py). A quarantined
    customer reads as `{"quarantined": {...}}`: why, and the stored bytes.
    """
    key, anchor = resolve_offline(state_dir, customer)
    path = family_of_anchor(anchor, shards).path(state_dir, shard_of(key, shards))
    if not has_store(path):
        return None
    store = ShardStore.open_read_only(path)
    try:
        raw = store.get(profile_key(key))
        if raw == QUARANTINED:
            record = store.get(quarantine_key(key))
            return {"customer": key, "quarantined": orjson.loads(record) if record else {}}
        return None if raw is None else stored_as_dict(raw)
    finally:
        store.close()
