"""Guarantees that each hang on one check: every test here fails when that check is removed.

Each test asserts what a user would notice: the decision that comes out (or does not), the profile
or the quarantine record left in the store, the one-line refusal and, after it, every file of the
state and recovery directories unchanged. They drive the shard, the start-up checks and the
savepoint functions directly, and Bytewax in-process where the recovery directory must be a real
one (no broker: a deployment here is a few events through the real `profiles` step).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from nextclick.flows.cli import main as cli_main
from nextclick.flows.cluster import prepare_recovery
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.profile.model import PROFILE_FORMAT
from nextclick.operators.records import DeadLetter, Decision, Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard import shard_state as shard_module
from nextclick.operators.shard.logic import ResumeState, ShardLogic
from nextclick.operators.shard.shard_state import ShardContext, open_store
from nextclick.operators.state.keys import QUARANTINED, TIMER_PREFIX, is_timer_of, profile_key, quarantine_key, shard_of
from nextclick.operators.state.manifest import MANIFEST_FILE, StateMismatch
from nextclick.operators.state.store import ShardStore, StateError
from nextclick.operators.tools.profiles import read_profile
from nextclick.operators.tools.savepoint import create_offline, restore
from nextclick.operators.tools.startup import check_start
from tests.flowrun import read_profiles
from tests.helpers import HOUR, MIN, T0, Customer, consent, default_rules, fired, make_event, write_rules

SHARDS = 2
SECRET = "guarantees-secret"


def checksums(*roots: Path) -> dict[str, str]:
    """Every file under `roots` by content: "nothing on disk changed" means these are equal."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def customers_of(shard: int, count: int = 2) -> list[str]:
    """Customer keys the shard count places in `shard`."""
    return [c for c in (f"cust-{i:04d}" for i in range(200)) if shard_of(c, SHARDS) == shard][:count]


# --- one customer's profile that cannot be stored ------------------------------------------------


def _shard(tmp_path: Path, clock: ManualClock) -> ShardLogic:
    return ShardLogic(ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock), None)


def _quarantine_record(logic: ShardLogic, customer: str) -> dict[str, Any]:
    assert logic.store.get(profile_key(customer)) == QUARANTINED
    raw = logic.store.get(quarantine_key(customer))
    assert raw is not None
    record: dict[str, Any] = orjson.loads(raw)
    return record


def _timers_of(logic: ShardLogic, customer: str) -> list[bytes]:
    return [k for k, _ in logic.store.scan(TIMER_PREFIX) if is_timer_of(k, customer.encode())]


def _overflow_on(monkeypatch: pytest.MonkeyPatch, event_id: str) -> None:
    """The event `event_id` leaves an infinite revenue behind (as a bug upstream could): a profile
    that can no longer be stored."""
    real = shard_module.on_event

    def overflows(profile: Any, event: Event, *args: Any) -> Any:
        result = real(profile, event, *args)
        if event.event_id == event_id:
            profile.facts.revenue = math.inf
        return result

    monkeypatch.setattr(shard_module, "on_event", overflows)


