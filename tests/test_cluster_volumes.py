"""Per-pod volumes, decided by a test: two processes, each with its OWN state and recovery directory.

This is what a StatefulSet with a volumeClaimTemplate gives each pod: nothing on disk is shared.
Process i keeps its shards' RocksDB directories in its own state dir, and its own Bytewax recovery
partition (`--recovery-per-process`: partition i of 2, created by `nextclick run` in an empty dir).

1. Clean run: the whole input, one process (`python -m bytewax.run`), one state dir. Reference.
2. Cluster run on its own input topic, fed over ~10 s while two `nextclick run --process-id i
   --addresses A0;A1 --recovery-per-process` processes tail it. Three times the cluster goes down
   and comes back from the same per-process dirs, as a Bytewax cluster does when any process is
   lost: both SIGKILLed at a random moment; process 1 SIGKILLed by a failpoint right after a shard
   checkpoint (RocksDB ahead of Bytewax's commit, on process 1's volume), process 0 then losing its
   peer; both SIGKILLed again. Then both run to the end of the input (stop_at_end).
3. Profiles must equal the clean run's, dict for dict; decisions (deduplicated on ce_id) the same
   set with the same bodies. Each shard's RocksDB exists on exactly one process's volume, and each
   recovery dir holds exactly its own partition.

Event times are recent, so no absence timer fires in either run (see tests/test_crash.py): the
comparison is exact.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nextclick.flows.cluster import partitions_in
from nextclick.flows.local_broker import free_port
from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import (
    FlowSetup,
    PacedProducer,
    assert_same_decisions,
    assert_same_profiles,
    dedupe,
    read_decisions,
    read_profiles,
    reference_run,
    start,
    workload,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

CUSTOMERS = 400
PARTITIONS = 4
SHARDS = 8
PROCESSES = 2


def start_cluster(pods: list[FlowSetup], addresses: list[str], *, stop_at_end: bool, log: Path,
                  failpoints: dict[int, str] | None = None) -> list[subprocess.Popen[bytes]]:
    return [start(pod, stop_at_end=stop_at_end, process_id=i, addresses=addresses, log=log,
                  failpoints=(failpoints or {}).get(i, ""), args=["--recovery-per-process"])
            for i, pod in enumerate(pods)]


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def test_two_processes_with_their_own_state_and_recovery_dirs_resume_exactly(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    started = time.monotonic()
    messages = workload(CUSTOMERS, seed=31)
    clean_input, cluster_input = f"{topic_prefix}.in-clean", f"{topic_prefix}.in-cluster"
    ensure_topics(kafka, {clean_input: PARTITIONS, cluster_input: PARTITIONS})

    clean = reference_run(kafka, tmp_path, topic_prefix, clean_input, messages, PARTITIONS, shards=SHARDS,
                          runner="bytewax", epoch_seconds=1)
    expected_profiles, expected_decisions = clean.profiles, clean.decisions
    assert len(expected_profiles) == CUSTOMERS and expected_decisions

    base = FlowSetup.create(kafka, tmp_path / "topics", f"{topic_prefix}.cluster", inputs=[cluster_input],
                            shards=SHARDS, epoch_seconds=0.3)
    pods = [base.with_(state_dir=tmp_path / f"pod-{i}" / "state", recovery_dir=tmp_path / f"pod-{i}" / "recovery")
            for i in range(PROCESSES)]
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(PROCESSES)]
    log = tmp_path / "cluster.log"
    feeder = PacedProducer(kafka, cluster_input, messages, PARTITIONS, seconds=10)
    feeder.start()
    rng = random.Random(12)
    outages = []
    for failpoints in ({}, {1: "after_checkpoint:6"}, {}):
        procs = start_cluster(pods, addresses, stop_at_end=False, log=log, failpoints=failpoints)
        if failpoints:
            try:
                procs[1].wait(20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"failpoint {failpoints[1]} not reached in 20 s; see {log}")
            assert procs[1].returncode == -signal.SIGKILL
            try:  # the peer's loss takes the whole cluster down
                outages.append(f"process 1 by {failpoints[1]}, process 0 exited {procs[0].wait(10)}")
            except subprocess.TimeoutExpired:
                outages.append(f"process 1 by {failpoints[1]}, process 0 SIGKILLed")
        else:
            after = rng.uniform(2.5, 5.0)
            time.sleep(after)
            assert all(p.poll() is None for p in procs), f"a process stopped by itself; see {log}"
            outages.append(f"both SIGKILLed after {after:.1f}s")
        stop_all(procs)
    feeder.join(60)
    assert feeder.error is None, feeder.error

    procs = start_cluster(pods, addresses, stop_at_end=True, log=log)
    try:
        for p in procs:
            assert p.wait(120) == 0, f"cluster process exited with {p.returncode}; see {log}"
    finally:
        stop_all(procs)

    # Nothing is shared: each recovery dir holds its own partition, each shard lives on one volume.
    for i, pod in enumerate(pods):
        assert partitions_in(pod.recovery_dir) == {i: PROCESSES}
    shard_dirs = [{d.name for d in pod.state_dir.iterdir() if d.name.startswith("shard-")} for pod in pods]
    assert not shard_dirs[0] & shard_dirs[1], f"a shard has RocksDB on both volumes: {shard_dirs[0] & shard_dirs[1]}"
    assert len(shard_dirs[0] | shard_dirs[1]) == SHARDS and all(shard_dirs), shard_dirs

    got_profiles: dict[str, dict[str, object]] = {}
    for pod in pods:
        profiles = read_profiles(pod.state_dir, SHARDS)
        assert not set(profiles) & set(got_profiles)
        got_profiles.update(profiles)
    assert_same_profiles(expected_profiles, got_profiles)
    got_decisions = dedupe(read_decisions(kafka, base.decisions))
    assert_same_decisions(expected_decisions, got_decisions)
    print(f"\nshards per process: {[sorted(d) for d in shard_dirs]}; outages: {'; '.join(outages)}; "
          f"{len(got_decisions)} decisions; total {time.monotonic() - started:.1f}s")
