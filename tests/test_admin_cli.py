"""The admin commands as an operator runs them: `nextclick profile get/erase`, `state info/reset`.

One deployment is run through the broker; then each command runs as a subprocess with the same
configuration (NEXTCLICK_* variables) and is judged by what it prints and what it leaves on disk.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.config import PrivacyConfig
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.tools.profiles import read_profile
from tests.flowrun import REPO, SECRET, FlowSetup, produce, read_profiles, run_to_end, start, workload

CUSTOMERS = 30


def nextclick(setup: FlowSetup, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nextclick", *args], cwd=REPO, capture_output=True, text=True,
                          env={**setup.env(stop_at_end=True), **env}, timeout=120)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("nextclick: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def deployment(broker, tmp_path_factory: pytest.TempPathFactory) -> FlowSetup:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("admin")
    kafka = {"bootstrap.servers": broker.bootstrap}
    prefix = f"admin{root.name[-4:]}{int(time.time() * 1000) % 100000}"
    ensure_topics(kafka, {f"{prefix}.in": 1})
    produce(kafka, f"{prefix}.in", workload(CUSTOMERS, seed=5), 1)
    setup = FlowSetup.create(kafka, root, prefix, inputs=[f"{prefix}.in"], shards=4)
    run_to_end(setup, log=root / "run.log")
    return setup


def key(customer_id: str) -> str:
    return pseudonymize("customer", customer_id, SECRET.encode())


@pytest.mark.broker
def test_profile_get_by_identifier_and_by_key(deployment: FlowSetup) -> None:
    done = nextclick(deployment, "profile", "get", "cust-00001")
    assert done.returncode == 0, done.stderr
    profile = orjson.loads(done.stdout)
    assert profile["customer"] == key("cust-00001") and profile["facts"]["version"] >= 1
    # Beside the stored profile: what a rule would read now (segment, scores, days since, every signal).
    derived = profile.pop("derived")
    assert {"segment", "recency_score", "days_since_last_purchase", "page_views_30m", "session_active",
            "cart_abandoned_pending"} <= set(derived["attributes"])
    by_key = nextclick(deployment, "profile", "get", key("cust-00001"), "--hashed", "--at", derived["at"])
    assert orjson.loads(by_key.stdout) == {**profile, "derived": derived}
    assert "no profile" in one_line_error(nextclick(deployment, "profile", "get", "nobody-at-all"))
    # A wrong shard count would look in the wrong shard: refused, not "no profile".
    error = one_line_error(nextclick(deployment, "profile", "get", "cust-00001", NEXTCLICK_STATE__SHARDS="8"))
    assert "state.shards" in error and "4" in error and "8" in error


@pytest.mark.broker
def test_state_info_counts_what_is_there(deployment: FlowSetup) -> None:
    done = nextclick(deployment, "state", "info", "--exact")
    assert done.returncode == 0, done.stderr
    info = orjson.loads(done.stdout)
    assert info["customers"] == len(read_profiles(deployment.state_dir, 4)) == CUSTOMERS
    assert info["identity"]["shards"] == 4 and info["shards_configured"] == 4
    assert all(s["seq"] >= 1 for s in info["shards"])


@pytest.mark.broker
def test_offline_erase_then_the_flow_still_starts(deployment: FlowSetup) -> None:
    done = nextclick(deployment, "profile", "erase", "cust-00002")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["erased"] is True
    assert read_profile(deployment.state_dir, 4, key("cust-00002")) is None
    assert nextclick(deployment, "run", "--stop-at-end").returncode == 0
    assert read_profile(deployment.state_dir, 4, key("cust-00002")) is None


@pytest.mark.broker
@pytest.mark.parametrize(("args", "why"), [
    (("",), "KEY is empty or shows nothing"), (("   ",), "KEY is empty or shows nothing"),
    (("\u200b",), "KEY is empty or shows nothing"),
    (("ABCDEF", "--hashed"), "KEY with --hashed must be 32 lowercase hexadecimal characters"),
])
def test_an_erase_of_a_key_no_event_can_have_is_refused_before_anything_is_done(
        deployment: FlowSetup, args: tuple[str, ...], why: str) -> None:
    """An outside probe: these exited 0, wrote profile-view tombstones and recorded an erase command that
    the flow then dead-lettered."""
    for how in ((), ("--online",)):
        error = one_line_error(nextclick(deployment, "profile", "erase", *args, *how))
        assert error.startswith(f"nextclick: error: {why}"), error


@pytest.mark.broker
def test_a_wrong_state_dir_is_named_never_taken_for_a_customer_with_nothing_stored(
        deployment: FlowSetup, tmp_path: Path) -> None:
    """An erasure run with another deployment's configuration must not report "nothing stored"."""
    elsewhere = tmp_path / "not-the-state"
    error = one_line_error(nextclick(deployment, "profile", "erase", "cust-00004", NEXTCLICK_STATE__DIR=str(elsewhere)))
    assert error == (f"nextclick: error: no state directory at {elsewhere} (state.dir): nothing was erased; run this "
                     "with the deployment's configuration")
    error = one_line_error(nextclick(deployment, "profile", "get", "cust-00004", NEXTCLICK_STATE__DIR=str(elsewhere)))
    assert error == f"nextclick: error: no state directory at {elsewhere} (state.dir)"
    assert not elsewhere.exists()
    assert read_profile(deployment.state_dir, 4, key("cust-00004")) is not None


