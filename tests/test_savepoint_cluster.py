"""Savepoints on per-pod volumes: a destination every process reaches, restores that fetch only a
process's own shards, restores that are idempotent, and object storage.

- Placement: the process a shard runs on, as Bytewax 0.21.1 routes it (checked against real clusters).
- Destinations: a relative `state.savepoint_dir` is refused, an unset one derived beside state.dir.
- Restores: one killed part way is done again, a second one of the same savepoint resumes, another
  savepoint or a non-empty directory is refused; missing parts are named with the process they run on.
- The cluster round trip (broker): two processes with their own state and recovery directories take
  an online savepoint into one shared directory; three processes with empty directories restore it
  and run to the end of the input: profiles and decisions equal a clean run's, and each process holds
  exactly the shards Placement gives it. A restart with --from-savepoint still given resumes. The
  same through object storage (s3:// on a moto server the test starts).
- A lost volume (state.on_lost_volume = "restore"): the cluster SIGKILLed, one process's volume
  deleted; at the next start every process goes back to the latest savepoint and replays the input,
  and the profiles and decisions equal a clean run's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.recovery import init_db_dir

from nextclick.flows.local_broker import free_port
from nextclick.operators.identity.stage import IDENTITY_KEY
from nextclick.operators.infra.config import Config, ConfigError, PrivacyConfig, load_config
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.state.layout import IDENTITY, family_named
from nextclick.operators.state.manifest import StateMismatch, hold_run_lock, read_manifest
from nextclick.operators.state.placement import BALANCED, HASH, key_base, siphash13, worker_of
from nextclick.operators.state.savepoint_parts import Destination, SavepointError, write_shard_part
from nextclick.operators.state.store import ShardStore
from nextclick.operators.tools.savepoint import (
    Placement,
    SavepointManifest,
    check_volume_placement,
    finish_online,
    online_destination,
    restore,
)
from nextclick.operators.tools.startup import check_start, reset_state, state_families
from tests.flowrun import (
    REPO,
    FlowSetup,
    assert_same_decisions,
    assert_same_profiles,
    dedupe,
    produce,
    read_decisions,
    read_profiles,
    reference_run,
    start,
    workload,
)

# Which process each state key ran on in real Bytewax 0.21.1 clusters (a stateful_map over these keys,
# run with `cluster_main` as N processes x W workers, each output tagged with its process).
OBSERVED = {
    (2, 1): {"0": 1, "1": 1, "4": 0, "5": 0, "11": 0, "14": 1, "identity": 1, "device/1": 0, "device/2": 1,
             "email/0": 0, "email/2": 1},
    (3, 1): {"0": 0, "1": 1, "2": 0, "3": 1, "identity": 2, "device/0": 1, "device/1": 0, "email/1": 0},
}


def test_placement_is_bytewax_routing() -> None:
    assert siphash13(b"") == 0xD1FBA762150C532C  # Rust: DefaultHasher::new().finish()
    assert IDENTITY_KEY == IDENTITY  # the identity stage's one Bytewax key is its family's name
    profiles, device, email = (family_named(n, 16) for n in ("profiles", "linked_device", "linked_email"))
    for (processes, workers), observed in OBSERVED.items():
        for key, process in observed.items():
            family, _, shard = key.rpartition("/")
            fam = {"": profiles, "device": device, "email": email}[family]
            if key == "identity":
                fam, shard = family_named(IDENTITY, 16), "0"
            assert Placement(process, processes, workers, HASH).owns(fam, int(shard)), (processes, key)
    # Every shard has exactly one owner, and 2 processes x 2 workers is 4 workers, two per process.
    owners = [Placement(0, 2, 2, HASH).owner(profiles, n) for n in range(16)]
    assert set(owners) == {0, 1}
    assert owners == [siphash13(str(n).encode() + b"\xff") % 4 // 2 for n in range(16)]


def test_balanced_placement_sends_the_shards_round_the_workers() -> None:
    """Under `balanced` keys shard n runs on worker n mod workers, for every worker count dividing the
    modulus; under `hash` keys 16 shards over 4 workers land 2, 4, 4 and 6 (what it replaces)."""
    for shards in (1, 7, 16, 64):
        for fam in state_families(load_config(None, {"NEXTCLICK_STATE__SHARDS": str(shards)})):
            if fam.name == IDENTITY:
                continue
            for workers in (1, 2, 3, 4, 5, 6, 8, 12, 16):
                keys = [fam.route(n, BALANCED) for n in range(shards)]
                assert [worker_of(k, workers) for k in keys] == [n % workers for n in range(shards)]
                assert [Placement(0, workers).owner(fam, n) for n in range(shards)] == [n % workers for n in
                                                                                         range(shards)]
            assert all(k.startswith(f"{fam.route(n, HASH)}~") for n, k in enumerate(keys))
            assert [key_base(k) for k in keys] == [fam.route(n, HASH) for n in range(shards)]
    profiles = family_named("profiles", 16)
    assert sorted(Counter(Placement(0, 4, 1, HASH).owner(profiles, n) for n in range(16)).values()) == [2, 4, 4, 6]


def test_savepoint_dir_is_absolute_or_a_url() -> None:
    derived = load_config(None, {"NEXTCLICK_STATE__DIR": "/data/state"}).state.savepoint_dir
    assert derived == "/data/savepoints"
    assert os.path.isabs(load_config(None, {}).state.savepoint_dir)
    assert load_config(None, {"NEXTCLICK_STATE__SAVEPOINT_DIR": "s3://b/sp/"}).state.savepoint_dir == "s3://b/sp"
    with pytest.raises(ConfigError, match="savepoint_dir: 'var/savepoints' is relative"):
        load_config(None, {"NEXTCLICK_STATE__SAVEPOINT_DIR": "var/savepoints"})
    with pytest.raises(ConfigError, match="scheme gs:// is not supported"):
        load_config(None, {"NEXTCLICK_STATE__SAVEPOINT_DIR": "gs://b/sp"})
    with pytest.raises(ConfigError, match="initial_savepoint: 'sp1' is relative"):
        load_config(None, {"NEXTCLICK_STATE__INITIAL_SAVEPOINT": "sp1"})


def test_the_shipped_manifests_give_every_pod_the_same_savepoint_volume(tmp_path: Path) -> None:
    import yaml

    k8s = REPO / "deploy" / "k8s"
    docs = [d for name in yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
            for d in yaml.safe_load_all((k8s / name).read_text()) if d]
    # The ConfigMap is generated from nextclick.toml (kustomization.yaml, configMapGenerator).
    (tmp_path / "nextclick.toml").write_text((k8s / "nextclick.toml").read_text())
    where = load_config(tmp_path / "nextclick.toml", environ={}).state.savepoint_dir
    (sts,) = (d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (mount,) = (m for m in pod["containers"][0]["volumeMounts"]
              if where == m["mountPath"] or where.startswith(m["mountPath"].rstrip("/") + "/"))
    (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])  # one volume, not a per-pod claim
    (claim,) = (d for d in docs if d["kind"] == "PersistentVolumeClaim"
                and d["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and not mount.get("readOnly")


# -- object storage ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A local S3-compatible server (moto), and a bucket in it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import fsspec

    fsspec.filesystem("s3").mkdir("nextclick-test")
    try:
        yield "s3://nextclick-test/savepoints"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _deployment(tmp: Path, savepoint_dir: str, shards: int = 4) -> Config:
    return Config().replace(state={"dir": str(tmp / "state"), "recovery_dir": str(tmp / "recovery"),
                                   "shards": shards, "savepoint_dir": savepoint_dir},
                            topics={"inputs": ("in",)},  # the topic the parts below read (`_write_parts`)
                            privacy=PrivacyConfig(demo=True))


def _write_parts(config: Config, dest: str, token: str, *, skip: int | None = None,
                 request_id: str | None = None) -> dict[str, str]:
    """Every shard's part of an online savepoint as a running flow writes it (one customer per shard, the
    flow's mangled `Path(s3://...)` location); `skip`: leave out the parts of this process of two."""
    written = {}
    futures = []
    for family in state_families(config):
        for number in range(family.shards):
            if skip is not None and Placement(skip, 2).owns(family, number):
                continue
            value = f"{family.name}/{number}".encode()
            with ShardStore(family.path(config.state.dir, number), sync=False) as store:
                store.put(b"x" + value, value)
                seq = store.checkpoint()
                future = write_shard_part(store, str(Path(dest)), number, seq, {"in#0": 10 + number}, token,
                                          "lineage-a", family.subdir, scratch=Path(config.state.dir),
                                          request_id=request_id)
                if future is not None:
                    futures.append(future)
                    future.result(30)  # before the store closes
            written[family.rel(number)] = value.decode()
    return written


