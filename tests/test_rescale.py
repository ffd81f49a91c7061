"""The same state resumes on 1 process, then 2 processes, then 1 process, and stays exact.

One input topic with 4 partitions grows by a third of the workload before each phase; each phase
runs the flow with stop_at_end against the same state dir (shards' RocksDB directories) and the
same recovery dir (Bytewax's requirement for every process on one machine):

    phase 1: produce 1/3, `nextclick run` in 1 process               -> EOF
    phase 2: produce 1/3, `nextclick run` in 2 processes (-i 0/1, -a)  -> EOF (shards move between workers)
    phase 3: produce 1/3, `nextclick run` in 1 process               -> EOF

The profiles must equal a clean 1-process run over the whole input, dict for dict, and the
decisions (deduplicated on ce_id) must be the same set with the same bodies. Event times are recent
so no absence timer fires during the test (see tests/test_crash.py for why that makes it exact).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import (
    FlowSetup,
    assert_same_decisions,
    assert_same_profiles,
    dedupe,
    produce,
    read_decisions,
    read_profiles,
    reference_run,
    run_to_end,
    workload,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

CUSTOMERS = 450
PARTITIONS = 4
SHARDS = 8


def test_state_resumes_across_1_2_1_processes(kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    started = time.monotonic()
    messages = workload(CUSTOMERS, seed=5)
    clean_input, grown_input = f"{topic_prefix}.in-clean", f"{topic_prefix}.in-grown"
    ensure_topics(kafka, {clean_input: PARTITIONS, grown_input: PARTITIONS})

    clean = reference_run(kafka, tmp_path, topic_prefix, clean_input, messages, PARTITIONS, shards=SHARDS,
                          runner="bytewax", epoch_seconds=1)
    expected_profiles, expected_decisions = clean.profiles, clean.decisions
    assert len(expected_profiles) == CUSTOMERS and expected_decisions

    rescaled = FlowSetup.create(kafka, tmp_path / "rescaled", f"{topic_prefix}.rescaled", inputs=[grown_input],
                                shards=SHARDS, epoch_seconds=0.3)
    third = -(-len(messages) // 3)
    timings = []
    for phase, processes in enumerate((1, 2, 1)):
        produce(kafka, grown_input, messages[phase * third:(phase + 1) * third], PARTITIONS)
        seconds = run_to_end(rescaled, processes=processes, log=tmp_path / f"phase{phase}.log")
        timings.append(f"phase {phase + 1}: {processes} process(es) {seconds:.1f}s")
        if phase == 1:
            # Both processes owned shards: every shard directory is there and was checkpointed.
            assert all((rescaled.state_dir / f"shard-{s:04d}").exists() for s in range(SHARDS))

    got_profiles = read_profiles(rescaled.state_dir, SHARDS)
    assert_same_profiles(expected_profiles, got_profiles)
    got_decisions = dedupe(read_decisions(kafka, rescaled.decisions))
    assert_same_decisions(expected_decisions, got_decisions)
    print(f"\n{'; '.join(timings)}; {len(got_decisions)} decisions; total {time.monotonic() - started:.1f}s")