def test_a_profile_that_cannot_be_encoded_at_the_epoch_end_is_quarantined(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ShardState._write: a dirty profile holding a value JSON cannot store (a bug upstream let an
    infinite revenue through) is set aside at the epoch end instead of being written as null, and
    the customer is no longer dirty: their next events are dead letters, everyone else goes on."""
    _overflow_on(monkeypatch, "overflow")
    logic = _shard(tmp_path, ManualClock(T0))
    out, _ = logic.on_batch([consent(T0, customer="c1"), make_event("page_view", T0, customer="c2", page_type="home"),
                             make_event("add_to_cart", T0 + MIN, customer="c1", sku="s", amount=20.0),
                             make_event("purchase", T0 + 2 * MIN, customer="c1", event_id="overflow", amount=5.0)])
    assert not [o for o in out if isinstance(o, DeadLetter)]
    logic.snapshot()
    record = _quarantine_record(logic, "c1")
    assert (record["step"], record["exception"]) == ("encode_profile", "ProfileEncodeError")
    assert _timers_of(logic, "c1") == []
    assert logic.state is not None and "c1" not in logic.state._dirty  # not retried at every epoch end
    out, _ = logic.on_batch([make_event("page_view", T0 + 3 * MIN, customer="c1", page_type="home")])
    assert [(d.reason, d.step) for d in out if isinstance(d, DeadLetter)] == [("processing_error",
                                                                               "quarantined_profile")]
    logic.snapshot()
    logic.store.close()
    assert (read_profile(tmp_path, 1, "c1") or {}).get("quarantined", {}).get("step") == "encode_profile"
    assert (read_profile(tmp_path, 1, "c2") or {}).get("facts", {}).get("version") == 1


def test_a_stored_profile_a_timer_turn_makes_unencodable_is_quarantined(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cold-timer path (profiles only the store holds, turned and written back at once): a turn that
    leaves a value JSON cannot store sets the customer aside, emits nothing for them, and leaves no
    timer to fire again; the other customer's reminder goes out."""
    clock = ManualClock(T0 + MIN)
    logic = _shard(tmp_path, clock)
    logic.on_batch([e for c in ("c1", "c2") for e in
                    (consent(T0, customer=c), make_event("add_to_cart", T0, customer=c, sku="s", amount=20.0))])
    committed = logic.snapshot()
    assert committed is not None
    logic.store.close()
    # Restarted: nothing cached, every timer turn is cold.
    logic = ShardLogic(logic.ctx, {"shard": 0, "seq": committed["seq"]})
    real = shard_module.on_timers

    def overflows(profile: Any, *args: Any) -> Any:
        result = real(profile, *args)
        if profile.customer == "c1":
            profile.facts.revenue = math.inf
        return result

    monkeypatch.setattr(shard_module, "on_timers", overflows)
    clock.set(T0 + 2 * HOUR)
    out, _ = logic.on_notify()
    assert [(d.customer, d.rule_id) for d in out if isinstance(d, Decision)] == [("c2", "cart_abandonment_email")]
    assert len(out) == 1
    logic.snapshot()
    record = _quarantine_record(logic, "c1")
    assert (record["step"], record["exception"]) == ("encode_profile", "ProfileEncodeError")
    assert _timers_of(logic, "c1") == []
    clock.set(T0 + 30 * HOUR)
    assert logic.on_notify()[0] == []  # nothing left to fire for c1
    logic.store.close()


# --- a condition on a missing attribute is false --------------------------------------------------


def test_not_in_on_a_missing_attribute_is_false_in_a_rule_and_in_a_signal_filter(tmp_path: Path) -> None:
    """docs/rules.md: a condition on a missing value is false for every operator but == and !=, so
    `not in` too: a purchase without a category is not "not shoes", and a page view without one is not
    counted by a signal that only counts pages that are not shoes."""
    rules = write_rules(tmp_path, '''
[signals.other_pages]
kind = "count"
events = ["page_view"]
window = "30m"
where = ['category not in ["shoes"]']

[[rule]]
id = "not_shoes"
on = ["purchase"]
when = ['trigger.category not in ["shoes"]']
action = "send_ad"
channel = "ads"

[[rule]]
id = "browsed_other"
on = ["page_view"]
when = ["other_pages >= 1"]
action = "send_ad"
channel = "ads"

[consent]
ads = "opt_out"
''')
    ruleset = load_rules(rules)
    buyer = Customer(ruleset, "buyer")
    assert fired(buyer.send("purchase", T0, amount=5.0)) == []
    assert fired(buyer.send("purchase", T0 + MIN, category="shoes", amount=5.0)) == []
    assert fired(buyer.send("purchase", T0 + 2 * MIN, category="hats", amount=5.0)) == [
        ("not_shoes", "ads", "purchase")]
    browser = Customer(ruleset, "browser")
    assert fired(browser.send("page_view", T0, page_type="home")) == []
    assert fired(browser.send("page_view", T0 + MIN, page_type="product", category="shoes")) == []
    assert fired(browser.send("page_view", T0 + 2 * MIN, page_type="product", category="hats")) == [
        ("browsed_other", "ads", "page_view")]


# --- a deployment without a broker ---------------------------------------------------------------


class Deployment:
    """State and recovery directories written by the real `profiles` step, run in-process by Bytewax.

    Every `run` is a start as `nextclick run` makes it (the start-up checks, then Bytewax resuming
    from the recovery directory) over the events given so far, one epoch per event.
    """

    def __init__(self, root: Path, *, keep_checkpoints: int = 64) -> None:
        self.root = root
        self.config = Config().replace(
            state={"dir": str(root / "state"), "recovery_dir": str(root / "recovery"), "shards": SHARDS,
                   "keep_checkpoints": keep_checkpoints, "savepoint_dir": str(root / "savepoints")},
            privacy={"secret": SECRET})
        self.events: list[Event] = []

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state.dir)

    @property
    def recovery_dir(self) -> Path:
        return Path(self.config.state.recovery_dir)

    def run(self, customers: Sequence[str] = ()) -> None:
        """Start, apply one page view of each customer (each its own epoch) and stop at the end."""
        self.events += [make_event("page_view", T0 + len(self.events) + i, customer=c, page_type="home")
                        for i, c in enumerate(customers)]
        plan = check_start(self.config, init_recovery=lambda d: init_db_dir(d, 1))
        ctx = ShardContext(state_dir=self.state_dir, shards=SHARDS, ruleset=default_rules(), clock=ManualClock(T0),
                           keep_checkpoints=self.config.state.keep_checkpoints, plan=plan)
        def shard(resume: ResumeState | None) -> Any:
            return ShardLogic(ctx, resume)

        flow = Dataflow("nextclick")
        keyed = op.key_on("shard", op.input("in", flow, TestingSource(self.events)),
                          lambda e: str(shard_of(e.customer, SHARDS)))
        op.output("out", op.stateful_batch("profiles", keyed, shard),
                  TestingSink([]))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(self.recovery_dir)))

    def seqs(self) -> dict[int, tuple[int, int, int]]:
        """Per shard on disk: (seq, committed floor, oldest restorable seq)."""
        out = {}
        for n in range(SHARDS):
            path = self.state_dir / f"shard-{n:04d}"
            if path.is_dir():
                store = ShardStore.open_read_only(path, cache_size=0)
                out[n] = (store.seq, store.committed_floor, store.oldest_restorable_seq)
                store.close()
        return out

    def copy(self, what: Path, name: str) -> Path:
        backup = self.root / name
        shutil.copytree(what, backup)
        return backup

    def put_back(self, what: Path, backup: Path) -> None:
        shutil.rmtree(what)
        shutil.copytree(backup, what)


