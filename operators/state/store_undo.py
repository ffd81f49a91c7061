"""The shard store's undo log and the epoch bookkeeping around it.

Every change is staged into RocksDB together with its undo entry (the key's value at the last
checkpoint), in chunks: the chunks of ``seq`` turn state ``seq`` back into state ``seq - 1``, and
every committed seq has at least one (maybe empty) chunk. The checkpoint writes the new seq in the
same synced batch as the epoch's last chunk; rolling back applies the chunks above a seq backwards.

Undo chunks are a marker byte 0xff and MessagePack of ``[[key, pre-image or nil], ...]``; chunks
written before that format (length-prefixed binary: ``>I`` key length, key, ``>i`` value length,
-1 for "was absent", value) are still read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

import msgspec
from rocksdict import Rdict, WriteBatch, WriteOptions

from nextclick.operators.state.store_db import (
    META_FLOOR,
    META_SEQ,
    U64,
    UNDO,
    UNDO_END,
    fetch_data,
    iter_raw,
    write_data,
)
from nextclick.operators.state.store_errors import StateError

__all__ = ["UndoLog", "decode_undo", "encode_undo", "undo_from", "undo_key", "undo_seq"]

_U32 = struct.Struct(">I")
_KEY_LEN = struct.Struct(">I")
_VAL_LEN = struct.Struct(">i")
# Undo chunks: a marker byte, then MessagePack of [[key, pre-image or nil], ...]. The first format
# began with a 4-byte big-endian key length, whose first byte is 0 for any key under 16 MiB.
_UNDO_V2 = b"\xff"
_UNDO_ENCODER = msgspec.msgpack.Encoder()
_UNDO_DECODER = msgspec.msgpack.Decoder(list[tuple[bytes, bytes | None]])


def undo_key(seq: int, chunk: int) -> bytes:
    return UNDO + U64.pack(seq) + _U32.pack(chunk)


def undo_from(seq: int) -> bytes:
    """Lower bound of the undo chunks of `seq` and every later seq."""
    return UNDO + U64.pack(seq)


def undo_seq(key: bytes) -> int:
    return int(U64.unpack_from(key, len(UNDO))[0])


def encode_undo(entries: dict[bytes, bytes | None]) -> bytes:
    """MessagePack of the (key, pre-image) pairs, after a marker byte no older chunk starts with."""
    return _UNDO_V2 + _UNDO_ENCODER.encode(list(entries.items()))


def decode_undo(blob: bytes) -> dict[bytes, bytes | None]:
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


class UndoLog:
    """One store's undo chunks and epoch counters: the committed seq, the floor no rollback goes
    below, the oldest seq still restorable, and what this epoch has staged so far.

    The store keeps the writes not yet staged (and its read cache) and hands them in; this class
    writes their undo chunks, commits a seq, rolls back and trims. `db` is the store's open DB (the
    store rebinds it when it reopens the DB).
    """

    def __init__(self, db: Rdict, path: str, *, keep: int, write_opts: WriteOptions) -> None:
        self.db = db
        self._path = path
        self.keep = keep
        self._write_opts = write_opts
        # Committed values callers handed in with `put` (undo pre-images that need no RocksDB read).
        self.preimages: dict[bytes, bytes | None] = {}
        # Keys staged in this epoch: their checkpoint-time values are in this epoch's undo chunks.
        self.staged: set[bytes] = set()
        # Last epoch's staged-key set and pre-images, freed at the next stage rather than at the
        # checkpoint: freeing thousands of keys would lengthen the epoch-end pause the worker waits in.
        self._retired: list[object] = []
        self.chunk = 0  # next undo chunk number of this epoch
        raw_seq = db.get(META_SEQ)
        self.seq: int = U64.unpack(raw_seq)[0] if raw_seq is not None else 0
        raw_floor = db.get(META_FLOOR)
        self.floor: int = U64.unpack(raw_floor)[0] if raw_floor is not None else 0
        # Smallest seq that still has an undo chunk, or seq + 1 when none is kept.
        first_undo = next(iter_raw(db, UNDO), None)
        self.oldest_undo: int = min(undo_seq(first_undo[0]), self.seq + 1) if first_undo else self.seq + 1

    # ------------------------------------------------------------------------------------- staging

    def release_retired(self) -> None:
        """Free the previous epoch's bookkeeping (done at a stage, away from the epoch-end pause)."""
        if self._retired:
            self._retired.clear()

    def stage_into(
        self, batch: WriteBatch, pending: dict[bytes, bytes | None], cache: Mapping[bytes, bytes | None]
    ) -> None:
        """Add `pending` writes, with an undo chunk for keys new to this epoch, to `batch`.

        A key's pre-image is the committed value a caller handed in, else the store's read `cache`
        (values as RocksDB holds them), else read from RocksDB.
        """
        if not pending:
            return
        first: dict[bytes, bytes | None] = {}
        unknown: list[bytes] = []
        preimages = self.preimages
        for key in pending:
            if key in self.staged:
                continue
            if key in preimages:
                first[key] = preimages.pop(key)
            elif key in cache:
                first[key] = cache[key]
            else:
                unknown.append(key)
        if unknown:
            first.update(fetch_data(self.db, unknown))
        if first:
            batch.put(undo_key(self.seq + 1, self.chunk), encode_undo(first))
            self.chunk += 1
            self.staged.update(first.keys())
        write_data(batch, pending)

    def commit(self, batch: WriteBatch) -> int:
        """Write `batch` (this epoch's last stage) with the next seq, synced; trim old chunks; return the seq.

        An empty epoch still gets a chunk, so that seq counts engine epochs one to one.
        """
        new_seq = self.seq + 1
        if self.chunk == 0:
            batch.put(undo_key(new_seq, 0), b"")  # every committed seq has a chunk: "nothing changed"
        batch.put(META_SEQ, U64.pack(new_seq))
        trim_through = new_seq - self.keep
        if trim_through >= self.oldest_undo:
            batch.delete_range(undo_from(self.oldest_undo), undo_from(trim_through + 1))
        self.db.write(batch, self._write_opts)
        self.seq = new_seq
        self.oldest_undo = max(self.oldest_undo, trim_through + 1)
        self._retired = [self.staged, self.preimages]
        self.staged = set()
        self.preimages = {}
        self.chunk = 0
        return new_seq

    def committed_value(self, key: bytes) -> bytes | None:
        """The pre-image of a key staged in this epoch, read back from this epoch's undo chunks."""
        for _chunk_key, blob in iter_raw(self.db, undo_from(self.seq + 1)):
            entries = decode_undo(blob)
            if key in entries:
                return entries[key]
        raise StateError(f"shard store {self._path!r}: key staged in this epoch has no undo entry")

    # ----------------------------------------------------------------------------------- rollback

    def check_rollback(self, seq: int) -> None:
        """Raise StateError (changing nothing) unless the chunks to roll back to `seq` are all kept."""
        if seq > self.seq or seq < 0:
            raise StateError(
                f"shard store {self._path!r}: cannot roll back to seq {seq}; "
                f"the committed seq is {self.seq}"
            )
        if seq < self.floor:
            raise StateError(
                f"shard store {self._path!r}: refusing to roll back to seq {seq}: seq {self.floor} was "
                f"committed (the recovery directory handed it back before, or a savepoint was restored at "
                f"it), so rolling back past it would lose committed state"
            )
        oldest = self.oldest_undo - 1
        if seq < oldest:
            raise StateError(
                f"shard store {self._path!r}: cannot roll back from seq {self.seq} to seq {seq}; "
                f"undo records older than seq {oldest} were trimmed (keep_checkpoints={self.keep}), "
                f"so the oldest restorable seq is {oldest}"
            )
        seqs_with_undo = {undo_seq(k) for k, _ in iter_raw(self.db, UNDO, undo_from(seq + 1))}
        for s in range(seq + 1, self.seq + 1):
            if s not in seqs_with_undo:
                raise StateError(
                    f"shard store {self._path!r}: undo record for seq {s} is missing; cannot roll "
                    f"back from seq {self.seq} to seq {seq} (oldest restorable seq {s})"
                )

    def undo_to(self, seq: int) -> None:
        """Apply (and delete) every undo chunk above `seq`, staged ones included; set seq.

        One atomic batch: a crash mid-rollback leaves the store at either the old or the target seq.
        """
        self.staged = set()
        self.preimages = {}
        self.chunk = 0
        batch = WriteBatch(raw_mode=True)
        write_data(batch, self.undo_above(seq))
        batch.delete_range(undo_from(seq + 1), UNDO_END)
        if seq > 0:
            batch.put(META_SEQ, U64.pack(seq))
        else:
            batch.delete(META_SEQ)
        self.db.write(batch, self._write_opts)
        self.seq = seq
        self.oldest_undo = min(self.oldest_undo, seq + 1)

    def undo_above(self, seq: int) -> dict[bytes, bytes | None]:
        """Pre-images that turn the DB back into state `seq`: the oldest one of each key wins."""
        chunks = list(iter_raw(self.db, UNDO, undo_from(seq + 1)))
        restore: dict[bytes, bytes | None] = {}
        for _key, blob in reversed(chunks):  # newest first, so older pre-images overwrite newer ones
            restore.update(decode_undo(blob))
        return restore

    def has_undo_above(self, seq: int) -> bool:
        return next(iter_raw(self.db, UNDO, undo_from(seq + 1)), None) is not None

    def mark_committed(self, seq: int) -> None:
        """Record that the stream engine committed `seq` (synced); later rollbacks stop there."""
        if seq > self.seq:
            raise StateError(f"shard store {self._path!r}: cannot mark seq {seq} committed; the store is at "
                             f"seq {self.seq}")
        if seq <= self.floor:
            return
        sync_opts = WriteOptions()
        sync_opts.sync = True
        self.db.put(META_FLOOR, U64.pack(seq), sync_opts)
        self.floor = seq

    def commit_bulk(self, batch: WriteBatch) -> int:
        """Commit a bulk-loaded `batch` as seq 1, synced and flushed, and mark seq 1 committed (a bulk
        load writes no undo records, so there is nothing to roll back to)."""
        batch.put(META_SEQ, U64.pack(1))
        batch.put(META_FLOOR, U64.pack(1))
        self.db.write(batch, self._write_opts)
        self.db.flush(True)
        self.seq, self.floor, self.oldest_undo = 1, 1, 2
        return 1

    # ------------------------------------------------------------------------------------ erasure

    def chunks_holding(
        self, doomed: set[bytes], matching: Callable[[bytes], bool] | None
    ) -> list[tuple[bytes, dict[bytes, bytes | None]]]:
        """Every undo chunk, decoded; adds to `doomed` each key in them for which `matching` is true."""
        undo: list[tuple[bytes, dict[bytes, bytes | None]]] = []
        for raw_key, blob in iter_raw(self.db, UNDO):
            entries = decode_undo(blob)
            if matching is not None:
                doomed.update(k for k in entries if matching(k))
            undo.append((raw_key, entries))
        return undo

    def forget(self, key: bytes) -> None:
        """Drop `key` from this epoch's undo: a later write in this epoch rolls back to "absent"."""
        self.preimages.pop(key, None)
        self.staged.discard(key)

    @staticmethod
    def rewrite_without(
        batch: WriteBatch, undo: list[tuple[bytes, dict[bytes, bytes | None]]], doomed: set[bytes]
    ) -> None:
        """Add to `batch` the chunks of `undo` that hold a doomed key, rewritten without it."""
        for raw_key, entries in undo:
            if doomed.isdisjoint(entries):
                continue
            batch.put(raw_key, encode_undo({k: v for k, v in entries.items() if k not in doomed}))
