"""Offline savepoint commands: `savepoint reshard`'s bounds and a retry after it was stopped part way; the line
a restore gives when another one was interrupted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.store import ShardStore
from nextclick.operators.tools.savepoint import SavepointError, SavepointManifest, reshard
from tests.helpers import T0, default_rules, make_event, one_shard_savepoint


def _savepoint(tmp_path: Path) -> Path:
    """A one-shard savepoint of 40 customers."""
    shard = ShardLogic(ShardContext(state_dir=tmp_path / "state", shards=1, ruleset=default_rules(),
                                    clock=ManualClock(T0), sync=False), None)
    shard.on_batch([make_event("page_view", T0 + n, customer=f"c{n}", event_id=f"e{n}") for n in range(40)])
    resume = shard.snapshot()
    shard.store.close()
    assert resume is not None
    return one_shard_savepoint(tmp_path / "state" / "shard-0000", tmp_path / "sp", int(resume["seq"]))


def _profiles(savepoint: Path, shards: int) -> dict[int, list[bytes]]:
    out = {}
    for n in range(shards):
        store = ShardStore.open_read_only(savepoint / f"shard-{n:04d}")
        try:
            out[n] = sorted(k for k, _ in store.scan(b"p"))
        finally:
            store.close()
    return out


@pytest.mark.parametrize("shards", [0, -3, 1025, 5000])
def test_a_shard_count_no_configuration_can_load_is_refused_before_anything_is_written(tmp_path: Path,
                                                                                        shards: int) -> None:
    """An outside probe: --shards 2000 wrote 588 MB no start could load ([state].shards is at most 1024)."""
    with pytest.raises(SavepointError, match=rf"^--shards must be from 1 to 1024 \(state.shards' limit\), "
                                              rf"got {shards}$"):
        reshard(tmp_path / "sp", tmp_path / "out", shards)
    assert not (tmp_path / "out").exists()


def test_a_reshard_stopped_part_way_is_done_again_by_the_same_command(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside probe: a reshard killed half way left DEST/.parts-reshard, and the retry was refused
    ("exists and is not empty"), the leftover called an online savepoint still being written."""
    source = _savepoint(tmp_path)
    reshard(source, tmp_path / "clean", 4)
    moved = 0
    real_replace = os.replace

    def stopped_after_two(a: str | Path, b: str | Path) -> None:
        nonlocal moved
        if moved == 2:
            raise OSError(28, "No space left on device")
        moved += 1
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", stopped_after_two)
    with pytest.raises(OSError):
        reshard(source, tmp_path / "again", 4)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "again" / ".parts-reshard").is_dir() and (tmp_path / "again" / "shard-0000").is_dir()
    with pytest.raises(SavepointError, match="a reshard into it was stopped part way"):
        SavepointManifest.read(tmp_path / "again")
    manifest = reshard(source, tmp_path / "again", 4)
    assert manifest.shards == 4 and not (tmp_path / "again" / ".parts-reshard").exists()
    assert _profiles(tmp_path / "again", 4) == _profiles(tmp_path / "clean", 4)
    assert sum(len(keys) for keys in _profiles(tmp_path / "again", 4).values()) == 40


def test_what_a_reshard_did_not_write_is_never_removed(tmp_path: Path) -> None:
    source = _savepoint(tmp_path)
    dest = tmp_path / "mixed"
    (dest / ".parts-reshard").mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(SavepointError, match="exists and is not empty"):
        reshard(source, dest, 4)
    assert (dest / "notes.txt").read_text() == "mine"
    done = tmp_path / "done"
    reshard(source, done, 2)
    with pytest.raises(SavepointError, match="exists and is not empty"):  # a finished one is never redone
        reshard(source, done, 2)


def test_an_interrupted_restore_of_another_savepoint_says_how_to_finish_it(tmp_path: Path) -> None:
    """An outside probe: a start with another savepoint was told to drop --from-savepoint "to resume that
    state"; doing so was refused, telling it to restore the first savepoint."""
    import orjson

    from nextclick.operators.infra.config import Config
    from nextclick.operators.state.manifest import RESTORING_FILE, RestorePoint, StateMismatch
    from nextclick.operators.tools.savepoint import Destination, _restore_decision

    state, recovery = tmp_path / "state", tmp_path / "recovery"
    state.mkdir()
    first = RestorePoint("sp1", {0: 3}, {"web#0": 10})
    (state / RESTORING_FILE).write_bytes(orjson.dumps({**first.to_json(), "from": "/backups/sp1"}))
    other = SavepointManifest(id="sp2", created_at="2026-12-08T00:00:00+00:00", mode="offline", shards=1,
                              secret_fingerprint="f", seqs={0: 4}, positions={"web#0": 20}, source_lineage=None)
    config = Config().replace(state={"dir": str(state), "recovery_dir": str(recovery), "shards": 1})
    with pytest.raises(StateMismatch) as refused:
        _restore_decision(config, other, Destination("/backups/sp2"), state, recovery)
    assert str(refused.value) == (
        f"state.dir: {state} holds an interrupted restore of savepoint sp1, not of /backups/sp2 (sp2): finish that "
        "one with --from-savepoint /backups/sp1, or move it away (`nextclick state reset`) to restore this one")