def refused(deployment: Deployment, *phrases: str, config: Config | None = None) -> str:
    """A start that must be refused: one line naming what and why, and nothing on disk changed."""
    config = config or deployment.config
    dirs = (deployment.state_dir, deployment.recovery_dir, Path(config.state.recovery_dir))
    before = checksums(*dirs)
    profiles = read_profiles(deployment.state_dir, SHARDS)
    with pytest.raises(StateMismatch) as err:
        check_start(config, init_recovery=lambda d: init_db_dir(d, 1))
    message = str(err.value)
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message
    assert checksums(*dirs) == before
    assert read_profiles(deployment.state_dir, SHARDS) == profiles
    return message


# --- start-up refusals (docs/state.md, "Start-up checks") ----------------------------------------


def test_a_start_that_wrote_no_state_gives_way_to_the_corrected_configuration(tmp_path: Path) -> None:
    """A pod started with another shard count and secret than its cluster, refused by a peer before it
    wrote any state: put right, it starts (the same deployment) and applies its events. Once it has
    written state, the same wrong settings are refused as ever."""
    dep = Deployment(tmp_path)
    wrong = dep.config.replace(state={"shards": SHARDS * 2}, privacy={"secret": "another secret"})
    check_start(wrong, init_recovery=lambda d: init_db_dir(d, 1))  # set up, then stopped by its peer
    lineage = orjson.loads((dep.state_dir / MANIFEST_FILE).read_bytes())["lineage"]
    dep.run(customers_of(0))
    recorded = orjson.loads((dep.state_dir / MANIFEST_FILE).read_bytes())
    assert (recorded["shards"], recorded["lineage"]) == (SHARDS, lineage)
    assert {p["facts"]["version"] for p in read_profiles(dep.state_dir, SHARDS).values()} == {1}
    assert len(read_profiles(dep.state_dir, SHARDS)) == len(customers_of(0))
    refused(dep, "state.shards", f"written with {SHARDS} shards", config=wrong)