def _keys(state_dir: Path) -> dict[str, str]:
    found = {}
    for shard in sorted(p for p in state_dir.rglob("shard-*") if p.is_dir()):
        store = ShardStore.open_read_only(shard, cache_size=0)
        try:
            for key, value in store.scan(b"x"):
                found[shard.relative_to(state_dir).as_posix()] = value.decode()
                assert key == b"x" + value
        finally:
            store.close()
    return found


def test_an_incomplete_online_savepoint_names_the_process_that_did_not_answer(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "pod-0", str(shared))
    _write_parts(config, str(shared / "sp"), "tok", skip=1)
    with pytest.raises(SavepointError, match=r"no part from \d+ shard\(s\) \(.*\), which run on process\(es\) 1 "
                                             r"of 2; parts came from "):
        finish_online(config, shared / "sp", timeout_s=0.3, placement=Placement(0, 2))
    assert not (shared / "sp" / "savepoint.json").exists()


def test_a_part_that_cannot_be_copied_is_named_at_once_with_its_cause(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator probe: `savepoint create --online` into a full destination waited out its whole timeout
    and then said only that parts were missing, while the flow's log said why."""
    _a_part_fails(tmp_path, monkeypatch, lambda rel: rel.endswith("shard-0002") and rel.count("/") == 1,
                  r"could not write profiles shard 2's part: .*No space left on device.*free space there")


def _a_part_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: Callable[[str], bool],
                  error: str) -> None:
    """Parts written for request 1 with the copy of the `failing` one refused for want of space: the
    command says why at once (within a timeout that would otherwise fail the test); then a request 2
    whose parts all fit is assembled, whatever request 1 left."""
    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "pod-0", str(shared))
    put_dir = Destination.put_dir

    def full(self: Destination, local: Path, rel: str) -> int:
        if failing(rel):
            raise OSError(28, "No space left on device")
        return put_dir(self, local, rel)

    monkeypatch.setattr(Destination, "put_dir", full)
    _write_parts(config, str(shared / "sp"), "tok", request_id="req-1")
    with pytest.raises(SavepointError, match=error):
        finish_online(config, shared / "sp", timeout_s=20, request_id="req-1")
    monkeypatch.setattr(Destination, "put_dir", put_dir)
    _write_parts(config, str(shared / "sp"), "tok2", request_id="req-2")
    assert finish_online(config, shared / "sp", timeout_s=10, request_id="req-2").seqs


def test_a_destination_full_to_the_last_byte_is_named_at_once_too(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The recheck of that probe: with no byte free the note itself could not be written, and the command
    waited out its timeout again. An empty file's name carries the cause then."""
    write_bytes = Destination.write_bytes

    def no_byte_free(self: Destination, rel: str, data: bytes) -> None:
        if data and ".failed" in rel:  # every note with content: an empty file still fits (a free inode)
            raise OSError(28, "No space left on device")
        write_bytes(self, rel, data)

    monkeypatch.setattr(Destination, "write_bytes", no_byte_free)
    _a_part_fails(tmp_path, monkeypatch, lambda rel: rel.endswith("shard-0001") and "linked-email" in rel,
                  r"could not write linked-email shard-0001's part \(ENOSPC: No space left on device\); "
                  r"free space there")


def test_a_savepoint_given_up_can_be_asked_for_again_under_its_name_and_only_the_new_request_counts(
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "pod-0", str(shared))
    # What a flow wrote for a `savepoint create --online` that timed out: every part, after the CLI left.
    _write_parts(config, str(shared / "sp"), "old", request_id="req-old")
    assert online_destination(config, str(shared / "sp")).name == "sp"  # a retry may use the name
    with pytest.raises(SavepointError, match="did not write every shard's part"):
        finish_online(config, shared / "sp", timeout_s=0.3, request_id="req-new")
    _write_parts(config, str(shared / "sp"), "new", request_id="req-new")
    where = Destination(shared / "sp")
    parts = [orjson.loads(where.read_bytes(n)) for n in where.files(".parts-new") if n.endswith(".part.json")]
    seqs = {p["shard"]: p["seq"] for p in parts if not p["family"]}
    manifest = finish_online(config, shared / "sp", timeout_s=10, request_id="req-new")
    assert manifest.seqs == seqs  # the new request's parts, not the earlier ones
    assert not [n for n in Destination(shared / "sp").files() if n.startswith(".parts-")]
    with pytest.raises(SavepointError, match="already holds a savepoint"):
        online_destination(config, str(shared / "sp"))
    (shared / "other").mkdir()
    (shared / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SavepointError, match="exists and is not empty"):
        online_destination(config, str(shared / "other"))
    # A name the control topic cannot carry says why (an outside probe read only "give DEST as .../<name>").
    with pytest.raises(SavepointError, match=r"^'a b' is not a savepoint name: letters, digits"):
        online_destination(config, str(shared / "a b"))
    with pytest.raises(SavepointError, match=r"give DEST as .*/<name>$"):
        online_destination(config, str(tmp_path / "elsewhere" / "sp"))


def _restore_killed(tmp_path: Path) -> tuple[Config, Config, Path, dict[str, str]]:
    """A savepoint `sp` of a source deployment, and a pod whose restore of it was killed part way: the
    source's config, the pod's, the shared directory and what the savepoint holds."""
    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "source", str(shared))
    written = _write_parts(config, str(shared / "sp"), "tok")
    finish_online(config, shared / "sp", timeout_s=10)
    pod = _deployment(tmp_path / "pod", str(shared))

    def crash(_directory: Path) -> None:
        raise OSError("killed while creating the recovery partitions")

    with pytest.raises(OSError):
        restore(pod, shared / "sp", init_recovery=crash)
    return config, pod, shared, written


