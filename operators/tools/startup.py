"""The start-up checks that keep a start from orphaning or rolling the state back, and `state reset`.

The state's manifest and the recovery directory's marker (operators/state/manifest.py) say what the
state was written with. Every entry point calls `check_start` before Bytewax runs; it refuses, with one
line naming the setting and both values, any start that would silently lose profiles:

- a shard count, secret or format that differs from the one the state was written with (customers
  would be looked up in the wrong shard, or under a different key, and start blank);
- shard state without its recovery directory, or a recovery directory with commits and no state;
- a recovery directory of another deployment, or one re-initialised next to existing state;
- a shard that would be rolled back past a committed epoch, or that the recovery has no data for.

Starting over is `nextclick state reset`, which says what it destroys. A savepoint restore writes
the manifest with a restore point: the shard seqs and input positions the flow starts from when
Bytewax has no state of its own yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from nextclick.operators.identity.graph import GROUP_PREFIX, graph_path
from nextclick.operators.identity.guards import IdentityRules, load_identity_rules
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, Config
from nextclick.operators.io.cluster_hello import RAN_WITH_FILE
from nextclick.operators.profile.model import PROFILE_FORMAT
from nextclick.operators.state.keys import PROFILE_PREFIX, shard_of
from nextclick.operators.state.layout import CONTROL_STEP, INPUT_STEP, PROFILES, Family, families, has_store
from nextclick.operators.state.manifest import (
    MANIFEST_FILE,
    RECOVERY_MARKER,
    RESTORING_FILE,
    RUN_LOCK_PREFIX,
    SHARD_DIR,
    SHARD_HASH,
    START_LOCK_FILE,
    STATE_FORMAT,
    RestorePoint,
    StartPlan,
    StateManifest,
    StateMismatch,
    clear_restore_staging,
    family_dirs,
    read_manifest,
    read_marker,
    running_flows,
    secret_fingerprint,
    shard_dirs,
    start_lock,
    write_manifest,
    write_marker,
)
from nextclick.operators.state.placement import HASH
from nextclick.operators.state.recovery_db import RecoveryView, drop_uncommitted_snapshots, read_recovery
from nextclick.operators.state.store import ShardStore, StateError

# Profiles sampled per shard when adopting state written before manifests existed.
_ADOPT_SAMPLE = 50

log = logging.getLogger(__name__)


def cluster_settings(config: Config, secret: bytes) -> dict[str, str]:
    """The settings every process of a cluster must share, by name: where an event's customer lives
    (shards, placement, stitching, the secret that keys identifiers) and what is done with it there
    (rules, tracking plan, identity rules, parse and profile settings, alignment, topics). Files count by
    their contents (a ConfigMap updated under one pod), the secret by its fingerprint. Per-process
    settings (directories, addresses, the metrics port) are left out."""
    def digest(path: str) -> str:
        if not path:
            return "shipped"
        try:
            return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        except OSError as exc:
            return f"unreadable ({exc.strerror})"

    def text(value: Any) -> str:
        shown = orjson.dumps(value).decode() if isinstance(value, tuple) else str(value)
        return shown if len(shown) <= 40 else "sha256:" + hashlib.sha256(shown.encode()).hexdigest()[:12]

    state, flow = config.state, config.flow
    settings = {
        "state.shards": str(state.shards), "state.shard_placement": state.shard_placement,
        "identity.stitching": str(config.identity.stitching).lower(),
        "privacy.secret": f"fingerprint {secret_fingerprint(secret)}",
        "flow.rules_file": digest(flow.rules_file or DEFAULT_RULES_FILE),
        "flow.tracking_plan": digest(flow.tracking_plan), "identity.file": digest(config.identity.file),
        "flow.decision_sink": flow.decision_sink, "flow.align": str(flow.align).lower(),
        "flow.alignment_bound": flow.alignment_bound, "flow.alignment_idle_timeout": flow.alignment_idle_timeout,
        # A process in the other mode never joins the wait for the cluster's generations (tools/savepoint.py).
        "state.on_lost_volume": state.on_lost_volume,
    }
    for section, names in (("parse", None), ("profile", None), ("topics", _TOPICS_READ_OR_WRITTEN)):
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            if names is None or f.name in names:  # None: the whole section
                settings[f"{section}.{f.name}"] = text(getattr(values, f.name))
    return settings


# The rest of [topics] is what `nextclick topics create` gives new topics.
_TOPICS_READ_OR_WRITTEN = frozenset({"inputs", "decisions", "dead_letter", "control", "progress", "profiles",
                                     "start_from_beginning"})


def new_manifest(config: Config, secret: bytes, restore: RestorePoint | None = None) -> StateManifest:
    return StateManifest(shards=config.state.shards, secret_fingerprint=secret_fingerprint(secret),
                         lineage=uuid.uuid4().hex, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                         restore=restore, identity_priority=identity_rules(config).priority,
                         shard_placement=config.state.shard_placement)


def identity_rules(config: Config) -> IdentityRules:
    return load_identity_rules(config.identity.file or None)


def state_families(config: Config) -> list[Family]:
    """Every family of stores the configuration's flow has (operators/state/layout.py)."""
    return families(config.state.shards, identity_rules(config).anchors)


