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
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Protocol, Self, cast

import msgspec
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    BottommostLevelCompaction,
    Cache,
    Checkpoint,
    CompactOptions,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from nextclick.operators.errors import NextclickError

__all__ = ["KeyValueStore", "ShardStore", "StateError", "dir_bytes"]

_DATA = b"d"
_UNDO = b"u"
_META_SEQ = b"mseq"
_META_FLOOR = b"mfloor"
_UNDO_END = b"v"  # first key after every undo chunk

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_KEY_LEN = struct.Struct(">I")
_VAL_LEN = struct.Struct(">i")
# Undo chunks: a marker byte, then MessagePack of [[key, pre-image or nil], ...]. The first format
# began with a 4-byte big-endian key length, whose first byte is 0 for any key under 16 MiB.
_UNDO_V2 = b"\xff"
_UNDO_ENCODER = msgspec.msgpack.Encoder()
_UNDO_DECODER = msgspec.msgpack.Decoder(list[tuple[bytes, bytes | None]])

# Many shards live in one process: keep each DB's memtables small, cap all memtables together, and
# share one block cache that also holds index and filter blocks, so RocksDB's memory is a fixed
# budget (block cache + memtable cap) that does not grow with the number of customers stored.
_WRITE_BUFFER_BYTES = 4 << 20
_MAX_WRITE_BUFFERS = 2
_SHARED_BLOCK_CACHE_BYTES = 64 << 20
_SHARED_MEMTABLE_BYTES = 64 << 20
_MAX_OPEN_FILES = 64
# How often the background syncer flushes open stores' WALs (see _WalSyncer).
_WAL_SYNC_INTERVAL_S = 0.1
# A read-only open that races the writer replacing a file is retried this many times.
_READ_ONLY_ATTEMPTS = 5
# Pending keys that trigger a stage into RocksDB: small, so the checkpoint has little left to do.
STAGE_KEYS = 64


log = logging.getLogger(__name__)


class StateError(NextclickError, RuntimeError):
    """The store cannot do what was asked without losing or inventing state (or it is read-only)."""


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

    def erase(self, keys: Sequence[bytes], *, matching: Callable[[bytes], bool] | None = None) -> None: ...

    def purge(self) -> None: ...

    def create_checkpoint(self, dest: str | os.PathLike[str]) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


