"""Behaviour of ShardStore against a real RocksDB: pending vs committed, rollback, erasure, crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nextclick.operators.state.store import ShardStore, StateError

ROOT = Path(__file__).resolve().parents[2]


def contents(store: ShardStore) -> dict[bytes, bytes]:
    return dict(store.scan(b""))


# ------------------------------------------------------------------------------- pending vs committed


def test_pending_writes_are_visible_before_checkpoint(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s") as store:
        assert store.seq == 0
        store.put(b"a", b"1")
        store.put(b"b", b"2")
        store.delete(b"b")
        assert store.get(b"a") == b"1"
        assert store.get_many([b"a", b"b", b"zz", b"a"]) == [b"1", None, None, b"1"]
        assert list(store.scan(b"")) == [(b"a", b"1")]
        assert store.pending_count() == 2


def test_close_without_checkpoint_loses_pending(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ShardStore(path) as store:
        store.put(b"a", b"1")
    with ShardStore(path) as store:
        assert store.get(b"a") is None
        assert store.seq == 0
        assert contents(store) == {}


def test_checkpoint_persists_data_and_seq(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ShardStore(path) as store:
        store.put(b"a", b"1")
        assert store.checkpoint() == 1
        assert store.pending_count() == 0
        assert store.checkpoint() == 2  # empty checkpoints still count epochs
        store.put(b"b", b"2")
    with ShardStore(path) as store:
        assert store.seq == 2
        assert store.get_many([b"a", b"b"]) == [b"1", None]


def test_scan_merges_pending_with_committed_in_key_order(tmp_path: Path) -> None:
    def timer(deadline: int, customer: bytes) -> bytes:
        return b"t" + deadline.to_bytes(8, "big") + customer

    with ShardStore(tmp_path / "s") as store:
        store.put(timer(30, b"c"), b"")
        store.put(timer(10, b"a"), b"")
        store.put(b"p:other", b"x")
        store.put(b"s", b"before-prefix")
        store.put(b"u", b"after-prefix")
        store.checkpoint()
        store.put(timer(20, b"b"), b"")
        store.delete(timer(10, b"a"))
        store.put(timer(30, b"c"), b"updated")
        keys = [k for k, _ in store.scan(b"t")]
        assert keys == [timer(20, b"b"), timer(30, b"c")]
        assert dict(store.scan(b"t"))[timer(30, b"c")] == b"updated"
        assert [k for k, _ in store.scan(b"t", start=timer(25, b""))] == [timer(30, b"c")]
        # Mutating during a scan does not disturb it.
        for key, _ in store.scan(b"t"):
            store.delete(key)
        assert list(store.scan(b"t")) == []


def test_scan_with_ff_prefix(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s") as store:
        store.put(b"\xff\xff", b"1")
        store.put(b"\xff\x00", b"2")
        store.checkpoint()
        store.put(b"\xff\x01", b"3")
        assert [k for k, _ in store.scan(b"\xff")] == [b"\xff\x00", b"\xff\x01", b"\xff\xff"]


# ------------------------------------------------------------------------------------------ rollback


def test_rollback_restores_exact_earlier_contents(tmp_path: Path) -> None:
    path = tmp_path / "s"
    snapshots: dict[int, dict[bytes, bytes]] = {}
    with ShardStore(path, keep_checkpoints=10) as store:
        store.put(b"keep", b"k0")
        store.put(b"rewritten", b"r0")
        store.put(b"deleted-later", b"d0")
        snapshots[store.checkpoint()] = contents(store)
        store.put(b"rewritten", b"r1")
        store.put(b"born-later", b"b1")
        snapshots[store.checkpoint()] = contents(store)
        store.put(b"rewritten", b"r2")
        store.delete(b"deleted-later")
        snapshots[store.checkpoint()] = contents(store)
        store.put(b"rewritten", b"r3")
        store.put(b"rewritten", b"r4")
        store.delete(b"born-later")
        store.put(b"deleted-later", b"d4")
        snapshots[store.checkpoint()] = contents(store)
        store.put(b"pending", b"gone")

        store.rollback_to(3)
        assert store.seq == 3
        assert store.pending_count() == 0
        assert contents(store) == snapshots[3]
    with ShardStore(path, keep_checkpoints=10) as store:
        assert store.seq == 3
        store.rollback_to(1)
        assert contents(store) == snapshots[1]
        assert store.get_many([b"born-later", b"deleted-later"]) == [None, b"d0"]
        store.rollback_to(0)
        assert contents(store) == {}
        assert store.seq == 0
    with ShardStore(path) as store:
        assert store.seq == 0
        assert contents(store) == {}


def test_rollback_to_current_seq_only_discards_pending(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s") as store:
        store.put(b"a", b"1")
        store.checkpoint()
        store.put(b"a", b"2")
        store.rollback_to(1)
        assert store.get(b"a") == b"1"
        assert store.seq == 1


def test_rollback_below_undo_window_raises_helpful_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ShardStore(path, keep_checkpoints=3) as store:
        for i in range(6):
            store.put(b"k", str(i).encode())
            store.checkpoint()
        assert store.stats()["oldest_restorable_seq"] == 3
        with pytest.raises(StateError) as err:
            store.rollback_to(2)
        message = str(err.value)
        assert str(path) in message
        assert "seq 6" in message and "seq 2" in message and "oldest restorable seq is 3" in message
        store.put(b"k", b"pending")
        with pytest.raises(StateError):
            store.rollback_to(0)
        assert store.seq == 6  # a refused rollback changes nothing
        assert store.get(b"k") == b"pending"
        with pytest.raises(StateError, match="seq 7"):
            store.rollback_to(7)
        store.rollback_to(3)
        assert store.get(b"k") == b"2"


# --------------------------------------------------------------------------------------------- erase


def test_erase_is_permanent_even_across_rollback(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ShardStore(path, keep_checkpoints=10) as store:
        store.put(b"alice", b"a1")
        store.put(b"bob", b"b1")
        store.checkpoint()
        store.put(b"alice", b"a2")
        store.put(b"bob", b"b2")
        store.checkpoint()
        store.put(b"alice", b"a3-pending")
        store.erase([b"alice"])
        assert store.seq == 2
        assert store.get(b"alice") is None
        assert store.pending_count() == 0
        assert contents(store) == {b"bob": b"b2"}
    with ShardStore(path, keep_checkpoints=10) as store:
        assert store.get(b"alice") is None
        store.rollback_to(1)
        assert store.get(b"alice") is None
        assert store.get(b"bob") == b"b1"
    # The erased bytes are not left in any undo record either.
    ro = ShardStore.open_read_only(path)
    try:
        raw = list(ro._iter_raw(b""))
    finally:
        ro.close()
    assert all(b"alice" not in k and b"a1" not in v and b"a2" not in v for k, v in raw)


def test_erase_then_rewrite_rolls_back_to_absent(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s") as store:
        store.put(b"alice", b"a1")
        store.checkpoint()
        store.erase([b"alice"])
        store.put(b"alice", b"new")
        store.checkpoint()
        assert store.get(b"alice") == b"new"
        store.rollback_to(0)
        assert store.get(b"alice") is None


# ---------------------------------------------------------------------------------- crash, cache, ro


def test_sigkill_after_checkpoint_keeps_exactly_last_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from nextclick.operators.state.store import ShardStore
        store = ShardStore({str(path)!r})
        for i in range(100):
            store.put(b"k%03d" % i, b"v1")
        store.checkpoint()
        for i in range(50):
            store.put(b"k%03d" % i, b"v2")
        store.delete(b"k099")
        store.checkpoint()
        for i in range(100):
            store.put(b"k%03d" % i, b"pending")
        store.put(b"extra", b"pending")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    expected = {b"k%03d" % i: (b"v2" if i < 50 else b"v1") for i in range(99)}
    with ShardStore(path) as store:
        assert store.seq == 2
        assert contents(store) == expected
        store.rollback_to(1)
        assert contents(store) == {b"k%03d" % i: b"v1" for i in range(100)}


def test_sigkill_mid_epoch_undoes_staged_writes(tmp_path: Path) -> None:
    """Writes staged into RocksDB during an epoch are undone when the store is opened again."""
    path = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from nextclick.operators.state.store import ShardStore
        store = ShardStore({str(path)!r}, stage_keys=8)
        for i in range(100):
            store.put(b"k%03d" % i, b"v1")
        store.checkpoint()
        for i in range(100):
            store.put(b"k%03d" % i, b"staged")
        for i in range(100, 150):
            store.put(b"k%03d" % i, b"new")
        store.delete(b"k000")
        assert store._chunk > 5, "the test needs staged chunks on disk"
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    committed = {b"k%03d" % i: b"v1" for i in range(100)}
    ro = ShardStore.open_read_only(path)
    try:
        assert ro.seq == 1
        assert contents(ro) == committed  # a reader sees the committed state, not the staged one
        assert ro.get_many([b"k000", b"k120"]) == [b"v1", None]
    finally:
        ro.close()
    with ShardStore(path) as store:
        assert store.seq == 1
        assert contents(store) == committed
        assert list(store._iter_raw(b"u\x00\x00\x00\x00\x00\x00\x00\x02")) == []
        store.put(b"k001", b"v2")
        store.checkpoint()
        store.rollback_to(1)
        assert contents(store) == committed


def test_staged_writes_read_back_and_roll_back(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s", stage_keys=1, cache_size=0) as store:
        store.put(b"a", b"1")
        store.put(b"b", b"1")
        store.checkpoint()
        store.put(b"a", b"2")  # staged at once: in RocksDB, uncommitted
        store.delete(b"b")
        store.put(b"c", b"2")
        assert store.get_many([b"a", b"b", b"c"]) == [b"2", None, b"2"]
        assert [store.get_committed(k) for k in (b"a", b"b", b"c")] == [b"1", b"1", None]
        assert contents(store) == {b"a": b"2", b"c": b"2"}
        assert store.pending_count() == 3
        store.put(b"a", b"3")  # a second write in the epoch keeps the first pre-image
        store.rollback_to(1)
        assert contents(store) == {b"a": b"1", b"b": b"1"}
        assert store.pending_count() == 0


def test_erase_mid_epoch_then_rewrite_rolls_back_to_absent(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s", stage_keys=1) as store:
        store.put(b"alice", b"a1")
        store.checkpoint()
        store.put(b"alice", b"a2")  # staged: its undo chunk holds a1
        store.erase([b"alice"])
        assert store.get_committed(b"alice") is None
        store.put(b"alice", b"a3")
        store.rollback_to(1)
        assert store.get(b"alice") is None
        raw = list(store._iter_raw(b""))
    assert all(b"a1" not in v and b"a2" not in v for _, v in raw)


def test_cache_stays_bounded_and_reads_stay_correct(tmp_path: Path) -> None:
    n = 500
    with ShardStore(tmp_path / "s", cache_size=16) as store:
        for i in range(n):
            store.put(b"k%04d" % i, b"v%d" % i)
        store.checkpoint()
        assert len(store._cache) <= 16
        for i in range(0, n, 3):
            store.put(b"k%04d" % i, b"w%d" % i)
        store.checkpoint()
        keys = [b"k%04d" % i for i in range(n + 100)]
        for _ in range(2):
            values = store.get_many(keys)
            assert len(store._cache) <= 16
            for i, value in enumerate(values):
                expected = None if i >= n else (b"w%d" % i if i % 3 == 0 else b"v%d" % i)
                assert value == expected
        for i in range(n):
            store.get(b"k%04d" % i)
            assert len(store._cache) <= 16


def test_read_only_open_while_writer_holds_the_db(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ShardStore(path) as writer:
        writer.put(b"a", b"1")
        writer.put(b"t1", b"x")
        writer.checkpoint()
        writer.put(b"pending", b"p")
        writer.put(b"a", b"staged")
        writer._stage()  # in RocksDB, not committed: readers must not see it
        with pytest.raises(StateError):
            ShardStore(path)  # a second writer is refused by RocksDB's lock
        ro = ShardStore.open_read_only(path)
        try:
            assert ro.seq == 1
            assert ro.get(b"a") == b"1"
            assert ro.get_many([b"a", b"pending"]) == [b"1", None]
            assert list(ro.scan(b"t")) == [(b"t1", b"x")]
            assert ro.stats()["seq"] == 1
            with pytest.raises(StateError):
                ro.put(b"a", b"2")
            with pytest.raises(StateError):
                ro.checkpoint()
            with pytest.raises(StateError):
                ro.erase([b"a"])
        finally:
            ro.close()
        assert writer.get(b"pending") == b"p"
        assert writer.get(b"a") == b"staged"


def test_stats_and_closed_store(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s", keep_checkpoints=2)
    for i in range(5):
        store.put(b"k%d" % i, b"v")
        store.checkpoint()
    stats = store.stats()
    assert stats["seq"] == 5
    assert stats["oldest_restorable_seq"] == 3
    assert stats["keys"] >= 0
    assert stats["disk_bytes"] > 0
    store.close()
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.get(b"k0")


# ------------------------------------------------------------------------------------ stateful model

KEYS = st.sampled_from([b"a", b"b", b"c", b"ta", b"tb", b"t\xff", b""])
VALUES = st.binary(max_size=4)
KEEP = 3
STAGE = 2  # stage into RocksDB every 2 pending keys, so most writes go through an undo chunk


class StoreMachine(RuleBasedStateMachine):
    """ShardStore against a model: committed snapshot per seq plus a pending overlay."""

    def __init__(self) -> None:
        super().__init__()
        self.store: ShardStore | None = None

    @initialize(tmp=st.just(None))
    def open_store(self, tmp: None) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="shardstore-")
        self.store = ShardStore(self.dir, keep_checkpoints=KEEP, cache_size=3, stage_keys=STAGE)
        self.snapshots: dict[int, dict[bytes, bytes]] = {0: {}}
        self.seq = 0
        self.oldest = 0
        self.pending: dict[bytes, bytes | None] = {}

    def teardown(self) -> None:
        import shutil

        if self.store is not None:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def current(self) -> dict[bytes, bytes]:
        view = dict(self.snapshots[self.seq])
        for key, value in self.pending.items():
            if value is None:
                view.pop(key, None)
            else:
                view[key] = value
        return view

    @property
    def s(self) -> ShardStore:
        assert self.store is not None
        return self.store

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        self.s.put(key, value)
        self.pending[key] = value

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        self.s.delete(key)
        self.pending[key] = None

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[bytes]) -> None:
        view = self.current()
        assert self.s.get_many(keys) == [view.get(k) for k in keys]

    @rule(prefix=st.sampled_from([b"", b"t", b"a", b"t\xff"]), start=st.none() | KEYS)
    def scan(self, prefix: bytes, start: bytes | None) -> None:
        lower = prefix if start is None else max(prefix, start)
        expected = sorted((k, v) for k, v in self.current().items() if k.startswith(prefix) and k >= lower)
        assert list(self.s.scan(prefix, start)) == expected

    @rule(bounds=st.tuples(KEYS, KEYS), limit=st.integers(0, 6))
    def first_keys(self, bounds: tuple[bytes, bytes], limit: int) -> None:
        lower, upper = sorted(bounds)
        expected = sorted(k for k in self.current() if lower <= k < upper)[:limit]
        assert self.s.first_keys(lower, upper, limit) == expected

    @rule()
    def checkpoint(self) -> None:
        view = self.current()
        self.seq = self.s.checkpoint()
        self.snapshots[self.seq] = view
        self.pending = {}
        self.oldest = max(self.oldest, self.seq - KEEP)

    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        target = data.draw(st.integers(0, self.seq + 1))
        if target > self.seq or target < self.oldest:
            with pytest.raises(StateError):
                self.s.rollback_to(target)
            return
        self.s.rollback_to(target)
        self.seq = target
        self.pending = {}
        self.snapshots = {s: snap for s, snap in self.snapshots.items() if s <= target}

    @rule(keys=st.lists(KEYS, min_size=1, max_size=2))
    def erase(self, keys: list[bytes]) -> None:
        self.s.erase(keys)
        for key in keys:
            self.pending.pop(key, None)
            for snap in self.snapshots.values():
                snap.pop(key, None)

    @precondition(lambda self: self.store is not None)
    @rule()
    def reopen(self) -> None:
        self.s.close()
        self.store = ShardStore(self.dir, keep_checkpoints=KEEP, cache_size=3, stage_keys=STAGE)
        self.pending = {}

    @invariant()
    def seq_and_window_match(self) -> None:
        if self.store is None:
            return
        assert self.s.seq == self.seq
        assert self.s.pending_count() == len(self.pending)
        assert self.s.stats()["oldest_restorable_seq"] == self.oldest
        # Exactly the committed seqs of the window have undo chunks: trimming leaves nothing behind.
        # (Chunks above seq belong to the epoch in progress.)
        seqs = {int.from_bytes(k[1:9], "big") for k, _ in self.s._iter_raw(b"u")}
        assert {s for s in seqs if s <= self.seq} == set(range(self.oldest + 1, self.seq + 1))
        assert all(s == self.seq + 1 for s in seqs if s > self.seq)


StoreMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase


def test_erase_then_purge_leaves_no_bytes_of_the_key_in_any_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    secret = b"customer-0123456789abcdef"
    with ShardStore(path, keep_checkpoints=4) as store:
        for i in range(200):
            store.put(b"k%04d" % i, b"v" * 50)
        store.put(secret, b"profile of " + secret)
        store.checkpoint()
        store.put(secret, b"newer profile of " + secret)  # pre-image lands in an undo record
        store.checkpoint()
        store.put(b"pending", b"kept")
        store.erase([secret])
        store.purge()
        assert store.get(secret) is None and store.get(b"pending") == b"kept"
        store.checkpoint()
        assert store.get(b"k0001") == b"v" * 50
    leftovers = [f.name for f in path.iterdir() if f.is_file() and secret in f.read_bytes()]
    assert leftovers == []


def test_a_dropped_store_releases_its_lock_despite_the_background_wal_sync(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytewax never closes a shard's store; dropping the last reference must free RocksDB's lock."""
    import gc
    import time
    import weakref
    from collections import Counter

    visits: Counter[str] = Counter()
    sync_wal = ShardStore._sync_wal

    def counted(self: ShardStore) -> None:
        visits[self.path] += 1
        sync_wal(self)

    def wait(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    monkeypatch.setattr(ShardStore, "_sync_wal", counted)
    path = tmp_path / "s"
    store = ShardStore(path)
    store.put(b"a", b"1")
    store.checkpoint()
    wait(lambda: visits[str(path)] >= 3, "the background syncer to visit the store")
    dropped = weakref.ref(store)
    del store
    # Freed once the syncer is done with any sync under way: it must hold no reference between syncs.
    wait(lambda: gc.collect() >= 0 and dropped() is None, "the dropped store to be freed")
    with ShardStore(path) as again:  # raises StateError (LOCK held) if anything kept the old one open
        assert again.get(b"a") == b"1"


@pytest.mark.parametrize("stage_keys", [1, 64])  # staged at once, or still pending at the second put
def test_a_committed_value_handed_in_with_put_is_what_a_rollback_restores(tmp_path: Path, stage_keys: int) -> None:
    with ShardStore(tmp_path / "s", stage_keys=stage_keys) as store:
        store.put(b"a", b"1")
        store.put(b"b", b"1")
        store.checkpoint()
        assert store.unchanged_since_checkpoint(b"a")
        seen = store.get(b"a")
        store.put(b"a", b"2", committed=seen)  # no RocksDB read for its undo pre-image
        assert not store.unchanged_since_checkpoint(b"a")
        # Once the key changed in this epoch, a stale "committed" value is ignored.
        store.put(b"a", b"3", committed=b"stale")
        store.put(b"c", b"new", committed=None)
        store.checkpoint()
        store.rollback_to(1)
        assert contents(store) == {b"a": b"1", b"b": b"1"}


def test_undo_chunks_of_the_first_format_still_roll_back(tmp_path: Path) -> None:
    """A store written before undo chunks became MessagePack rolls back through its old chunks."""
    import struct

    from rocksdict import Options, Rdict, WriteOptions

    with ShardStore(tmp_path / "s") as store:
        store.put(b"a", b"1")
        store.checkpoint()
        store.put(b"a", b"2")
        store.put(b"b", b"new")
        store.checkpoint()
    # Rewrite seq 2's chunk the way the first format wrote it: >I key length, key, >i value length, value.
    old = b"".join([struct.pack(">I", 1), b"a", struct.pack(">i", 1), b"1",
                    struct.pack(">I", 1), b"b", struct.pack(">i", -1)])
    db = Rdict(str(tmp_path / "s"), Options(raw_mode=True))
    chunk = b"u" + struct.pack(">Q", 2) + struct.pack(">I", 0)
    assert db.get(chunk) is not None
    db.put(chunk, old, WriteOptions())
    db.close()
    with ShardStore(tmp_path / "s") as store:
        store.rollback_to(1)
        assert contents(store) == {b"a": b"1"}


def test_a_full_device_is_noted_as_this_process_s_state_failure(tmp_path: Path) -> None:
    """An outside probe filled one pod's state volume: every pod of the cluster said "lost cluster peer",
    and "No space left on device" was in no log. A store that cannot write notes it (and logs it), so
    that the process that failed first says why (flows/runner.py). The device is a 4 MiB tmpfs mounted
    in a mount namespace of the test's own (`unshare`: no privileges needed)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    script = (
        "import os\n"
        "from nextclick.operators.infra import failures\n"
        "from nextclick.operators.state.store import ShardStore\n"
        "store = ShardStore(os.environ['STORE'])\n"
        "try:\n"
        "    for i in range(100_000):\n"
        "        store.put(b'p%d' % i, os.urandom(4096))\n"
        "        if i % 100 == 99:\n"
        "            store.checkpoint()\n"
        "except Exception:\n"
        "    pass\n"
        "print(failures.storage_failure())\n")
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                           'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$@"', str(mount), sys.executable, "-c",
                           script], cwd=repo, env={**os.environ, "STORE": str(mount / "shard-0000"),
                                                   "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    noted = done.stdout.strip().splitlines()[-1]
    assert noted.startswith(f"{mount / 'shard-0000'}: ") and "No space left on device" in noted, noted
