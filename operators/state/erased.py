"""What a store keeps of an erasure: that a key was erased, and when, without the key itself.

A replay (after a crash, or a restore of an older savepoint) reads an erasure before the events that
came before it, as the control topic is not aligned with the inputs; those events must not bring the
person back. So each store that erases (the identity graph, each profile shard) remembers every erased
key with the erasure's time, and the events of that key dated at or before it are not applied again.

The key is not stored: the erased key must be in no file of the store (tests/test_control.py reads
them). A mark is a one-way 16-byte digest of the key, and its value holds the erasure's time and a
32-bit checksum of the key, so that the check an event costs is a crc32 and a set lookup (the digest
is only computed for the few keys whose checksum matches). A few bytes per erasure, kept for good.
"""

from __future__ import annotations

import hashlib
import zlib

from nextclick.operators.state.store import KeyValueStore

ERASED_PREFIX = b"x"


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16, person=b"nextclick-erase").digest()


class ErasedKeys:
    """The erased keys of one store, read once (erasures are few)."""

    __slots__ = ("_at", "_shared", "checksums")

    def __init__(self, store: KeyValueStore) -> None:
        self._at: dict[bytes, int] = {}
        self._shared: set[bytes] = set()  # erased keys that were a shared cookie or device (`mark`)
        # The erased keys' crc32s: empty (falsy) until the first erasure, so a hot loop tests it first.
        self.checksums: set[int] = set()
        for key, value in store.scan(ERASED_PREFIX):
            at, checksum, *shared = value.decode().split(",")
            self._at[key[len(ERASED_PREFIX):]] = int(at)
            if shared:
                self._shared.add(key[len(ERASED_PREFIX):])
            self.checksums.add(int(checksum))

    def __bool__(self) -> bool:
        return bool(self._at)

    def mark(self, key: str, at_ms: int, *, shared: bool = False) -> dict[bytes, bytes]:
        """`key` was erased at `at_ms`: its events dated at or before it are not applied again. `shared`:
        it was a cookie or device several customers signed in on, which says nothing of whose an event
        naming it beside someone's own identifier is (IdentityGraph.personal_keys).

        Returns the record to write, which the caller puts in the erasure's own synced write
        (`KeyValueStore.erase(written=...)`): a mark staged for the next checkpoint was lost to a crash
        before it while the erasure stayed done, and the replay then applied the person's earlier events
        again (an outside probe: an erased customer's purchase came back as a new profile)."""
        digest = _digest(key)
        if at_ms > self._at.get(digest, -1) or (shared and digest not in self._shared):
            checksum = zlib.crc32(key.encode())
            self._at[digest] = max(at_ms, self._at.get(digest, -1))
            self.checksums.add(checksum)
            if shared:
                self._shared.add(digest)
            return {ERASED_PREFIX + digest:
                    f"{self._at[digest]},{checksum}{',s' if digest in self._shared else ''}".encode()}
        return {}

    def was_shared(self, key: str) -> bool:
        return bool(self._shared) and zlib.crc32(key.encode()) in self.checksums and _digest(key) in self._shared

    def erased_at(self, key: str) -> int | None:
        """When `key` was erased, or None."""
        if zlib.crc32(key.encode()) not in self.checksums:
            return None
        return self._at.get(_digest(key))

    def before_erasure(self, key: str, ts: int) -> bool:
        """An event of `key` at `ts` is from before the key's erasure."""
        at = self.erased_at(key)
        return at is not None and ts <= at