def test_an_interrupted_restore_is_done_again_and_a_wrong_one_refused(tmp_path: Path) -> None:
    config, pod, shared, written = _restore_killed(tmp_path)
    assert read_manifest(pod.state.dir) is None  # not restored: the manifest comes last
    # Started again without the savepoint: told to give it, not that the recovery directory is missing.
    with pytest.raises(StateMismatch, match=rf"the restore of savepoint sp into {pod.state.dir} was interrupted; "
                                            rf"start again with --from-savepoint {shared / 'sp'} "):
        check_start(pod)
    restore(pod, shared / "sp", init_recovery=lambda d: d.mkdir(exist_ok=True))
    assert _keys(Path(pod.state.dir)) == written

    # A restart with the same savepoint resumes and changes nothing; another savepoint is refused.
    before = (Path(pod.state.dir) / "nextclick-state.json").read_bytes()
    assert restore(pod, shared / "sp", init_recovery=lambda d: None).resumed
    assert (Path(pod.state.dir) / "nextclick-state.json").read_bytes() == before
    _write_parts(config, str(shared / "sp2"), "tok2")
    finish_online(config, shared / "sp2", timeout_s=10)
    with pytest.raises(StateMismatch, match="holds state restored from savepoint sp, not from the savepoint"):
        restore(pod, shared / "sp2", init_recovery=lambda d: None)
    assert _keys(Path(pod.state.dir)) == written and read_manifest(pod.state.dir).restore.savepoint == "sp"  # type: ignore[union-attr]

    other = _deployment(tmp_path / "other", str(shared))
    Path(other.state.dir).mkdir(parents=True)
    (Path(other.state.dir) / "shard-0000").mkdir()
    with pytest.raises(StateMismatch, match=r"state.dir: .* is not empty; a savepoint is restored into empty"):
        restore(other, shared / "sp", init_recovery=lambda d: None)
    with pytest.raises(SavepointError, match=r"nothing does not exist \(`nextclick savepoint list` shows"):
        restore(_deployment(tmp_path / "x", str(shared)), shared / "nothing", init_recovery=lambda d: None)
    (shared / "half").mkdir()
    with pytest.raises(SavepointError, match="is not a complete savepoint"):
        restore(_deployment(tmp_path / "x", str(shared)), shared / "half", init_recovery=lambda d: None)
    with pytest.raises(SavepointError, match=r"sp/savepoint.json is a file: give the savepoint's directory"):
        restore(_deployment(tmp_path / "x", str(shared)), shared / "sp" / "savepoint.json",
                init_recovery=lambda d: None)


def test_a_worker_count_changed_without_a_savepoint_is_named_before_the_cluster_forms(tmp_path: Path) -> None:
    """Process 0 of 2 wrote the stores it ran with one worker each; given --workers 2, other processes
    run some of them. Each process took the other for a lost peer."""
    config = _deployment(tmp_path / "pod-0", str(tmp_path / "shared"), shards=8)
    before = Placement(0, 2, 1)
    for family in state_families(config):
        if family.name in ("profiles", "identity"):
            for n in range(family.shards):
                if before.owns(family, n):
                    ShardStore(family.path(config.state.dir, n), sync=False).close()
    check_volume_placement(config, before)
    with pytest.raises(StateMismatch, match=r"state.dir: .* holds stores that, with --workers 2 on 2 processes, other "
                                            r"processes run: shard-\d+ \(process 1\).*The number of workers or "
                                            r"processes changed"):
        check_volume_placement(config, Placement(0, 2, 2))


def test_state_reset_clears_an_interrupted_restore(tmp_path: Path) -> None:
    """Reset said "destroyed" but left the restore's marker, and every later start was refused with a
    line that sent the operator back to reset; and a killed restore's staging stayed for ever."""
    _, pod, _, _ = _restore_killed(tmp_path)
    state_dir = Path(pod.state.dir)
    (state_dir / ".restore-0badc0de" / "shard-0000").mkdir(parents=True)  # a killed fetch's staging
    reset_state(pod, dry_run=False)
    assert sorted(p.name for p in state_dir.iterdir() if not p.name.endswith(".lock")) == []
    assert check_start(pod, init_recovery=lambda d: init_db_dir(d, 1)).fresh


def test_a_volume_a_refused_start_set_up_takes_a_restore_unless_a_flow_runs_on_it(tmp_path: Path) -> None:
    """A 1-process deployment started as 2 without a savepoint: process 1's empty volume was set up (a
    manifest, its recovery partition) before the cluster refused the rescale. The savepoint the operator
    then takes and restores into 2 processes must not call that volume another deployment's."""
    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "source", str(shared))
    written = _write_parts(config, str(shared / "sp"), "tok")
    finish_online(config, shared / "sp", timeout_s=10)
    pod = _deployment(tmp_path / "pod-1", str(shared))
    check_start(pod, init_recovery=lambda d: init_db_dir(d, 1))  # the refused start's set-up
    set_up = read_manifest(pod.state.dir)
    assert set_up is not None and set_up.restore is None
    with hold_run_lock(Path(pod.state.dir), 0):  # ... unless a flow runs there now
        with pytest.raises(StateMismatch, match="holds the state of deployment"):
            restore(pod, shared / "sp", init_recovery=lambda d: init_db_dir(d, 1))
    restored = restore(pod, shared / "sp", init_recovery=lambda d: init_db_dir(d, 1))
    assert not restored.resumed and _keys(Path(pod.state.dir)) == written
    manifest = read_manifest(pod.state.dir)
    assert manifest is not None and manifest.restore is not None and manifest.restore.savepoint == "sp"
    assert manifest.lineage != set_up.lineage
    check_start(pod)  # and it starts


def test_an_offline_savepoint_of_one_pod_says_why_not_and_what_to_do(tmp_path: Path) -> None:
    """Per-pod volumes: this pod's recovery partition is 1 of 2, so the seqs committed for its shards
    may be in the other pod's; refused in one line, nothing written."""
    from nextclick.flows.cluster import prepare_recovery
    from nextclick.operators.tools.savepoint import create_offline
    from nextclick.operators.tools.startup import check_start

    config = _deployment(tmp_path / "pod-1", str(tmp_path / "shared"))
    def init_recovery(directory: Path) -> None:
        prepare_recovery(directory, (1,), 2, check=False)

    check_start(config, init_recovery=init_recovery)
    dest = tmp_path / "shared" / "offline"
    with pytest.raises(SavepointError, match=r"holds only some of the cluster's recovery partitions .* take "
                                             r"it with `nextclick savepoint create <state.savepoint_dir>/<name> "
                                             r"--online`"):
        create_offline(config, dest)
    assert not dest.exists()


def test_copies_a_killed_process_left_are_cleared_at_start(tmp_path: Path) -> None:
    from nextclick.operators.tools.savepoint import clear_scratch

    config = _deployment(tmp_path, str(tmp_path / "shared"))
    linked = next(f for f in state_families(config) if f.subdir.startswith("linked-"))
    for root in (Path(config.state.dir), linked.root(config.state.dir)):
        (root / ".savepoint-tok-profiles-shard-0000").mkdir(parents=True)
    (Path(config.state.dir) / "shard-0000").mkdir()
    assert clear_scratch(config) == 2
    assert sorted(p.name for p in Path(config.state.dir).iterdir()) == [linked.subdir, "shard-0000"]


