"""Savepoints through the CLI and the real broker: a round trip while running, and re-sharding.

Event times are recent, so no timer fires during a test and profiles and decisions are a function
of each customer's events alone (see tests/test_crash.py): a run that goes through a savepoint must
end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from nextclick.operators.io.control import send_command
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.state.savepoint_parts import Destination
from tests.flowrun import (
    REPO,
    FlowSetup,
    assert_same_decisions,
    dedupe,
    produce,
    read_decisions,
    read_profiles,
    reference_run,
    run_to_end,
    start,
    workload,
)
from tests.helpers import consume_all

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def cli(setup: FlowSetup, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "nextclick", *args], cwd=REPO, capture_output=True, text=True,
                          env={**setup.env(stop_at_end=True), **env}, timeout=180)
    assert done.returncode == 0, f"nextclick {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def restored_run(setup: FlowSetup, savepoint: Path, log: Path, **env: str) -> None:
    """Delete both volumes, then `nextclick run --from-savepoint` to the end of the input."""
    shutil.rmtree(setup.state_dir)
    shutil.rmtree(setup.recovery_dir)
    done = subprocess.run([sys.executable, "-m", "nextclick", "run", "--from-savepoint", str(savepoint)],
                          cwd=REPO, env={**setup.env(stop_at_end=True), **env}, capture_output=True, text=True,
                          timeout=180)
    log.write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]


def test_online_savepoint_then_restore_on_empty_volumes_ends_like_an_uninterrupted_run(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    messages = workload(300, seed=41)
    half = len(messages) // 2
    clean_in, topic = f"{topic_prefix}.clean-in", f"{topic_prefix}.in"
    ensure_topics(kafka, {clean_in: 2, topic: 2})
    clean = reference_run(kafka, tmp_path, topic_prefix, clean_in, messages, 2)
    expected, expected_decisions = clean.profiles, clean.decisions

    savepoints = tmp_path / "savepoints"
    setup = FlowSetup.create(kafka, tmp_path / "run", f"{topic_prefix}.run", inputs=[topic],
                             extra_env={"NEXTCLICK_STATE__SAVEPOINT_DIR": str(savepoints)})
    # A refused message at the head of each partition: a restore that ignored the savepoint's
    # positions would read (and dead-letter) it again.
    sentinels = [(f"cust-{n:05d}", b"k", f"not json {n}".encode()) for n in range(2)]
    produce(kafka, topic, sentinels, 2)
    produce(kafka, topic, messages[:half], 2)
    flow = start(setup, stop_at_end=False, log=tmp_path / "running.log")
    try:
        deadline = time.monotonic() + 60
        while sum(p["facts"]["version"] for p in read_profiles(setup.state_dir, setup.shards).values()) < half:
            assert flow.poll() is None, (tmp_path / "running.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first half was not applied in time"
            time.sleep(0.3)
        done = cli(setup, "savepoint", "create", str(savepoints / "sp1"), "--online", "--timeout", "60")
        manifest = orjson.loads(done.stdout)
        assert manifest["mode"] == "online" and manifest["shards"] == setup.shards
        assert sum(manifest["positions"].values()) >= half
        # A later savepoint: restoring sp1 reads its command again, which must not write into it.
        cli(setup, "savepoint", "create", str(savepoints / "sp2"), "--online", "--timeout", "60")
    finally:
        flow.kill()  # whatever it did after the savepoint is lost with the volumes
        flow.wait()
    info = orjson.loads(cli(setup, "savepoint", "info", str(savepoints / "sp1")).stdout)
    assert info["id"] == "sp1" and info["keys_estimate"] > 0

    # A command its requester gave up on before the flow read it (`--online` timed out while it was down).
    send_command(kafka, setup.control, "savepoint", "given-up", b"given-up", name="late",
                 expires_at=time.time_ns() // 1_000_000 - 1000)
    produce(kafka, topic, messages[half:], 2)
    sp2 = sorted(Destination(savepoints / "sp2").files())
    restored_run(setup, savepoints / "sp1", tmp_path / "restored.log")
    assert sorted(Destination(savepoints / "sp2").files()) == sp2 and not (savepoints / "late").exists()
    skipped = (tmp_path / "restored.log").read_text().count("savepoint command not carried out")
    assert skipped == 2, (tmp_path / "restored.log").read_text()[-3000:]
    assert read_profiles(setup.state_dir, setup.shards) == expected
    assert_same_decisions(expected_decisions, dedupe(read_decisions(kafka, setup.decisions)))
    letters = sorted(m.value() for m in consume_all(kafka, [setup.dead_letter]))
    assert letters == sorted(v for _, _, v in sentinels)


def test_resharding_8_to_16_to_4_keeps_every_profile(kafka: dict[str, str], topic_prefix: str,
                                                    tmp_path: Path) -> None:
    messages = workload(240, seed=43)
    third = -(-len(messages) // 3)
    clean_in, topic = f"{topic_prefix}.clean-in", f"{topic_prefix}.in"
    ensure_topics(kafka, {clean_in: 2, topic: 2})
    unsharded = reference_run(kafka, tmp_path, topic_prefix, clean_in, messages, 2, shards=1)
    expected, expected_decisions = unsharded.profiles, unsharded.decisions

    setup = FlowSetup.create(kafka, tmp_path / "run", f"{topic_prefix}.run", inputs=[topic], shards=8)
    produce(kafka, topic, messages[:third], 2)
    run_to_end(setup, log=tmp_path / "run8.log")
    saved = tmp_path / "sp8"
    offline = orjson.loads(cli(setup, "savepoint", "create", str(saved)).stdout)
    assert offline["mode"] == "offline" and offline["shards"] == 8
    for shards, phase in ((16, 1), (4, 2)):
        resharded = tmp_path / f"sp{shards}"
        made = orjson.loads(cli(setup, "savepoint", "reshard", str(saved), str(resharded),
                                "--shards", str(shards)).stdout)
        assert made["shards"] == shards and made["derived_from"] == saved.name
        produce(kafka, topic, messages[phase * third:(phase + 1) * third], 2)
        env = {"NEXTCLICK_STATE__SHARDS": str(shards)}
        restored_run(setup, resharded, tmp_path / f"run{shards}.log", **env)
        saved = tmp_path / f"sp{shards}-after"
        cli(setup, "savepoint", "create", str(saved), **env)
    assert read_profiles(setup.state_dir, 4) == expected
    assert_same_decisions(expected_decisions, dedupe(read_decisions(kafka, setup.decisions)))


def test_an_offline_erasure_survives_a_restore_from_an_earlier_savepoint(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """An outside probe: savepoint, `profile erase` offline, restore the savepoint: the customer was back,
    and their backlog events dated before the erasure were applied (a cross-sell decision). The offline
    erasure now records itself on the control topic, which the restore replays from the savepoint's
    position, as for `--online`."""
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 1})
    setup = FlowSetup.create(kafka, tmp_path / "run", f"{topic_prefix}.run", inputs=[topic], shards=2)
    produce(kafka, topic, workload(12, seed=47), 1)
    run_to_end(setup, log=tmp_path / "run.log")
    cli(setup, "savepoint", "create", str(tmp_path / "sp"))
    gone = "cust-00003"
    erased = orjson.loads(cli(setup, "profile", "erase", gone, "--request-id", "dsr-9").stdout)
    assert erased["erased"] is True and erased["recorded_on"] == setup.control
    gone_key = erased["customer"]
    # Read after the erasure, dated before it: a backlog the stopped flow has not read yet.
    late = {"event_id": "late-1", "type": "purchase", "ts": int(time.time() * 1000) - 60_000, "customer_id": gone,
            "order_id": "o-late", "amount": 80.0, "currency": "EUR"}
    produce(kafka, topic, [(gone, gone.encode(), orjson.dumps(late))], 1)
    restored_run(setup, tmp_path / "sp", tmp_path / "restored.log")
    profiles = read_profiles(setup.state_dir, setup.shards)
    assert gone_key not in profiles and len(profiles) == 11
    assert not [d for d in read_decisions(kafka, setup.decisions) if b'"id":"late-1"' in d.body]
