"""Read-only view of Bytewax 0.21's recovery partitions: what a resume would hand back.

Bytewax keeps, per recovery partition (`<dir>/*.sqlite3`), the executions (`exs`), each worker's
progress (`fronts`) and the state snapshots of every stateful step (`snaps`, pickled). A resume
starts at the "resume epoch" (the slowest worker's frontier in the last execution) and loads, per
state key, the newest snapshot taken before it. The start-up checks use this to compare each
shard's committed seq with its RocksDB directory before Bytewax runs, so a mismatch is refused with
a sentence instead of a panic. The SQL mirrors `src/recovery.rs` of bytewax 0.21.1 (`resume_from`
and the snapshot loader). Only `drop_uncommitted_snapshots` writes.

**Snapshots of epochs that were never committed.** Bytewax snapshots, at each epoch's end, only the
state keys that epoch woke, and never deletes a snapshot taken at or after the epoch a resume starts
at. So a process killed after writing epoch 5's snapshots but before epoch 5 committed leaves them;
the next execution resumes at 5 and runs its own epoch 5, and a key it does not wake then (a shard
that received nothing) keeps the dead execution's snapshot, which counts as committed once this
execution's epoch 5 does. A shard rolled back at the resume (its RocksDB at seq 0) then meets a
recovery that says seq 1, and every later start is refused (an outside probe: six SIGKILLs 1-3 s
after each start). A start therefore deletes every snapshot at or after its resume epoch before
Bytewax runs: none of them can be loaded by this resume, and none must be by a later one. On per-pod
volumes each process holds only its own partitions, and the resume epoch needs every partition's
progress rows: each process says its rows in its hello (`progress_report`), waits for every peer's
said since it started, and deletes from its own partitions what `cluster_resume_epoch` says never
committed (flows/runner.py; a recheck found a cluster killed twice within seconds that lost 21-39
decisions of its second start's last epoch on process 1's shards, in 2 runs of 6 under load).
"""

from __future__ import annotations

import io
import pickle
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RecoveryView", "cluster_resume_epoch", "drop_snapshots_from", "drop_uncommitted_snapshots",
           "progress_report", "read_recovery", "resume_epoch"]


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dicts, lists, numbers, strings): a recovery file is not trusted code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"recovery snapshot refers to {module}.{name}; only plain data is read")


def _loads(blob: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(blob)).load()


@dataclass
class RecoveryView:
    """What the recovery partitions in one directory say."""

    path: Path
    # Partition files found here, and how many partitions the whole cluster has.
    partitions: list[int] = field(default_factory=list)
    part_count: int | None = None
    # Rows in `exs`: an execution has started against these partitions at least once.
    executions: int = 0
    # Epoch a resume would start at (1 when nothing was ever committed).
    resume_epoch: int = 1
    # partition index -> the epoch Bytewax last committed there (none for a partition never run on).
    commits: dict[int, int] = field(default_factory=dict)
    # step id -> state key -> committed snapshot (None: the key was discarded).
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Snapshots taken at or after the resume epoch: epochs that never committed (module docstring).
    uncommitted: int = 0
    # The `exs` and `fronts` rows of these partitions (`progress_report`).
    exs: list[tuple[int, ...]] = field(default_factory=list)
    fronts: list[tuple[int, ...]] = field(default_factory=list)
    # The newest snapshot epoch here (0: none): a report's peers need not wait when nothing could be stale.
    newest_snapshot_epoch: int = 0

    @property
    def exists(self) -> bool:
        return bool(self.partitions)

    @property
    def complete(self) -> bool:
        """Every partition of the cluster is in this directory, so the view is the whole truth."""
        return self.part_count is not None and sorted(self.partitions) == list(range(self.part_count))

    @property
    def has_progress(self) -> bool:
        """Some execution got past its first epoch: there are committed snapshots or progress."""
        return self.resume_epoch > 1 or any(self.snapshots.values())

    def committed(self, step_id: str) -> dict[str, Any]:
        return self.snapshots.get(step_id, {})


def _read_partition(file: Path, view: RecoveryView, exs: list[Any], fronts: list[Any], snaps: list[Any]) -> None:
    conn = sqlite3.connect(file)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "parts" not in tables:
            return
        for index, count in conn.execute("SELECT part_index, part_count FROM parts"):
            view.partitions.append(int(index))
            view.part_count = int(count)
        if "exs" in tables:
            exs += conn.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
        if "fronts" in tables:
            fronts += conn.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts").fetchall()
        if "commits" in tables:
            rows = conn.execute("SELECT part_index, commit_epoch FROM commits")
            view.commits.update((int(index), int(epoch)) for index, epoch in rows)
        if "snaps" in tables:
            snaps += conn.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps").fetchall()
    finally:
        conn.close()


def _partition_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".sqlite3")


