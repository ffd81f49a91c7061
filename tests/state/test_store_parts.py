"""The shard store's parts one at a time, each against a real RocksDB in a temporary directory.

store_db (plumbing), store_undo (UndoLog: undo chunks and seq bookkeeping), store_bulk (BulkLoad),
store_reads (range reads with pending writes merged in), store_erase (erasure). ShardStore itself
is tests/state/test_store.py's; the last test here pins the bytes it writes.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from rocksdict import Rdict, WriteBatch, WriteOptions

from nextclick.operators.state import store_erase, store_reads
from nextclick.operators.state.store import ShardStore, StateError
from nextclick.operators.state.store_bulk import BulkLoad
from nextclick.operators.state.store_db import (
    DATA,
    META_FLOOR,
    META_SEQ,
    WalSyncer,
    compact_all,
    dir_bytes,
    fetch_data,
    iter_raw,
    open_db,
    prefix_end,
    write_data,
)
from nextclick.operators.state.store_undo import UndoLog, decode_undo, encode_undo, undo_from, undo_key, undo_seq


def seq_bytes(seq: int) -> bytes:
    return struct.pack(">Q", seq)


def chunk_key(seq: int, chunk: int) -> bytes:
    return b"u" + struct.pack(">Q", seq) + struct.pack(">I", chunk)


def raw(db: Rdict) -> dict[bytes, bytes]:
    return dict(iter_raw(db, b""))


def data(db: Rdict) -> dict[bytes, bytes]:
    return {k[1:]: v for k, v in iter_raw(db, DATA)}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Rdict]:
    handle = open_db(str(tmp_path / "db"), read_only=False)
    try:
        yield handle
    finally:
        handle.close()


def new_log(db: Rdict, *, keep: int = 64) -> UndoLog:
    opts = WriteOptions()
    opts.sync = True
    return UndoLog(db, "test", keep=keep, write_opts=opts)


def stage(log: UndoLog, db: Rdict, pending: dict[bytes, bytes | None],
          cache: dict[bytes, bytes | None] | None = None) -> None:
    batch = WriteBatch(raw_mode=True)
    log.stage_into(batch, pending, cache or {})
    db.write(batch, WriteOptions())


def commit(log: UndoLog, pending: dict[bytes, bytes | None]) -> int:
    batch = WriteBatch(raw_mode=True)
    log.stage_into(batch, pending, {})
    return log.commit(batch)


# ------------------------------------------------------------------------------------------ store_db


def test_open_db_creates_read_write_and_refuses_a_missing_read_only(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    handle = open_db(str(path), read_only=False)
    handle.put(b"dk", b"v", WriteOptions())
    handle.close()
    assert dir_bytes(path) > 0
    reader = open_db(str(path), read_only=True)
    try:
        assert reader.get(b"dk") == b"v"
    finally:
        reader.close()
    with pytest.raises(StateError, match=r"cannot open shard store .*missing.* \(read-only\)"):
        open_db(str(tmp_path / "missing"), read_only=True)
    assert dir_bytes(tmp_path / "never-opened") == 0


def test_prefix_end_and_iter_raw_stay_inside_the_namespace(db: Rdict) -> None:
    assert prefix_end(b"d") == b"e"
    assert prefix_end(b"t\xff") == b"u"
    assert prefix_end(b"\xff\xff") is None
    for key in (b"c", b"d", b"da", b"db", b"d\xff", b"d\xff\x01", b"e", b"u1"):
        db.put(key, key.upper(), WriteOptions())
    assert [k for k, _ in iter_raw(db, b"d")] == [b"d", b"da", b"db", b"d\xff", b"d\xff\x01"]
    assert list(iter_raw(db, b"d", b"db")) == [(b"db", b"DB"), (b"d\xff", b"D\xff"), (b"d\xff\x01", b"D\xff\x01")]
    assert [k for k, _ in iter_raw(db, b"d\xff")] == [b"d\xff", b"d\xff\x01"]
    assert len(list(iter_raw(db, b""))) == 8


def test_write_data_and_fetch_data_use_the_data_prefix(db: Rdict) -> None:
    db.put(DATA + b"gone", b"x", WriteOptions())
    batch = WriteBatch(raw_mode=True)
    write_data(batch, {b"a": b"1", b"gone": None})
    db.write(batch, WriteOptions())
    assert raw(db) == {b"da": b"1"}
    assert fetch_data(db, [b"a", b"gone", b"never"]) == {b"a": b"1", b"gone": None, b"never": None}


def test_compact_all_leaves_no_deleted_value_in_the_table_files(tmp_path: Path, db: Rdict) -> None:
    secret = b"secret-value-0123456789"
    db.put(DATA + b"k", secret, WriteOptions())
    db.flush(True)
    db.delete(DATA + b"k", WriteOptions())
    compact_all(db)
    tables = list((tmp_path / "db").glob("*.sst"))
    assert all(secret not in table.read_bytes() for table in tables)
    assert db.get(DATA + b"k") is None


class _Counted:
    def __init__(self) -> None:
        self.visits = 0
        self.visited = threading.Event()

    def _sync_wal(self) -> None:
        self.visits += 1
        if self.visits >= 2:
            self.visited.set()


def test_wal_syncer_visits_registered_stores_only_and_stops_on_shutdown() -> None:
    syncer = WalSyncer(0.01)
    first, second = _Counted(), _Counted()
    syncer.register(first)
    assert first.visited.wait(5)
    syncer.unregister(first)
    syncer.register(second)
    assert second.visited.wait(5)
    after = first.visits
    syncer.shutdown()
    assert syncer._thread is None or not syncer._thread.is_alive()
    assert first.visits <= after + 1  # at most a visit already under way when it was unregistered
    syncer.register(_Counted())  # after shutdown: no thread is started again
    assert syncer._thread is None or not syncer._thread.is_alive()


def test_state_error_keeps_its_public_name() -> None:
    """Dead letters and logs name the class by module; pickling finds it there too."""
    import pickle

    assert f"{StateError.__module__}.{StateError.__qualname__}" == "nextclick.operators.state.store.StateError"
    again = pickle.loads(pickle.dumps(StateError("x")))
    assert type(again) is StateError and str(again) == "x"


# ---------------------------------------------------------------------------------------- store_undo


def test_undo_records_keep_their_format() -> None:
    assert undo_key(2, 3) == b"u" + seq_bytes(2) + b"\x00\x00\x00\x03"
    assert undo_from(2) == b"u" + seq_bytes(2)
    assert undo_seq(undo_key(7, 1)) == 7
    entries: dict[bytes, bytes | None] = {b"a": b"1", b"b": None}
    blob = encode_undo(entries)
    assert blob == b"\xff" + msgspec.msgpack.encode([[b"a", b"1"], [b"b", None]])
    assert decode_undo(blob) == entries
    first_format = b"".join([struct.pack(">I", 1), b"a", struct.pack(">i", 1), b"1",
                             struct.pack(">I", 1), b"b", struct.pack(">i", -1)])
    assert decode_undo(first_format) == entries
    assert decode_undo(b"") == {}


def test_a_fresh_log_is_at_seq_zero(db: Rdict) -> None:
    log = new_log(db)
    assert (log.seq, log.floor, log.oldest_undo, log.chunk) == (0, 0, 1, 0)
    assert not log.has_undo_above(0)
    assert log.undo_above(0) == {}


def test_stage_into_takes_pre_images_from_callers_then_cache_then_rocksdb(db: Rdict) -> None:
    log = new_log(db)
    assert commit(log, {b"a": b"1", b"b": b"1", b"c": b"1"}) == 1
    log.preimages[b"a"] = b"handed-in"
    stage(log, db, {b"a": b"2", b"b": b"2", b"c": None, b"new": b"n"}, cache={b"b": b"cached"})
    assert log.chunk == 1
    assert log.staged == {b"a", b"b", b"c", b"new"}
    assert log.preimages == {}
    assert decode_undo(db[chunk_key(2, 0)]) == {b"a": b"handed-in", b"b": b"cached", b"c": b"1", b"new": None}
    assert data(db) == {b"a": b"2", b"b": b"2", b"new": b"n"}
    # A key staged in this epoch gets no second pre-image; only new keys make a chunk.
    stage(log, db, {b"a": b"3"})
    assert log.chunk == 1
    stage(log, db, {b"a": b"4", b"d": b"4"})
    assert log.chunk == 2
    assert decode_undo(db[chunk_key(2, 1)]) == {b"d": None}
    assert log.committed_value(b"a") == b"handed-in"
    assert log.committed_value(b"d") is None
    with pytest.raises(StateError, match="no undo entry"):
        log.committed_value(b"never-staged")
    assert log.seq == 1  # staged, not committed


def test_commit_writes_the_seq_an_empty_chunk_and_trims(db: Rdict) -> None:
    log = new_log(db, keep=2)
    assert commit(log, {b"a": b"1"}) == 1
    assert db[META_SEQ] == seq_bytes(1)
    assert commit(log, {}) == 2
    assert db[chunk_key(2, 0)] == b""  # an empty epoch still has its chunk
    assert commit(log, {b"a": b"3"}) == 3
    assert sorted(k for k, _ in iter_raw(db, b"u")) == [chunk_key(2, 0), chunk_key(3, 0)]
    assert (log.seq, log.oldest_undo, log.chunk, log.staged) == (3, 2, 0, set())
    again = new_log(db, keep=2)
    assert (again.seq, again.floor, again.oldest_undo) == (3, 0, 2)


def test_undo_to_restores_and_check_rollback_refuses_what_it_cannot(db: Rdict) -> None:
    log = new_log(db, keep=3)
    commit(log, {b"a": b"1", b"b": b"1"})
    commit(log, {b"a": b"2", b"b": None})
    commit(log, {b"c": b"3"})
    stage(log, db, {b"a": b"staged", b"d": b"staged"})
    assert log.has_undo_above(3)
    assert log.undo_above(1) == {b"a": b"1", b"b": b"1", b"c": None, b"d": None}
    log.check_rollback(1)
    log.undo_to(1)
    assert data(db) == {b"a": b"1", b"b": b"1"}
    assert (log.seq, log.chunk, log.staged, db[META_SEQ]) == (1, 0, set(), seq_bytes(1))
    assert not log.has_undo_above(1)
    with pytest.raises(StateError, match="the committed seq is 1"):
        log.check_rollback(2)
    with pytest.raises(StateError, match="cannot roll back to seq -1"):
        log.check_rollback(-1)
    log.undo_to(0)
    assert data(db) == {}
    assert META_SEQ not in raw(db)


def test_check_rollback_stops_at_the_floor_trimmed_and_missing_chunks(db: Rdict) -> None:
    log = new_log(db, keep=2)
    for i in range(4):
        commit(log, {b"k": b"%d" % i})
    with pytest.raises(StateError, match="oldest restorable seq is 2"):
        log.check_rollback(1)
    log.check_rollback(2)
    log.mark_committed(3)
    assert db[META_FLOOR] == seq_bytes(3)
    log.mark_committed(2)  # lower than the floor: ignored
    assert (log.floor, db[META_FLOOR]) == (3, seq_bytes(3))
    with pytest.raises(StateError, match="refusing to roll back to seq 2"):
        log.check_rollback(2)
    with pytest.raises(StateError, match="cannot mark seq 5 committed"):
        log.mark_committed(5)
    db.delete(chunk_key(4, 0), WriteOptions())
    with pytest.raises(StateError, match="undo record for seq 4 is missing"):
        log.check_rollback(3)
    assert new_log(db).floor == 3


def test_commit_bulk_is_seq_one_and_committed(db: Rdict) -> None:
    log = new_log(db)
    batch = WriteBatch(raw_mode=True)
    batch.put(DATA + b"a", b"1")
    assert log.commit_bulk(batch) == 1
    assert (log.seq, log.floor, log.oldest_undo) == (1, 1, 2)
    assert raw(db) == {b"da": b"1", META_SEQ: seq_bytes(1), META_FLOOR: seq_bytes(1)}


def test_erasure_helpers_rewrite_only_the_chunks_holding_a_doomed_key(db: Rdict) -> None:
    log = new_log(db)
    commit(log, {b"p1": b"1", b"t1": b"1", b"other": b"1"})
    commit(log, {b"p1": b"2", b"t1": None})
    log.preimages[b"p1"] = b"2"
    stage(log, db, {b"other": b"3"})
    doomed = {b"p1"}
    chunks = log.chunks_holding(doomed, lambda k: k.startswith(b"t"))
    assert doomed == {b"p1", b"t1"}
    assert [k for k, _ in chunks] == [chunk_key(1, 0), chunk_key(2, 0), chunk_key(3, 0)]
    log.forget(b"p1")
    log.forget(b"other")
    assert b"p1" not in log.preimages and log.staged == set()
    batch = WriteBatch(raw_mode=True)
    log.rewrite_without(batch, chunks, doomed)
    db.write(batch, WriteOptions())
    assert decode_undo(db[chunk_key(1, 0)]) == {b"other": None}
    assert decode_undo(db[chunk_key(2, 0)]) == {}
    assert decode_undo(db[chunk_key(3, 0)]) == {b"other": b"1"}


# ---------------------------------------------------------------------------------------- store_bulk


def test_bulk_load_writes_full_batches_and_holds_the_rest(db: Rdict) -> None:
    load = BulkLoad(WriteOptions())
    for i in range(7):
        load.put(db, b"k%d" % i, b"v", batch_keys=3)
    assert sorted(data(db)) == [b"k%d" % i for i in range(6)]  # two full batches, unsynced
    log = new_log(db)
    log.commit_bulk(load.rest())
    assert sorted(data(db)) == [b"k%d" % i for i in range(7)]
    assert list(iter_raw(db, b"u")) == []  # no undo records


def test_store_refuses_a_bulk_load_into_a_store_with_data(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s") as store:
        store.put(b"a", b"1")
        with pytest.raises(StateError, match="needs an empty store"):
            store.bulk_put(b"b", b"1")
    with ShardStore(tmp_path / "t") as store:
        for i in range(5):
            store.bulk_put(b"k%d" % i, b"v", batch_keys=2)
        assert store.commit_bulk() == 1
        assert (store.seq, store.committed_floor, store.oldest_restorable_seq) == (1, 1, 1)
        assert dict(store.scan(b"")) == {b"k%d" % i: b"v" for i in range(5)}
        with pytest.raises(StateError, match="needs an empty store"):
            store.commit_bulk()


# --------------------------------------------------------------------------------------- store_reads


def test_scan_merges_pending_and_captures_it_at_the_call(db: Rdict) -> None:
    for key in (b"a", b"t1", b"t3", b"t5", b"u"):
        db.put(DATA + key, b"c", WriteOptions())
    pending: dict[bytes, bytes | None] = {b"t2": b"p", b"t3": None, b"t5": b"p", b"t6": b"p", b"s": b"p"}
    walk = store_reads.scan(db, pending, b"t")
    pending[b"t4"] = b"late"  # after the call: not seen
    assert list(walk) == [(b"t1", b"c"), (b"t2", b"p"), (b"t5", b"p"), (b"t6", b"p")]
    assert [k for k, _ in store_reads.scan(db, pending, b"t", b"t4")] == [b"t4", b"t5", b"t6"]
    assert [k for k, _ in store_reads.scan(db, {}, b"t", b"a")] == [b"t1", b"t3", b"t5"]  # start below prefix


def test_first_keys_is_never_short_because_of_pending_deletes(db: Rdict) -> None:
    for i in range(10):
        db.put(DATA + b"t%d" % i, b"", WriteOptions())
    db.put(DATA + b"x", b"", WriteOptions())
    pending: dict[bytes, bytes | None] = {b"t0": None, b"t1": None, b"t10": b"", b"x0": b""}
    assert store_reads.first_keys(db, pending, b"t", b"u", 3) == [b"t10", b"t2", b"t3"]
    assert store_reads.first_keys(db, {}, b"t2", b"t4", 10) == [b"t2", b"t3"]
    assert store_reads.first_keys(db, {}, b"t", b"u", 0) == []


# --------------------------------------------------------------------------------------- store_erase


def test_erase_removes_data_undo_and_pending_in_one_write(db: Rdict) -> None:
    log = new_log(db)
    commit(log, {b"p1": b"1", b"t1": b"1", b"keep": b"1"})
    commit(log, {b"t1": None})
    pending: dict[bytes, bytes | None] = {b"p1": b"pending", b"keep": b"2"}
    erased = store_erase.erase(db, log, pending, [b"p1"], lambda k: k.startswith(b"t"))
    assert erased == {b"p1", b"t1"}
    assert pending == {b"keep": b"2"}
    assert data(db) == {b"keep": b"1"}
    assert all(b"p1" not in decode_undo(v) and b"t1" not in decode_undo(v) for _, v in iter_raw(db, b"u"))
    log.undo_to(0)
    assert data(db) == {}


def test_erase_of_nothing_writes_nothing(db: Rdict) -> None:
    log = new_log(db)
    commit(log, {b"a": b"1"})
    before = db.latest_sequence_number()
    assert store_erase.erase(db, log, {}, [], None) == set()
    assert db.latest_sequence_number() == before


# ---------------------------------------------------------------------------------- the store's bytes


def test_the_store_writes_the_same_keys_and_undo_records_as_before(tmp_path: Path) -> None:
    """The on-disk format, byte for byte, across staging, checkpoints, erasure and a rollback."""
    path = tmp_path / "s"
    with ShardStore(path, stage_keys=2, keep_checkpoints=2) as store:
        store.put(b"a", b"1")
        store.put(b"b", b"1")  # staged: chunk 0 of seq 1
        store.put(b"c", b"1")
        assert store.checkpoint() == 1  # the rest: chunk 1 of seq 1
        store.put(b"a", b"2", committed=b"1")
        store.delete(b"b")  # staged: chunk 0 of seq 2
        assert store.checkpoint() == 2
        assert store.checkpoint() == 3  # empty: an empty chunk; seq 1's chunks trimmed
        store.mark_committed(2)
        store.put(b"c", b"4")
        store.erase([b"b"])
    ro = ShardStore.open_read_only(path)
    try:
        assert dict(ro._iter_raw(b"")) == {
            b"da": b"2",
            b"dc": b"1",
            b"mfloor": seq_bytes(2),
            b"mseq": seq_bytes(3),
            chunk_key(2, 0): b"\xff" + msgspec.msgpack.encode([[b"a", b"1"]]),
            chunk_key(3, 0): b"",
        }
    finally:
        ro.close()
