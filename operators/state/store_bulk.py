"""Bulk loading of an empty shard store (re-sharding): data without undo records, in large batches.

The store checks that it is empty before the first key and commits the load as seq 1
(`UndoLog.commit_bulk`); this class only gathers the keys and writes every full batch unsynced.
"""

from __future__ import annotations

from rocksdict import Rdict, WriteBatch, WriteOptions

from nextclick.operators.state.store_db import DATA

__all__ = ["BulkLoad"]


class BulkLoad:
    """The keys of one bulk load: a batch written (unsynced) every `batch_keys` keys, the rest held."""

    __slots__ = ("_batch", "_keys", "_opts")

    def __init__(self, opts: WriteOptions) -> None:
        self._opts = opts
        self._batch = WriteBatch(raw_mode=True)
        self._keys = 0

    def put(self, db: Rdict, key: bytes, value: bytes, batch_keys: int) -> None:
        self._batch.put(DATA + key, value)
        self._keys += 1
        if self._keys % batch_keys == 0:
            db.write(self._batch, self._opts)
            self._batch = WriteBatch(raw_mode=True)

    def rest(self) -> WriteBatch:
        """The keys not written yet, for the store to commit with seq 1."""
        return self._batch
