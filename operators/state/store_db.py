"""The shard store's RocksDB plumbing: key layout, options, opening, raw iteration, the WAL syncer.

The layout inside one store's DB (operators/state/store.py describes what each part means):

- ``b"d" + key``                         user data (callers never see the prefix)
- ``b"mseq"``                            last committed seq, 8-byte big-endian
- ``b"mfloor"``                          the newest seq known to be committed by the stream engine
- ``b"u" + seq (8 bytes) + chunk (4)``   undo chunk (operators/state/store_undo.py)
"""

from __future__ import annotations

import atexit
import functools
import os
import struct
import threading
import weakref
from collections.abc import Iterator
from typing import Protocol, cast

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    BottommostLevelCompaction,
    Cache,
    CompactOptions,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
)

from nextclick.operators.state.store_errors import StateError

__all__ = [
    "DATA",
    "META_FLOOR",
    "META_SEQ",
    "U64",
    "UNDO",
    "UNDO_END",
    "WalSyncer",
    "compact_all",
    "db_options",
    "dir_bytes",
    "fetch_data",
    "iter_raw",
    "open_db",
    "prefix_end",
    "wal_syncer",
    "write_data",
]

DATA = b"d"
UNDO = b"u"
META_SEQ = b"mseq"
META_FLOOR = b"mfloor"
UNDO_END = b"v"  # first key after every undo chunk

U64 = struct.Struct(">Q")

# Many shards live in one process: keep each DB's memtables small, cap all memtables together, and
# share one block cache that also holds index and filter blocks, so RocksDB's memory is a fixed
# budget (block cache + memtable cap) that does not grow with the number of customers stored.
_WRITE_BUFFER_BYTES = 4 << 20
_MAX_WRITE_BUFFERS = 2
_SHARED_BLOCK_CACHE_BYTES = 64 << 20
_SHARED_MEMTABLE_BYTES = 64 << 20
_MAX_OPEN_FILES = 64
# How often the background syncer flushes open stores' WALs (see WalSyncer).
_WAL_SYNC_INTERVAL_S = 0.1


@functools.cache
def db_options(read_only: bool = False) -> Options:
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


def open_db(path: str, *, read_only: bool) -> Rdict:
    """Open (or create, read-write) the DB at `path`; StateError if RocksDB refuses."""
    try:
        if read_only:
            try:
                return Rdict(path, db_options(True), access_type=AccessType.read_only())
            except Exception:  # noqa: BLE001 - perhaps a read-only mount: see _read_only_mirror
                mirror = _read_only_mirror(path)
                if mirror is None:
                    raise
                return Rdict(mirror, db_options(True), access_type=AccessType.read_only())
        os.makedirs(path, exist_ok=True)
        return Rdict(path, db_options())
    except Exception as exc:  # rocksdict raises plain Exception for I/O, lock and corruption errors
        mode = "read-only" if read_only else "read-write"
        raise StateError(f"cannot open shard store {path!r} ({mode}): {exc}") from exc


def _read_only_mirror(path: str) -> str | None:
    """A directory of links to the store's files, for a store this process cannot write to.

    rocksdict rewrites its `rocksdict-config.json` even when it opens a store read-only, so the
    read-only tools (`profile get`, `state info`, an offline savepoint) failed on a volume snapshot
    mounted read-only (an outside probe). RocksDB reads the files through the links; nothing is written
    where they point. None when `path` is not a store directory. Removed when the process exits."""
    if not os.path.isfile(os.path.join(path, "CURRENT")):
        return None
    import shutil
    import tempfile

    mirror = tempfile.mkdtemp(prefix="nextclick-read-only-")
    atexit.register(shutil.rmtree, mirror, ignore_errors=True)
    for name in os.listdir(path):
        if name not in ("rocksdict-config.json", "LOCK") and not name.startswith("LOG"):
            os.symlink(os.path.join(os.path.abspath(path), name), os.path.join(mirror, name))
    return mirror


def compact_all(db: Rdict) -> None:
    """Flush, then compact every level with the bottommost one forced: tombstoned bytes leave the SSTs."""
    db.flush(True)
    options = CompactOptions()
    options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    db.compact_range(None, None, options)


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


def prefix_end(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key starting with `prefix` (None if there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def iter_raw(db: Rdict, prefix: bytes, seek: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Raw (key, value) pairs of one namespace in key order, starting at `seek`."""
    opts = ReadOptions()
    end = prefix_end(prefix)
    if end is not None:
        opts.set_iterate_upper_bound(end)
    it = db.iter(opts)
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


def fetch_data(db: Rdict, keys: list[bytes]) -> dict[bytes, bytes | None]:
    """The user-data values of `keys` as RocksDB holds them (None = absent), in one multi-get."""
    values = cast(list[bytes | None], db.get([DATA + k for k in keys]))
    return dict(zip(keys, values, strict=True))


def write_data(batch: WriteBatch, values: dict[bytes, bytes | None]) -> None:
    """Add user-data puts (and deletes, for None) to `batch`."""
    for key, value in values.items():
        if value is None:
            batch.delete(DATA + key)
        else:
            batch.put(DATA + key, value)


class _Syncable(Protocol):
    def _sync_wal(self) -> None: ...


class WalSyncer:
    """Flushes the write-ahead logs of open stores to disk in the background, every `interval` s.

    Durability never depends on it: a checkpoint is its own synced write. What it buys is that the
    synced write finds little left to flush (its cost grows with the bytes written since the last
    sync), so the epoch end, when the engine's worker waits, stays short. RocksDB's FlushWAL runs
    without the GIL, so the worker goes on meanwhile. The thread runs while any store is registered
    and is stopped and joined at interpreter exit (a thread killed inside RocksDB aborts the process).
    """

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._stores: weakref.WeakSet[_Syncable] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        atexit.register(self.shutdown)

    def register(self, store: _Syncable) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="nextclick-wal-sync", daemon=True)
                self._thread.start()

    def unregister(self, store: _Syncable) -> None:
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


wal_syncer = WalSyncer(_WAL_SYNC_INTERVAL_S)