def flow_families(config: Config) -> list[Family]:
    """The families the configured flow runs, and writes savepoint parts for: without identity stitching
    (`identity.stitching = false`), `profiles` only."""
    fams = state_families(config)
    return fams if config.identity.stitching else [f for f in fams if f.name == PROFILES]


def _check_stitching(config: Config, state_dir: Path) -> None:
    """Without stitching the identity graph and linked profiles would be left behind: refuse state that has any."""
    if config.identity.stitching:
        return
    # Linked shards that hold a profile: empty ones (an offline savepoint before 2026-12-07 wrote every
    # family of the configuration, stitching or not: an outside probe could not restore it) leave nothing.
    linked = [f.name for f in state_families(config) if f.anchor is not None
              and any(_holds(path, PROFILE_PREFIX) for path in family_dirs(state_dir, f).values())]
    path = graph_path(state_dir)
    links = has_store(path) and _holds(path, GROUP_PREFIX)
    if linked or links:
        held = ", ".join(["an identity graph with links"] * links + [f"{name} shards" for name in linked])
        raise _refuse(f"identity.stitching = false: the state in {state_dir} holds {held}, which a flow without "
                      f"stitching would leave behind (their customers' events would start new profiles); keep "
                      f"identity.stitching = true, or start over with `nextclick state reset`")


def _holds(path: Path, prefix: bytes) -> bool:
    """Whether the store at `path` holds a key starting with `prefix`."""
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        return next(iter(store.scan(prefix)), None) is not None
    finally:
        store.close()


@dataclass(frozen=True)
class _ShardOnDisk:
    seq: int
    floor: int
    oldest: int


def _shard_on_disk(path: Path) -> _ShardOnDisk:
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        return _ShardOnDisk(store.seq, store.committed_floor, store.oldest_restorable_seq)
    finally:
        store.close()


def _refuse(message: str) -> StateMismatch:
    return StateMismatch(message)


class Identity(Protocol):
    """What decides where and how a customer's state is found: a state manifest's, or a savepoint's."""

    @property
    def shards(self) -> int: ...

    @property
    def secret_fingerprint(self) -> str: ...

    @property
    def profile_format(self) -> int: ...

    @property
    def state_format(self) -> int: ...

    @property
    def identity_priority(self) -> tuple[str, ...] | None: ...

    @property
    def shard_hash(self) -> str: ...


def check_identity(identity: Identity, config: Config, secret: bytes, where: str, reshard: str) -> None:
    """Refuse a configuration `identity` was not written with, in one line naming the setting and both
    values. `where` names the state or savepoint; `reshard` says how to get another shard count."""
    if identity.state_format != STATE_FORMAT or identity.shard_hash != SHARD_HASH:
        raise _refuse(f"{where} has state format {identity.state_format} ({identity.shard_hash}); this release "
                      f"reads format {STATE_FORMAT} ({SHARD_HASH}): run the release that wrote it")
    if identity.shards != config.state.shards:
        raise _refuse(f"state.shards: {where} was written with {identity.shards} shards, the configuration says "
                      f"{config.state.shards}; set it back to {identity.shards}, or {reshard}")
    priority = identity_rules(config).priority
    if identity.identity_priority is not None and identity.identity_priority != priority:
        raise _refuse(f"identity.priority: {where} was written with identifier priority "
                      f"{list(identity.identity_priority)}, the identity rules ({config.identity.file or 'default'}) "
                      f"say {list(priority)}; linked profiles are keyed and placed by it: set it back")
    fingerprint = secret_fingerprint(secret)
    if identity.secret_fingerprint != fingerprint:
        raise _refuse(f"privacy.secret: {where} was written with a different identifier secret (fingerprint "
                      f"{identity.secret_fingerprint}, configured {fingerprint}); every customer would get a new "
                      f"key and start blank: configure the secret the state was written with")
    if identity.profile_format > PROFILE_FORMAT:
        raise _refuse(f"{where} holds profile format {identity.profile_format}, newer than this release's "
                      f"{PROFILE_FORMAT}: run the release that wrote it")