def test_retention_keeps_the_newest_complete_savepoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nextclick.flows.cli import main
    from nextclick.operators.tools.savepoint import _write_manifest, catalogue, prune

    root = tmp_path / "savepoints"
    for day in (1, 2, 3):
        (root / f"sp{day}" / "shard-0000").mkdir(parents=True)
        _write_manifest(root / f"sp{day}", SavepointManifest(
            id=f"sp{day}", created_at=f"2026-12-0{day}T00:00:00+00:00", mode="online", shards=1,
            secret_fingerprint="f", seqs={0: day}, positions={}, source_lineage=None))
    (root / "in-progress" / ".parts-tok").mkdir(parents=True)
    assert [m.id for m in catalogue(root)[0]] == ["sp3", "sp2", "sp1"] and catalogue(root)[1] == ["in-progress"]

    assert main(["savepoint", "prune", str(root), "--keep", "2", "--dry-run"]) == 0
    assert orjson.loads(capsys.readouterr().out)["deleted"] == ["sp1"] and (root / "sp1").exists()
    assert main(["savepoint", "prune", str(root), "--keep", "1"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["in-progress", "sp3"]  # an incomplete one may be in progress
    assert main(["savepoint", "prune", str(root), "--keep", "0"]) == 1
    assert "pruning never deletes the newest savepoint" in capsys.readouterr().err

    # Savepoints are their directories: one renamed keeps its manifest's old name, and a new one takes
    # that name. Pruning by the manifest's name deleted the newest and kept the renamed, older one.
    (root / "sp3").rename(root / "nightly-2026-12-03")
    (root / "sp3" / "shard-0000").mkdir(parents=True)
    _write_manifest(root / "sp3", SavepointManifest(
        id="sp3", created_at="2026-12-04T00:00:00+00:00", mode="online", shards=1, secret_fingerprint="f",
        seqs={0: 4}, positions={}, source_lineage=None))
    assert [m.id for m in catalogue(root)[0]] == ["sp3", "nightly-2026-12-03"]
    assert prune(root, 1) == ["nightly-2026-12-03"] and (root / "sp3" / "savepoint.json").exists()
    assert not (root / "nightly-2026-12-03").exists()
    # The scheduler counts and prunes only its own: an operator's savepoint before an upgrade stays.
    for day, name in ((5, "scheduled-20261205T000000Z"), (6, "scheduled-20261206T000000Z")):
        (root / name / "shard-0000").mkdir(parents=True)
        _write_manifest(root / name, SavepointManifest(
            id=name, created_at=f"2026-12-0{day}T00:00:00+00:00", mode="online", shards=1, secret_fingerprint="f",
            seqs={0: day}, positions={}, source_lineage=None))
    assert prune(root, 1, prefix="scheduled-") == ["scheduled-20261205T000000Z"]
    assert sorted(m.id for m in catalogue(root)[0]) == ["scheduled-20261206T000000Z", "sp3"]


def _hold_state(config: Config) -> None:
    """The volume holds state, as after a start: a shard and the recovery partitions."""
    (Path(config.state.dir) / "shard-0000").mkdir(parents=True, exist_ok=True)
    (Path(config.state.dir) / "shard-0000" / "CURRENT").write_text("")
    recovery = Path(config.state.recovery_dir)
    if not any(recovery.glob("*.sqlite3")):
        recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery, 1)


def _savepoint(shared: Path, name: str, created_at: str, *, generation: int | None = None) -> None:
    from nextclick.operators.tools.savepoint import _write_manifest

    (shared / name / "shard-0000").mkdir(parents=True)
    _write_manifest(shared / name, SavepointManifest(
        id=name, created_at=created_at, mode="online", shards=4, secret_fingerprint="f", seqs={0: 1}, positions={},
        source_lineage=None, generation=generation))


def _peer_reports(shared: Path, generation: int | None, *, at: float | None = None, peer: int = 1,
                  intact: bool = False) -> None:
    (shared / ".cluster").mkdir(parents=True, exist_ok=True)
    (shared / ".cluster" / f"process-{peer}.json").write_bytes(orjson.dumps(
        {"generation": generation, "boot": "peer", "at": time.time() if at is None else at, "processes": 2,
         "intact": intact}))


def test_retention_keeps_the_savepoint_a_lost_volume_would_be_restored_from_after_a_rollback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe rolled a 2-pod cluster back to an older savepoint, then ran `savepoint prune
    --keep 1`: it kept the abandoned line's newest and deleted the one the cluster now ran from, and
    the next lost volume could only be met by starting over (2 of 2)."""
    from nextclick.flows.cli import main
    from nextclick.operators.tools.savepoint import _write_manifest

    root = tmp_path / "savepoints"
    for day in (1, 2, 3):
        (root / f"sp{day}" / "shard-0000").mkdir(parents=True)
        _write_manifest(root / f"sp{day}", SavepointManifest(
            id=f"sp{day}", created_at=f"2026-12-0{day}T00:00:00+00:00", mode="online", shards=1,
            secret_fingerprint="f", seqs={0: day}, positions={}, source_lineage=None, generation=1))
    (root / ".cluster").mkdir()  # the rollback: generation 2 restored sp1
    (root / ".cluster" / "generation-000002.json").write_bytes(orjson.dumps(
        {"generation": 2, "savepoint": str(root / "sp1"), "created_at": "2026-12-04T00:00:00+00:00"}))
    assert main(["savepoint", "prune", str(root), "--keep", "1"]) == 0
    assert orjson.loads(capsys.readouterr().out)["deleted"] == ["sp2"]
    assert sorted(p.name for p in root.iterdir()) == [".cluster", "sp1", "sp3"]


def test_a_copied_savepoint_directory_keeps_its_line_and_restores_from_the_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recheck probe copied state.savepoint_dir elsewhere (a new share): its generation files named the
    savepoints by absolute path, in the old directory, so prune on the copy deleted the one the cluster ran
    from, and a lost volume would have restored from the old share."""
    import shutil

    from nextclick.flows.cli import main
    from nextclick.operators.tools.savepoint import Generations, Rejoin

    old = tmp_path / "old-share"
    for day in (1, 2, 3):
        _savepoint(old, f"sp{day}", f"2026-12-0{day}T00:00:00+00:00", generation=1)
    # A deployment started from sp1 (a rollback onto new volumes): generation 0 records it.
    started = Generations(_deployment(tmp_path / "new-0", str(old)), 0, 2, explicit=str(old / "sp1"), timeout_s=5)
    _peer_reports(old, None)
    assert started.decide() == Rejoin(0, None)
    _peer_reports(old, 0)
    started.joined(0, str(old / "sp1"))
    started.close()

    copy = tmp_path / "new-share"
    shutil.copytree(old, copy)
    shutil.rmtree(old)
    assert main(["savepoint", "prune", str(copy), "--keep", "1"]) == 0
    assert orjson.loads(capsys.readouterr().out)["deleted"] == ["sp2"]
    moved = Generations(_deployment(tmp_path / "pod-0b", str(copy)), 0, 2, timeout_s=5)
    assert moved.current() == (0, str(copy / "sp1"))
    moved.close()


@pytest.fixture
def one_life_per_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each `Generations` a test makes for a process id is that process's next life: the one before it
    has exited, and its heartbeat with it (`close`). Left running, an earlier life rewrote the id's report
    every second, and on a loaded machine the next life read it as a second process started as its id."""
    from nextclick.operators.tools import savepoint as module

    lives: dict[tuple[str, int], Any] = {}
    start = module.Generations.__init__

    def next_life(self: Any, config: Any, process_id: int, *args: Any, **kwargs: Any) -> None:
        before = lives.pop((str(config.state.savepoint_dir), process_id), None)
        if before is not None:
            before.close()
        start(self, config, process_id, *args, **kwargs)
        lives[(str(config.state.savepoint_dir), process_id)] = self

    monkeypatch.setattr(module.Generations, "__init__", next_life)
    yield
    for life in lives.values():
        life.close()


@pytest.mark.usefixtures("one_life_per_process")
def test_a_volume_lost_before_restore_mode_was_set_is_restored_by_it(tmp_path: Path) -> None:
    """An outside probe: a cluster ran with on_lost_volume = "stop", pod 1's volume was lost, and the refusal
    said to set "restore". With it, no record said the cluster had run, so the empty pod started as a new
    deployment beside pod 0's state, and the same refusal came back at every restart."""
    from nextclick.operators.tools.savepoint import Generations, Rejoin

    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "pod-0", str(shared))
    _hold_state(config)  # pod 0 holds what the cluster committed (stop mode records no generation)
    _savepoint(shared, "sp", "2026-12-06T00:00:00+00:00")
    survivor = Generations(config, 0, 2, timeout_s=5)
    _peer_reports(shared, None)  # pod 1: an empty volume
    assert survivor.decide() == Rejoin(1, str(shared / "sp"), reset=True, restore=True)
    survivor.close()  # process 0's report is written by hand below
    _peer_reports(shared, None)
    lost = Generations(_deployment(tmp_path / "pod-1", str(shared)), 1, 2, timeout_s=5)
    _peer_reports(shared, 1, peer=0)
    assert lost.decide() == Rejoin(1, str(shared / "sp"), reset=False, restore=True)

    # A new deployment whose process 0 joined generation 0 before process 1 decided: not a lost volume.
    fresh = tmp_path / "fresh"
    late = Generations(_deployment(tmp_path / "fresh-1", str(fresh)), 1, 2, timeout_s=5)
    _peer_reports(fresh, 0, peer=0, intact=False)
    assert late.decide() == Rejoin(0, None)