@pytest.mark.parametrize("opened", ["identity", "every"])
def test_a_start_refused_after_opening_its_stores_gives_way_to_the_corrected_configuration(
        tmp_path: Path, opened: str) -> None:
    """As above, but the refused start had opened stores before its peer stopped it (an outside probe: a
    cluster process that had opened its identity store was refused again once put right, and told to set
    the wrong shard count back). They hold nothing: they go with its settings. One that holds a key stays."""
    from nextclick.operators.identity.graph import graph_path
    from nextclick.operators.state.keys import shard_path

    dep = Deployment(tmp_path)
    wrong = dep.config.replace(state={"shards": SHARDS * 2}, privacy={"secret": "another secret"})
    check_start(wrong, init_recovery=lambda d: init_db_dir(d, 1))
    paths = [graph_path(dep.state_dir)] + ([shard_path(dep.state_dir, n) for n in range(SHARDS * 2)]
                                           if opened == "every" else [])
    for path in paths:
        ShardStore(path, sync=False).close()
    dep.run(customers_of(0))
    assert orjson.loads((dep.state_dir / MANIFEST_FILE).read_bytes())["shards"] == SHARDS
    assert len(read_profiles(dep.state_dir, SHARDS)) == len(customers_of(0))
    assert not shard_path(dep.state_dir, SHARDS * 2 - 1).exists()  # what it had opened went with it
    dep.run(customers_of(1))  # and the next start resumes
    assert len(read_profiles(dep.state_dir, SHARDS)) == len(customers_of(0)) + len(customers_of(1))


def test_a_refused_start_whose_store_holds_a_key_is_refused_again(tmp_path: Path) -> None:
    from nextclick.operators.identity.graph import graph_path

    dep = Deployment(tmp_path)
    wrong = dep.config.replace(state={"shards": SHARDS * 2})
    check_start(wrong, init_recovery=lambda d: init_db_dir(d, 1))
    store = ShardStore(graph_path(dep.state_dir), sync=False)
    store.erase([], written={b"xmark": b"1"})  # an erasure's mark, written at once (no checkpoint)
    store.close()
    refused(dep, "state.shards", f"written with {SHARDS * 2} shards")


def test_another_deployments_recovery_directory_is_refused(tmp_path: Path) -> None:
    """A fresh recovery directory of deployment B would hand A's shards "nothing committed": refused by
    the lineage the two directories share, since A's shards were never resumed (no committed floor)."""
    a, b = Deployment(tmp_path / "a"), Deployment(tmp_path / "b")
    a.run(customers_of(0) + customers_of(1))
    b.run()
    mixed = a.config.replace(state={"recovery_dir": str(b.recovery_dir)})
    message = refused(a, "state.recovery_dir", str(b.recovery_dir), "belongs to deployment", config=mixed)
    b_lineage = orjson.loads((b.state_dir / MANIFEST_FILE).read_bytes())["lineage"]
    a_lineage = orjson.loads((a.state_dir / MANIFEST_FILE).read_bytes())["lineage"]
    assert f"deployment {b_lineage}" in message and f"to {a_lineage}" in message
    a.run()  # its own recovery directory still starts