def _compare(manifest: StateManifest, config: Config, secret: bytes, state_dir: Path) -> None:
    check_identity(manifest, config, secret, f"the state in {state_dir}",
                   "change it through `nextclick savepoint reshard`")


def _check_placement(manifest: StateManifest, config: Config, state_dir: Path) -> None:
    """Bytewax's recovery holds each shard under its key: under other keys every shard would open twice."""
    if manifest.shard_placement != config.state.shard_placement:
        raise _refuse(f"state.shard_placement: the state in {state_dir} was placed {manifest.shard_placement!r} "
                      f"(Bytewax's recovery keeps its shards under those keys), the configuration says "
                      f"{config.state.shard_placement!r}; set it back to {manifest.shard_placement!r}, or restore a "
                      f"savepoint into new state and recovery directories (docs/state.md, \"Shard placement\")")


def verify_config(config: Config) -> StateManifest | None:
    """For tools that read or change state offline: refuse a configuration the state was not written
    with (a wrong shard count would look customers up in the wrong shard). Changes nothing."""
    state_dir = Path(config.state.dir)
    manifest = read_manifest(state_dir)
    if manifest is not None:
        _compare(manifest, config, config.privacy.resolve_secret(), state_dir)
    else:
        beyond = sorted(n for n in shard_dirs(state_dir) if n >= config.state.shards)
        if beyond:
            raise _refuse(f"state.shards: {state_dir} has shard-{beyond[-1]:04d}, more than the configured "
                          f"{config.state.shards} shards")
    return manifest


def _adopt_legacy(config: Config, secret: bytes, state_dir: Path, dirs: dict[int, Path]) -> StateManifest:
    """State from before manifests: adopt it only if its shards hold customers this shard count places there."""

    shards = config.state.shards
    beyond = sorted(n for n in dirs if n >= shards)
    if beyond:
        raise _refuse(f"state.shards: {state_dir} has shard-{beyond[-1]:04d}, so it was written with more than "
                      f"the configured {shards} shards; set state.shards to the count it was written with")
    for number, path in sorted(dirs.items()):
        store = ShardStore.open_read_only(path, cache_size=0)
        try:
            for i, (key, _) in enumerate(store.scan(PROFILE_PREFIX)):
                if i >= _ADOPT_SAMPLE:
                    break
                if shard_of(key[len(PROFILE_PREFIX):].decode(), shards) != number:
                    raise _refuse(f"state.shards: {path} holds customers that {shards} shards would place "
                                  f"elsewhere, so the state was written with another shard count; set "
                                  f"state.shards to the count it was written with")
        finally:
            store.close()
    # Its Bytewax recovery holds the shards under the keys placed by hash, the only ones there were.
    return dataclasses.replace(new_manifest(config, secret), shard_placement=HASH)


