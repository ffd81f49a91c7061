"""Snapshots of epochs that never committed, on per-pod volumes (operators/state/recovery_db.py).

Each process of a cluster with per-pod volumes holds only its own recovery partition, and the rows
that say how far the cluster got (`exs`, `fronts`) can be in any partition. A recheck killed such a
cluster twice within seconds: one process's shards, not woken in the second start's first epoch, kept
the first start's snapshots of it; once the second start committed that epoch they counted, and the
third start opened the shards where the second had got to, with its last epoch's 21-39 decisions
recorded and never sent (2 runs of 6 under load; tests/test_cluster_volumes.py). Now every process
says its progress rows in its hello, waits for every peer's said since it started, and deletes from
its own partitions what the cluster never committed.
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from nextclick.operators.io.cluster_hello import hello, publish_hello, recovery_barrier
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.state.recovery_db import (
    cluster_resume_epoch,
    drop_snapshots_from,
    progress_report,
    read_recovery,
)

STEP = "nextclick.profiles"


def _pods(root: Path) -> tuple[Path, Path]:
    """Two processes' recovery directories, partition 0 and partition 1 of 2."""
    made = root / "made"
    made.mkdir()
    init_db_dir(made, 2)
    pods = []
    for i in range(2):
        pod = root / f"pod-{i}"
        pod.mkdir()
        shutil.move(made / f"part-{i}.sqlite3", pod / f"part-{i}.sqlite3")
        pods.append(pod)
    return pods[0], pods[1]


def _rows(pod: Path, sql: str, *rows: tuple[object, ...]) -> None:
    with sqlite3.connect(next(pod.glob("*.sqlite3"))) as conn:
        conn.executemany(sql, rows)
    conn.close()


def _snaps(pod: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(next(pod.glob("*.sqlite3"))) as conn:
        found = conn.execute("SELECT state_key, snap_epoch FROM snaps ORDER BY 1, 2").fetchall()
    conn.close()
    return found


def _first_start_killed(pod0: Path, pod1: Path) -> None:
    """Execution 0 committed epoch 1 (both workers' frontiers at 2) and wrote epoch 2's snapshots of shard 3
    before it was killed. Its progress rows happen to be in partition 1, the snapshots in partition 0."""
    insert = "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)"
    _rows(pod0, insert, (STEP, "3", 1, pickle.dumps({"shard": 3, "seq": 1})),
          (STEP, "3", 2, pickle.dumps({"shard": 3, "seq": 2})))
    _rows(pod1, "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", (0, 2, 1))
    _rows(pod1, "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", (0, 0, 2), (0, 1, 2))


def test_the_resume_epoch_needs_every_pods_progress_and_only_what_never_committed_goes(tmp_path: Path) -> None:
    pod0, pod1 = _pods(tmp_path)
    _first_start_killed(pod0, pod1)
    alone = read_recovery(pod0)
    # Partition 0 alone has no progress rows: by itself it would resume at 1 and take epoch 1's committed
    # snapshot for stale too. Together the two say 2.
    assert not alone.complete and alone.resume_epoch == 1
    reports = [progress_report(read_recovery(pod)) for pod in (pod0, pod1)]
    assert cluster_resume_epoch(reports[:1]) is None  # a partition missing: nothing is inferred
    assert cluster_resume_epoch(reports) == 2

    assert drop_snapshots_from(pod0, 2) == 1
    assert _snaps(pod0) == [("3", 1)]  # the committed snapshot stays

    # The second start (execution 1, at epoch 2) commits epoch 2 without waking shard 3: the shard
    # resumes at its committed seq 1, not at the dead start's 2.
    _rows(pod1, "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", (1, 2, 2))
    _rows(pod1, "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", (1, 0, 3), (1, 1, 3))
    both = tmp_path / "both"
    both.mkdir()
    for pod in (pod0, pod1):
        shutil.copy(next(pod.glob("*.sqlite3")), both)
    assert read_recovery(both).committed(STEP)["3"] == {"shard": 3, "seq": 1}


def test_reports_of_other_partition_counts_or_malformed_rows_infer_nothing() -> None:
    ok = {"partitions": [0], "part_count": 2, "exs": [], "fronts": []}
    assert cluster_resume_epoch([ok, {**ok, "partitions": [1], "part_count": 3}]) is None
    assert cluster_resume_epoch([ok, {**ok, "partitions": [0]}]) is None
    assert cluster_resume_epoch([ok, {**ok, "partitions": [1]}]) == 1  # nothing ever ran: epoch 1
    # Hellos are said on the control topic, which others can write: a report not shaped as a process makes
    # it infers nothing (before: unhashable part_count or a non-number row stopped the start with a TypeError).
    for bad in ({"part_count": [2]}, {"partitions": [[1]]}, {"partitions": ["1"]}, {"exs": [[1, 2]]},
                {"exs": [[1, 2, "x"]]}, {"fronts": [[1, 0, None]]}, {"fronts": {"0": 1}}, {"exs": None}):
        assert cluster_resume_epoch([ok, {**ok, "partitions": [1], **bad}]) is None, bad
    assert cluster_resume_epoch([ok, ["not", "a", "report"]]) is None  # type: ignore[list-item]


@pytest.mark.broker
def test_a_peers_progress_counts_only_when_said_since_this_process_started(
        kafka: dict[str, str], topic_prefix: str) -> None:
    """A peer's hello said before this start may be from before its cluster last ran, its rows older than
    its partition now: a resume epoch from them would be too early and delete committed snapshots."""
    topic = f"{topic_prefix}.control"
    ensure_topics(kafka, {topic: 1})
    progress = {"partitions": [1], "part_count": 2, "exs": [[0, 2, 1]], "fronts": [[0, 0, 2], [0, 1, 2]]}

    def said(process: int, at_ms: int, recovery: dict[str, object] | None) -> dict[str, object]:
        record = hello("g", process, 2, 1, 2, "1.0", {}, at_ms)
        if recovery is not None:
            record["recovery"] = recovery
        return record

    now = int(time.time() * 1000)
    assert publish_hello(kafka, topic, said(1, now - 60_000, progress))  # before this start
    mine = said(0, now, {"partitions": [0], "part_count": 2, "exs": [], "fronts": []})
    deadline = time.monotonic() + 4
    assert recovery_barrier(kafka, topic, mine, lambda: time.monotonic() > deadline) is None  # still waiting
    # Nor a hello the peer says since from the cluster this process left (it ran: its rows moved on): the
    # wait goes on for its next start's.
    assert publish_hello(kafka, topic, {**said(1, now - 60_000, None), "said_at": now + 1, "formed": True})
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(recovery_barrier(kafka, topic, mine)))
    waiter.start()
    time.sleep(3)
    assert got == []
    assert publish_hello(kafka, topic, said(1, int(time.time() * 1000), progress))  # said since: it counts
    waiter.join(20)
    assert got == [[mine["recovery"], progress]]

    # A peer that says no progress (another release; a recovery directory holding every partition) is
    # not waited for: the start goes on and deletes nothing.
    assert publish_hello(kafka, topic, said(1, int(time.time() * 1000), None))
    assert recovery_barrier(kafka, topic, mine) is None