def test_a_recovery_directory_older_than_the_undo_records_is_refused(tmp_path: Path) -> None:
    """A recovery directory from before the last `keep_checkpoints` checkpoints: the shards cannot be
    rolled back to it (their undo records are trimmed), and starting would mix two moments."""
    dep = Deployment(tmp_path, keep_checkpoints=2)
    dep.run(customers_of(0))
    old = dep.copy(dep.recovery_dir, "recovery-old")
    committed = dep.seqs()[0][0]
    dep.run(customers_of(0) * 3)  # resumes at `committed` (now the floor) and checkpoints past the undo records
    assert dep.seqs()[0][1] == committed and dep.seqs()[0][2] > committed
    dep.put_back(dep.recovery_dir, old)
    refused(dep, "state.recovery_dir", f"back from seq {dep.seqs()[0][0]} to {committed}",
            "undo records reach back only to seq", "state.keep_checkpoints")


def test_a_committed_seq_the_recovery_directory_has_no_record_of_is_refused(tmp_path: Path) -> None:
    """A recovery directory from before shard 0 ever committed: it says "no state" for the shard, which
    would roll it back to nothing, though the shard knows a later seq was committed."""
    dep = Deployment(tmp_path)
    dep.run()
    old = dep.copy(dep.recovery_dir, "recovery-first-day")
    dep.run(customers_of(0))
    dep.run()  # resumed: shard 0's seq is now known committed
    floor = dep.seqs()[0][1]
    assert floor > 0
    dep.put_back(dep.recovery_dir, old)
    refused(dep, "state.recovery_dir", f"shard 0 committed seq {floor}", "has no record of it")


def test_a_state_directory_older_than_the_recovery_directory_is_refused(tmp_path: Path) -> None:
    """A state directory restored from an older backup than the recovery directory: Bytewax would
    resume from offsets after events the shards never saw."""
    dep = Deployment(tmp_path)
    dep.run(customers_of(0) + customers_of(1))
    old_seq = dep.seqs()[0][0]
    old = dep.copy(dep.state_dir, "state-old")
    dep.run(customers_of(0) + customers_of(1))
    dep.put_back(dep.state_dir, old)
    refused(dep, "state.dir", f"is at seq {old_seq}", "the state directory is older than the recovery directory")


