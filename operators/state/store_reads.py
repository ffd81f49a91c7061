"""The shard store's range reads: RocksDB's committed keys with the writes not yet staged merged in.

Point reads (and the read cache) stay in ShardStore, on the hot path; these walk a key range.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import cast

from rocksdict import Rdict, ReadOptions

from nextclick.operators.state.store_db import DATA, iter_raw

__all__ = ["first_keys", "scan"]


def scan(db: Rdict, pending: dict[bytes, bytes | None], prefix: bytes,
         start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Ordered (key, value) pairs under `prefix` (from `start` on), `pending` merged in.

    `pending` is read now, not while iterating: the caller may write while it walks the result.
    """
    lower = prefix if start is None or start < prefix else start
    overlay = sorted(
        (k, v) for k, v in pending.items() if k.startswith(prefix) and k >= lower
    )
    committed = iter_raw(db, DATA + prefix, DATA + lower)
    return _merge(committed, overlay)


def first_keys(db: Rdict, pending: dict[bytes, bytes | None], lower: bytes, upper: bytes,
               limit: int) -> list[bytes]:
    """The first `limit` keys in [lower, upper), in order, `pending` merged in.

    RocksDB walks the range in one call per key with no values and no Python iterator around it.
    Enough keys are read that pending deletes can't leave the result short.
    """
    overlay = [(k, v) for k, v in pending.items() if lower <= k < upper]
    opts = ReadOptions()
    opts.set_iterate_upper_bound(DATA + upper)
    raw = cast(Iterator[bytes],  # raw mode: keys are bytes
               itertools.islice(db.keys(from_key=DATA + lower, read_opt=opts), limit + len(overlay)))
    keys = [k[1:] for k in raw]
    if overlay:
        merged = set(keys)
        for key, value in overlay:
            if value is None:
                merged.discard(key)
            else:
                merged.add(key)
        keys = sorted(merged)
    return keys[:limit]


def _merge(
    committed: Iterator[tuple[bytes, bytes]], overlay: list[tuple[bytes, bytes | None]]
) -> Iterator[tuple[bytes, bytes]]:
    """The committed (raw key, value) pairs with the sorted `overlay` merged in, deletes dropped."""
    j, n = 0, len(overlay)
    for raw_key, value in committed:
        key = raw_key[1:]
        while j < n and overlay[j][0] < key:
            pk, pv = overlay[j]
            j += 1
            if pv is not None:
                yield pk, pv
        if j < n and overlay[j][0] == key:
            pv = overlay[j][1]
            j += 1
            if pv is not None:
                yield key, pv
            continue
        yield key, value
    for pk, pv in overlay[j:]:
        if pv is not None:
            yield pk, pv
