"""A shard's timer index: each customer's next due time as a key, so the earliest are a prefix scan away."""

from __future__ import annotations

from collections.abc import Collection

from nextclick.operators.state.keys import DUE, TIMER_PREFIX, timer_key
from nextclick.operators.state.store import KeyValueStore

_TIMER_END = bytes([TIMER_PREFIX[0] + 1])  # the first key after every timer key


class TimerIndex:
    """Each customer's next due time as a `t<due><customer>` key in the shard's store.

    Keys sort by due time, so the earliest timers are a prefix scan away and nothing per customer
    is held in memory: only `earliest()`, a hint that may be early (its timer moved or was
    erased) but never late. Invariant: a key exists for exactly the due time of the stored profile.
    """

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._next: int | None = None
        for key in store.first_keys(TIMER_PREFIX, _TIMER_END, 1):
            self._next = DUE.unpack_from(key, 1)[0]

    def move(self, customer: str, old: int | None, new: int | None, *, committed: bool = False) -> None:
        """Move a customer's key from due time `old` to `new` (None: no timer).

        `committed`: the customer's keys have not changed since the last checkpoint, so (by the
        invariant) `old`'s key exists and `new`'s does not: the store needs no read for their undo.
        """
        if old == new:
            return
        if old is not None:
            if committed:
                self._store.delete(timer_key(old, customer), committed=b"")
            else:
                self._store.delete(timer_key(old, customer))
        if new is not None:
            if committed:
                self._store.put(timer_key(new, customer), b"", committed=None)
            else:
                self._store.put(timer_key(new, customer), b"")
            if self._next is None or new < self._next:
                self._next = new

    def earliest(self) -> int | None:
        return self._next

    def hint(self, due: int | None) -> None:
        """A profile's due time changed but is not written yet: wake up for it all the same."""
        if due is not None and (self._next is None or due < self._next):
            self._next = due

    def due(self, now_ms: int, limit: int, skip: Collection[str] = ()) -> list[tuple[str, int]]:
        """Up to `limit` (customer, due) pairs due by `now_ms`, earliest first.

        Customers in `skip` are passed over: their keys are stale (the shard holds a newer, unwritten
        profile and answers for its due time itself).
        """
        wanted = limit + len(skip)
        upper = TIMER_PREFIX + DUE.pack(now_ms + 1)
        keys = self._store.first_keys(TIMER_PREFIX, upper, wanted)
        out: list[tuple[str, int]] = []
        unpack, size = DUE.unpack_from, 1 + DUE.size
        for key in keys:
            customer = key[size:].decode()
            if customer not in skip:
                out.append((customer, unpack(key, 1)[0]))
        if len(keys) == wanted or len(out) > limit:
            # More may be due than one call takes: the next turn comes at once.
            self._next = now_ms
            return out[:limit]
        self._next = None
        for key in self._store.first_keys(upper, _TIMER_END, 1):
            self._next = DUE.unpack_from(key, 1)[0]
        return out