@pytest.mark.broker
def test_one_pods_volume_is_named_as_such_never_taken_for_a_whole_deployment(
        deployment: FlowSetup, tmp_path: Path) -> None:
    """Per-pod volumes hold each process's own shards, and the identity store is on one of them: an
    offline erase there erased part of a linked customer and said "erased": true; a get said "no profile"."""
    import shutil

    from bytewax.recovery import init_db_dir

    volume, recovery = tmp_path / "pod-1-state", tmp_path / "pod-1-recovery"
    shutil.copytree(deployment.state_dir, volume)
    recovery.mkdir()
    init_db_dir(recovery, 2)
    (recovery / "part-0.sqlite3").unlink()  # process 1's: partition 1 of 2
    pod = {"NEXTCLICK_STATE__DIR": str(volume), "NEXTCLICK_STATE__RECOVERY_DIR": str(recovery)}
    before = sorted(p.relative_to(volume).as_posix() for p in volume.rglob("*") if p.is_file())
    error = one_line_error(nextclick(deployment, "profile", "erase", "cust-00006", **pod))
    assert error.startswith(f"nextclick: error: {volume} (state.dir) is one process's volume of a 2-process cluster "
                            "(its recovery directory holds partition(s) 1 of 2)") and "nothing was erased" in error
    assert "--online" in error
    assert sorted(p.relative_to(volume).as_posix() for p in volume.rglob("*") if p.is_file()) == before
    error = one_line_error(nextclick(deployment, "profile", "get", "nobody-at-all", **pod))
    assert error.startswith("nextclick: error: no profile holds that customer identifier on this volume: ")


@pytest.mark.broker
def test_online_erase_reaches_the_running_flow(deployment: FlowSetup, tmp_path: Path) -> None:
    who = key("cust-00003")
    version = read_profile(deployment.state_dir, 4, who)["facts"]["version"]  # type: ignore[index]
    flow = start(deployment, stop_at_end=False, log=tmp_path / "flow.log")
    try:
        # One more event for the customer, so the running flow opens (and holds) their shard.
        body = {"event_id": "extra-1", "type": "page_view", "ts": int(time.time() * 1000) - 1000,
                "customer_id": "cust-00003", "page_type": "home"}
        produce(deployment.kafka, deployment.inputs[0], [("cust-00003", b"cust-00003", orjson.dumps(body))], 1)
        deadline = time.monotonic() + 30
        while (read_profile(deployment.state_dir, 4, who) or {"facts": {}})["facts"].get("version") == version:
            assert time.monotonic() < deadline and flow.poll() is None, (tmp_path / "flow.log").read_text()
            time.sleep(0.2)
        # The flow holds the shard open: an offline erase says what to do instead.
        error = one_line_error(nextclick(deployment, "profile", "erase", "cust-00003"))
        assert "--online" in error
        done = nextclick(deployment, "profile", "erase", "cust-00003", "--online", "--request-id", "dsr-7")
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["request_id"] == "dsr-7"
        deadline = time.monotonic() + 30
        while read_profile(deployment.state_dir, 4, who) is not None:
            assert time.monotonic() < deadline and flow.poll() is None, (tmp_path / "flow.log").read_text()
            time.sleep(0.2)
    finally:
        flow.kill()
        flow.wait()
    assert read_profile(deployment.state_dir, 4, key("cust-00004")) is not None