@pytest.mark.usefixtures("one_life_per_process")
def test_generations_decide_who_restores_what(tmp_path: Path) -> None:
    """The decisions of state.on_lost_volume = "restore", process 0 of 2 with a peer's reports written by hand."""
    from nextclick.operators.tools.savepoint import Generations, Rejoin, _write_manifest

    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "pod-0", str(shared))

    # A new deployment: nobody has state, generation 0.
    first = Generations(config, 0, 2, timeout_s=5)
    _peer_reports(shared, None)
    assert first.decide() == Rejoin(0, None)
    _hold_state(config)
    _peer_reports(shared, 0)
    first.joined(0)
    assert (shared / ".cluster" / "running-000000").exists()

    # The peer lost its volume and there is no savepoint: refused, one line.
    again = Generations(config, 0, 2, timeout_s=5)
    _peer_reports(shared, None)
    with pytest.raises(SavepointError, match="holds no savepoint of the cluster's current line to restore it from"):
        again.decide()

    # With a savepoint: generation 1 names it, and this process (state at 0) clears and restores it.
    (shared / "sp" / "shard-0000").mkdir(parents=True)
    _write_manifest(shared / "sp", SavepointManifest(
        id="sp", created_at="2026-12-06T00:00:00+00:00", mode="online", shards=4, secret_fingerprint="f",
        seqs={0: 1}, positions={}, source_lineage=None))
    assert again.decide() == Rejoin(1, str(shared / "sp"), reset=True, restore=True)
    opened = orjson.loads((shared / ".cluster" / "generation-000001.json").read_bytes())
    assert opened["savepoint"] == "sp"  # by name: a copy of the directory finds it in the copy

    # Restored and joined: the next start resumes from the same savepoint, nothing restored again.
    _peer_reports(shared, 1)
    again.joined(1)
    later = Generations(config, 0, 2, timeout_s=5)
    _peer_reports(shared, 1)
    assert later.decide() == Rejoin(1, str(shared / "sp"))

    # Every process empty (a rescale or a rollback on new volumes) with a savepoint named: it opens the
    # next generation, also when a generation restored it before (a second rollback to it).
    (shared / "sp2" / "shard-0000").mkdir(parents=True)
    _write_manifest(shared / "sp2", SavepointManifest(
        id="sp2", created_at="2026-12-07T00:00:00+00:00", mode="online", shards=4, secret_fingerprint="f",
        seqs={0: 1}, positions={}, source_lineage=None))
    empty = _deployment(tmp_path / "new-0", str(shared))
    rescaled = Generations(empty, 0, 2, explicit=str(shared / "sp2"), timeout_s=5)
    _peer_reports(shared, None)
    assert rescaled.decide() == Rejoin(2, str(shared / "sp2"), reset=False, restore=True)
    (shared / ".cluster" / "running-000002").touch()
    rolled = Generations(empty, 0, 2, explicit=str(shared / "sp"), timeout_s=5)
    _peer_reports(shared, None)
    assert rolled.decide() == Rejoin(3, str(shared / "sp"), reset=False, restore=True)
    _hold_state(empty)
    _peer_reports(shared, 3)
    rolled.joined(3)

    # The line the rollback left had taken a newer savepoint (generation 2, with what the rollback undid):
    # a lost volume goes back to the newest savepoint of the current line, here the rollback's own.
    _savepoint(shared, "sp-abandoned", "2026-12-10T00:00:00+00:00", generation=2)
    lost = Generations(empty, 0, 2, timeout_s=5)
    _peer_reports(shared, None)
    assert lost.decide() == Rejoin(4, str(shared / "sp"), reset=True, restore=True)
    _peer_reports(shared, 4)
    lost.joined(4)
    _savepoint(shared, "sp-line", "2026-12-09T00:00:00+00:00", generation=4)  # taken by the cluster at 4
    again = Generations(empty, 0, 2, timeout_s=5)
    _peer_reports(shared, None)
    assert again.decide() == Rejoin(5, str(shared / "sp-line"), reset=True, restore=True)
    _peer_reports(shared, 5)
    again.joined(5)

    # A rollback with one volume left behind (an outside probe): the savepoint named was never restored
    # here and a process holds state. It went back to the line's latest with a warning, 2 of 2 read as
    # the rollback done; now it is refused in one line, and nothing is opened.
    partial = Generations(empty, 0, 2, explicit=str(shared / "sp-abandoned"), timeout_s=5)
    _peer_reports(shared, None)
    with pytest.raises(SavepointError, match=r"the savepoint given \(.*sp-abandoned: --from-savepoint or state."
                                             r"initial_savepoint\) is not restored while process\(es\) 0 of 2 still "
                                             r"hold state: a rollback starts every process empty"):
        partial.decide()
    assert partial.current()[0] == 5
    # Nor is it when no volume was emptied at all (a recheck probe: the flag was ignored without a word).
    whole = Generations(empty, 0, 2, explicit=str(shared / "sp-abandoned"), timeout_s=5)
    _peer_reports(shared, 5)
    with pytest.raises(SavepointError, match=r"is not restored while process\(es\) 0, 1 of 2 still hold state"):
        whole.decide()
    # Named again after the cluster restored it (the flag stays in the pod's arguments): the start
    # resumes, and a lost volume goes back to the line's latest, as without it.
    kept = Generations(empty, 0, 2, explicit=str(shared / "sp"), timeout_s=5)
    _peer_reports(shared, 5)
    assert kept.decide() == Rejoin(5, str(shared / "sp-line"))
    assert kept._restored_before(str(shared / "sp")) and not kept._restored_before(str(shared / "sp-abandoned"))

    # Half a volume is a lost one: state without its recovery partitions, or these without the state.
    # Both are cleared before the restore (a restore refuses a recovery directory that is not empty).
    for half in (Path(empty.state.recovery_dir), Path(empty.state.dir)):
        shutil.rmtree(half)
        half.mkdir()
        halved = Generations(empty, 0, 2, timeout_s=5)
        _peer_reports(shared, 5)
        (shared / ".cluster" / "running-000005").touch()
        generation = halved.current()[0] + 1
        assert halved.decide() == Rejoin(generation, str(shared / "sp-line"), reset=True, restore=True)
        _hold_state(empty)
        _peer_reports(shared, generation)
        halved.joined(generation)
        _peer_reports(shared, 5)

    # A report written before this process started is a previous life's: it does not count.
    stale = Generations(config, 0, 2, timeout_s=0.6)
    _peer_reports(shared, 1, at=time.time() - 1)
    with pytest.raises(SavepointError, match=r"process\(es\) 1 of 2 did not report"):
        stale.decide()