def read_recovery(path: str | Path) -> RecoveryView:
    """Read every `*.sqlite3` partition under `path` (missing or empty directory: an empty view)."""
    view = RecoveryView(Path(path))
    if not view.path.is_dir():
        return view
    files = _partition_files(view.path)
    exs: list[tuple[int, int, int]] = []
    fronts: list[tuple[int, int, int]] = []
    snaps: list[tuple[str, str, int, bytes | None]] = []
    for file in files:
        with tempfile.TemporaryDirectory(prefix="nextclick-recovery-") as tmp:
            # SQLite leaves -shm and -wal files behind even when it only reads a WAL-mode database, so
            # read a copy (with its write-ahead log, which holds the newest commits after a crash).
            copy = Path(tmp) / file.name
            shutil.copyfile(file, copy)
            wal = file.with_name(file.name + "-wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            _read_partition(copy, view, exs, fronts, snaps)
    view.executions = len(exs)
    view.exs, view.fronts = [tuple(r) for r in exs], [tuple(r) for r in fronts]
    view.resume_epoch = resume_epoch(exs, fronts)
    newest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    view.newest_snapshot_epoch = max((int(epoch) for _s, _k, epoch, _b in snaps), default=0)
    for step_id, key, epoch, blob in snaps:
        if epoch >= view.resume_epoch:
            view.uncommitted += 1
            continue  # taken in an epoch that was never committed
        current = newest.get((step_id, key))
        if current is None or epoch > current[0]:
            newest[(step_id, key)] = (epoch, blob)
    for (step_id, key), (_epoch, blob) in newest.items():
        view.snapshots.setdefault(step_id, {})[key] = None if blob is None else _loads(blob)
    return view


def resume_epoch(exs: Sequence[Sequence[int]], fronts: Sequence[Sequence[int]]) -> int:
    """The epoch Bytewax resumes at, from every partition's `exs` and `fronts` rows (its resume_from):
    the slowest worker's frontier in the last execution, each worker at least at that execution's start."""
    if not exs:
        return 1
    last_ex, workers, default_front = max(tuple(r) for r in exs)
    progress = {w: default_front for w in range(workers)}
    for ex_num, worker, front in fronts:
        if ex_num == last_ex and worker in progress:
            progress[worker] = max(progress[worker], front)
    return min(progress.values()) if progress else default_front


def progress_report(view: RecoveryView) -> dict[str, Any]:
    """What this process's partitions say about the cluster's progress, for its peers (per-pod volumes:
    each holds some partitions, and the resume epoch needs every one's rows; `cluster_resume_epoch`)."""
    return {"partitions": sorted(view.partitions), "part_count": view.part_count,
            "exs": [list(r) for r in view.exs], "fronts": [list(r) for r in view.fronts]}


def cluster_resume_epoch(reports: Sequence[Mapping[str, Any]]) -> int | None:
    """The resume epoch from every process's `progress_report`, or None unless together they hold every
    partition of one count (then nothing may be inferred: a resume would refuse to start anyway), or one of
    them is not shaped as `progress_report` makes it (a hello anyone who can write the control topic can
    say: it must neither stop the start nor pick the epoch whose snapshots are deleted)."""
    if not all(_is_report(r) for r in reports):
        return None
    counts = {r.get("part_count") for r in reports}
    if len(counts) != 1 or not isinstance(count := counts.pop(), int):
        return None
    held = {int(p) for r in reports for p in r.get("partitions", ())}
    if held != set(range(count)):
        return None
    exs = [tuple(int(x) for x in row) for r in reports for row in r.get("exs", ())]
    fronts = [tuple(int(x) for x in row) for r in reports for row in r.get("fronts", ())]
    return resume_epoch(exs, fronts)


def _ints(value: Any, length: int | None = None) -> bool:
    return (isinstance(value, list) and all(type(x) is int for x in value)
            and (length is None or len(value) == length))


def _is_report(report: Any) -> bool:
    """Shaped as `progress_report` makes it: exs rows (ex_num, worker_count, resume_epoch), fronts rows
    (ex_num, worker_index, worker_frontier)."""
    return (isinstance(report, dict) and type(report.get("part_count")) is int
            and _ints(report.get("partitions"))
            and all(isinstance(rows, list) and all(_ints(row, 3) for row in rows)
                    for rows in (report.get("exs"), report.get("fronts"))))


def drop_snapshots_from(path: str | Path, epoch: int) -> int:
    """Delete the snapshots of `epoch` and later from the partitions in `path`; how many. Only with the
    cluster's resume epoch, before Bytewax runs (`drop_uncommitted_snapshots`)."""
    dropped = 0
    for file in _partition_files(Path(path)):
        conn = sqlite3.connect(file)
        try:
            with conn:
                dropped += conn.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount
        finally:
            conn.close()
    return dropped


def drop_uncommitted_snapshots(view: RecoveryView) -> int:
    """Delete the snapshots taken at or after the view's resume epoch (module docstring); how many.

    Only for a complete view: with some partitions on another process's volume, the progress read here
    is partial, and a resume epoch computed from it could be earlier than the cluster's (then committed
    snapshots would go). Call it under the start lock, before Bytewax runs."""
    if not view.complete:
        raise ValueError("the recovery view does not hold every partition: its resume epoch is not known here")
    return drop_snapshots_from(view.path, view.resume_epoch)
