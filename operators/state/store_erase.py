"""Right to erasure in a shard store: a key's data and every undo pre-image of it, gone at once.

A rollback must never bring an erased key back, so erasure rewrites the undo chunks that hold it
(of committed seqs and of the epoch under way) in the same synced batch as the data deletes.
`ShardStore.purge` then makes the bytes leave the files (store_db.compact_all and a reopen).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from rocksdict import Rdict, WriteBatch, WriteOptions

from nextclick.operators.state.store_db import DATA
from nextclick.operators.state.store_undo import UndoLog

__all__ = ["erase"]


def erase(db: Rdict, undo: UndoLog, pending: dict[bytes, bytes | None], keys: Sequence[bytes],
          matching: Callable[[bytes], bool] | None, written: Mapping[bytes, bytes] | None = None) -> set[bytes]:
    """Delete `keys` (and every key an undo chunk holds for which `matching` is true) from the data,
    the undo chunks, this epoch's bookkeeping and `pending`, in one synced write; return those keys.

    `written`: records put in the same write, beyond any rollback like the deletes (their pre-images
    leave the undo chunks too): what the erasure must remember (operators/state/erased.py), which a
    crash before the next checkpoint must not lose while the erasure itself stays done.
    Nothing is written when there are no keys and no `matching`.
    """
    doomed = set(keys)
    if written:
        doomed.update(written)
    if not doomed and matching is None:
        return doomed
    batch = WriteBatch(raw_mode=True)
    chunks = undo.chunks_holding(doomed, matching)
    for key in doomed:
        pending.pop(key, None)
        undo.forget(key)
        batch.delete(DATA + key)
    undo.rewrite_without(batch, chunks, doomed)
    for key, value in (written or {}).items():
        batch.put(DATA + key, value)
    sync_opts = WriteOptions()
    sync_opts.sync = True
    db.write(batch, sync_opts)
    return doomed