def test_a_wait_for_peers_says_who_is_missing_and_where_it_looks_while_it_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An outside probe gave one pod another state.savepoint_dir: every process waited 300 s with no word
    (each looked for its peers' reports in its own directory). It now says so every 30 s."""
    from nextclick.operators.tools import savepoint as module
    from nextclick.operators.tools.savepoint import Generations

    monkeypatch.setattr(module, "_SAY_EVERY_S", 0.2)
    shared = tmp_path / "shared"
    waiting = Generations(_deployment(tmp_path / "pod-0", str(shared)), 0, 2, timeout_s=1.0)
    with caplog.at_level("WARNING", logger="nextclick"), pytest.raises(SavepointError):
        waiting.decide()
    said = [r.getMessage() for r in caplog.records if "have not reported" in r.getMessage()]
    assert said and said[0].startswith(f"state.on_lost_volume: process(es) 1 of 2 have not reported in "
                                       f"{shared / '.cluster'} (not every process reported); every process must "
                                       "run with the same state.savepoint_dir"), said
    waiting.close()


def test_two_processes_started_as_one_id_are_named_rather_than_waited_for(tmp_path: Path) -> None:
    """An outside probe started two pods as --process-id 0 in restore mode: both waited 300 s, then said
    process 1 did not report. Each rewrites the same report; the one that reads the other's says so."""
    import threading

    from nextclick.operators.tools.savepoint import Generations

    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "pod-0", str(shared))
    waiting = Generations(config, 0, 2, timeout_s=20)
    stop = threading.Event()

    later = {"started": 0.0}  # the twin's start: before this one's, unless set

    def twin() -> None:  # the other process 0, reporting every 0.1 s
        while not stop.is_set():
            (shared / ".cluster" / "process-0.json").write_bytes(orjson.dumps(
                {"generation": None, "boot": "twin", "at": time.time(), "started": later["started"],
                 "processes": 2, "intact": False}))
            time.sleep(0.1)

    thread = threading.Thread(target=twin, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(SavepointError, match=r"another process reports as process 0 in .*: two processes started "
                                                 r"as the same --process-id \(or pod name\); stop one of them"):
            waiting.decide()
    finally:
        stop.set()
        thread.join()
        waiting.close()
    assert time.monotonic() - started < 10
    # The one started first waits on (a recheck probe saw the first pod, on its own volume, stop): the
    # twin started after it is the one that stops.
    first = Generations(config, 0, 2, timeout_s=2)
    later["started"] = time.time() + 60
    stop.clear()
    thread = threading.Thread(target=twin, daemon=True)
    thread.start()
    try:
        with pytest.raises(SavepointError, match=r"process\(es\) 1 of 2 did not report"):
            first.decide()
    finally:
        stop.set()
        thread.join()
        first.close()


def test_a_peer_that_stops_while_the_cluster_forms_is_named_at_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer refused at start (another shard count, a missing flag) exits with its own line; this
    process said nothing for 300 s. Now it stops too, naming the peer, once the peer's reports end."""
    from nextclick.operators.tools import savepoint as module

    monkeypatch.setattr(module, "_FRESH_S", 0.5)
    monkeypatch.setattr(module, "_GONE_S", 1.0)
    shared = tmp_path / "shared"
    waiting = module.Generations(_deployment(tmp_path / "pod-0", str(shared)), 0, 2, timeout_s=60)
    _peer_reports(shared, None)  # it reported, and then no more: it exited
    started = time.monotonic()
    with pytest.raises(SavepointError, match=r"process\(es\) 1 of 2 stopped while the cluster was forming "
                                             r"\(not every process reached generation 0\): its log says why"):
        waiting.joined(0)
    assert time.monotonic() - started < 10
    waiting.close()


def test_a_peer_that_refuses_before_it_reports_is_named_with_its_own_line(
        tmp_path: Path, kafka: dict[str, str], topic_prefix: str) -> None:
    """Process 1 is refused before it reports to the generation decision (a missing topic, a bad flag): it
    never reports, so only the 300-s timeout named it, without its reason. Its refusal on the control
    topic now stops the waiting process at once, with that line."""
    from nextclick.operators.io import cluster_hello
    from nextclick.operators.tools import savepoint as module

    control = f"{topic_prefix}.control"
    ensure_topics(kafka, {control: 1})
    config = _deployment(tmp_path / "pod-0", str(tmp_path / "shared"))
    def peers(since: float) -> dict[int, str]:
        return cluster_hello.peers_not_joining(kafka, control, "g", int(since * 1000), 2)

    waiting = module.Generations(config, 0, 2, timeout_s=60, refusals=peers)
    line = "input topic 'shop.store' does not exist (topics.inputs); create it with `nextclick topics create`"
    cluster_hello.publish_hello(kafka, control, cluster_hello.refusal("g", 1, line, int(time.time() * 1000)))
    started = time.monotonic()
    with pytest.raises(SavepointError, match=r"process 1 of 2 does not join while the cluster is forming "
                                             r"\(not every process reported\): input topic 'shop.store' does not"):
        waiting.decide()
    assert time.monotonic() - started < 10
    waiting.close()

    # A peer whose ConfigMap says on_lost_volume = "stop" (an outside probe: the others waited 300 s, then
    # said it had not reported) waits for the cluster to form, after its hello: that names it.
    again = module.Generations(config, 0, 2, timeout_s=60, refusals=peers)
    now = int(time.time() * 1000)
    cluster_hello.publish_hello(kafka, control, cluster_hello.hello(
        "g", 1, 2, 1, 2, "x", {"state.on_lost_volume": "stop"}, now + 1))
    with pytest.raises(SavepointError, match=r"process 1 of 2 does not join while the cluster is forming \(not every "
                                             r"process reported\): it started with state.on_lost_volume = \"stop\", "
                                             r"and every process of the cluster needs the same"):
        again.decide()
    again.close()


# -- the cluster round trip ----------------------------------------------------------------------------

CUSTOMERS = 300
PARTITIONS = 4
SHARDS = 8


def _cluster(pods: list[FlowSetup], *, stop_at_end: bool, log: Path, args: list[str]) -> list[subprocess.Popen[bytes]]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in pods]
    return [start(pod, stop_at_end=stop_at_end, process_id=i, addresses=addresses, log=log,
                  args=["--recovery-per-process", *args]) for i, pod in enumerate(pods)]


