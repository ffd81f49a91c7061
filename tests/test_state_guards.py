"""Starts that would orphan, reset or roll back profiles are refused, with one line, touching nothing.

One real deployment (8 shards, through the broker) is run to the end of its input; then each wrong
start an operator could make is tried against its directories, through the real entry points
(`nextclick run` and `python -m bytewax.run nextclick.flows.main:flow`). Each must exit non-zero with one
`nextclick: error:` line naming the setting and both values, and leave every file of the state and
recovery directories byte-identical.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import init_db_dir

from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import (
    REPO,
    FlowSetup,
    identity_workload,
    produce,
    read_profiles,
    run_to_end,
    workload,
)

pytestmark = [pytest.mark.broker]

SHARDS = 8


def checksums(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[f"{root.name}/{path.relative_to(root)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def start(setup: FlowSetup, *, runner: str = "cli", **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**setup.env(stop_at_end=True), **env}
    if runner == "cli":
        cmd = [sys.executable, "-m", "nextclick", "run", "--broker-timeout", "20"]
    else:  # bytewax.run with whatever flags are given through BYTEWAX_* (none: no recovery)
        cmd = [sys.executable, "-m", "bytewax.run", "nextclick.flows.main:flow", "-s", "1", "-b", "0"]
    return subprocess.run(cmd, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)


def refused(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert done.returncode != 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("nextclick: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def deployment(broker, tmp_path_factory: pytest.TempPathFactory) -> FlowSetup:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("guards")
    kafka = {"bootstrap.servers": broker.bootstrap}
    topic = f"guards{root.name[-6:]}.in"
    ensure_topics(kafka, {topic: 2})
    produce(kafka, topic, workload(60, seed=3), 2)
    setup = FlowSetup.create(kafka, root, f"guards{root.name[-6:]}", inputs=[topic], shards=SHARDS)
    run_to_end(setup, log=root / "run.log")
    assert len(read_profiles(setup.state_dir, SHARDS)) == 60
    return setup


@pytest.mark.parametrize(("env", "phrases"), [
    ({"NEXTCLICK_STATE__SHARDS": "16"}, ("state.shards", "written with 8 shards", "says 16", "reshard")),
    ({"NEXTCLICK_STATE__SHARDS": "4"}, ("state.shards", "written with 8 shards", "says 4")),
    ({"NEXTCLICK_PRIVACY__SECRET": "another-secret"}, ("privacy.secret", "different identifier secret",
                                                        "fingerprint")),
    ({"NEXTCLICK_STATE__SHARD_PLACEMENT": "hash"}, ("state.shard_placement", "was placed 'balanced'",
                                                    "says 'hash'", "restore a savepoint into new state")),
], ids=["shards-8-to-16", "shards-8-to-4", "secret", "placement"])
def test_a_changed_setting_is_refused(deployment: FlowSetup, env: dict[str, str], phrases: tuple[str, ...]) -> None:
    before = checksums(deployment.state_dir, deployment.recovery_dir)
    refused(start(deployment, **env), *phrases)
    refused(start(deployment, runner="bytewax", BYTEWAX_RECOVERY_DIRECTORY=str(deployment.recovery_dir), **env),
            *phrases)
    assert checksums(deployment.state_dir, deployment.recovery_dir) == before


def test_bytewax_run_without_recovery_is_refused(deployment: FlowSetup) -> None:
    before = checksums(deployment.state_dir, deployment.recovery_dir)
    refused(start(deployment, runner="bytewax"), "without -r", str(deployment.recovery_dir))
    assert checksums(deployment.state_dir, deployment.recovery_dir) == before


def _moved_away(path: Path) -> Path:
    aside = path.with_name(path.name + ".aside")
    shutil.move(path, aside)
    return aside


def test_state_without_its_recovery_directory_is_refused(deployment: FlowSetup) -> None:
    before = checksums(deployment.state_dir, deployment.recovery_dir)
    aside = _moved_away(deployment.recovery_dir)
    try:
        refused(start(deployment), "state.recovery_dir", "no recovery partitions")
        assert not deployment.recovery_dir.exists()
        # A re-initialised (empty) recovery directory is no better.
        deployment.recovery_dir.mkdir()
        init_db_dir(deployment.recovery_dir, 1)
        empty = checksums(deployment.recovery_dir)
        refused(start(deployment), "state.recovery_dir", "no nextclick marker")
        assert checksums(deployment.recovery_dir) == empty
    finally:
        shutil.rmtree(deployment.recovery_dir, ignore_errors=True)
        shutil.move(aside, deployment.recovery_dir)
    assert checksums(deployment.state_dir, deployment.recovery_dir) == before


def test_recovery_without_its_state_is_refused(deployment: FlowSetup) -> None:
    before = checksums(deployment.state_dir, deployment.recovery_dir)
    aside = _moved_away(deployment.state_dir)
    try:
        refused(start(deployment), "state.dir", "has no state")
        assert not deployment.state_dir.exists()
    finally:
        shutil.move(aside, deployment.state_dir)
    one_shard = deployment.state_dir / "shard-0003"
    aside = _moved_away(one_shard)
    try:
        refused(start(deployment), "state.dir", "shard 3", "directory is missing")
    finally:
        shutil.move(aside, one_shard)
    assert checksums(deployment.state_dir, deployment.recovery_dir) == before


def test_the_deployment_still_starts_after_every_refusal(deployment: FlowSetup) -> None:
    profiles = read_profiles(deployment.state_dir, SHARDS)
    done = start(deployment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_profiles(deployment.state_dir, SHARDS) == profiles


def test_an_older_recovery_directory_cannot_roll_shards_back(kafka: dict[str, str], topic_prefix: str,
                                                              tmp_path: Path) -> None:
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 1})
    messages = workload(40, seed=9)
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=2)
    produce(kafka, topic, messages[:len(messages) // 2], 1)
    run_to_end(setup, log=tmp_path / "run.log")
    old = tmp_path / "recovery-backup"
    shutil.copytree(setup.recovery_dir, old)
    produce(kafka, topic, messages[len(messages) // 2:], 1)
    run_to_end(setup, log=tmp_path / "run.log")  # resumes from the first run's commit, commits more
    run_to_end(setup, log=tmp_path / "run.log")  # resumes from the second run's commit: now it is known
    before = checksums(setup.state_dir)
    shutil.rmtree(setup.recovery_dir)
    shutil.copytree(old, setup.recovery_dir)
    recovery = checksums(setup.recovery_dir)
    done = start(setup)
    # What the start-up check adds to the shard's own refusal: nothing is opened or recorded first.
    assert checksums(setup.state_dir) == before and checksums(setup.recovery_dir) == recovery, done.stderr[-2000:]
    refused(done, "state.recovery_dir", "roll shard", "past its committed seq")


def test_state_from_before_shard_placement_resumes_under_hash_and_names_the_setting_otherwise(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """An upgrade: state an older release wrote (no placement in its manifest, its shards in Bytewax's
    recovery under the keys "0", "1"...) is refused under the default `balanced` with one line that says
    what to set, and resumes exactly under `hash`."""
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 2})
    messages = workload(60, seed=5)
    first, more = messages[:len(messages) // 2], messages[len(messages) // 2:]
    produce(kafka, topic, first, 2)
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=SHARDS)
    old = setup.with_(extra_env={"NEXTCLICK_STATE__SHARD_PLACEMENT": "hash"})
    run_to_end(old, log=tmp_path / "run.log")
    manifest = setup.state_dir / "nextclick-state.json"
    body = orjson.loads(manifest.read_bytes())
    del body["shard_placement"]  # as releases before the setting wrote it
    manifest.write_bytes(orjson.dumps(body))
    before = checksums(setup.state_dir, setup.recovery_dir)
    refused(start(setup), "state.shard_placement", "was placed 'hash'", "says 'balanced'", "set it back to 'hash'")
    assert checksums(setup.state_dir, setup.recovery_dir) == before
    produce(kafka, topic, more, 2)
    run_to_end(old, log=tmp_path / "run.log")
    profiles = read_profiles(setup.state_dir, SHARDS)  # every event applied once, the first run's kept
    assert len(profiles) == len({who for who, _, _ in first + more})
    assert sum(p["facts"]["version"] for p in profiles.values()) == len(first + more)


def test_stitching_can_be_switched_off_only_on_state_without_links(
        deployment: FlowSetup, kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """State whose events were all keyed by one identifier (the module's deployment: no link) starts
    without stitching. State with links is refused in one line: its linked profiles would be left behind."""
    profiles = read_profiles(deployment.state_dir, SHARDS)
    done = start(deployment, NEXTCLICK_IDENTITY__STITCHING="false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_profiles(deployment.state_dir, SHARDS) == profiles

    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 1})
    produce(kafka, topic, identity_workload(3, seed=4), 1)
    linked = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=SHARDS)
    run_to_end(linked, log=tmp_path / "run.log")
    before = checksums(linked.state_dir, linked.recovery_dir)
    refused(start(linked, NEXTCLICK_IDENTITY__STITCHING="false"), "identity.stitching = false",
            "an identity graph with links", "linked_", "keep identity.stitching = true")
    assert checksums(linked.state_dir, linked.recovery_dir) == before


def _stale_copy(deployment: FlowSetup, root: Path) -> tuple[FlowSetup, Path, str, str, dict, int]:
    """A copy of the deployment whose recovery holds what a process killed at the wrong moment leaves: the
    snapshot of a shard one seq further, taken in the epoch a resume starts at, which never committed."""
    import pickle
    import sqlite3

    from nextclick.operators.state.recovery_db import read_recovery

    copy = deployment.with_(state_dir=root / "state", recovery_dir=root / "recovery")
    shutil.copytree(deployment.state_dir, copy.state_dir)
    shutil.copytree(deployment.recovery_dir, copy.recovery_dir)
    view = read_recovery(copy.recovery_dir)
    step = "nextclick.profiles"
    key, state = sorted(view.committed(step).items())[0]
    with sqlite3.connect(copy.recovery_dir / "part-0.sqlite3") as conn:
        conn.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                     (step, key, view.resume_epoch, pickle.dumps({**state, "seq": state["seq"] + 1})))
    conn.close()
    return copy, copy.recovery_dir / "part-0.sqlite3", step, key, state, view.resume_epoch


def test_a_snapshot_of_an_epoch_that_never_committed_is_dropped_before_it_can_count(
        deployment: FlowSetup, tmp_path: Path) -> None:
    """Bytewax snapshots only the keys an epoch woke and keeps a dead execution's snapshots of the epochs
    a resume runs again: once the new execution commits that epoch without waking the shard, the stale
    snapshot counts, and every start after is refused ("the state directory is older than the recovery
    directory", an outside probe after six SIGKILLs). A start drops them before Bytewax runs."""
    import sqlite3

    from nextclick.operators.infra.config import load_config
    from nextclick.operators.state.recovery_db import read_recovery
    from nextclick.operators.tools.startup import check_start

    # The hazard: the epoch committed by a later execution (its worker's frontier past it) brings it in.
    copy, part, step, key, state, epoch = _stale_copy(deployment, tmp_path / "hazard")
    with sqlite3.connect(part) as conn:
        ex = conn.execute("SELECT MAX(ex_num) FROM exs").fetchone()[0]
        conn.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, 0, ?) "
                     "ON CONFLICT (ex_num, worker_index) DO UPDATE SET worker_frontier = EXCLUDED.worker_frontier",
                     (ex, epoch + 1))
    conn.close()
    assert read_recovery(copy.recovery_dir).committed(step)[key]["seq"] == state["seq"] + 1
    refused(start(copy), "is at seq", "older than the recovery directory")

    # The guard: a start deletes it (and nothing committed), then runs and resumes exactly.
    copy, part, step, key, state, epoch = _stale_copy(deployment, tmp_path / "guarded")
    with sqlite3.connect(part) as conn:
        before = conn.execute("SELECT * FROM snaps WHERE snap_epoch < ? ORDER BY 1, 2, 3", (epoch,)).fetchall()
    conn.close()
    check_start(load_config(None, copy.env(stop_at_end=True)))
    with sqlite3.connect(part) as conn:
        assert conn.execute("SELECT COUNT(*) FROM snaps WHERE snap_epoch >= ?", (epoch,)).fetchone()[0] == 0
        assert conn.execute("SELECT * FROM snaps WHERE snap_epoch < ? ORDER BY 1, 2, 3", (epoch,)).fetchall() == before
    conn.close()
    profiles = read_profiles(copy.state_dir, SHARDS)
    for _ in range(2):
        done = start(copy)
        assert done.returncode == 0, done.stderr[-3000:]
    assert read_profiles(copy.state_dir, SHARDS) == profiles
