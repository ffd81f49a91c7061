"""What crosses a Bytewax exchange: one list per destination key per batch, not one item per event.

Bytewax routes, and between processes pickles, every (key, value) pair on its own: a call into
Python per item, a hash of its key, a frame on the wire. A batch's events for one shard travel as
one list instead, in the order they were produced, so an exchange costs per batch and destination
rather than per event (bench.scale measures it). Receivers flatten; a lone item (a moved profile, a
test driving a step directly) is taken as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def flatten(values: Iterable[Any]) -> list[Any]:
    """The items a stateful step received, lists spread in place, in arrival order."""
    out: list[Any] = []
    for value in values:
        if type(value) is list:
            out.extend(value)
        else:
            out.append(value)
    return out


def grouped(routed: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """(key, item) pairs as one (key, [items]) per key, each list in its items' order."""
    if len(routed) < 2:
        return [(key, [item]) for key, item in routed]
    by_key: dict[str, list[Any]] = {}
    for key, item in routed:
        items = by_key.get(key)
        if items is None:
            by_key[key] = [item]
        else:
            items.append(item)
    return list(by_key.items())
