"""Savepoints: a consistent copy of every shard and the input positions at one epoch.

Layout of a savepoint directory:

    DEST/savepoint.json        what it holds: shard count, format, secret fingerprint, each shard's
                               seq, the input positions (next offset per topic partition), when and how
    DEST/shard-0000/ ...       each shard's RocksDB at that seq (a RocksDB checkpoint: hard links)
    DEST/linked-<type>/shard-0000/ ..., DEST/identity/shard-0000/
                               the other families of stores (operators/state/layout.py): linked
                               profiles and the identity graph, each shard at its seq (`families`)

Each shard checkpoints the input positions of the events it applied (operators/state/shard.py), so the
positions of a savepoint are the largest over its shards: every message before them was applied by
its shard (or refused by the parser; a restore reads such trailing refusals again, and dead-letters
them again). A savepoint is taken

- offline (the flow stopped): each shard is copied and the copy rolled back to the seq Bytewax
  committed, so it holds exactly what a resume would start from;
- online: a `savepoint` command on the control topic reaches every shard in one epoch; each writes
  its RocksDB checkpoint right after its epoch-end checkpoint, into a staging directory named by a
  token that the single parse of that command chose (a replay after a crash parses it again and
  picks a new one, so parts of two attempts never mix). The CLI waits for every shard's part.

Restoring copies the shards into an empty state directory and writes the manifest with a restore
point; re-sharding reads every key of every shard and routes it by customer to the new count.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from operators.infra.config import Config
from operators.profile.model import PROFILE_FORMAT
from operators.state.keys import POSITIONS_KEY, customer_of_key, shard_of, shard_path
from operators.state.layout import PROFILES, Family, family_named
from operators.state.manifest import (
    SHARD_HASH,
    STATE_FORMAT,
    RestorePoint,
    StateMismatch,
    check_identity,
    identity_rules,
    new_manifest,
    read_manifest,
    secret_fingerprint,
    shard_dirs,
    state_families,
    write_manifest,
    write_marker,
)
from operators.state.store import KeyValueStore, ShardStore, StateError, dir_bytes

MANIFEST = "savepoint.json"
_STAGING = ".parts-"
_PART_SUFFIX = ".part.json"


class SavepointError(StateError):
    """A savepoint cannot be made, read or restored; the message says why in one line."""


@dataclass(frozen=True)
class SavepointManifest:
    id: str
    created_at: str
    mode: str  # offline, online, reshard
    shards: int
    secret_fingerprint: str
    seqs: dict[int, int]
    positions: dict[str, int]
    source_lineage: str | None
    profile_format: int = PROFILE_FORMAT
    state_format: int = STATE_FORMAT
    shard_hash: str = SHARD_HASH
    derived_from: str | None = None
    # The other families of stores (identity graph, linked profiles): family name -> shard -> seq.
    # Empty in savepoints of releases before identity stitching.
    families: dict[str, dict[int, int]] = field(default_factory=dict)
    identity_priority: tuple[str, ...] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({
            "kind": "nextclick-savepoint", "id": self.id, "created_at": self.created_at, "mode": self.mode,
            "shards": self.shards, "shard_hash": self.shard_hash, "state_format": self.state_format,
            "profile_format": self.profile_format, "secret_fingerprint": self.secret_fingerprint,
            "source_lineage": self.source_lineage, "derived_from": self.derived_from,
            "seqs": {str(k): v for k, v in sorted(self.seqs.items())},
            "positions": dict(sorted(self.positions.items())),
            "families": {name: {str(k): v for k, v in sorted(seqs.items())}
                         for name, seqs in sorted(self.families.items())},
            "identity_priority": list(self.identity_priority) if self.identity_priority else None,
        }, option=orjson.OPT_INDENT_2)

    def all_families(self) -> list[tuple[Family, dict[int, int]]]:
        """Every family it holds, with each shard's seq (`profiles` first)."""
        return [(family_named(PROFILES, self.shards), self.seqs),
                *((family_named(name, self.shards), seqs) for name, seqs in sorted(self.families.items()))]

    @classmethod
    def read(cls, src: str | Path) -> SavepointManifest:
        path = Path(src) / MANIFEST
        try:
            body = orjson.loads(path.read_bytes())
            return cls(id=str(body["id"]), created_at=str(body["created_at"]), mode=str(body["mode"]),
                       shards=int(body["shards"]), secret_fingerprint=str(body["secret_fingerprint"]),
                       seqs={int(k): int(v) for k, v in body["seqs"].items()},
                       positions={str(k): int(v) for k, v in body["positions"].items()},
                       source_lineage=body.get("source_lineage"), profile_format=int(body["profile_format"]),
                       state_format=int(body["state_format"]), shard_hash=str(body["shard_hash"]),
                       derived_from=body.get("derived_from"),
                       families={str(name): {int(k): int(v) for k, v in seqs.items()}
                                 for name, seqs in (body.get("families") or {}).items()},
                       identity_priority=tuple(body["identity_priority"]) if body.get("identity_priority")
                       else None)
        except FileNotFoundError:
            raise SavepointError(f"{src} is not a complete savepoint (no {MANIFEST}; an online savepoint "
                                 "still being written, or the wrong directory?)") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SavepointError(f"{path} is not a readable savepoint manifest ({type(exc).__name__})") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _merge_positions(parts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for positions in parts:
        for key, offset in positions.items():
            merged[key] = max(merged.get(key, 0), int(offset))
    return merged


def _positions_of(store: ShardStore) -> dict[str, int]:
    raw = store.get(POSITIONS_KEY)
    return {str(k): int(v) for k, v in orjson.loads(raw).items()} if raw is not None else {}


def _empty_dest(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise SavepointError(f"{dest} exists and is not empty; a savepoint goes into a new directory")
    dest.mkdir(parents=True, exist_ok=True)


# -- online ------------------------------------------------------------------------------------


def write_shard_part(store: KeyValueStore, dest: Path, shard: int, seq: int, positions: dict[str, int],
                     token: str, lineage: str | None, subdir: str = "") -> None:
    """One shard's part of an online savepoint (called by the shard right after its checkpoint).
    `subdir`: its family's directory ("" for profiles; operators/state/layout.py)."""
    staging = dest / f"{_STAGING}{token}"
    where = staging / subdir if subdir else staging
    where.mkdir(parents=True, exist_ok=True)
    target = where / shard_path("", shard).name
    if target.exists():
        shutil.rmtree(target)
    store.create_checkpoint(target)
    part = {"shard": shard, "seq": seq, "positions": positions, "lineage": lineage, "token": token,
            "family": subdir}
    tmp = where / f".{target.name}{_PART_SUFFIX}.tmp"
    tmp.write_bytes(orjson.dumps(part))
    os.replace(tmp, where / f"{target.name}{_PART_SUFFIX}")


def request_token() -> str:
    """Names one attempt at an online savepoint (see the module docstring)."""
    return uuid.uuid4().hex[:12]


def finish_online(config: Config, dest: Path, *, timeout_s: float,
                  progress: Callable[[str], None] = lambda _m: None) -> SavepointManifest:
    """Wait until one attempt has every shard's part, then move it into place and write the manifest."""
    shards = config.state.shards
    fams = state_families(config)
    expected = sum(f.shards for f in fams)
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        complete = None
        for staging in sorted(dest.glob(f"{_STAGING}*")):
            parts = sorted(staging.rglob(f"*{_PART_SUFFIX}"))
            if len(parts) >= expected:
                complete = staging
                break
            message = f"{len(parts)}/{expected} shards written"
            if message != last:
                progress(message)
                last = message
        if complete is not None:
            break
        if time.monotonic() > deadline:
            raise SavepointError(f"the running flow did not write every shard's part into {dest} within "
                                 f"{timeout_s:.0f}s ({last or 'no part yet'}); is it running, does it read "
                                 f"topics.control, and can it write to {dest}?")
        time.sleep(0.2)
    parts_json = [orjson.loads(p.read_bytes()) for p in sorted(complete.rglob(f"*{_PART_SUFFIX}"))]
    by_family: dict[str, dict[int, int]] = {}
    for part in parts_json:
        by_family.setdefault(str(part.get("family", "")), {})[int(part["shard"])] = int(part["seq"])
    for family in fams:
        if sorted(by_family.get(family.subdir, {})) != list(range(family.shards)):
            raise SavepointError(f"{complete} holds parts of {family.name} shards "
                                 f"{sorted(by_family.get(family.subdir, {}))}, not of all {family.shards}: "
                                 f"state.shards or the identity rules differ from the running flow's")
    for family in fams:
        for shard in range(family.shards):
            (dest / family.rel(shard)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(complete / family.rel(shard), dest / family.rel(shard))
    for staging in dest.glob(f"{_STAGING}*"):
        shutil.rmtree(staging)
    lineages = {p.get("lineage") for p in parts_json}
    manifest = SavepointManifest(
        id=dest.name, created_at=_now(), mode="online", shards=shards,
        secret_fingerprint=secret_fingerprint(config.privacy.resolve_secret()),
        seqs=by_family[""],
        positions=_merge_positions([p["positions"] for p in parts_json]),
        source_lineage=lineages.pop() if len(lineages) == 1 else None,
        families={f.name: by_family[f.subdir] for f in fams if f.subdir},
        identity_priority=identity_rules(config).priority)
    _write_manifest(dest, manifest)
    return manifest


def _write_manifest(dest: Path, manifest: SavepointManifest) -> None:
    tmp = dest / f".{MANIFEST}.tmp"
    tmp.write_bytes(manifest.to_json())
    os.replace(tmp, dest / MANIFEST)  # last: a savepoint without it is incomplete


# -- offline -----------------------------------------------------------------------------------


def create_offline(config: Config, dest: Path, *, recovery_dir: str | Path | None = None,
                   progress: Callable[[str], None] = lambda _m: None) -> SavepointManifest:
    """Copy every shard of a stopped flow at the seq Bytewax committed, with the input positions."""
    from operators.state.manifest import check_start, family_dirs

    state_dir = Path(config.state.dir)
    if read_manifest(state_dir) is None and not shard_dirs(state_dir):
        raise SavepointError(f"no state in {state_dir} (state.dir): nothing to save")
    plan = check_start(config, recovery_dir=recovery_dir)  # refuses state that disagrees with the config
    if plan.committed is None:
        raise SavepointError("this recovery directory holds only some of the cluster's recovery partitions; "
                             "take the savepoint with --online while the flow runs")
    _empty_dest(dest)
    seqs: dict[str, dict[int, int]] = {}
    positions: list[dict[str, int]] = []
    fams = state_families(config)
    total, done = sum(f.shards for f in fams), 0
    for family in fams:
        dirs = family_dirs(state_dir, family)
        committed_seqs = plan.committed_for(family.name) or {}
        family_seqs = seqs[family.name] = {}
        for number in range(family.shards):
            target = dest / family.rel(number)
            target.parent.mkdir(parents=True, exist_ok=True)
            if number not in dirs:
                with ShardStore(target, sync=False) as empty:
                    family_seqs[number] = empty.checkpoint()
                continue
            try:
                store = ShardStore(dirs[number], sync=False)
            except StateError:
                raise SavepointError(f"{dirs[number]} is in use: the flow is running; take the savepoint with "
                                     f"--online, or stop the flow first") from None
            with store:
                store.create_checkpoint(target)
            committed = committed_seqs.get(number, plan.restore_seq(number, family.name))
            with ShardStore(target, sync=False) as copy:
                if copy.seq != committed:
                    copy.rollback_to(committed)
                family_seqs[number] = copy.seq
                positions.append(_positions_of(copy))
            done += 1
            progress(f"copied shard {done}/{total} ({family.rel(number)})")
    manifest = SavepointManifest(
        id=dest.name, created_at=_now(), mode="offline", shards=config.state.shards,
        secret_fingerprint=secret_fingerprint(config.privacy.resolve_secret()), seqs=seqs.pop(PROFILES),
        positions=_merge_positions(positions), source_lineage=plan.lineage, families=seqs,
        identity_priority=identity_rules(config).priority)
    _write_manifest(dest, manifest)
    return manifest


# -- reading, re-sharding, restoring ----------------------------------------------------------------


def info(src: Path) -> dict[str, Any]:
    manifest = SavepointManifest.read(src)
    body = orjson.loads(manifest.to_json())
    body["path"] = str(src)
    body["bytes"] = dir_bytes(src)
    keys = 0
    for family, _seqs in manifest.all_families():
        for number in range(family.shards):
            path = src / family.rel(number)
            if not path.is_dir():
                raise SavepointError(f"{src} lacks {family.rel(number)}: the savepoint is damaged")
            store = ShardStore.open_read_only(path, cache_size=0)
            try:
                keys += store.stats()["keys"]
            finally:
                store.close()
    body["keys_estimate"] = keys
    return body


def _iter_shard(path: Path) -> Iterator[tuple[bytes, bytes]]:
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        yield from store.scan(b"")
    finally:
        store.close()


def reshard(src: Path, dest: Path, shards: int, *,
            progress: Callable[[str], None] = lambda _m: None) -> SavepointManifest:
    """A new savepoint with `shards` shards holding exactly the customers (profiles, timers,
    quarantine records) of `src`, each in the shard that count places it in. Every family of profiles
    is re-sharded the same way; the identity graph (one store) is copied as it is."""
    if shards < 1:
        raise SavepointError("--shards must be at least 1")
    source = SavepointManifest.read(src)
    _empty_dest(dest)
    staging = dest / f"{_STAGING}reshard"
    positions_blob = orjson.dumps(source.positions)
    new_seqs: dict[str, dict[int, int]] = {}
    for family, seqs in source.all_families():
        if not family.profiles:
            for number in seqs:
                _copy_db(src / family.rel(number), staging / family.rel(number))
            new_seqs[family.name] = dict(seqs)
            continue
        target = family_named(family.name, shards)
        outputs = []
        for n in range(shards):
            (staging / target.rel(n)).parent.mkdir(parents=True, exist_ok=True)
            outputs.append(ShardStore(staging / target.rel(n), sync=False, cache_size=0))
        try:
            for number in range(family.shards):
                for key, value in _iter_shard(src / family.rel(number)):
                    customer = customer_of_key(key)
                    if customer is not None:  # the shard's own records (positions) come from the manifest
                        outputs[shard_of(customer, shards)].bulk_put(key, value)
                progress(f"read {family.name} shard {number + 1}/{family.shards}")
            for store in outputs:
                store.bulk_put(POSITIONS_KEY, positions_blob)
                store.commit_bulk()
        finally:
            for store in outputs:
                store.close()
        new_seqs[family.name] = dict.fromkeys(range(shards), 1)
    for family, _ in source.all_families():
        target = family if not family.profiles else family_named(family.name, shards)
        for n in range(target.shards):
            (dest / target.rel(n)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / target.rel(n), dest / target.rel(n))
    shutil.rmtree(staging)
    manifest = SavepointManifest(
        id=dest.name, created_at=_now(), mode="reshard", shards=shards,
        secret_fingerprint=source.secret_fingerprint, seqs=new_seqs.pop(PROFILES),
        positions=source.positions, source_lineage=source.source_lineage, derived_from=source.id,
        families=new_seqs, identity_priority=source.identity_priority)
    _write_manifest(dest, manifest)
    return manifest


def restore(config: Config, src: Path, *, recovery_dir: str | Path | None = None,
            init_recovery: Callable[[Path], None]) -> SavepointManifest:
    """Put a savepoint into empty state and recovery directories, ready for the flow to start from it."""
    manifest = SavepointManifest.read(src)
    state_dir = Path(config.state.dir)
    recovery = Path(recovery_dir if recovery_dir is not None else config.state.recovery_dir)
    secret = config.privacy.resolve_secret()
    check_identity(manifest, config, secret, f"the savepoint {src}",
                   f"make a savepoint with that count first: `nextclick savepoint reshard {src} DEST "
                   f"--shards {config.state.shards}`")
    for path, setting in ((state_dir, "state.dir"), (recovery, "state.recovery_dir")):
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise StateMismatch(f"{setting}: {path} is not empty; a savepoint is restored into empty directories "
                                f"(move the old state away, or `nextclick state reset` it)")
    held = manifest.all_families()
    for family, _ in held:
        for number in range(family.shards):
            if not (src / family.rel(number)).is_dir():
                raise SavepointError(f"{src} lacks {family.rel(number)}: the savepoint is damaged")
    state_dir.mkdir(parents=True, exist_ok=True)
    for family, seqs in held:
        for number in range(family.shards):
            name = family.rel(number)
            (state_dir / name).parent.mkdir(parents=True, exist_ok=True)
            _copy_db(src / name, state_dir / name)
            with ShardStore(state_dir / name, sync=True) as store:
                if store.seq != seqs[number]:
                    raise SavepointError(f"{src / name} is at seq {store.seq}, its manifest says "
                                         f"{seqs[number]}: the savepoint is damaged")
                store.mark_committed(store.seq)
    point = RestorePoint(manifest.id, dict(manifest.seqs), dict(manifest.positions),
                         {name: dict(seqs) for name, seqs in manifest.families.items()})
    state = new_manifest(config, secret, restore=point)
    recovery.mkdir(parents=True, exist_ok=True)
    init_recovery(recovery)
    write_marker(recovery, state.lineage)
    write_manifest(state_dir, state)  # last: until it exists the directories read as not restored
    return manifest


def _copy_db(src: Path, dest: Path) -> None:
    """Copy a RocksDB directory, hard-linking its immutable table files where the file system allows."""
    dest.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "LOCK":
            continue
        target = dest / item.name
        if item.suffix == ".sst":
            try:
                os.link(item, target)
                continue
            except OSError:
                pass
        shutil.copy2(item, target)