def check_start(config: Config, *, recovery_dir: str | Path | None = None, flow_name: str = "nextclick",
                init_recovery: Callable[[Path], None] | None = None, read_only: bool = False) -> StartPlan:
    """Compare the state directory, the recovery directory and the configuration; refuse what would lose state.

    A brand-new deployment (both directories empty) is set up here: the manifest is written and, if
    `init_recovery` is given, the recovery partitions are created. Raises StateMismatch (one line)
    and then has changed nothing on disk: every check runs before any write, and the writes run
    under a lock (processes sharing the directories start one at a time) after checking again.
    `read_only`: the checks and the plan only, none of the writes a start would make (its bookkeeping:
    an offline savepoint reads the directories, perhaps a read-only snapshot of them, and changes nothing).
    """
    state_dir = Path(config.state.dir)
    recovery = Path(recovery_dir if recovery_dir is not None else config.state.recovery_dir)
    secret = config.privacy.resolve_secret()
    try:
        plan, writes = _inspect(config, secret, state_dir, recovery, flow_name, init_recovery)
    except StateMismatch:
        # Judged while another process sharing the directories was setting them up (its recovery
        # marker written, its state manifest not yet): judge again once it is done, under its lock.
        if read_only or not (state_dir / START_LOCK_FILE).exists():
            raise
        writes = [lambda: None]
    if not writes or read_only:
        return plan
    with start_lock(state_dir):
        plan, writes = _inspect(config, secret, state_dir, recovery, flow_name, init_recovery)
        for write in writes:
            write()
    if plan.fresh:
        view = read_recovery(recovery)
        plan = dataclasses.replace(plan, committed={} if view.complete else None)
    return plan


def _inspect(config: Config, secret: bytes, state_dir: Path, recovery: Path, flow_name: str,
             init_recovery: Callable[[Path], None] | None) -> tuple[StartPlan, list[Callable[[], None]]]:
    """Every check, and the writes a start needs; writes nothing itself."""
    manifest = read_manifest(state_dir)
    dirs = shard_dirs(state_dir)
    view = read_recovery(recovery)
    marker = read_marker(recovery)
    writes: list[Callable[[], None]] = []
    if manifest is None and (state_dir / RESTORING_FILE).exists():
        raise _interrupted_restore(state_dir, recovery)
    if manifest is None and not dirs:
        return _fresh_start(config, secret, state_dir, recovery, view, marker, init_recovery)
    notes: list[str] = []
    unwritten: list[Path] = []  # stores a refused start opened and wrote nothing to: removed with its settings
    if manifest is not None and (empty := _set_up_only(manifest, state_dir, view, marker)) is not None:
        try:
            _compare(manifest, config, secret, state_dir)
            _check_placement(manifest, config, state_dir)
        except StateMismatch as mismatch:
            # A start that stopped before it wrote any state (a peer refused its settings, say): its
            # manifest holds settings no profile was written with, so the configuration, put right since,
            # is recorded in their place (same deployment: the inputs resume where they were read to).
            # Stores it opened before it was refused hold nothing (an outside probe: a pod that had opened
            # its identity store was refused again with the corrected settings, told to set them back).
            manifest = dataclasses.replace(new_manifest(config, secret), lineage=manifest.lineage,
                                           created_at=manifest.created_at)
            corrected, was = manifest, str(mismatch)
            unwritten = empty

            def record() -> None:
                for path in unwritten:
                    shutil.rmtree(path)
                write_manifest(state_dir, corrected, replace=True)
                log.warning("recorded the configured settings in state that a start with other settings set up "
                            "and wrote nothing to", extra={"state_dir": str(state_dir), "was": was})

            writes.append(record)
            notes.append("recorded the configured settings over those of a start that wrote no state")
    if manifest is None:
        if not view.exists or not view.has_progress:
            raise _refuse(f"state.recovery_dir: {state_dir} holds shard state but the recovery directory "
                          f"{recovery} is missing or empty, so every shard would be rolled back to nothing; "
                          f"restore the recovery directory that goes with it")
        adopted = manifest = _adopt_legacy(config, secret, state_dir, dirs)

        def adopt() -> None:
            write_manifest(state_dir, adopted)
            write_marker(recovery, adopted.lineage)
            log.warning("adopted state written before state manifests; its identifier secret cannot be "
                        "verified, the configured one is recorded from now on",
                        extra={"state_dir": str(state_dir), "shards": adopted.shards})

        writes.append(adopt)
        marker = manifest.lineage
        notes.append("adopted state written before state manifests")
    else:
        _compare(manifest, config, secret, state_dir)
        if manifest.identity_priority is None:
            # State from before identity stitching: from now on it is placed by this priority.
            recorded = dataclasses.replace(manifest, identity_priority=identity_rules(config).priority)
            writes.append(lambda: write_manifest(state_dir, recorded, replace=True))
    _check_placement(manifest, config, state_dir)
    _check_stitching(config, state_dir)
    if not view.exists:
        raise _refuse(f"state.recovery_dir: {state_dir} holds the state of deployment {manifest.lineage} "
                      f"({manifest.shards} shards) but {recovery} has no recovery partitions (missing or "
                      f"deleted?); restore it, restore a savepoint, or start over with `nextclick state reset`")
    fams = flow_families(config)
    all_dirs = {f.name: {n: p for n, p in family_dirs(state_dir, f).items() if p not in unwritten} for f in fams}
    on_disk = {f.name: {n: _shard_on_disk(p) for n, p in sorted(all_dirs[f.name].items())} for f in fams}
    restore = manifest.restore
    lineage = manifest.lineage
    if marker is None:
        # Only a start interrupted between writing the manifest and the marker leaves no marker; then
        # no shard has moved past its starting point. Anything else is a replaced recovery directory.
        untouched = all(s.seq <= (restore.seq(n, name) if restore else 0)
                        for name, shards in on_disk.items() for n, s in shards.items())
        if view.has_progress or not untouched:
            raise _refuse(f"state.recovery_dir: {recovery} was not created with the state in {state_dir} "
                          f"(it has no nextclick marker: re-initialised, or another deployment's?); "
                          f"rolling the shards back to match it would lose committed profiles")
        writes.append(lambda: write_marker(recovery, lineage))
    elif marker != lineage:
        raise _refuse(f"state.recovery_dir: {recovery} belongs to deployment {marker}, the state in "
                      f"{state_dir} to {lineage}: they were not written together (two pods' volumes swapped or "
                      "mixed, or another deployment's); point both settings at the same volume's directories")
    committed_families: dict[str, dict[int, int]] = {}
    for family in fams:
        checked = _check_shards(view, f"{flow_name}.{family.name}", on_disk[family.name], all_dirs[family.name],
                                restore, recovery, family.name)
        if checked is not None:
            committed_families[family.name] = checked
    committed = committed_families.pop(PROFILES, None)
    if view.uncommitted and view.complete:
        def drop_stale() -> None:
            dropped = drop_uncommitted_snapshots(view)
            log.info("dropped snapshots of epochs that never committed", extra={
                "recovery_dir": str(recovery), "snapshots": dropped, "resume_epoch": view.resume_epoch})

        writes.append(drop_stale)
    return StartPlan(lineage, False, committed, restore, notes, committed_families, bool(view.commits)), writes