def _wait(procs: list[subprocess.Popen[bytes]], log: Path, timeout: float = 120) -> None:
    try:
        for p in procs:
            assert p.wait(timeout) == 0, f"a process exited with {p.returncode}; see {log}:\n" + \
                log.read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _shards_held(pod: FlowSetup) -> set[str]:
    return {p.relative_to(pod.state_dir).as_posix() for p in pod.state_dir.rglob("shard-*") if p.is_dir()}


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.parametrize("destination", ["shared-directory", "object-store"])
def test_two_pods_online_savepoint_restores_into_three_pods(kafka: dict[str, str], topic_prefix: str,
                                                           tmp_path: Path, destination: str,
                                                           request: pytest.FixtureRequest) -> None:
    started = time.monotonic()
    messages = workload(CUSTOMERS, seed=53)
    half = len(messages) // 2
    clean_in, topic = f"{topic_prefix}.clean-in", f"{topic_prefix}.in"
    ensure_topics(kafka, {clean_in: PARTITIONS, topic: PARTITIONS})
    clean = reference_run(kafka, tmp_path, topic_prefix, clean_in, messages, PARTITIONS, shards=SHARDS)

    # The ReadWriteMany volume (the only directory the pods share), or a bucket of the S3 server the
    # `s3` fixture started (the processes inherit its AWS_* variables).
    shared = str(tmp_path / "shared-savepoints") if destination == "shared-directory" else \
        f"{request.getfixturevalue('s3')}/{topic_prefix}"
    base = FlowSetup.create(kafka, tmp_path / "unused", f"{topic_prefix}.run", inputs=[topic], shards=SHARDS,
                            extra_env={"NEXTCLICK_STATE__SAVEPOINT_DIR": shared})
    two = [base.with_(state_dir=tmp_path / f"two-{i}" / "state", recovery_dir=tmp_path / f"two-{i}" / "recovery")
           for i in range(2)]
    produce(kafka, topic, messages[:half], PARTITIONS)
    log = tmp_path / "cluster.log"
    procs = _cluster(two, stop_at_end=False, log=log, args=[])
    try:
        deadline = time.monotonic() + 60
        while sum(p["facts"]["version"] for pod in two for p in read_profiles(pod.state_dir, SHARDS).values()) < half:
            assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first half was not applied in time"
            time.sleep(0.3)
        took = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "nextclick", "savepoint", "create", "sp", "--online",
                               "--processes", "2", "--timeout", "60"], cwd=REPO, capture_output=True, text=True,
                              env=base.env(stop_at_end=False), timeout=90)
        assert done.returncode == 0, done.stderr[-3000:]
        create_s = time.monotonic() - took
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    manifest = orjson.loads(done.stdout)
    assert manifest["mode"] == "online" and sum(manifest["positions"].values()) >= half
    saved = Destination(shared).child("sp")
    staged = {name.split("/", 1)[0] for name in saved.files() if name.startswith(".")}
    assert staged == ({manifest["root"]} if manifest.get("root") else set())  # no other attempt's staging left

    produce(kafka, topic, messages[half:], PARTITIONS)
    three = [base.with_(state_dir=tmp_path / f"three-{i}" / "state",
                        recovery_dir=tmp_path / f"three-{i}" / "recovery") for i in range(3)]
    restore_from = ["--from-savepoint", str(saved)]
    _wait(_cluster(three, stop_at_end=True, log=log, args=restore_from), log)

    config = load_config(None, base.env(stop_at_end=True))
    every = [(f, n) for f in state_families(config) for n in range(f.shards)]
    got: dict[str, dict[str, object]] = {}
    for i, pod in enumerate(three):
        owned = {f.rel(n) for f, n in every if Placement(i, 3).owns(f, n)}
        assert _shards_held(pod) == owned, f"process {i} holds {sorted(_shards_held(pod))}, owns {sorted(owned)}"
        profiles = read_profiles(pod.state_dir, SHARDS)
        assert not set(profiles) & set(got)
        got.update(profiles)
    assert_same_profiles(clean.profiles, got)
    assert_same_decisions(clean.decisions, dedupe(read_decisions(kafka, base.decisions)))

    # The manifest keeps --from-savepoint (here, through object storage) or state.initial_savepoint (the
    # same path, from the configuration): the next start resumes instead of crash-looping.
    if destination == "object-store":
        _wait(_cluster(three, stop_at_end=True, log=log, args=restore_from), log)
    else:
        keep_key = [pod.with_(extra_env={**pod.extra_env, "NEXTCLICK_STATE__INITIAL_SAVEPOINT": str(saved)})
                    for pod in three]
        _wait(_cluster(keep_key, stop_at_end=True, log=log, args=[]), log)
    again: dict[str, dict[str, object]] = {}
    for pod in three:
        again.update(read_profiles(pod.state_dir, SHARDS))
    assert_same_profiles(clean.profiles, again)
    print(f"\n{destination}: online savepoint of 2 processes: {create_s:.1f}s; restored into 3, each holding "
          f"{[len(_shards_held(p)) for p in three]} shards; total {time.monotonic() - started:.1f}s")


