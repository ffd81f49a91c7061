"""Exact profiles after repeated SIGKILLs: the crashed run ends where an uninterrupted run ends.

Workload (tests/flowrun.workload, seeded): ~3,000 valid events over 600 customers (consents,
page views, carts, purchases on three channels, complaints, call-center contacts), keyed and
partitioned by customer, so each customer's events keep their order in any number of partitions.

Why the comparison can be exact. Decisions and profiles are a function of each customer's event
sequence, except for what the wall clock fires through a shard's timers (absences and expiry in
`on_notify`). Event times are the last ~2.5 minutes before the test starts, so the earliest timer
(a browse abandonment: 20 minutes plus 5 minutes of allowed lateness) is due long after the test
ends: no timer fires in either run, and no decision depends on when a run happened to be killed.
Decisions still come from events (call-backs for unresolved calls, post-purchase cross-sells with
consent, complaint and cooldown suppressions), and absences that events complete would be handled
the same way in both runs.

1. Clean run: all input produced, then one uninterrupted `python -m bytewax.run nextclick.flows.main:flow
   -r REC -s 1 -b 0` with stop_at_end. Its profiles (every shard's RocksDB) and decisions are the
   reference.
2. Crashed run, same input topic, fresh output topics, state and recovery dirs: the input is
   produced over ~20 s while the flow tails it (`nextclick run`, 0.3 s epochs, so a checkpoint
   every 0.3 s) and is SIGKILLed 12 times, seeded: half at random moments (some during start-up
   and resume), a quarter by `NEXTCLICK_FAILPOINTS=after_checkpoint:k` (RocksDB has the checkpoint,
   Bytewax has not committed it: resume must roll it back) and a quarter by `before_checkpoint:k`.
   Each restart resumes from the same dirs. Finally it runs to EOF with stop_at_end.
3. Profiles must be equal, dict for dict. With one input partition, every clean decision must be
   there after dedupe on ce_id and every extra copy must repeat an emitted one byte for byte
   (at-least-once with stable ids). With four partitions profiles must still be exact; decisions
   are checked the same way.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import (
    FlowSetup,
    PacedProducer,
    assert_same_decisions,
    assert_same_profiles,
    crash_run,
    dedupe,
    kill_plan,
    read_decisions,
    read_profiles,
    reference_run,
    run_to_end,
    workload,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

CUSTOMERS = 600
KILLS = 12
SHARDS = 4


@pytest.mark.parametrize("partitions", [1, 4])
def test_profiles_exact_after_repeated_sigkill(kafka: dict[str, str], topic_prefix: str, tmp_path: Path,
                                               partitions: int) -> None:
    started = time.monotonic()
    messages = workload(CUSTOMERS, seed=20 + partitions)
    clean_input, crash_input = f"{topic_prefix}.in-clean", f"{topic_prefix}.in-crash"
    ensure_topics(kafka, {clean_input: partitions, crash_input: partitions})

    clean = reference_run(kafka, tmp_path, topic_prefix, clean_input, messages, partitions, shards=SHARDS,
                          runner="bytewax", epoch_seconds=1)
    expected_profiles, expected_decisions = clean.profiles, clean.decisions
    assert len(expected_profiles) == CUSTOMERS
    rules = Counter(b.body.split(b'"rule_id":"')[1].split(b'"')[0] for b in expected_decisions.values())
    assert len(expected_decisions) >= 50 and len(rules) >= 2, rules

    crashed = FlowSetup.create(kafka, tmp_path / "crashed", f"{topic_prefix}.crashed", inputs=[crash_input],
                               shards=SHARDS, epoch_seconds=0.3)
    feeder = PacedProducer(kafka, crash_input, messages, partitions, seconds=20)
    feeder.start()
    plan = kill_plan(random.Random(1000 + partitions), KILLS)
    done = crash_run(crashed, plan, log=tmp_path / "crashed.log")
    feeder.join(60)
    assert feeder.error is None, feeder.error
    final_s = run_to_end(crashed, log=tmp_path / "crashed.log")
    print(f"\npartitions={partitions} clean run {clean.seconds:.1f}s, final resume-to-EOF {final_s:.1f}s, kills:")
    for kill in done:
        print(f"  {kill.how} ({kill.seconds:.1f}s)")

    assert sum(k.how.startswith("failpoint after_checkpoint") for k in done) >= 1, [k.how for k in done]
    got_profiles = read_profiles(crashed.state_dir, SHARDS)
    assert_same_profiles(expected_profiles, got_profiles)

    records = read_decisions(kafka, crashed.decisions)
    got_decisions = dedupe(records)
    missing = set(expected_decisions) - set(got_decisions)
    assert not missing, f"{len(missing)} decisions of the clean run never emitted"
    # Nothing the clean run did not decide either (no timer fired, no state invented by a replay).
    assert_same_decisions(expected_decisions, got_decisions)
    print(f"  {len(expected_decisions)} decisions, {len(records) - len(got_decisions)} duplicate copies; "
          f"total {time.monotonic() - started:.1f}s")
