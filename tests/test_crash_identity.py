"""Identity stitching is exactly-once under SIGKILL: killed in the middle of links and merges, the flow
ends with the profiles and decisions of an uninterrupted run.

Workload (tests/flowrun.identity_workload, seeded): ~250 people who browse with a cookie, often put
something in a cart, sometimes consent or buy in a store under their customer id first, then mostly
sign in (cookie, customer id, email), browse and buy as themselves, click an email, sign in from a
second browser, link a device. Every sign-in merges profiles: the cookie's and, when it had one, the
customer id's move out of their shards into one linked profile. Each person's events are in one input
partition (two partitions in all), so their order is the same in every run, and people share no
identifier, so nothing depends on how partitions interleave. Event times are the last few minutes, so
no absence falls due on the clock.

1. Clean run: everything produced, one uninterrupted `bytewax.run` to EOF. Its profiles (every
   family of shards: own and linked profiles) and decisions are the reference.
2. Crashed run: the input is produced over ~12 s while `nextclick run` tails it with 0.3 s epochs, and
   it is SIGKILLed 8 times: right after the k-th link the identity stage records
   (`NEXTCLICK_FAILPOINTS=linked:k`), after a profile is taken out of its shard (`moved_out:k`), after
   a merge is applied (`merged:k`), between RocksDB's checkpoint and Bytewax's commit
   (`after_checkpoint:k`), and at random moments. Each restart resumes from the same directories; a
   last run goes to EOF.
3. Profiles equal, dict for dict, in every family; every decision of the clean run is there, with the
   same body (addresses included), and every extra copy repeats one byte for byte.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import (
    FlowSetup,
    Kill,
    PacedProducer,
    assert_same_decisions,
    assert_same_profiles,
    crash_run,
    dedupe,
    identity_workload,
    read_decisions,
    read_profiles,
    reference_run,
    run_to_end,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

PERSONS = 250
SHARDS = 4
PARTITIONS = 2


def merge_kills(rng: random.Random) -> list[Kill]:
    plan = [Kill(failpoints=f"linked:{rng.randint(3, 40)}"), Kill(failpoints=f"moved_out:{rng.randint(3, 60)}"),
            Kill(failpoints=f"merged:{rng.randint(3, 40)}"), Kill(failpoints=f"merged:{rng.randint(1, 10)}"),
            Kill(failpoints=f"after_checkpoint:{rng.randint(2, 30)}"),
            Kill(failpoints=f"moved_out:{rng.randint(1, 8)}"),
            Kill(after_s=rng.uniform(0.8, 3.0)), Kill(after_s=rng.uniform(0.8, 3.0))]
    rng.shuffle(plan)
    return plan


def test_profiles_exact_after_sigkills_during_merges(kafka: dict[str, str], topic_prefix: str,
                                                     tmp_path: Path) -> None:
    started = time.monotonic()
    messages = identity_workload(PERSONS, seed=31)
    clean_input, crash_input = f"{topic_prefix}.in-clean", f"{topic_prefix}.in-crash"
    ensure_topics(kafka, {clean_input: PARTITIONS, crash_input: PARTITIONS})

    clean = reference_run(kafka, tmp_path, topic_prefix, clean_input, messages, PARTITIONS, shards=SHARDS,
                          runner="bytewax", epoch_seconds=1)
    expected_profiles, expected_decisions = clean.profiles, clean.decisions
    linked = [p for p in expected_profiles.values() if len(p["ids"]) > 1]
    assert len(linked) >= PERSONS // 2, "most people signed in: their profiles are linked"
    assert any(len(p["ids"].get("cookie", ())) == 2 for p in linked) and any("device" in p["ids"] for p in linked)
    assert expected_decisions and all(b'"address"' in r.body for r in expected_decisions.values())

    crashed = FlowSetup.create(kafka, tmp_path / "crashed", f"{topic_prefix}.crashed", inputs=[crash_input],
                               shards=SHARDS, epoch_seconds=0.3)
    feeder = PacedProducer(kafka, crash_input, messages, PARTITIONS, seconds=12)
    feeder.start()
    done = crash_run(crashed, merge_kills(random.Random(77)), log=tmp_path / "crashed.log")
    feeder.join(60)
    assert feeder.error is None, feeder.error
    final_s = run_to_end(crashed, log=tmp_path / "crashed.log")
    print(f"\nclean run {clean.seconds:.1f}s, final resume-to-EOF {final_s:.1f}s, kills:")
    for kill in done:
        print(f"  {kill.how} ({kill.seconds:.1f}s)")
    hit = [k.how for k in done if k.how.startswith("failpoint")]
    assert sum(h.startswith(("failpoint merged", "failpoint moved_out", "failpoint linked")) for h in hit) >= 3, hit

    got_profiles = read_profiles(crashed.state_dir, SHARDS)
    assert_same_profiles(expected_profiles, got_profiles)

    records = read_decisions(kafka, crashed.decisions)
    got_decisions = dedupe(records)
    assert_same_decisions(expected_decisions, got_decisions)
    print(f"  {len(expected_profiles)} profiles ({len(linked)} linked), {len(expected_decisions)} decisions, "
          f"{len(records) - len(got_decisions)} duplicate copies; total {time.monotonic() - started:.1f}s")