@functools.cache
def _db_options(read_only: bool = False) -> Options:
    """Build the RocksDB options once per process; one block cache is shared by every shard."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(not read_only)
    opts.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(_MAX_WRITE_BUFFERS)
    opts.set_write_buffer_manager(WriteBufferManager(_SHARED_MEMTABLE_BYTES, False))
    opts.set_max_open_files(_MAX_OPEN_FILES)
    # RocksDB's own info LOG would otherwise grow (and rotate) without bound on long runs.
    opts.set_keep_log_file_num(2)
    opts.set_max_log_file_size(1 << 20)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(_SHARED_BLOCK_CACHE_BYTES))
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of every file under `path` (0 if it doesn't exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # RocksDB may delete an obsolete file while we walk
                pass
    return total


def _prefix_end(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key starting with `prefix` (None if there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _undo_key(seq: int, chunk: int) -> bytes:
    return _UNDO + _U64.pack(seq) + _U32.pack(chunk)


def _undo_from(seq: int) -> bytes:
    """Lower bound of the undo chunks of `seq` and every later seq."""
    return _UNDO + _U64.pack(seq)


def _undo_seq(key: bytes) -> int:
    return int(_U64.unpack_from(key, len(_UNDO))[0])


def _write_data(batch: WriteBatch, values: dict[bytes, bytes | None]) -> None:
    """Add user-data puts (and deletes, for None) to `batch`."""
    for key, value in values.items():
        if value is None:
            batch.delete(_DATA + key)
        else:
            batch.put(_DATA + key, value)


def _encode_undo(entries: dict[bytes, bytes | None]) -> bytes:
    """MessagePack of the (key, pre-image) pairs, after a marker byte no older chunk starts with."""
    return _UNDO_V2 + _UNDO_ENCODER.encode(list(entries.items()))


def _decode_undo(blob: bytes) -> dict[bytes, bytes | None]:
    if blob[:1] == _UNDO_V2:
        return dict(_UNDO_DECODER.decode(memoryview(blob)[1:]))
    # The first format (kept readable: stores written before it changed still roll back).
    entries: dict[bytes, bytes | None] = {}
    pos, end = 0, len(blob)
    while pos < end:
        (klen,) = _KEY_LEN.unpack_from(blob, pos)
        pos += _KEY_LEN.size
        key = blob[pos:pos + klen]
        pos += klen
        (vlen,) = _VAL_LEN.unpack_from(blob, pos)
        pos += _VAL_LEN.size
        if vlen < 0:
            entries[key] = None
        else:
            entries[key] = blob[pos:pos + vlen]
            pos += vlen
    return entries


class _WalSyncer:
    """Flushes the write-ahead logs of open stores to disk in the background, every `interval` s.

    Durability never depends on it: a checkpoint is its own synced write. What it buys is that the
    synced write finds little left to flush (its cost grows with the bytes written since the last
    sync), so the epoch end, when the engine's worker waits, stays short. RocksDB's FlushWAL runs
    without the GIL, so the worker goes on meanwhile. The thread runs while any store is registered
    and is stopped and joined at interpreter exit (a thread killed inside RocksDB aborts the process).
    """

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._stores: weakref.WeakSet[ShardStore] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        atexit.register(self.shutdown)

    def register(self, store: ShardStore) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="nextclick-wal-sync", daemon=True)
                self._thread.start()

    def unregister(self, store: ShardStore) -> None:
        with self._lock:
            self._stores.discard(store)

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if not self._stores:
                    self._thread = None
                    return
                refs = [weakref.ref(store) for store in self._stores]
            # Only weak references between syncs: a store nobody else holds must be freed (and its
            # RocksDB lock released) as before, not kept open by this thread.
            for ref in refs:
                store = ref()
                if store is None or self._stop.is_set():
                    continue
                store._sync_wal()
                del store


_wal_syncer = _WalSyncer(_WAL_SYNC_INTERVAL_S)


class ShardStore:
    """Key-value state of one shard whose committed versions line up with engine epochs.

    Writes are visible to reads at once and become durable only at `checkpoint`, so a crash loses
    exactly the epoch the engine will replay. Not thread-safe: one shard is driven by one worker.
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
        self._keep = keep_checkpoints
        self._stage_keys = stage_keys
        self._read_only = read_only
        self._closed = True
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync
        # Held while the background WAL syncer uses the DB, and while the DB is closed or swapped.
        self._db_lock = threading.Lock()
        self._stage_opts = WriteOptions()
        self._stage_opts.sync = False
        try:
            if read_only:
                self._db = Rdict(self._path, _db_options(True), access_type=AccessType.read_only())
            else:
                os.makedirs(self._path, exist_ok=True)
                self._db = Rdict(self._path, _db_options())
        except Exception as exc:  # rocksdict raises plain Exception for I/O, lock and corruption errors
            mode = "read-only" if read_only else "read-write"
            raise StateError(f"cannot open shard store {self._path!r} ({mode}): {exc}") from exc
        self._closed = False
        self._bulk: WriteBatch | None = None
        self._bulk_keys = 0
        # Committed values callers handed in with `put` (undo pre-images that need no RocksDB read).
        self._preimages: dict[bytes, bytes | None] = {}
        # key -> new value (None = delete) not yet staged into RocksDB.
        self._pending: dict[bytes, bytes | None] = {}
        # Keys staged in this epoch: their checkpoint-time values are in this epoch's undo chunks.
        self._staged: set[bytes] = set()
        # Last epoch's staged-key set and pre-images, freed at the next stage rather than at the
        # checkpoint: freeing thousands of keys would lengthen the epoch-end pause the worker waits in.
        self._retired: list[object] = []
        self._chunk = 0  # next undo chunk number of this epoch
        # Values as RocksDB holds them now (None = known absent), so a hit never needs RocksDB.
        self._cache: OrderedDict[bytes, bytes | None] = OrderedDict()
        raw_seq = self._db.get(_META_SEQ)
        self._seq: int = _U64.unpack(raw_seq)[0] if raw_seq is not None else 0
        raw_floor = self._db.get(_META_FLOOR)
        self._floor: int = _U64.unpack(raw_floor)[0] if raw_floor is not None else 0
        # Smallest seq that still has an undo chunk, or seq + 1 when none is kept.
        first_undo = next(self._iter_raw(_UNDO), None)
        self._oldest_undo: int = min(_undo_seq(first_undo[0]), self._seq + 1) if first_undo else self._seq + 1
        # Chunks above the committed seq are an epoch a crash interrupted: never committed.
        if read_only:
            # Can't undo them here: overlay their pre-images so reads see the committed state.
            self._pending.update(self._undo_above(self._seq))
        elif self._has_undo_above(self._seq):
            self._undo_to(self._seq)
        if sync and not read_only:
            _wal_syncer.register(self)

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
        return self._seq

    @property
    def committed_floor(self) -> int:
        """The newest seq the stream engine is known to have committed; `rollback_to` never goes below it."""
        return self._floor

    @property
    def oldest_restorable_seq(self) -> int:
        """The oldest seq `rollback_to` can still reach (undo records older than it were trimmed)."""
        return self._oldest_undo - 1

    @property
    def path(self) -> str:
        return self._path

    def pending_count(self) -> int:
        """Keys changed since the last checkpoint: what a crash would undo right now."""
        if self._read_only:
            return 0
        return len(self._staged | self._pending.keys())

    def stats(self) -> dict[str, int]:
        """Cheap numbers for dashboards and the CLI; `keys` is RocksDB's estimate, not a count."""
        self._check_open()
        estimate = self._db.property_int_value("rocksdb.estimate-num-keys") or 0
        bookkeeping = (self._seq + 1 - self._oldest_undo) + self._chunk + (1 if self._seq > 0 else 0)
        disk = dir_bytes(self._path)
        return {
            "seq": self._seq,
            "committed_floor": self._floor,
            "oldest_restorable_seq": self._oldest_undo - 1,
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
            found = self._fetch(list(missing))
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
        if key in self._staged:
            # Rare (erasure): read it back from this epoch's undo chunks rather than hold every
            # pre-image of the epoch in memory.
            for _chunk_key, blob in self._iter_raw(_undo_from(self._seq + 1)):
                entries = _decode_undo(blob)
                if key in entries:
                    return entries[key]
            raise StateError(f"shard store {self._path!r}: key staged in this epoch has no undo entry")
        if key in self._cache:
            return self._cache[key]
        return self._fetch([key])[key]

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Ordered (key, value) pairs under `prefix` (from `start` on), pending writes merged in.

        Pending writes are captured when `scan` is called, so the caller may put/delete while
        iterating (e.g. pop expired timers) without disturbing the walk.
        """
        self._check_open()
        lower = prefix if start is None or start < prefix else start
        overlay = sorted(
            (k, v) for k, v in self._pending.items() if k.startswith(prefix) and k >= lower
        )
        committed = self._iter_raw(_DATA + prefix, _DATA + lower)
        return self._merge(committed, overlay)

    def first_keys(self, lower: bytes, upper: bytes, limit: int) -> list[bytes]:
        """The first `limit` keys in [lower, upper), in order, pending writes merged in.

        The timer index's due scan: RocksDB walks the range in one call per key with no values and
        no Python iterator around it, several times cheaper per key than `scan` (a timer storm reads
        millions). Enough keys are read that pending deletes can't leave the result short.
        """
        self._check_open()
        overlay = [(k, v) for k, v in self._pending.items() if lower <= k < upper]
        opts = ReadOptions()
        opts.set_iterate_upper_bound(_DATA + upper)
        raw = cast(Iterator[bytes],  # raw mode: keys are bytes
                   itertools.islice(self._db.keys(from_key=_DATA + lower, read_opt=opts), limit + len(overlay)))
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

    @staticmethod
    def _merge(
        committed: Iterator[tuple[bytes, bytes]], overlay: list[tuple[bytes, bytes | None]]
    ) -> Iterator[tuple[bytes, bytes]]:
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

    # --------------------------------------------------------------------------------------- writes

    def put(self, key: bytes, value: bytes, *, committed: bytes | None | Unknown = UNKNOWN) -> None:
        """Write now (visible to reads); durable only at the next checkpoint.

        `committed`: the value the caller knows this key had at the last checkpoint (None: absent),
        e.g. read while `unchanged_since_checkpoint` was true. It becomes the key's undo pre-image
        without reading RocksDB again; it is ignored once the key was written in this epoch (its
        pre-image is then already known).
        """
        if committed is not UNKNOWN and key not in self._pending and key not in self._staged:
            self._preimages[key] = committed  # type: ignore[assignment]
        self._set(key, value)

    def unchanged_since_checkpoint(self, key: bytes) -> bool:
        """No write to `key` since the last checkpoint: what reads return for it is its committed value."""
        return key not in self._pending and key not in self._staged

    def delete(self, key: bytes, *, committed: bytes | None | Unknown = UNKNOWN) -> None:
        """Delete now (visible to reads); durable only at the next checkpoint. `committed` as for `put`."""
        if committed is not UNKNOWN and key not in self._pending and key not in self._staged:
            self._preimages[key] = committed  # type: ignore[assignment]
        self._set(key, None)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._check_writable()
        self._pending[key] = value
        if len(self._pending) >= self._stage_keys:
            self._stage()

    def _stage_into(self, batch: WriteBatch) -> None:
        """Add pending writes, with an undo chunk for keys new to this epoch, to `batch`."""
        pending = self._pending
        if not pending:
            return
        first: dict[bytes, bytes | None] = {}
        unknown: list[bytes] = []
        preimages = self._preimages
        for key in pending:
            if key in self._staged:
                continue
            if key in preimages:
                first[key] = preimages.pop(key)
            elif key in self._cache:
                first[key] = self._cache[key]
            else:
                unknown.append(key)
        if unknown:
            first.update(self._fetch(unknown))
        if first:
            batch.put(_undo_key(self._seq + 1, self._chunk), _encode_undo(first))
            self._chunk += 1
            self._staged.update(first.keys())
        _write_data(batch, pending)

    def _staged_ok(self) -> None:
        """After the batch from `_stage_into` is written: pending writes are now RocksDB's.

        Written values are dropped from the read cache rather than added: callers keep what they
        write (the shard keeps decoded profiles), and timer keys are never read back, so filling the
        cache with them would only evict what reads need.
        """
        cache = self._cache
        if cache:
            for key in self._pending:
                cache.pop(key, None)
        self._pending = {}

    def _stage(self) -> None:
        if self._retired:
            self._retired.clear()
        batch = WriteBatch(raw_mode=True)
        self._stage_into(batch)
        self._db.write(batch, self._stage_opts)
        self._staged_ok()

    def checkpoint(self) -> int:
        """Commit this epoch's writes (and their undo chunks) with one synced write; return the new seq.

        An empty checkpoint still advances seq so that seq counts engine epochs one to one.
        """
        self._check_writable()
        new_seq = self._seq + 1
        batch = WriteBatch(raw_mode=True)
        self._stage_into(batch)
        if self._chunk == 0:
            batch.put(_undo_key(new_seq, 0), b"")  # every committed seq has a chunk: "nothing changed"
        batch.put(_META_SEQ, _U64.pack(new_seq))
        trim_through = new_seq - self._keep
        if trim_through >= self._oldest_undo:
            batch.delete_range(_undo_from(self._oldest_undo), _undo_from(trim_through + 1))
        self._db.write(batch, self._write_opts)
        self._staged_ok()
        self._seq = new_seq
        self._oldest_undo = max(self._oldest_undo, trim_through + 1)
        self._retired = [self._staged, self._preimages]
        self._staged = set()
        self._preimages = {}
        self._chunk = 0
        return new_seq

    def rollback_to(self, seq: int) -> None:
        """Return to exactly the state committed at `seq`, the engine's last durable epoch.

        Uncommitted writes are always discarded. A refused rollback (StateError) changes nothing.

        Applies the undo chunks above `seq` in one atomic batch, so a crash mid-rollback leaves
        the store at either the old or the target seq and the rollback can simply be retried.
        """
        self._check_writable()
        if seq > self._seq or seq < 0:
            raise StateError(
                f"shard store {self._path!r}: cannot roll back to seq {seq}; "
                f"the committed seq is {self._seq}"
            )
        if seq < self._floor:
            raise StateError(
                f"shard store {self._path!r}: refusing to roll back to seq {seq}: seq {self._floor} was "
                f"committed (the recovery directory handed it back before, or a savepoint was restored at "
                f"it), so rolling back past it would lose committed state"
            )
        oldest = self._oldest_undo - 1
        if seq < oldest:
            raise StateError(
                f"shard store {self._path!r}: cannot roll back from seq {self._seq} to seq {seq}; "
                f"undo records older than seq {oldest} were trimmed (keep_checkpoints={self._keep}), "
                f"so the oldest restorable seq is {oldest}"
            )
        seqs_with_undo = {_undo_seq(k) for k, _ in self._iter_raw(_UNDO, _undo_from(seq + 1))}
        for s in range(seq + 1, self._seq + 1):
            if s not in seqs_with_undo:
                raise StateError(
                    f"shard store {self._path!r}: undo record for seq {s} is missing; cannot roll "
                    f"back from seq {self._seq} to seq {seq} (oldest restorable seq {s})"
                )
        self._undo_to(seq)

    def _undo_to(self, seq: int) -> None:
        """Apply (and delete) every undo chunk above `seq`, staged ones included; set seq."""
        self._pending = {}
        self._staged = set()
        self._preimages = {}
        self._chunk = 0
        self._cache.clear()
        batch = WriteBatch(raw_mode=True)
        _write_data(batch, self._undo_above(seq))
        batch.delete_range(_undo_from(seq + 1), _UNDO_END)
        if seq > 0:
            batch.put(_META_SEQ, _U64.pack(seq))
        else:
            batch.delete(_META_SEQ)
        self._db.write(batch, self._write_opts)
        self._seq = seq
        self._oldest_undo = min(self._oldest_undo, seq + 1)

    def _undo_above(self, seq: int) -> dict[bytes, bytes | None]:
        """Pre-images that turn the DB back into state `seq`: the oldest one of each key wins."""
        chunks = list(self._iter_raw(_UNDO, _undo_from(seq + 1)))
        restore: dict[bytes, bytes | None] = {}
        for _key, blob in reversed(chunks):  # newest first, so older pre-images overwrite newer ones
            restore.update(_decode_undo(blob))
        return restore

    def _has_undo_above(self, seq: int) -> bool:
        return next(self._iter_raw(_UNDO, _undo_from(seq + 1)), None) is not None

    def mark_committed(self, seq: int) -> None:
        """Record that the stream engine committed `seq` (synced); later rollbacks stop there."""
        self._check_writable()
        if seq > self._seq:
            raise StateError(f"shard store {self._path!r}: cannot mark seq {seq} committed; the store is at "
                             f"seq {self._seq}")
        if seq <= self._floor:
            return
        sync_opts = WriteOptions()
        sync_opts.sync = True
        self._db.put(_META_FLOOR, _U64.pack(seq), sync_opts)
        self._floor = seq

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
            if self._seq != 0 or self._pending or self._staged or next(self._iter_raw(_DATA), None) is not None:
                raise StateError(f"shard store {self._path!r}: a bulk load needs an empty store")
            self._bulk = WriteBatch(raw_mode=True)
            self._bulk_keys = 0
        self._bulk.put(_DATA + key, value)
        self._bulk_keys += 1
        if self._bulk_keys % batch_keys == 0:
            self._db.write(self._bulk, self._stage_opts)
            self._bulk = WriteBatch(raw_mode=True)

    def commit_bulk(self) -> int:
        """Commit a bulk load as seq 1, synced and flushed. There is nothing to roll back to (no undo
        records), so seq 1 is also marked committed."""
        self._check_writable()
        if self._seq != 0:
            raise StateError(f"shard store {self._path!r}: a bulk load needs an empty store")
        batch = self._bulk if self._bulk is not None else WriteBatch(raw_mode=True)
        self._bulk = None
        batch.put(_META_SEQ, _U64.pack(1))
        batch.put(_META_FLOOR, _U64.pack(1))
        self._db.write(batch, self._write_opts)
        self._db.flush(True)
        self._seq, self._floor, self._oldest_undo = 1, 1, 2
        return 1

    def erase(self, keys: Sequence[bytes], *, matching: Callable[[bytes], bool] | None = None) -> None:
        """Right to erasure: remove `keys` now, everywhere, so that no rollback can restore them.

        `matching`: also every key an undo record holds for which it is true (keys whose names the
        caller cannot know any more, e.g. the timer of a profile deleted in an earlier epoch).
        Committed immediately and synced (not at the next checkpoint); seq does not change.
        """
        self._check_writable()
        doomed = set(keys)
        if not doomed and matching is None:
            return
        batch = WriteBatch(raw_mode=True)
        undo: list[tuple[bytes, dict[bytes, bytes | None]]] = []
        for raw_key, blob in self._iter_raw(_UNDO):
            entries = _decode_undo(blob)
            if matching is not None:
                doomed.update(k for k in entries if matching(k))
            undo.append((raw_key, entries))
        for key in doomed:
            self._pending.pop(key, None)
            self._preimages.pop(key, None)
            # Gone from the epoch's undo too: a later write in this epoch rolls back to "absent".
            self._staged.discard(key)
            batch.delete(_DATA + key)
        for raw_key, entries in undo:
            if doomed.isdisjoint(entries):
                continue
            batch.put(raw_key, _encode_undo({k: v for k, v in entries.items() if k not in doomed}))
        sync_opts = WriteOptions()
        sync_opts.sync = True
        self._db.write(batch, sync_opts)
        for key in doomed:
            self._cache_put(key, None)

    def purge(self) -> None:
        """Make erased data leave the files, not only the key space.

        A delete in RocksDB is a tombstone: the old bytes stay in SST files, the WAL and (as file
        boundary keys) the MANIFEST until compaction. Flush, compact everything with the bottommost
        level forced, then reopen, which starts a fresh MANIFEST and drops the old WAL. Uncommitted
        writes are kept. Costs a full compaction of this shard, so callers batch erasures.
        """
        self._check_writable()
        self._db.flush(True)
        options = CompactOptions()
        options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        self._db.compact_range(None, None, options)
        with self._db_lock:
            self._db.close()
            try:
                self._db = Rdict(self._path, _db_options())
            except Exception as exc:  # same contract as _open
                self._closed = True
                _wal_syncer.unregister(self)
                raise StateError(f"cannot reopen shard store {self._path!r} after purge: {exc}") from exc

    # ------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release RocksDB (and its lock); uncommitted writes are lost (undone at the next open), as in a crash."""
        if self._closed:
            return
        _wal_syncer.unregister(self)
        with self._db_lock:
            self._closed = True
            self._db.close()
        self._pending = {}
        self._staged = set()
        self._preimages = {}
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
        return f"<ShardStore{mode} {self._path!r} seq={self._seq} pending={len(self._pending)}>"

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

    def _fetch(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        values = cast(list[bytes | None], self._db.get([_DATA + k for k in keys]))
        return dict(zip(keys, values, strict=True))

    def _iter_raw(self, prefix: bytes, seek: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Raw (key, value) pairs of one namespace in key order, starting at `seek`."""
        opts = ReadOptions()
        end = _prefix_end(prefix)
        if end is not None:
            opts.set_iterate_upper_bound(end)
        it = self._db.iter(opts)
        try:
            it.seek(seek if seek is not None else prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                yield key, it.value()
                it.next()
        finally:
            del it
