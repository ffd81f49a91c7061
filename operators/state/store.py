"""One state shard's key-value state in its own RocksDB directory, checkpointed in step with epochs.

The stream engine only remembers a small integer `seq` per epoch. After a crash it hands back the
last seq it committed, which can be older than what RocksDB holds, so every change is written
together with its undo entry (the key's value at the last checkpoint) and `rollback_to` replays
those backwards.

Writes are staged into RocksDB during the epoch, a few dozen keys at a time, each stage one atomic
WriteBatch of the new values plus an undo chunk holding the pre-images of the keys it touches
first. A checkpoint then only stages the remainder and writes the new seq, synced; that keeps the
pause at the epoch end (when the stream engine's worker waits) small and independent of how much
changed in the epoch. Staged writes are not committed: reopening after a crash undoes every chunk
above the committed seq before anything else.

Layout inside the one DB:

- ``b"d" + key``                         user data (callers never see the prefix)
- ``b"mseq"``                            last committed seq, 8-byte big-endian
- ``b"mfloor"``                          the newest seq known to be committed by the stream engine
  (it handed that seq back on a resume, or a savepoint was restored at it): no rollback goes below
- ``b"u" + seq (8 bytes) + chunk (4)``   undo chunk: together, the chunks of ``seq`` turn state
  ``seq`` back into state ``seq - 1``; every committed seq has at least one (maybe empty) chunk

Undo chunks are a marker byte 0xff and MessagePack of ``[[key, pre-image or nil], ...]``; chunks
written before that format (length-prefixed binary: ``>I`` key length, key, ``>i`` value length,
-1 for "was absent", value) are still read.

The store's parts, one job each: `ShardStore` (here) holds the writes not yet staged and the read
cache and serves point reads; `UndoLog` (store_undo.py) the undo chunks and the seq bookkeeping
(stage, checkpoint, rollback, committed floor); store_reads.py the range reads; `BulkLoad`
(store_bulk.py) a bulk load's batches; store_erase.py erasure; store_db.py the RocksDB plumbing
(options, opening, raw iteration, the background WAL syncer); store_errors.py `StateError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self

from rocksdict import Checkpoint, Rdict, WriteBatch, WriteOptions

from nextclick.operators.infra.failures import is_device_full, note_storage_failure
from nextclick.operators.state import store_erase, store_reads
from nextclick.operators.state.store_bulk import BulkLoad
from nextclick.operators.state.store_db import (
    DATA,
    compact_all,
    db_options,
    dir_bytes,
    fetch_data,
    iter_raw,
    open_db,
    wal_syncer,
)
from nextclick.operators.state.store_errors import StateError
from nextclick.operators.state.store_undo import UndoLog

__all__ = ["KeyValueStore", "ShardStore", "StateError", "dir_bytes"]

# A read-only open that races the writer replacing a file is retried this many times.
_READ_ONLY_ATTEMPTS = 5
# Pending keys that trigger a stage into RocksDB: small, so the checkpoint has little left to do.
STAGE_KEYS = 64


log = logging.getLogger(__name__)


class Unknown:
    """The type of UNKNOWN: a caller does not know the key's committed value."""


UNKNOWN = Unknown()