def test_a_profile_format_newer_than_the_release_is_refused(tmp_path: Path) -> None:
    """State written by a newer release: this one would misread its profiles."""
    dep = Deployment(tmp_path)
    dep.run(customers_of(0))
    manifest = orjson.loads((dep.state_dir / MANIFEST_FILE).read_bytes())
    manifest["profile_format"] = PROFILE_FORMAT + 1
    (dep.state_dir / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    refused(dep, f"holds profile format {PROFILE_FORMAT + 1}, newer than this release's {PROFILE_FORMAT}")


# --- no rollback past a committed seq ---------------------------------------------------------------


def _rolled_back_recovery(tmp_path: Path) -> tuple[Deployment, int, int]:
    """A deployment whose shards know seq `floor` committed, given back a recovery directory at `old`."""
    dep = Deployment(tmp_path)
    dep.run(customers_of(0))
    old_dir = dep.copy(dep.recovery_dir, "recovery-old")
    old = dep.seqs()[0][0]
    dep.run(customers_of(0) * 2)
    dep.run()  # resumed from the second run's commit: now it is known committed
    floor = dep.seqs()[0][1]
    assert floor > old
    dep.put_back(dep.recovery_dir, old_dir)
    return dep, old, floor


def test_an_older_recovery_directory_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    """The start-up check (manifest.py): refused in one line before Bytewax or RocksDB touch a file."""
    dep, old, floor = _rolled_back_recovery(tmp_path)
    refused(dep, "state.recovery_dir", f"would roll shard 0 back to seq {old}", f"past its committed seq {floor}")


def test_a_shard_opened_some_other_way_refuses_to_roll_back_past_a_commit(tmp_path: Path) -> None:
    """The backstop in the store: a flow started without the start-up checks (or with per-process
    recovery directories, of which each check sees only its own partitions) still cannot roll a
    shard back past a committed seq; the shard is left as it was."""
    dep, old, floor = _rolled_back_recovery(tmp_path)
    seqs, profiles = dep.seqs(), read_profiles(dep.state_dir, SHARDS)
    with pytest.raises(StateError, match=f"refusing to roll back to seq {old}: seq {floor} was committed"):
        open_store(dep.state_dir, "profiles", 0, old, None, keep_checkpoints=64, sync=True)
    assert dep.seqs() == seqs
    assert read_profiles(dep.state_dir, SHARDS) == profiles


# --- savepoints go into new directories, restores into empty ones --------------------------------


def _config_file(dep: Deployment) -> str:
    path = dep.root / "nextclick.toml"
    state = dep.config.state
    path.write_text(f'[state]\ndir = "{state.dir}"\nrecovery_dir = "{state.recovery_dir}"\nshards = {SHARDS}\n'
                    f'savepoint_dir = "{state.savepoint_dir}"\n[privacy]\nsecret = "{SECRET}"\n')
    return str(path)


def _cli_refuses(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`nextclick ARGS` exits 1 with one `nextclick: error:` line; that line."""
    capsys.readouterr()
    assert cli_main(list(args)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nextclick: error: ") and "\n" not in err, err
    return err


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Deployment, Path]:
    """A stopped deployment with both shards written, and an offline savepoint of it."""
    dep = Deployment(tmp_path / "dep")
    dep.run(customers_of(0) + customers_of(1))
    savepoint = tmp_path / "sp"
    create_offline(dep.config, savepoint)
    return dep, savepoint


@pytest.mark.parametrize(("command", "into"), [
    ("create", "used"), ("create", "savepoint"), ("create --online", "used"),
    ("reshard", "used"), ("reshard", "savepoint"),
], ids=["offline-into-other-files", "offline-into-a-savepoint", "online-into-other-files",
        "reshard-into-other-files", "reshard-into-a-savepoint"])
def test_a_savepoint_goes_into_a_new_directory(saved: tuple[Deployment, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], command: str, into: str) -> None:
    """A directory that holds anything (yesterday's savepoint, other files) is refused with one line and
    left as it was, however the savepoint is made."""
    dep, savepoint = saved
    if into == "savepoint":
        dest = savepoint
    else:
        dest = Path(dep.config.state.savepoint_dir) / "used" if "--online" in command else tmp_path / "used"
        dest.mkdir(parents=True)
        (dest / "notes.txt").write_text("mine")
    before = checksums(dest)
    if command.startswith("reshard"):
        args = ["savepoint", "reshard", str(savepoint), str(dest), "--shards", "4"]
    else:
        args = ["savepoint", "create", str(dest), *command.split()[1:], "--config", _config_file(dep)]
    err = _cli_refuses(capsys, *args)
    assert f"{dest} exists and is not empty; a savepoint goes into a new directory" in err, err
    assert checksums(dest) == before


def _as_nextclick_run(recovery: Path) -> None:
    """How `nextclick run --from-savepoint` creates the recovery partitions: only where there are none."""
    prepare_recovery(recovery, (0,), 1, check=False)


def test_a_restore_refuses_directories_that_are_in_use(saved: tuple[Deployment, Path], tmp_path: Path) -> None:
    """`nextclick run --from-savepoint` onto a used state.dir or recovery_dir: refused in one line,
    before anything is copied; the deployment living there is untouched and still starts."""
    dep, savepoint = saved
    other = Deployment(tmp_path / "other")
    other.run(customers_of(0))
    state_before = checksums(dep.state_dir, dep.recovery_dir, other.state_dir, other.recovery_dir)
    # Onto another deployment's recovery directory (with an empty state directory).
    onto_recovery = dep.config.replace(state={"dir": str(tmp_path / "new-state"),
                                              "recovery_dir": str(other.recovery_dir)})
    with pytest.raises(StateMismatch, match=f"^state.recovery_dir: {other.recovery_dir} is not empty; a savepoint "
                                            "is restored into empty directories"):
        restore(onto_recovery, savepoint, init_recovery=_as_nextclick_run)
    assert checksums(dep.state_dir, dep.recovery_dir, other.state_dir, other.recovery_dir) == state_before
    assert not (tmp_path / "new-state").exists() or not any((tmp_path / "new-state").iterdir())
    # Onto a used state directory (with an empty recovery directory).
    onto_state = dep.config.replace(state={"recovery_dir": str(tmp_path / "new-recovery")})
    with pytest.raises(StateMismatch, match=f"^state.dir: {dep.state_dir} .*a savepoint is restored into empty "
                                            "directories"):
        restore(onto_state, savepoint, init_recovery=_as_nextclick_run)
    assert checksums(dep.state_dir, dep.recovery_dir, other.state_dir, other.recovery_dir) == state_before
    other.run()
    # Onto empty directories it restores.
    fresh = dep.config.replace(state={"dir": str(tmp_path / "fresh-state"),
                                      "recovery_dir": str(tmp_path / "fresh-recovery")})
    restore(fresh, savepoint, init_recovery=_as_nextclick_run)
    assert read_profiles(tmp_path / "fresh-state", SHARDS) == read_profiles(dep.state_dir, SHARDS)


def test_a_profile_that_cannot_be_encoded_when_a_link_moves_it_is_quarantined(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ShardState._move_out: a profile holding a value JSON cannot store, moved out by identity
    stitching, is set aside and moves as nothing, instead of stopping the flow (a restart would
    replay the same epoch and stop again)."""
    from nextclick.operators.records import MoveIn, MoveOut

    _overflow_on(monkeypatch, "overflow")
    logic = _shard(tmp_path, ManualClock(T0))
    logic.on_batch([make_event("purchase", T0, customer="c1", event_id="overflow", amount=5.0),
                    make_event("page_view", T0, customer="c2", page_type="home")])
    out, _ = logic.on_batch([MoveOut("c1", "cust-1", "linked/0")])
    assert out == [MoveIn("cust-1", "c1", None, "linked/0")]
    assert _quarantine_record(logic, "c1")["step"] == "encode_profile"
    assert _timers_of(logic, "c1") == []
    logic.snapshot()
    logic.store.close()
    assert (read_profile(tmp_path, 1, "c2") or {}).get("facts", {}).get("version") == 1


def test_a_process_that_checks_while_another_sets_the_shared_directories_up_waits_for_it(tmp_path: Path) -> None:
    """Two processes sharing one state and recovery directory start together: the second may look while
    the first holds the start lock with its recovery marker written and its state manifest not yet. It
    must judge the directories once the first is done, not refuse them as "state deleted"."""
    import threading

    from nextclick.operators.state.manifest import start_lock

    dep = Deployment(tmp_path)
    check_start(dep.config, init_recovery=lambda d: init_db_dir(d, 1))  # the first process's set-up...
    manifest = dep.state_dir / MANIFEST_FILE
    held = tmp_path / "manifest-being-written"
    manifest.rename(held)  # ...caught half way: marker written, manifest not yet
    locked, done = threading.Event(), threading.Event()

    def first_process() -> None:
        with start_lock(dep.state_dir):
            locked.set()
            done.wait(10)
            held.rename(manifest)

    writer = threading.Thread(target=first_process)
    writer.start()
    assert locked.wait(10)
    timer = threading.Timer(0.3, done.set)  # the first process finishes while the second waits
    timer.start()
    try:
        plan = check_start(dep.config, init_recovery=lambda d: init_db_dir(d, 1))
    finally:
        done.set()
        writer.join(10)
    assert not plan.fresh and manifest.exists()


def test_a_state_dir_that_cannot_be_written_is_named_in_one_line(tmp_path: Path) -> None:
    """An outside probe's `state reset --yes` on a read-only mount printed only "[Errno 30] Read-only file
    system: '…/.nextclick-start.lock'"; a start did the same. Here the path is a file, the same refusal."""
    from nextclick.operators.state.manifest import start_lock

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"^state.dir .*/not-a-directory/state: Not a directory: every start and "
                                         r"`state reset` write there first: give a writable directory$"):
        with start_lock(blocker / "state"):
            pass