@pytest.mark.broker
def test_state_reset_says_what_it_destroys_and_needs_yes(deployment: FlowSetup, tmp_path: Path) -> None:
    dry = nextclick(deployment, "state", "reset")
    assert dry.returncode != 0 and "--yes" in dry.stderr and "nothing was changed" in dry.stderr
    # Every store goes: the 4 profile shards, the identity graph, and linked profiles' shards opened so far.
    from nextclick.operators.state.layout import has_store

    stores = sorted(p for p in deployment.state_dir.rglob("shard-*") if p.is_dir() and has_store(p))
    assert len([p for p in stores if p.parent == deployment.state_dir]) == 4
    assert (deployment.state_dir / "identity" / "shard-0000") in stores
    assert orjson.loads(dry.stdout)["shard_directories"] == len(stores)
    assert len(read_profiles(deployment.state_dir, 4)) >= CUSTOMERS - 2
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(deployment.state_dir, copy / "state")
    shutil.copytree(deployment.recovery_dir, copy / "recovery")
    env = {"NEXTCLICK_STATE__DIR": str(copy / "state"), "NEXTCLICK_STATE__RECOVERY_DIR": str(copy / "recovery")}
    done = nextclick(deployment, "state", "reset", "--yes", **env)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["destroyed"] is True
    assert read_profiles(copy / "state", 4) == {} and not list((copy / "recovery").glob("*.sqlite3"))
    # And the emptied directories start as a new deployment.
    assert nextclick(deployment, "run", "--stop-at-end", **env).returncode == 0


def test_the_secret_file_wins_and_its_trailing_whitespace_is_ignored(tmp_path: Path) -> None:
    secret_file = tmp_path / "hmac"
    secret_file.write_bytes(b"s3cret-from-file\n\t \n")
    both = PrivacyConfig(secret="the-inline-one", secret_file=str(secret_file))
    assert both.resolve_secret() == b"s3cret-from-file"
    # The key a customer gets from the file equals the one from the same secret given inline.
    inline = PrivacyConfig(secret="s3cret-from-file")
    assert pseudonymize("customer", "c-1", both.resolve_secret()) == \
        pseudonymize("customer", "c-1", inline.resolve_secret())
    missing = PrivacyConfig(secret="x", secret_file=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="privacy.secret_file"):
        missing.resolve_secret()


@pytest.mark.broker
def test_the_read_only_tools_work_on_a_read_only_mount_of_the_state(deployment: FlowSetup, tmp_path: Path) -> None:
    """An outside probe: `profile get`, `state info` and an offline savepoint failed on a volume snapshot
    mounted read-only (rocksdict rewrites its config file even when it opens a store read-only). The
    mount is made in a mount namespace of its own (`unshare`), so the test needs no privileges."""
    import shutil

    copy, mount = tmp_path / "snapshot", tmp_path / "mnt"
    shutil.copytree(deployment.state_dir, copy / "state")
    shutil.copytree(deployment.recovery_dir, copy / "recovery")
    # A snapshot of an epoch that never committed, as a flow stopped mid-epoch leaves: a start would drop
    # it (a write), and so did the offline savepoint until it stopped writing where it reads (CI, 1 run).
    import sqlite3

    for part in (copy / "recovery").glob("part-*.sqlite3"):
        db = sqlite3.connect(part)
        with db:
            db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                       "SELECT step_id, state_key, snap_epoch + 1000000, ser_change FROM snaps LIMIT 1")
        db.close()
    mount.mkdir()
    on_mount = deployment.with_(state_dir=mount / "state", recovery_dir=mount / "recovery")
    savepoint = tmp_path / "sp"
    commands = [f"{sys.executable} -m nextclick profile get cust-00001 > {tmp_path / 'get.json'}",
                f"{sys.executable} -m nextclick state info > {tmp_path / 'info.json'}",
                f"{sys.executable} -m nextclick savepoint create {savepoint} > /dev/null",
                # A write on the read-only mount: refused naming why, not "in use by a running flow".
                f"({sys.executable} -m nextclick profile erase cust-00001 >/dev/null 2>{tmp_path / 'erase.err'}; true)"]
    script = (f"mount --bind {copy} {mount} && mount -o remount,ro,bind {mount} && "
              f"! touch {mount}/state/x 2>/dev/null && " + " && ".join(commands))
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], cwd=REPO,
                          env=on_mount.env(stop_at_end=True), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert orjson.loads((tmp_path / "get.json").read_bytes())["customer"] == key("cust-00001")
    assert orjson.loads((tmp_path / "info.json").read_bytes())["shards"]
    assert read_profiles(savepoint, 4) == read_profiles(copy / "state", 4) != {}
    refused = (tmp_path / "erase.err").read_text()
    assert "to erase offline (" in refused and "Read-only file system" in refused, refused
    assert "in use by a running flow" not in refused