def _interrupted_restore(state_dir: Path, recovery: Path) -> StateMismatch:
    """A restore stopped part way (killed, a fetch failed) and a start without --from-savepoint: the same
    savepoint again finishes it (it is done again from the start)."""
    try:
        started = orjson.loads((state_dir / RESTORING_FILE).read_bytes())
        name, source = str(started["savepoint"]), str(started.get("from") or started["savepoint"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return _refuse(f"state.dir: a restore into {state_dir} was interrupted ({RESTORING_FILE} is unreadable); "
                       f"empty {state_dir} and {recovery}, then restore again")
    return _refuse(f"state.dir: the restore of savepoint {name} into {state_dir} was interrupted; start again "
                   f"with --from-savepoint {source} (the restore is done again from the start), or start over "
                   "with `nextclick state reset`")


def partial_volume(config: Config) -> str | None:
    """Why this state directory is not a whole deployment's (one line), or None: on per-pod volumes each
    process's holds only its own shards (and one of them the identity store), and its recovery directory
    only its own partitions, which is how it shows (stores themselves are made when first written)."""
    view = read_recovery(config.state.recovery_dir)
    if not view.exists or view.complete:
        return None
    return (f"{config.state.dir} (state.dir) is one process's volume of a {view.part_count}-process cluster (its "
            f"recovery directory holds partition(s) {', '.join(map(str, sorted(view.partitions)))} of "
            f"{view.part_count}): the customer's other stores are on the other volumes")


def never_written(state_dir: Path, recovery: Path) -> bool:
    """State directories a start set up and then stopped, before any state was written (a start its
    peers refused): nothing a restore would replace is in them."""
    manifest = read_manifest(state_dir)
    return manifest is not None and _set_up_only(manifest, state_dir, read_recovery(recovery),
                                                 read_marker(recovery)) == []


def _set_up_only(manifest: StateManifest, state_dir: Path, view: RecoveryView, marker: str | None
                 ) -> list[Path] | None:
    """Directories a start set up and never wrote state to: no store but ones never checkpointed and
    holding no key (returned: a start refused after opening them), nothing committed but where the inputs
    were read to (the first epoch commits the start positions), no restore point. None otherwise."""
    if not (manifest.restore is None and marker in (None, manifest.lineage)
            and all(step.rsplit(".", 1)[-1] in (INPUT_STEP, CONTROL_STEP)
                    for step, snapshots in view.snapshots.items() if snapshots)):
        return None
    empty: list[Path] = []
    for path in state_dir.iterdir():
        if path.name in (MANIFEST_FILE, START_LOCK_FILE, RAN_WITH_FILE) or path.name.startswith(RUN_LOCK_PREFIX):
            continue
        if not path.is_dir():
            return None
        stores = [path] if has_store(path) else [c for c in sorted(path.iterdir()) if c.is_dir()]
        if (path not in stores and any(not c.is_dir() for c in path.iterdir())) or not all(map(_holds_nothing, stores)):
            return None
        empty += stores
    return empty


def _holds_nothing(path: Path) -> bool:
    """A store never checkpointed, with no key at all (or a directory a crash left before RocksDB created it)."""
    if not has_store(path):
        return not any(path.iterdir())
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        return store.seq == 0 and next(iter(store.scan(b"")), None) is None
    finally:
        store.close()


def _fresh_start(config: Config, secret: bytes, state_dir: Path, recovery: Path, view: RecoveryView,
                 marker: str | None, init_recovery: Callable[[Path], None] | None
                 ) -> tuple[StartPlan, list[Callable[[], None]]]:
    if view.has_progress or marker is not None:
        raise _refuse(f"state.dir: {recovery} holds committed epochs of deployment {marker or '(unmarked)'} but "
                      f"{state_dir} has no state (deleted, or the wrong directory?); restore the state directory, "
                      f"or start over with `nextclick state reset`")
    writes: list[Callable[[], None]] = []
    if not view.exists:
        if init_recovery is None:
            raise _refuse(f"state.recovery_dir: {recovery} has no Bytewax recovery partitions; create them with "
                          f"`mkdir -p {recovery} && python -m bytewax.recovery {recovery} 1`")
        init = init_recovery

        def create_recovery() -> None:
            recovery.mkdir(parents=True, exist_ok=True)
            init(recovery)

        writes.append(create_recovery)
    manifest = new_manifest(config, secret)

    def create_state() -> None:
        write_manifest(state_dir, manifest)
        write_marker(recovery, manifest.lineage)
        log.info("new state", extra={"state_dir": str(state_dir), "recovery_dir": str(recovery),
                                     "shards": manifest.shards, "lineage": manifest.lineage})

    writes.append(create_state)
    return StartPlan(manifest.lineage, True, {}), writes


def _check_shards(view: RecoveryView, step: str, on_disk: dict[int, _ShardOnDisk], dirs: dict[int, Path],
                  restore: RestorePoint | None, recovery: Path, family: str = PROFILES) -> dict[int, int] | None:
    """Per shard: the recovery's committed seq must be reachable from the directory without losing commits."""
    committed = {int(v.get("shard", k)): int(v["seq"]) for k, v in view.committed(step).items() if isinstance(v, dict)}
    what = "shard" if family == PROFILES else f"{family} shard"
    for number, shard in on_disk.items():
        seq = committed.get(number)
        if seq is None:
            if not view.complete:
                continue  # its snapshot may be in another process's recovery partition
            seq = restore.seq(number, family) if restore else 0
            if shard.floor > seq:
                raise _refuse(f"state.recovery_dir: {what} {number} committed seq {shard.floor} but {recovery} has "
                              f"no record of it (an older recovery directory?); starting would roll it back")
            continue
        where = dirs[number]
        if seq > shard.seq:
            raise _refuse(f"state.dir: {where} is at seq {shard.seq} but {recovery} committed seq {seq} for it: "
                          f"the state directory is older than the recovery directory; restore them together")
        if seq < shard.floor:
            raise _refuse(f"state.recovery_dir: {recovery} would roll {what} {number} back to seq {seq}, past its "
                          f"committed seq {shard.floor} (an older recovery directory?)")
        if seq < shard.oldest:
            raise _refuse(f"state.recovery_dir: {recovery} would roll {what} {number} back from seq {shard.seq} to "
                          f"{seq}, but its undo records reach back only to seq {shard.oldest} "
                          f"(state.keep_checkpoints); restore the directories from one moment")
    if view.complete:
        missing = sorted(set(committed) - set(on_disk))
        if missing:
            raise _refuse(f"state.dir: {recovery} has committed state for {what} {missing[0]} "
                          f"({len(missing)} shard(s) in all) but its directory is missing; restore the state "
                          f"directory, or start over with `nextclick state reset`")
        return committed
    return None


def runner_recovery_dir(config: Config) -> Path:
    """The recovery directory `python -m bytewax.run` was given (-r or BYTEWAX_RECOVERY_DIRECTORY).

    Refuses a run without one: Bytewax would hand every shard "no state" and they would start over.
    Outside bytewax.run (imported by a test or a tool), the configured `state.recovery_dir`.
    """
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return Path(config.state.recovery_dir)
    from bytewax.run import _parse_args  # bytewax 0.21.1: the runner's own parser, so flags agree

    given = _parse_args().recovery_directory
    if given is None:
        raise _refuse("bytewax.run was started without -r/--recovery-directory: every shard would be rolled "
                      f"back to nothing; add -r {config.state.recovery_dir} (state.recovery_dir)")
    if Path(given).resolve() != Path(config.state.recovery_dir).resolve():
        log.warning("bytewax.run -r differs from state.recovery_dir; checking against -r",
                    extra={"runner": str(given), "configured": config.state.recovery_dir})
    return Path(given)


def reset_state(config: Config, *, recovery_dir: str | Path | None = None,
                dry_run: bool = True) -> dict[str, Any]:
    """What starting over destroys (every shard, the manifest, Bytewax's recovery); with dry_run False, destroy it."""
    state_dir = Path(config.state.dir)
    recovery = Path(recovery_dir if recovery_dir is not None else config.state.recovery_dir)
    dirs = {f"{family.rel(n)}": path for family in state_families(config)
            for n, path in family_dirs(state_dir, family).items()}
    manifest = read_manifest(state_dir) if (state_dir / MANIFEST_FILE).exists() else None
    recovery_files = sorted(p for p in recovery.iterdir() if p.name.startswith("part-") or
                            p.name == RECOVERY_MARKER or ".sqlite3" in p.name) if recovery.is_dir() else []
    keys = 0
    for path in dirs.values():
        with contextlib.suppress(StateError):
            store = ShardStore.open_read_only(path, cache_size=0)
            try:
                keys += store.stats()["keys"]
            finally:
                store.close()
    report = {"state_dir": str(state_dir), "shard_directories": len(dirs), "keys_estimate": keys,
              "manifest": manifest.lineage if manifest else None, "recovery_dir": str(recovery),
              "recovery_files": [p.name for p in recovery_files], "destroyed": not dry_run}
    if dry_run:
        return report
    if held := running_flows(state_dir):  # deleting state under a running flow loses what it does next
        raise StateError(f"state.dir {state_dir} is in use: a nextclick flow runs there as {', '.join(held)}; "
                         "stop it before resetting its state")
    with start_lock(state_dir):
        for path in dirs.values():
            shutil.rmtree(path)
        # And what a crash left half created (no RocksDB in it yet), and the families' own directories.
        for path in state_dir.glob("shard-*") if state_dir.is_dir() else ():
            if SHARD_DIR.fullmatch(path.name) and path.is_dir():
                shutil.rmtree(path)
        for family in state_families(config):
            if family.subdir and family.root(state_dir).is_dir():
                shutil.rmtree(family.root(state_dir))
        with contextlib.suppress(FileNotFoundError):
            (state_dir / MANIFEST_FILE).unlink()
        # What an interrupted restore left: its marker (which refuses every later start) and its staging.
        with contextlib.suppress(FileNotFoundError):
            (state_dir / RESTORING_FILE).unlink()
        clear_restore_staging(state_dir)
        for p in recovery_files:
            p.unlink()
    return report