class KeyValueStore(Protocol):
    """What a shard needs from its store: reads that see its own writes, writes that become durable
    only at `checkpoint`, immediate erasure, and copies. `ShardStore` (RocksDB) is the one the flow uses."""

    @property
    def seq(self) -> int: ...

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def get_committed(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...

    def first_keys(self, lower: bytes, upper: bytes, limit: int) -> list[bytes]: ...

    def put(self, key: bytes, value: bytes, *, committed: bytes | None | Unknown = ...) -> None: ...

    def delete(self, key: bytes, *, committed: bytes | None | Unknown = ...) -> None: ...

    def unchanged_since_checkpoint(self, key: bytes) -> bool: ...

    def checkpoint(self) -> int: ...

    def erase(self, keys: Sequence[bytes], *, matching: Callable[[bytes], bool] | None = None,
              written: Mapping[bytes, bytes] | None = None) -> None: ...

    def purge(self) -> None: ...

    def create_checkpoint(self, dest: str | os.PathLike[str]) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class ShardStore:
    """Key-value state of one shard whose committed versions line up with engine epochs.

    Writes are visible to reads at once and become durable only at `checkpoint`, so a crash loses
    exactly the epoch the engine will replay. Not thread-safe: one shard is driven by one worker.
    The undo log and seq bookkeeping are its `UndoLog`'s (the module docstring lists the parts).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_size: int = 4096,
        keep_checkpoints: int = 64,
        sync: bool = True,
        stage_keys: int = STAGE_KEYS,
    ) -> None:
        self._open(path, cache_size=cache_size, keep_checkpoints=keep_checkpoints, sync=sync,
                   stage_keys=stage_keys, read_only=False)

    def _open(
        self,
        path: str | os.PathLike[str],
        *,
        cache_size: int,
        keep_checkpoints: int,
        sync: bool,
        stage_keys: int,
        read_only: bool,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0, got {keep_checkpoints}")
        if stage_keys < 1:
            raise ValueError(f"stage_keys must be >= 1, got {stage_keys}")
        self._path = os.fspath(path)
        self._cache_size = cache_size
        self._stage_keys = stage_keys
        self._read_only = read_only
        self._closed = True
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync
        # Held while the background WAL syncer uses the DB, and while the DB is closed or swapped.
        self._db_lock = threading.Lock()
        self._stage_opts = WriteOptions()
        self._stage_opts.sync = False
        self._db: Rdict = open_db(self._path, read_only=read_only)
        self._closed = False
        self._bulk: BulkLoad | None = None
        # key -> new value (None = delete) not yet staged into RocksDB.
        self._pending: dict[bytes, bytes | None] = {}
        # Values as RocksDB holds them now (None = known absent), so a hit never needs RocksDB.
        self._cache: OrderedDict[bytes, bytes | None] = OrderedDict()
        self._undo = UndoLog(self._db, self._path, keep=keep_checkpoints, write_opts=self._write_opts)
        # Chunks above the committed seq are an epoch a crash interrupted: never committed.
        if read_only:
            # Can't undo them here: overlay their pre-images so reads see the committed state.
            self._pending.update(self._undo.undo_above(self._undo.seq))
        elif self._undo.has_undo_above(self._undo.seq):
            self._undo_to(self._undo.seq)
        if sync and not read_only:
            wal_syncer.register(self)

    @classmethod
    def open_read_only(cls, path: str | os.PathLike[str], *, cache_size: int = 4096) -> Self:
        """Open without taking RocksDB's lock so CLI tools can inspect a shard the flow has open.

        Sees the committed state as of opening; writes raise StateError. The writer may replace a
        file (compaction, a new MANIFEST after a purge) while this opens, so a failed open is retried.
        """
        for attempt in range(_READ_ONLY_ATTEMPTS):
            store = cls.__new__(cls)
            try:
                store._open(path, cache_size=cache_size, keep_checkpoints=0, sync=False, stage_keys=STAGE_KEYS,
                            read_only=True)
                return store
            except StateError:
                if attempt == _READ_ONLY_ATTEMPTS - 1 or not os.path.isdir(path):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------------------------------- info

    @property
    def seq(self) -> int:
        """Last committed checkpoint; the engine stores this and hands it back on recovery."""
        return self._undo.seq

    @property
    def committed_floor(self) -> int:
        """The newest seq the stream engine is known to have committed; `rollback_to` never goes below it."""
        return self._undo.floor

    @property
    def oldest_restorable_seq(self) -> int:
        """The oldest seq `rollback_to` can still reach (undo records older than it were trimmed)."""
        return self._undo.oldest_undo - 1

    @property
    def path(self) -> str:
        return self._path

    @property
    def _chunk(self) -> int:
        """Undo chunks staged in this epoch so far."""
        return self._undo.chunk

    def pending_count(self) -> int:
        """Keys changed since the last checkpoint: what a crash would undo right now."""
        if self._read_only:
            return 0
        return len(self._undo.staged | self._pending.keys())

    def stats(self) -> dict[str, int]:
        """Cheap numbers for dashboards and the CLI; `keys` is RocksDB's estimate, not a count."""
        self._check_open()
        undo = self._undo
        estimate = self._db.property_int_value("rocksdb.estimate-num-keys") or 0
        bookkeeping = (undo.seq + 1 - undo.oldest_undo) + undo.chunk + (1 if undo.seq > 0 else 0)
        disk = dir_bytes(self._path)
        return {
            "seq": undo.seq,
            "committed_floor": undo.floor,
            "oldest_restorable_seq": undo.oldest_undo - 1,
            "keys": max(0, estimate - bookkeeping),
            "disk_bytes": disk,
        }

    # ---------------------------------------------------------------------------------------- reads

    def get(self, key: bytes) -> bytes | None:
        """Current value including uncommitted writes; None if absent."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Batch read: pending, then the cache, then one RocksDB multi-get for the rest."""
        self._check_open()
        out: list[bytes | None] = [None] * len(keys)
        missing: dict[bytes, list[int]] = {}
        pending, cache = self._pending, self._cache
        for i, key in enumerate(keys):
            if key in pending:
                out[i] = pending[key]
            elif key in cache:
                cache.move_to_end(key)
                out[i] = cache[key]
            else:
                missing.setdefault(key, []).append(i)
        if missing:
            found = fetch_data(self._db, list(missing))
            for key, value in found.items():
                for i in missing[key]:
                    out[i] = value
                self._cache_put(key, value)
        return out

    def get_committed(self, key: bytes) -> bytes | None:
        """The value as of the last checkpoint, ignoring later writes (what a restore would see)."""
        self._check_open()
        if self._read_only:
            return self.get(key)
        if key in self._undo.staged:
            # Rare (erasure): read it back from this epoch's undo chunks rather than hold every
            # pre-image of the epoch in memory.
            return self._undo.committed_value(key)
        if key in self._cache:
            return self._cache[key]
        return fetch_data(self._db, [key])[key]

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Ordered (key, value) pairs under `prefix` (from `start` on), pending writes merged in.

        Pending writes are captured when `scan` is called, so the caller may put/delete while
        iterating (e.g. pop expired timers) without disturbing the walk.
        """
        self._check_open()
        return store_reads.scan(self._db, self._pending, prefix, start)

    def first_keys(self, lower: bytes, upper: bytes, limit: int) -> list[bytes]:
        """The first `limit` keys in [lower, upper), in order, pending writes merged in.

        The timer index's due scan: RocksDB walks the range in one call per key with no values and
        no Python iterator around it, several times cheaper per key than `scan` (a timer storm reads
        millions). Enough keys are read that pending deletes can't leave the result short.
        """
        self._check_open()
        return store_reads.first_keys(self._db, self._pending, lower, upper, limit)

    # --------------------------------------------------------------------------------------- writes

    def put(self, key: bytes, value: bytes, *, committed: bytes | None | Unknown = UNKNOWN) -> None:
        """Write now (visible to reads); durable only at the next checkpoint.

        `committed`: the value the caller knows this key had at the last checkpoint (None: absent),
        e.g. read while `unchanged_since_checkpoint` was true. It becomes the key's undo pre-image
        without reading RocksDB again; it is ignored once the key was written in this epoch (its
        pre-image is then already known).
        """
        if committed is not UNKNOWN and key not in self._pending and key not in (undo := self._undo).staged:
            undo.preimages[key] = committed  # type: ignore[assignment]
        self._set(key, value)

    def unchanged_since_checkpoint(self, key: bytes) -> bool:
        """No write to `key` since the last checkpoint: what reads return for it is its committed value."""
        return key not in self._pending and key not in self._undo.staged

    def delete(self, key: bytes, *, committed: bytes | None | Unknown = UNKNOWN) -> None:
        """Delete now (visible to reads); durable only at the next checkpoint. `committed` as for `put`."""
        if committed is not UNKNOWN and key not in self._pending and key not in (undo := self._undo).staged:
            undo.preimages[key] = committed  # type: ignore[assignment]
        self._set(key, None)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._check_writable()
        self._pending[key] = value
        if len(self._pending) >= self._stage_keys:
            self._stage()

    def _stage(self) -> None:
        """Write the pending writes and their undo chunk into RocksDB, unsynced and uncommitted."""
        undo = self._undo
        undo.release_retired()
        batch = WriteBatch(raw_mode=True)
        undo.stage_into(batch, self._pending, self._cache)
        with self._device_failures_noted():
            self._db.write(batch, self._stage_opts)
        self._staged_ok()

    def _staged_ok(self) -> None:
        """After a batch from `UndoLog.stage_into` is written: pending writes are now RocksDB's.

        Written values are dropped from the read cache rather than added: callers keep what they
        write (the shard keeps decoded profiles), and timer keys are never read back, so filling the
        cache with them would only evict what reads need.
        """
        cache = self._cache
        if cache:
            for key in self._pending:
                cache.pop(key, None)
        self._pending = {}

    def checkpoint(self) -> int:
        """Commit this epoch's writes (and their undo chunks) with one synced write; return the new seq.

        An empty checkpoint still advances seq so that seq counts engine epochs one to one.
        """
        self._check_writable()
        batch = WriteBatch(raw_mode=True)
        self._undo.stage_into(batch, self._pending, self._cache)
        with self._device_failures_noted():
            new_seq = self._undo.commit(batch)
        self._staged_ok()
        return new_seq

    def rollback_to(self, seq: int) -> None:
        """Return to exactly the state committed at `seq`, the engine's last durable epoch.

        Uncommitted writes are always discarded. A refused rollback (StateError) changes nothing.

        Applies the undo chunks above `seq` in one atomic batch, so a crash mid-rollback leaves
        the store at either the old or the target seq and the rollback can simply be retried.
        """
        self._check_writable()
        self._undo.check_rollback(seq)
        self._undo_to(seq)

    def _undo_to(self, seq: int) -> None:
        """Drop the pending writes and the read cache, then apply every undo chunk above `seq`."""
        self._pending = {}
        self._cache.clear()
        self._undo.undo_to(seq)

    def mark_committed(self, seq: int) -> None:
        """Record that the stream engine committed `seq` (synced); later rollbacks stop there."""
        self._check_writable()
        self._undo.mark_committed(seq)

    def create_checkpoint(self, dest: str | os.PathLike[str]) -> None:
        """A consistent copy of the DB in `dest` (which must not exist): hard links where it can.

        Writes staged since the last checkpoint are copied too and are undone when the copy is opened,
        like after a crash, so the copy holds the committed state at `seq`.
        """
        self._check_writable()
        self._stage()
        try:
            Checkpoint(self._db).create_checkpoint(os.fspath(dest))
        except Exception as exc:  # rocksdict raises plain Exception for I/O errors
            raise StateError(f"cannot copy shard store {self._path!r} to {os.fspath(dest)!r}: {exc}") from exc

    def bulk_put(self, key: bytes, value: bytes, *, batch_keys: int = 10_000) -> None:
        """Fill an empty store without undo records (re-sharding); `commit_bulk` makes it seq 1."""
        self._check_writable()
        if self._bulk is None:
            if (self._undo.seq != 0 or self._pending or self._undo.staged
                    or next(iter_raw(self._db, DATA), None) is not None):
                raise StateError(f"shard store {self._path!r}: a bulk load needs an empty store")
            self._bulk = BulkLoad(self._stage_opts)
        self._bulk.put(self._db, key, value, batch_keys)

    def commit_bulk(self) -> int:
        """Commit a bulk load as seq 1, synced and flushed. There is nothing to roll back to (no undo
        records), so seq 1 is also marked committed."""
        self._check_writable()
        if self._undo.seq != 0:
            raise StateError(f"shard store {self._path!r}: a bulk load needs an empty store")
        batch = self._bulk.rest() if self._bulk is not None else WriteBatch(raw_mode=True)
        self._bulk = None
        return self._undo.commit_bulk(batch)

    def erase(self, keys: Sequence[bytes], *, matching: Callable[[bytes], bool] | None = None,
              written: Mapping[bytes, bytes] | None = None) -> None:
        """Right to erasure: remove `keys` now, everywhere, so that no rollback can restore them.

        `matching`: also every key an undo record holds for which it is true (keys whose names the
        caller cannot know any more, e.g. the timer of a profile deleted in an earlier epoch).
        `written`: records the erasure keeps (its marks), put in the same write and as far beyond rollback.
        Committed immediately and synced (not at the next checkpoint); seq does not change.
        """
        self._check_writable()
        for key in store_erase.erase(self._db, self._undo, self._pending, keys, matching, written):
            self._cache_put(key, None)
        for key, value in (written or {}).items():
            self._cache_put(key, value)

    def purge(self) -> None:
        """Make erased data leave the files, not only the key space.

        A delete in RocksDB is a tombstone: the old bytes stay in SST files, the WAL and (as file
        boundary keys) the MANIFEST until compaction. Flush, compact everything with the bottommost
        level forced, then reopen, which starts a fresh MANIFEST and drops the old WAL. Uncommitted
        writes are kept. Costs a full compaction of this shard, so callers batch erasures.
        """
        self._check_writable()
        compact_all(self._db)
        with self._db_lock:
            self._db.close()
            try:
                self._db = self._undo.db = Rdict(self._path, db_options())
            except Exception as exc:  # same contract as _open
                self._closed = True
                wal_syncer.unregister(self)
                raise StateError(f"cannot reopen shard store {self._path!r} after purge: {exc}") from exc

    # ------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release RocksDB (and its lock); uncommitted writes are lost (undone at the next open), as in a crash."""
        if self._closed:
            return
        wal_syncer.unregister(self)
        with self._db_lock:
            self._closed = True
            self._db.close()
        self._pending = {}
        self._undo.staged = set()
        self._undo.preimages = {}
        self._cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = " read-only" if self._read_only else ""
        return f"<ShardStore{mode} {self._path!r} seq={self._undo.seq} pending={len(self._pending)}>"

    # ------------------------------------------------------------------------------------ internals

    def _sync_wal(self) -> None:
        """Called by the background syncer: push staged writes to disk ahead of the checkpoint."""
        with self._db_lock:
            if self._closed:
                return
            try:
                self._db.flush_wal(True)
            except Exception as exc:  # a failed sync here is retried by the checkpoint's own sync
                log.debug("background WAL sync failed", extra={"path": self._path, "error": str(exc)})
                if "IO error" in str(exc) or is_device_full(exc):  # the device, not a passing hiccup
                    note_storage_failure(self._path, exc)

    @contextlib.contextmanager
    def _device_failures_noted(self) -> Iterator[None]:
        """A write that fails on the device is noted (`note_storage_failure`): a cluster may then fail on a
        peer's broken channel first, and the process says why (flows/runner.py). rocksdict raises a plain
        Exception for I/O errors; a StateError is the store's own refusal, not the device's."""
        try:
            yield
        except Exception as exc:
            if type(exc) is Exception:
                note_storage_failure(self._path, exc)
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise StateError(f"shard store {self._path!r} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise StateError(f"shard store {self._path!r} is open read-only")

    def _cache_put(self, key: bytes, value: bytes | None) -> None:
        if not self._cache_size:
            return
        cache = self._cache
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _iter_raw(self, prefix: bytes, seek: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Raw (key, value) pairs of one namespace in key order, starting at `seek`."""
        return iter_raw(self._db, prefix, seek)