@pytest.mark.slow
@pytest.mark.broker
def test_a_lost_volume_takes_the_cluster_back_to_the_latest_savepoint(kafka: dict[str, str], topic_prefix: str,
                                                                       tmp_path: Path) -> None:
    """state.on_lost_volume = "restore": SIGKILL the cluster, delete one process's volume (state and
    recovery); at the next start every process goes back to the latest savepoint and replays the input."""
    started = time.monotonic()
    messages = workload(CUSTOMERS, seed=59)
    half = len(messages) // 2
    clean_in, topic = f"{topic_prefix}.clean-in", f"{topic_prefix}.in"
    ensure_topics(kafka, {clean_in: PARTITIONS, topic: PARTITIONS})
    clean = reference_run(kafka, tmp_path, topic_prefix, clean_in, messages, PARTITIONS, shards=SHARDS)

    shared = tmp_path / "shared-savepoints"
    base = FlowSetup.create(kafka, tmp_path / "unused", f"{topic_prefix}.run", inputs=[topic], shards=SHARDS,
                            extra_env={"NEXTCLICK_STATE__SAVEPOINT_DIR": str(shared),
                                       "NEXTCLICK_STATE__ON_LOST_VOLUME": "restore",
                                       # required with "restore"; longer than the test: its savepoint is taken by hand
                                       "NEXTCLICK_STATE__SAVEPOINT_INTERVAL": "1h"})
    pods = [base.with_(state_dir=tmp_path / f"pod-{i}" / "state", recovery_dir=tmp_path / f"pod-{i}" / "recovery")
            for i in range(2)]
    produce(kafka, topic, messages[:half], PARTITIONS)
    log = tmp_path / "cluster.log"

    def applied() -> int:
        return sum(p["facts"]["version"] for pod in pods for p in read_profiles(pod.state_dir, SHARDS).values())

    procs = _cluster(pods, stop_at_end=False, log=log, args=[])
    try:
        deadline = time.monotonic() + 60
        while applied() < half:
            assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first half was not applied in time"
            time.sleep(0.3)
        done = subprocess.run([sys.executable, "-m", "nextclick", "savepoint", "create", "sp", "--online",
                               "--timeout", "60"], cwd=REPO, capture_output=True, text=True,
                              env=base.env(stop_at_end=False), timeout=90)
        assert done.returncode == 0, done.stderr[-3000:]
        assert SavepointManifest.read(shared / "sp").generation == 0  # the line it is on (the first deployment)
        produce(kafka, topic, messages[half:], PARTITIONS)
        while applied() < half + 50:  # the state moves on past the savepoint before the loss
            assert time.monotonic() < deadline, "the second half was not applied in time"
            time.sleep(0.3)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    lost_at = time.monotonic()
    shutil.rmtree(tmp_path / "pod-1")  # process 1's volume: its shards and its recovery partition

    # First with on_lost_volume = "stop", the default: both processes name the lost volume (Bytewax
    # itself says only "Send thread panic", and each process took the other for lost).
    stop_log = tmp_path / "stop-mode.log"
    stopped = [p.wait(90) for p in _cluster([pod.with_(extra_env={**pod.extra_env,
                                                                   "NEXTCLICK_STATE__ON_LOST_VOLUME": "stop"})
                                             for pod in pods], stop_at_end=True, log=stop_log, args=[])]
    # Both processes write to one log: one's line can land inside the other's (no newline between).
    text = stop_log.read_text().replace("nextclick: error:", "\nnextclick: error:")
    lines = [line for line in text.splitlines() if line.startswith("nextclick: error:")]
    assert stopped == [1, 1] and len(lines) == 2, stop_log.read_text()[-3000:]
    for me, line in enumerate(sorted(lines, key=lambda text: "this is process 1" in text)):
        assert line.startswith(f"nextclick: error: process 1 started with no committed state and process 0 with "
                               f"the cluster's (this is process {me}): the state and recovery volumes of process 1 "
                               "were lost or replaced"), line
    # That start set up process 1's empty volume; the restore mode still takes it for lost.
    _wait(_cluster(pods, stop_at_end=True, log=log, args=[]), log)
    recovered_s = time.monotonic() - lost_at
    generation = orjson.loads((shared / ".cluster" / "generation-000001.json").read_bytes())
    assert generation["savepoint"] == "sp"  # by name, in state.savepoint_dir
    got: dict[str, dict[str, object]] = {}
    for pod in pods:
        got.update(read_profiles(pod.state_dir, SHARDS))
    assert_same_profiles(clean.profiles, got)
    assert_same_decisions(clean.decisions, dedupe(read_decisions(kafka, base.decisions)))
    print(f"\nlost volume: the cluster back from savepoint sp and at the end of the input in {recovered_s:.1f}s; "
          f"total {time.monotonic() - started:.1f}s")


def test_a_read_only_savepoint_dir_in_restore_mode_is_named_with_its_setting(tmp_path: Path) -> None:
    """An outside probe's read-only savepoint_dir said only "[Errno 30] Read-only file system:
    '.../.cluster/.process-0.json.bb5978f6.tmp'"."""
    import pickle

    shared = tmp_path / "shared"
    (shared / ".cluster").mkdir(parents=True)
    config = _deployment(tmp_path / "pod-0", str(shared))
    repo = Path(__file__).resolve().parent.parent
    # The read-only mount needs a mount namespace of its own (`unshare`): the check runs in a child process.
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(shared),
         sys.executable, "-c",
         "import sys, pickle\nfrom nextclick.operators.tools.savepoint import Generations, SavepointError\n"
         "config = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
         "try:\n    Generations(config, 0, 2, timeout_s=1)\nexcept SavepointError as e:\n    print(e)\n",
         pickle.dumps(config).hex()],
        capture_output=True, text=True, timeout=60, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        f"state.savepoint_dir {shared}: Read-only file system: with state.on_lost_volume = \"restore\" every "
        f"process writes its report in {shared / '.cluster'} before the cluster forms; mount that directory "
        "read-write on every process")


def test_a_restore_onto_a_full_volume_names_state_dir(tmp_path: Path) -> None:
    """An outside probe's restore onto a full volume named only a shard's path. The state volume is a
    4 MiB tmpfs in a mount namespace of the test's own (`unshare`); the savepoint's first shard carries
    8 MiB more than the volume holds."""
    import pickle

    shared = tmp_path / "shared"
    config = _deployment(tmp_path / "source", str(shared))
    _write_parts(config, str(shared / "sp"), "tok")
    finish_online(config, shared / "sp", timeout_s=10)
    shard = next(p for p in (shared / "sp").rglob("shard-0000") if p.is_dir())
    (shard / "padding.bin").write_bytes(os.urandom(8 << 20))  # a file RocksDB does not read
    pod_root = tmp_path / "pod"
    pod_root.mkdir()
    pod = _deployment(pod_root, str(shared))
    repo = Path(__file__).resolve().parent.parent
    script = ("import sys, pickle\nfrom pathlib import Path\n"
              "from nextclick.operators.tools.savepoint import SavepointError, restore\n"
              "pod = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
              "try:\n    restore(pod, sys.argv[2], init_recovery=lambda d: d.mkdir(exist_ok=True))\n"
              "except SavepointError as e:\n    print(e)\n")
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", 'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$@"',
         str(pod_root), sys.executable, "-c", script, pickle.dumps(pod).hex(), str(shared / "sp")],
        capture_output=True, text=True, timeout=60, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    shards = sum(family.shards for family in state_families(pod))
    assert done.stdout.strip() == (  # a restore interrupted so is done again: test_an_interrupted_restore_...
        f"state.dir {pod.state.dir}: no space left on the device while restoring {shared / 'sp'} (0 of {shards} "
        "shards done); free or grow the volume and start again: the restore is done again from the start")
