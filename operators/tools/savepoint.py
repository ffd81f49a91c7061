"""Savepoints: a consistent copy of every shard and the input positions at one epoch.

Layout of a savepoint (a directory, or an object-store prefix such as s3://bucket/savepoints/NAME):

    savepoint.json             what it holds: shard count, format, secret fingerprint, each shard's
                               seq, the input positions (next offset per topic partition), when and how;
                               written last: a savepoint without it is incomplete
    shard-0000/ ...            each shard's RocksDB at that seq (a RocksDB checkpoint)
    linked-<type>/shard-0000/ ..., identity/shard-0000/
                               the other families of stores (operators/state/layout.py): linked
                               profiles and the identity graph, each shard at its seq (`families`)

An online savepoint in an object store keeps its shards under the prefix its parts were written to
(`root` in the manifest, `.parts-<token>`): objects cannot be renamed, and copying every shard once
more only to tidy the names would double the cost.

Each shard checkpoints the input positions of the events it applied (operators/shard/logic.py), so the
positions of a savepoint are the largest over its shards: every message before them was applied by
its shard (or refused by the parser; a restore reads such trailing refusals again, and dead-letters
them again). A savepoint is taken

- offline (the flow stopped): each shard is copied and the copy rolled back to the seq Bytewax
  committed, so it holds exactly what a resume would start from;
- online: a `savepoint` command on the control topic reaches every shard in one epoch; each process
  writes its own shards' parts into the destination (`state.savepoint_dir`, which every process must
  reach): a RocksDB checkpoint on the shard's own volume right after its epoch-end checkpoint (hard
  links, so the flow pauses for milliseconds), then a background copy into a staging prefix named by
  a token that the single parse of that command chose (a replay after a crash parses it again and
  picks a new one, so parts of two attempts never mix). The CLI waits for every shard's part, names
  the shards and processes that did not answer, and writes the manifest last.

Restoring fetches into a process only the shards Bytewax will route to its workers (`Placement`:
Bytewax 0.21 sends a state key to worker `siphash13(key) % workers`, processes holding consecutive
worker indexes: operators/state/placement.py), and is idempotent: a restart whose state came from
that very savepoint resumes. Re-sharding reads every key of every shard and routes it by customer to the new count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from nextclick.operators.infra.config import MAX_SHARDS, Config, derived_savepoint_dir, is_url
from nextclick.operators.infra.failures import is_device_full
from nextclick.operators.io.control import SAVEPOINT_NAME, send_command
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.profile.model import PROFILE_FORMAT
from nextclick.operators.state.erased import ERASED_PREFIX
from nextclick.operators.state.keys import POSITIONS_KEY, customer_of_key, shard_of, shard_path
from nextclick.operators.state.layout import IDENTITY, PROFILES, Family, family_named, has_store
from nextclick.operators.state.manifest import (
    MANIFEST_FILE,
    RECOVERY_MARKER,
    RESTORE_STAGING_PREFIX,
    RESTORING_FILE,
    SHARD_HASH,
    STATE_FORMAT,
    RestorePoint,
    StateMismatch,
    clear_restore_staging,
    family_dirs,
    read_manifest,
    running_flows,
    secret_fingerprint,
    shard_dirs,
    start_lock,
    write_manifest,
    write_marker,
)
from nextclick.operators.state.placement import BALANCED, worker_of
from nextclick.operators.state.savepoint_parts import (
    FAILED_MARK,
    FAILED_SUFFIX,
    MANIFEST,
    PART_SUFFIX,
    SCRATCH_PREFIX,
    STAGING_PREFIX,
    Destination,
    SavepointError,
    copy_db,
    request_digest,
)
from nextclick.operators.state.store import ShardStore, StateError, dir_bytes
from nextclick.operators.tools.startup import (
    check_identity,
    check_start,
    flow_families,
    identity_rules,
    never_written,
    new_manifest,
    state_families,
)

log = logging.getLogger(__name__)
# Inside a reshard's DEST until it is complete: what it has written so far (`reshard`, `SavepointManifest.read`).
RESHARD_STAGING = f"{STAGING_PREFIX}reshard"




# -- where shards run ---------------------------------------------------------------------------------

def state_key(family: Family, shard: int, placement: str) -> str:
    """The Bytewax key a shard's items are routed by (the identity stage has one key, its family's name:
    operators/identity/stage.py IDENTITY_KEY)."""
    return IDENTITY if family.name == IDENTITY else family.route(shard, placement)


@dataclass(frozen=True)
class Placement:
    """Which process of a cluster a shard runs on (operators/state/placement.py): worker indexes are
    numbered process by process (`process_id * workers + thread`). Checked against real clusters of
    2x1, 3x1 and 2x2 workers in tests/test_savepoint_cluster.py. `shard_placement`: the cluster's
    `state.shard_placement`."""

    process_id: int
    processes: int
    workers: int = 1  # per process
    shard_placement: str = BALANCED

    def owner(self, family: Family, shard: int) -> int:
        key = state_key(family, shard, self.shard_placement)
        return worker_of(key, self.processes * self.workers) // self.workers

    def owns(self, family: Family, shard: int) -> bool:
        return self.owner(family, shard) == self.process_id


def check_volume_placement(config: Config, placement: Placement) -> None:
    """On a per-pod volume that resumes committed state: no store here belongs to another process.

    With another `--workers` (or placement) the same process runs other shards, whose stores are on
    the other volumes: a shard would find no directory and fail in its worker, which the cluster only
    reports as "Send thread panic" (each process took the other for a lost peer). Refused here, first.
    (A store this process runs may be missing: stores are made when first written.)"""
    state_dir = Path(config.state.dir)
    elsewhere = [(f, n) for f in state_families(config) for n in range(f.shards)
                 if has_store(f.path(state_dir, n)) and not placement.owns(f, n)]
    if elsewhere:
        shown = ", ".join(f"{f.rel(n)} (process {placement.owner(f, n)})" for f, n in elsewhere[:4]) + (
            ", ..." if len(elsewhere) > 4 else "")
        raise StateMismatch(
            f"state.dir: {state_dir} holds stores that, with --workers {placement.workers} on {placement.processes} "
            f"processes, other processes run: {shown}. The number of workers or processes changed since this "
            "state was written, and shards move between volumes; change it through a savepoint (take one with "
            "the old settings, then start every process with the new ones and --from-savepoint; docs/state.md)")


# -- where savepoints are -----------------------------------------------------------------------------







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
    # Where its shards are, relative to the savepoint ("": beside the manifest; see the module docstring).
    root: str = ""
    # The cluster generation that took it (state.on_lost_volume = "restore"): which line of the cluster's
    # history it is on. None: taken without that mode, by an older release, or offline.
    generation: int | None = None

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
            **({"root": self.root} if self.root else {}),
            **({"generation": self.generation} if self.generation is not None else {}),
        }, option=orjson.OPT_INDENT_2)

    def all_families(self) -> list[tuple[Family, dict[int, int]]]:
        """Every family it holds, with each shard's seq (`profiles` first)."""
        return [(family_named(PROFILES, self.shards), self.seqs),
                *((family_named(name, self.shards), seqs) for name, seqs in sorted(self.families.items()))]

    def location(self, family: Family, shard: int) -> str:
        """A shard's place relative to the savepoint."""
        rel = family.rel(shard)
        return f"{self.root}/{rel}" if self.root else rel

    def same_point(self, point: RestorePoint) -> bool:
        """`point` (a state's restore point) was made from this savepoint."""
        return (point.savepoint == self.id and point.seqs == self.seqs and point.positions == self.positions
                and {k: v for k, v in point.families.items() if v} == {k: v for k, v in self.families.items() if v})

    @classmethod
    def read(cls, src: str | Path | Destination) -> SavepointManifest:
        where = src if isinstance(src, Destination) else Destination(src)
        path = where.describe(MANIFEST)
        try:
            body = orjson.loads(where.read_bytes(MANIFEST))
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
                       else None, root=str(body.get("root") or ""),
                       generation=int(body["generation"]) if body.get("generation") is not None else None)
        except FileNotFoundError:
            if not where.remote and not where.path.exists():
                raise SavepointError(f"{where} does not exist (`nextclick savepoint list` shows the savepoints "
                                     "of state.savepoint_dir)") from None
            if not where.remote and (where.path / RESHARD_STAGING).is_dir():
                raise SavepointError(f"{where} is not a complete savepoint: a reshard into it was stopped part "
                                     "way (run the same `nextclick savepoint reshard` again)") from None
            raise SavepointError(f"{where} is not a complete savepoint (no {MANIFEST}; an online savepoint "
                                 "still being written, or the wrong directory?)") from None
        except NotADirectoryError:
            raise SavepointError(f"{where} is a file: give the savepoint's directory, the one that holds "
                                 f"{MANIFEST}") from None
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







def clear_scratch(config: Config) -> int:
    """Remove local checkpoints that a process killed while copying parts left on its volume (hard links
    that would hold the disk space of old SST files for good). For `nextclick run` at start, when no
    copy of this process can be running. How many it removed."""
    removed = 0
    for family in state_families(config):
        root = family.root(config.state.dir)
        for leftover in root.glob(f"{SCRATCH_PREFIX}*") if root.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
    return removed


def request_token() -> str:
    """Names one attempt at an online savepoint (see the module docstring)."""
    return uuid.uuid4().hex[:12]


def online_destination(config: Config, dest: str) -> Destination:
    """DEST of `savepoint create --online`, checked: the flow writes only inside state.savepoint_dir."""

    root = Destination(config.state.savepoint_dir)
    where = Destination(dest)
    parent = where.location.rstrip("/").rsplit("/", 1)[0]
    same_root = parent == root.location if where.remote or root.remote else \
        Path(parent).resolve() == Path(root.location).resolve()
    if same_root and not SAVEPOINT_NAME.fullmatch(where.name):
        raise SavepointError(f"{where.name!r} is not a savepoint name: letters, digits, '.', '_' and '-', starting "
                             "with a letter or digit, at most 128 (it travels in a command on the control topic)")
    if not same_root:
        raise SavepointError(f"state.savepoint_dir: an online savepoint is written by the flow into "
                             f"{root}; give DEST as {root}/<name>")
    there = where.files()  # one listing (an object store's is a request)
    if MANIFEST in there:
        raise SavepointError(f"{where} already holds a savepoint; a savepoint goes into a new directory")
    if any(not n.startswith(STAGING_PREFIX) for n in there):
        raise SavepointError(f"{where} exists and is not empty; a savepoint goes into a new directory")
    # Only the parts of an attempt that was given up (the CLI timed out): a retry may use the name, and
    # finish_online removes them once its own attempt is complete.
    return where


def _missing(expected: dict[str, set[int]], have: dict[str, set[int]]) -> list[tuple[str, int]]:
    return [(name, n) for name, shards in expected.items() for n in sorted(shards - have.get(name, set()))]


def _describe_missing(missing: list[tuple[str, int]], fams: list[Family], parts: list[dict[str, Any]],
                      placement: Placement | None) -> str:
    by_subdir = {f.subdir: f for f in fams}  # parts name their family by its directory
    shown = ", ".join(f"{by_subdir[sub].name} {n}" for sub, n in missing[:6]) + (", ..." if len(missing) > 6 else "")
    answered = sorted({str(p.get("process")) for p in parts if p.get("process")})
    text = f"no part from {len(missing)} shard(s) ({shown})"
    if placement is not None:
        owners = sorted({dataclasses.replace(placement, process_id=0).owner(by_subdir[sub], n)
                         for sub, n in missing})
        text += f", which run on process(es) {', '.join(map(str, owners))} of {placement.processes}"
    return text + (f"; parts came from {', '.join(answered)}" if answered else "; no process wrote a part")


def _raise_failed(where: Destination, name: str, request_id: str | None) -> None:
    """A process could not write its part of this request (`report_part_failed`): say why now."""
    try:
        note = orjson.loads(where.read_bytes(name))
    except (OSError, ValueError):
        return  # being written, or unreadable: the timeout still names the missing part
    if request_id is not None and note.get("request_id") != request_id:
        return
    family = note.get("family") or PROFILES
    raise SavepointError(f"{where}: process {note.get('process')} could not write {family} shard {note.get('shard')}'s "
                         f"part: {note.get('error')}; free space there (or choose another destination) and "
                         "run the command again")


def _raise_marked(where: Destination, name: str, request_id: str | None) -> None:
    """The empty mark a process leaves when not even its note fits (`report_part_failed`)."""
    parts = name.split("/")
    shard, _, rest = parts[-1].partition(FAILED_MARK)
    digest, _, reason = rest.partition(".")
    if request_id is not None and digest != request_digest(request_id):  # as for a note: this request's
        return
    family = parts[1] if len(parts) > 2 else PROFILES
    code = getattr(errno, reason, None)
    cause = f"{reason}: {os.strerror(code)}" if isinstance(code, int) else reason
    raise SavepointError(f"{where}: a process could not write {family} {shard}'s part ({cause}); free space there "
                         "(or choose another destination) and run the command again")


def finish_online(config: Config, dest: str | Path | Destination, *, timeout_s: float,
                  progress: Callable[[str], None] = lambda _m: None,
                  placement: Placement | None = None,
                  cancelled: Callable[[], bool] = lambda: False,
                  request_id: str | None = None) -> SavepointManifest:
    """Wait until one attempt has every shard's part, then put it in place and write the manifest last.

    `request_id`: only parts written for that request count (an earlier request's parts, left there by an
    attempt that was given up, would make a savepoint of an earlier point). On timeout, names the shards
    without a part, which processes answered and (with `placement`: the cluster's process and worker
    counts) which processes run the missing shards. `cancelled`: polled while waiting
    (a draining flow's scheduler gives up at once instead of at the timeout)."""
    where = dest if isinstance(dest, Destination) else Destination(dest)
    shards = config.state.shards
    fams = flow_families(config)  # the families whose shards write parts
    expected = {f.subdir: set(range(f.shards)) for f in fams}
    total = sum(f.shards for f in fams)
    deadline = time.monotonic() + timeout_s
    last, best = "", ([], [])  # type: tuple[str, tuple[list[tuple[str, int]], list[dict[str, Any]]]]
    while True:
        by_token: dict[str, list[str]] = {}
        for name in where.files():
            if not name.startswith(STAGING_PREFIX) or "/." in name:
                continue
            if name.endswith(PART_SUFFIX):
                by_token.setdefault(name.split("/", 1)[0], []).append(name)
            elif name.endswith(FAILED_SUFFIX):
                _raise_failed(where, name, request_id)
            elif FAILED_MARK in name.rsplit("/", 1)[-1]:
                _raise_marked(where, name, request_id)
        complete = None
        for token, names in sorted(by_token.items()):
            parts = [orjson.loads(where.read_bytes(n)) for n in names]
            if request_id is not None and any(p.get("request_id") != request_id for p in parts):
                continue
            have: dict[str, set[int]] = {}
            for part in parts:
                have.setdefault(str(part.get("family", "")), set()).add(int(part["shard"]))
            missing = _missing(expected, have)
            if not missing:
                complete = token, parts
                break
            if not best[1] or len(parts) > len(best[1]):
                best = missing, parts
            message = f"{total - len(missing)}/{total} shards written"
            if message != last:
                progress(message)
                last = message
        if complete is not None:
            break
        if cancelled():
            raise SavepointError(f"{where}: the savepoint was abandoned before every shard's part was written "
                                 f"(the flow is stopping)")
        if time.monotonic() > deadline:
            what = _describe_missing(best[0], fams, best[1], placement) if best[1] else (
                f"no part yet from any of the {placement.processes} processes" if placement else "no part yet")
            derived = config.state.savepoint_dir == derived_savepoint_dir(config.state)
            hint = (f"state.savepoint_dir is not set, so it is {config.state.savepoint_dir}, on each process's own "
                    "volume: set it to a mount or s3:// URL every process shares" if derived else
                    "is every process running, reading topics.control, and able to write there (see its log)?")
            raise SavepointError(f"the running flow did not write every shard's part into {where} within "
                                 f"{timeout_s:.0f}s: {what}; {hint}")
        time.sleep(0.2)
    token, parts_json = complete
    extra = [p for p in parts_json if int(p["shard"]) not in expected.get(str(p.get("family", "")), set())]
    if extra:
        raise SavepointError(f"{where}/{token} holds a part of {extra[0].get('family') or PROFILES} shard "
                             f"{extra[0]['shard']}, which this configuration does not have: state.shards or the "
                             f"identity rules differ from the running flow's")
    by_family: dict[str, dict[int, int]] = {}
    for part in parts_json:
        by_family.setdefault(str(part.get("family", "")), {})[int(part["shard"])] = int(part["seq"])
    root = ""
    if where.remote:
        root = token  # objects stay where the processes wrote them
    else:
        for family in fams:
            for shard in range(family.shards):
                where.move(f"{token}/{family.rel(shard)}", family.rel(shard))
    for other in {n.split("/", 1)[0] for n in where.files() if n.startswith(STAGING_PREFIX)} - {root}:
        where.remove(other)  # this attempt's part files, and every other attempt
    lineages = {p.get("lineage") for p in parts_json}
    generations = {p.get("generation") for p in parts_json}
    manifest = SavepointManifest(
        id=where.name, created_at=_now(), mode="online", shards=shards,
        generation=generations.pop() if len(generations) == 1 else None,
        secret_fingerprint=secret_fingerprint(config.privacy.resolve_secret()),
        seqs=by_family[""],
        positions=_merge_positions([p["positions"] for p in parts_json]),
        source_lineage=lineages.pop() if len(lineages) == 1 else None,
        families={f.name: by_family[f.subdir] for f in fams if f.subdir},
        identity_priority=identity_rules(config).priority, root=root)
    _write_manifest(where, manifest)
    return manifest


def create_online(config: Config, dest: str, *, timeout_s: float, request_id: str | None = None,
                  placement: Placement | None = None, progress: Callable[[str], None] = lambda _m: None,
                  cancelled: Callable[[], bool] = lambda: False) -> SavepointManifest:
    """Ask the running flow for an online savepoint into `dest` (inside state.savepoint_dir) and assemble it:
    the one path of `savepoint create --online` and of the scheduler (operators/tools/schedule.py)."""
    root = Destination(config.state.savepoint_dir)
    where = online_destination(config, dest)
    probe = f".probe-{time.time_ns()}"
    try:  # the parts are assembled there: a destination this process cannot write fails now, not at the timeout
        root.write_bytes(probe, b"")
        root.remove(probe)
    except OSError as exc:
        raise OSError(f"state.savepoint_dir: cannot write to {root} ({exc}); it must be reachable from every "
                      "process and from this command") from None
    request_id = request_id or f"savepoint-{time.time_ns()}"
    # The flow does not carry the command out once this stops waiting (operators/io/control.py).
    expires_at = time.time_ns() // 1_000_000 + int(timeout_s * 1000)
    send_command(config.kafka, config.topics.control, "savepoint", request_id, request_id.encode(), name=where.name,
                 expires_at=expires_at)
    progress(f"savepoint requested ({request_id}); waiting for every shard at its next epoch end")
    return finish_online(config, where, timeout_s=timeout_s, progress=progress, placement=placement,
                         cancelled=cancelled, request_id=request_id)


def _write_manifest(dest: Path | Destination, manifest: SavepointManifest) -> None:
    """Last: a savepoint without it is incomplete."""
    (dest if isinstance(dest, Destination) else Destination(dest)).write_bytes(MANIFEST, manifest.to_json())


# -- offline -----------------------------------------------------------------------------------


def create_offline(config: Config, dest: Path, *, recovery_dir: str | Path | None = None,
                   progress: Callable[[str], None] = lambda _m: None) -> SavepointManifest:
    """Copy every shard of a stopped flow at the seq Bytewax committed, with the input positions."""

    state_dir = Path(config.state.dir)
    if read_manifest(state_dir) is None and not shard_dirs(state_dir):
        raise SavepointError(f"no state in {state_dir} (state.dir): nothing to save")
    # Refuses state that disagrees with the config; writes nothing where it reads (a read-only snapshot).
    plan = check_start(config, recovery_dir=recovery_dir, read_only=True)
    if plan.committed is None:
        recovery = recovery_dir if recovery_dir is not None else config.state.recovery_dir
        raise SavepointError(f"state.recovery_dir: {recovery} holds only some of the cluster's recovery partitions "
                             "(per-pod volumes): the epochs Bytewax committed for this volume's shards are recorded "
                             "in every pod's partition, so no single pod can tell where to cut an offline copy; "
                             "start the cluster and take it with `nextclick savepoint create "
                             "<state.savepoint_dir>/<name> --online` (every process writes its own shards)")
    if is_url(str(dest)):
        raise SavepointError(f"{dest}: an offline savepoint is written to a directory; copy it to the object "
                             "store afterwards, or take it with --online (written there by the flow)")
    if held := running_flows(state_dir):  # before anything is created at dest
        raise SavepointError(f"{state_dir} is in use: the flow is running ({', '.join(held)}); take the savepoint "
                             "with --online, or stop the flow first")
    _empty_dest(dest)
    seqs: dict[str, dict[int, int]] = {}
    positions: list[dict[str, int]] = []
    fams = flow_families(config)  # the families the flow has: without stitching, profiles only
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
            if not os.access(dirs[number], os.W_OK):
                # A read-only mount (a volume snapshot): nobody writes there, so its files are the copy.
                copy_db(dirs[number], target)
            else:
                try:
                    store = ShardStore(dirs[number], sync=False)
                except StateError:
                    raise SavepointError(f"{dirs[number]} is in use: the flow is running; take the savepoint "
                                         f"with --online, or stop the flow first") from None
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
        identity_priority=identity_rules(config).priority, generation=_state_generation(state_dir))
    _write_manifest(dest, manifest)
    return manifest


# -- reading, re-sharding, restoring ----------------------------------------------------------------


def info(src: str | Path) -> dict[str, Any]:
    """What a savepoint holds; its key estimate needs its shards on a file system (null for an object store)."""
    where = Destination(src)
    manifest = SavepointManifest.read(where)
    body = orjson.loads(manifest.to_json())
    body["path"] = str(where)
    body["bytes"] = where.size()
    keys: int | None = 0 if not where.remote else None
    for family, _seqs in manifest.all_families():
        for number in range(family.shards):
            rel = manifest.location(family, number)
            if not where.is_dir(rel):
                raise SavepointError(f"{where} lacks {rel}: the savepoint is damaged")
            if keys is None:
                continue
            store = ShardStore.open_read_only(where.path / rel, cache_size=0)
            try:
                keys += store.stats()["keys"]
            finally:
                store.close()
    body["keys_estimate"] = keys
    return body


def catalogue(root: str | Path) -> tuple[list[SavepointManifest], list[str]]:
    """The complete savepoints in a savepoint_dir, newest first, and the names of incomplete ones (being
    written, or left by an attempt that did not finish: they have no manifest).

    Each is named by its directory (its `id`): the name inside its manifest is the one it was written
    under, which a rename or a copy leaves behind (pruning by it deleted the newest of two)."""
    where = Destination(root)
    complete, incomplete = [], []
    for name in where.children():
        if name.startswith("."):
            continue
        try:
            complete.append(dataclasses.replace(SavepointManifest.read(where.child(name)), id=name))
        except SavepointError:
            incomplete.append(name)
    complete.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    return complete, incomplete


def _generations(cluster_dir: Path) -> list[Path]:
    """Every generation's file in `cluster_dir` (`<state.savepoint_dir>/.cluster`), oldest first."""
    return sorted(cluster_dir.glob("generation-*.json"))


def _newest_generation(cluster_dir: Path) -> dict[str, Any] | None:
    """The newest generation's file, or None before any (generation 0 of a deployment that started empty)."""
    files = _generations(cluster_dir)
    return orjson.loads(files[-1].read_bytes()) if files else None


def _recorded(root: Destination, location: str) -> str:
    """How a generation file records the savepoint it restores: by name when it is in `root` (the
    savepoint directory), so a copy of that directory, or a pod that mounts it at another path, finds
    it (an outside probe: absolute paths made prune on a copy protect nothing); else its location."""
    where = Destination(location)
    inside = not where.remote and not root.remote and os.path.abspath(where.path.parent) == os.path.abspath(root.path)
    return where.name if inside else str(where)


def _same_place(a: str, b: str) -> bool:
    """Two savepoint locations name one place (a relative path and the absolute one it stands for)."""
    return a == b or (not is_url(a) and not is_url(b) and os.path.abspath(a) == os.path.abspath(b))


def _located(root: Destination, recorded: str) -> str:
    """The location of a savepoint a generation file records (`_recorded`; older releases wrote locations)."""
    return str(root.child(recorded)) if "/" not in recorded else str(Destination(recorded))


def latest_on_line(root: str | Path) -> SavepointManifest | None:
    """The newest complete savepoint in `root` on the cluster's current line (state.on_lost_volume =
    "restore", whose generation files are in `root`/.cluster): the one the newest generation restored,
    or one taken since by the cluster at that generation. A rollback leaves the savepoints of the
    abandoned line behind (newer, but with what the rollback undid): a lost volume must not bring them
    back. A savepoint that does not say its generation (an older release's) counts when it was created
    after the generation was opened. Without generation files, the newest."""
    where = Destination(root)
    complete, _ = catalogue(root)
    body = _newest_generation(where.path / _CLUSTER) if not where.remote else None
    if body is None:
        return complete[0] if complete else None
    generation, opened = int(body["generation"]), str(body.get("created_at") or "")
    start = _located(where, body["savepoint"]) if body.get("savepoint") else None
    for manifest in complete:  # newest first
        on_line = start is not None and _same_place(str(where.child(manifest.id)), start)
        taken_since = manifest.generation is None and manifest.created_at > opened
        if manifest.generation == generation or on_line or taken_since:
            return manifest
    return None


def prune(root: str | Path, keep: int, *, dry_run: bool = False, prefix: str = "") -> list[str]:
    """Delete the complete savepoints beyond the newest `keep` (retention); incomplete ones are left alone,
    since one may be in progress, and so is the newest of the cluster's current line (`latest_on_line`),
    which a lost volume is restored from: after a rollback it is older than the abandoned line's (an
    outside probe: `prune --keep 1` deleted it, and the next lost volume could only be met by starting
    over). `prefix`: only those whose name starts with it count and go (the scheduler's own: an
    operator's savepoint taken before an upgrade is the way back, not retention's).
    The names deleted (or that would be)."""
    if keep < 1:
        raise SavepointError("--keep must be at least 1: pruning never deletes the newest savepoint")
    where = Destination(root)
    complete, _ = catalogue(root)
    line = latest_on_line(root)
    doomed = [m.id for m in complete if m.id.startswith(prefix)][keep:]
    if line is not None:
        doomed = [name for name in doomed if name != line.id]
    if not dry_run:
        for name in doomed:
            # The manifest first: a savepoint half deleted must read as incomplete, never as complete.
            where.child(name).remove(MANIFEST)
            where.remove(name)
    return doomed


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
    if not 1 <= shards <= MAX_SHARDS:
        # Above it no configuration loads the result (an outside probe: 2000 wrote 588 MB that no start could
        # use, and 5000 ran out of file handles half way).
        raise SavepointError(f"--shards must be from 1 to {MAX_SHARDS} (state.shards' limit), got {shards}")
    if is_url(str(src)) or is_url(str(dest)):
        raise SavepointError("reshard reads and writes directories: copy the savepoint from the object store "
                             "first (and back afterwards)")
    source = SavepointManifest.read(src)
    if source.root:
        src = src / source.root
    staging = dest / RESHARD_STAGING
    if staging.is_dir() and not (dest / MANIFEST).exists():
        # A reshard into DEST was stopped part way (killed, a full disk): what it wrote goes, and this one
        # starts again; anything else there is refused below, as for any savepoint.
        written = {staging.name, *(shard_path("", n).name for n in range(shards)),
                   *(family.subdir.split("/")[0] for family, _ in source.all_families() if family.subdir)}
        for entry in dest.iterdir():
            if entry.name in written:
                shutil.rmtree(entry)
        progress(f"removed what an interrupted reshard left in {dest}")
    _empty_dest(dest)
    positions_blob = orjson.dumps(source.positions)
    new_seqs: dict[str, dict[int, int]] = {}
    for family, seqs in source.all_families():
        if not family.profiles:
            for number in seqs:
                copy_db(src / family.rel(number), staging / family.rel(number))
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
                    elif key.startswith(ERASED_PREFIX):  # an erasure's mark names no shard: every one keeps it
                        for store in outputs:
                            store.bulk_put(key, value)
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
        families=new_seqs, identity_priority=source.identity_priority, generation=source.generation)
    _write_manifest(dest, manifest)
    return manifest


@dataclass(frozen=True)
class Restored:
    """What `restore` did: `resumed` when the state already came from that savepoint (nothing copied)."""

    manifest: SavepointManifest
    resumed: bool
    shards: list[str]  # the shards fetched into this process (their directories under state.dir)
    bytes: int
    seconds: float


def _not_ours(what: str, savepoint: SavepointManifest, where: Destination) -> StateMismatch:
    return StateMismatch(f"state.dir: {what}, not from the savepoint {where} ({savepoint.id}, created "
                         f"{savepoint.created_at}): a savepoint is restored into empty directories; drop "
                         f"--from-savepoint to resume that state, or move it away (`nextclick state reset`) "
                         f"to restore this one")


def _restore_decision(config: Config, savepoint: SavepointManifest, where: Destination, state_dir: Path,
                      recovery: Path) -> bool:
    """True: the state already came from this savepoint (resume it). False: restore; refuses anything else,
    before changing anything."""
    state = read_manifest(state_dir)
    if state is not None:
        if state.restore is not None and savepoint.same_point(state.restore):
            return True
        if never_written(state_dir, recovery) and not running_flows(state_dir):
            return False  # set up by a start that was refused: `restore` clears it
        what = (f"{state_dir} holds state restored from savepoint {state.restore.savepoint}" if state.restore
                else f"{state_dir} holds the state of deployment {state.lineage}")
        raise _not_ours(what, savepoint, where)
    marker = state_dir / RESTORING_FILE
    if marker.exists():
        try:
            said = orjson.loads(marker.read_bytes())
            started = RestorePoint.from_json(said)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise StateMismatch(f"state.dir: {marker} is unreadable: a restore was interrupted; empty {state_dir} "
                                f"and {recovery}, then restore again") from None
        if not savepoint.same_point(started):
            # Not _not_ours's "drop --from-savepoint to resume that state": an interrupted restore is no state
            # to resume (an outside probe followed that advice and was told to restore the other savepoint).
            source = str(said.get("from") or started.savepoint)
            raise StateMismatch(f"state.dir: {state_dir} holds an interrupted restore of savepoint "
                                f"{started.savepoint}, not of {where} ({savepoint.id}): finish that one with "
                                f"--from-savepoint {source}, or move it away (`nextclick state reset`) to "
                                "restore this one")
        return False  # the same restore, interrupted: it is done again from the start
    for path, setting in ((state_dir, "state.dir"), (recovery, "state.recovery_dir")):
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise StateMismatch(f"{setting}: {path} is not empty; a savepoint is restored into empty directories "
                                f"(move the old state away, or `nextclick state reset` it)")
    return False


def _undo_partial_restore(config: Config, state_dir: Path, recovery: Path) -> None:
    """Remove what an interrupted restore created (and only that: shard directories, recovery partitions)."""

    for family in state_families(config):
        for number in range(family.shards):
            shutil.rmtree(family.path(state_dir, number), ignore_errors=True)
    for path in [*recovery.glob("*.sqlite3*"), recovery / RECOVERY_MARKER] if recovery.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def restore(config: Config, src: str | Path, *, recovery_dir: str | Path | None = None,
            init_recovery: Callable[[Path], None], placement: Placement | None = None,
            progress: Callable[[str], None] = lambda _m: None) -> Restored:
    """Put a savepoint into empty state and recovery directories, ready for the flow to start from it.

    With `placement` (per-pod volumes), only the shards Bytewax will route to this process's workers are
    fetched. Idempotent: state that already came from this savepoint is left as it is (a manifest may keep
    --from-savepoint), and a restore interrupted part way is done again; anything else is refused in one
    line, with nothing changed."""

    began = time.perf_counter()
    where = Destination(src)
    manifest = SavepointManifest.read(where)
    state_dir = Path(config.state.dir)
    recovery = Path(recovery_dir if recovery_dir is not None else config.state.recovery_dir)
    secret = config.privacy.resolve_secret()
    check_identity(manifest, config, secret, f"the savepoint {where}",
                   f"make a savepoint with that count first: `nextclick savepoint reshard {where} DEST "
                   f"--shards {config.state.shards}`")
    if _restore_decision(config, manifest, where, state_dir, recovery):
        return Restored(manifest, True, [], 0, time.perf_counter() - began)
    check_inputs_renamed(config, manifest)
    wanted = [(family, number, seqs[number]) for family, seqs in manifest.all_families()
              for number in range(family.shards) if placement is None or placement.owns(family, number)]
    present = {name.rsplit("/", 1)[0] for name in where.files(manifest.root)}
    for family, number, _seq in wanted:
        if manifest.location(family, number) not in present:
            raise SavepointError(f"{where} lacks {manifest.location(family, number)}: the savepoint is damaged")
    point = RestorePoint(manifest.id, dict(manifest.seqs), dict(manifest.positions),
                         {name: dict(seqs) for name, seqs in manifest.families.items()})
    with start_lock(state_dir):  # processes sharing one state directory restore it once
        if _restore_decision(config, manifest, where, state_dir, recovery):
            return Restored(manifest, True, [], 0, time.perf_counter() - began)
        marker = state_dir / RESTORING_FILE
        if marker.exists():
            _undo_partial_restore(config, state_dir, recovery)
        elif read_manifest(state_dir) is not None:
            # Never written (_restore_decision): a start refused with other settings (a rescale without a
            # savepoint, say) left its manifest and empty recovery partitions on this volume.
            log.info("clearing directories a refused start set up, before the restore",
                     extra={"state_dir": str(state_dir), "recovery_dir": str(recovery)})
            _undo_partial_restore(config, state_dir, recovery)
            (state_dir / MANIFEST_FILE).unlink()
        Destination(state_dir).write_bytes(RESTORING_FILE, orjson.dumps({**point.to_json(), "from": str(where)}))
        clear_restore_staging(state_dir)
        staging = state_dir / f"{RESTORE_STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        fetched: list[str] = []
        total = 0
        try:
            for family, number, seq in wanted:
                name = family.rel(number)
                where.get_dir(manifest.location(family, number), staging / name)
                with ShardStore(staging / name, sync=True) as store:
                    if store.seq != seq:
                        raise SavepointError(f"{where.describe(manifest.location(family, number))} is at seq "
                                             f"{store.seq}, its manifest says {seq}: the savepoint is damaged")
                    store.mark_committed(store.seq)
                total += dir_bytes(staging / name)
                (state_dir / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, state_dir / name)
                fetched.append(name)
                progress(f"restored {name} ({len(fetched)}/{len(wanted)})")
        except Exception as exc:  # a copy's OSError, or RocksDB's plain Exception opening a copied shard
            if not is_device_full(exc):
                raise
            # An outside probe's full volume named only the shard's path. Nothing is lost: the restore is
            # done again at the next start (its marker stays), once there is room.
            raise SavepointError(f"state.dir {state_dir}: no space left on the device while restoring {where} "
                                 f"({len(fetched)} of {len(wanted)} shards done); free or grow the volume and "
                                 "start again: the restore is done again from the start") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        state = new_manifest(config, secret, restore=point)
        recovery.mkdir(parents=True, exist_ok=True)
        init_recovery(recovery)
        write_marker(recovery, state.lineage)
        write_manifest(state_dir, state)  # last: until it exists the directories read as not restored
        marker.unlink()
    return Restored(manifest, False, fetched, total, time.perf_counter() - began)




# -- a lost volume: the whole cluster back to the latest savepoint ------------------------------------

_CLUSTER = ".cluster"
# In state.dir: the generation this process's state is at (a dot file: a restore still sees an empty dir).
_GENERATION_FILE = ".nextclick-generation.json"
_FRESH_S = 6.0  # a report older than this is from a process that is not (or no longer) waiting
_GONE_S = 15.0  # a peer that reported since this process started and then not for this long has exited
_REFUSALS_EVERY_S = 5.0  # how often a waiting process reads its peers' refusals (a short read of the control topic)
_SAY_EVERY_S = 30.0  # how often a waiting process logs which peers have not reported


def _state_generation(state_dir: str | Path) -> int | None:
    """The generation a process's state is at (written when it joined one), or None outside the mode."""
    try:
        return int(orjson.loads((Path(state_dir) / _GENERATION_FILE).read_bytes())["generation"])
    except (FileNotFoundError, KeyError, ValueError, TypeError, orjson.JSONDecodeError):
        return None


@dataclass(frozen=True)
class Rejoin:
    """What a process does before it starts, decided by `Generations.decide`. `savepoint`: the one the
    generation restored (None for generation 0), which the process's state came from or must now;
    `restore`: it must (its state is not at the generation), after clearing its own state when `reset`."""

    generation: int
    savepoint: str | None
    reset: bool = False
    restore: bool = False


def _create_once(path: Path, data: bytes) -> bool:
    """Create `path` with `data` unless it exists (O_EXCL): two processes deciding at once keep the first."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def check_inputs_renamed(config: Config, manifest: SavepointManifest) -> None:
    """Refuse a restore whose inputs look renamed: the savepoint read topics this configuration does not,
    and this configuration reads topics the savepoint has no position in, which would be read from their
    beginning. If they hold the same events (a rename, a MirrorMaker copy), every one would be applied a
    second time (an outside probe: 1 order became 2, without a word). Retiring topics alone, or adding
    topics alone, is what a restore is for (docs/operations.md) and passes."""
    read = {key.rsplit("#", 1)[0] for key in manifest.positions} - {config.topics.control}
    if not read:
        return
    dropped = sorted(read - set(config.topics.inputs))
    new = sorted(set(config.topics.inputs) - read)
    if dropped and new:
        raise SavepointError(
            f"the savepoint {manifest.id} read {dropped}, which this configuration does not, and this configuration "
            f"reads {new}, of which it has no position, so they would be read from their beginning: if they hold the "
            "same events (a renamed or mirrored topic) each would be applied again; name the old topics in "
            "[topics] inputs, or retire them first (a restore without them) and add the new ones at the next start "
            "(docs/operations.md, 'Removing an input topic')")


def check_input_covers(config: Config, manifest: SavepointManifest) -> None:
    """Refuse a restore that Kafka can no longer replay: an input partition whose earliest offset is past
    the savepoint's position (or past 0, for a partition the savepoint has no position for)."""
    from confluent_kafka import Consumer, TopicPartition


    consumer = Consumer(client_config(config.kafka, **{"group.id": "nextclick-restore-check",
                                                      "enable.auto.commit": False}))
    log.info("checking that Kafka still holds the savepoint's positions", extra={"savepoint": manifest.id})
    try:
        metadata = consumer.list_topics(timeout=30)
        for topic in (*config.topics.inputs, config.topics.control):
            for partition in sorted((metadata.topics.get(topic) and metadata.topics[topic].partitions) or {}):
                low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                wanted = manifest.positions.get(f"{topic}#{partition}", 0)
                if low > wanted:
                    raise SavepointError(
                        f"{topic} partition {partition} now starts at offset {low}, past the savepoint {manifest.id}'s "
                        f"position {wanted}: Kafka's retention no longer covers it, so restoring it would skip "
                        f"events; keep retention.ms above the savepoint interval (docs/state.md, 'A lost volume')")
    finally:
        consumer.close()


class Generations:
    """The cluster-wide rollback of `state.on_lost_volume = "restore"` (docs/state.md, "A lost volume").

    In `<state.savepoint_dir>/.cluster/`: `generation-N.json` (the savepoint generation N restores, none
    for 0, the first deployment), `running-N` (every process once agreed on N), and one report per
    process (`process-I.json`: the generation its state is at, refreshed every second while it lives).
    Before Bytewax starts, every process waits until all have a fresh report. A process whose volume was
    lost (no state) while generation N has run raises N+1 with the latest savepoint; every process whose
    state is not at the newest generation clears it and restores that savepoint; and none starts until
    all report the newest generation, so no cluster forms from processes at different points."""

    def __init__(self, config: Config, process_id: int, processes: int, *, explicit: str | None = None,
                 timeout_s: float = 300.0, refusals: Callable[[float], dict[int, str]] | None = None) -> None:
        """`explicit`: the savepoint the operator named (--from-savepoint, state.initial_savepoint).
        `refusals`: the lines peers refused to start with since a time (epoch seconds), read from the
        control topic (operators/io/cluster_hello.py); a peer that never reports is then named with its own."""
        root = Destination(config.state.savepoint_dir)
        if root.remote:
            raise SavepointError("state.on_lost_volume = \"restore\" needs state.savepoint_dir on a shared "
                                 "directory (its generation files are created exclusively), not an object store")
        self.config, self.process_id, self.processes, self.timeout_s = config, process_id, processes, timeout_s
        self.explicit = str(Destination(explicit)) if explicit else None
        self.root = root
        self.dir = root.path / _CLUSTER
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        state_dir, recovery_dir = Path(config.state.dir), Path(config.state.recovery_dir)
        # A volume a refused start only set up holds nothing: lost, if the cluster has run (a start with
        # on_lost_volume = "stop" set up the empty volume that replaced a lost one, before it was refused).
        self.has_state = bool(shard_dirs(state_dir)) or (
            read_manifest(state_dir) is not None and not never_written(state_dir, recovery_dir))
        # Half a volume (the state without its recovery partitions, or these without the state) cannot
        # resume either: the process counts as lost, and what is left is cleared before the restore.
        self.has_leftovers = self.has_state or (recovery_dir.is_dir() and any(recovery_dir.iterdir()))
        intact = self.has_state and any(recovery_dir.glob("*.sqlite3"))
        self.intact = intact  # reported: committed state at this start (a peer's join of generation 0 is not)
        self._intact: dict[int, bool] = {}  # each process's, from its report
        # State without a generation: started before this mode, or killed before it joined: generation 0.
        recorded = _state_generation(state_dir)
        self.mine: int | None = (recorded or 0) if intact else None
        self._boot = uuid.uuid4().hex[:8]
        # Only reports written after this process started count: a peer killed a moment ago leaves one
        # that is recent but from its previous life (it would vouch for state that peer no longer has).
        self._started = time.time()
        self._seen: set[int] = set()  # peers that reported since this process started
        self._refusals, self._refusals_next = refusals, 0.0
        self._said_next = 0.0
        self._stopped = threading.Event()
        try:
            self._report()
        except OSError as exc:  # an outside probe's read-only mount: "[Errno 30] ...process-0.json.<hex>.tmp"
            raise self._unwritable(exc) from None
        # For the process's life: a peer still waiting must see this one as there, also once it runs.
        self._heart = threading.Thread(target=self._heartbeat, name="generation-report", daemon=True)
        self._heart.start()

    def _unwritable(self, exc: OSError) -> SavepointError:
        return SavepointError(f"state.savepoint_dir {self.config.state.savepoint_dir}: {exc.strerror or exc}: with "
                              "state.on_lost_volume = \"restore\" every process writes its report in "
                              f"{self.dir} before the cluster forms; mount that directory read-write on every process")

    def _report(self) -> None:
        Destination(self.dir).write_bytes(f"process-{self.process_id}.json", orjson.dumps(
            {"generation": self.mine, "boot": self._boot, "at": time.time(), "started": self._started,
             "processes": self.processes,
             "intact": self.intact}))

    def _heartbeat(self) -> None:
        while not self._stopped.wait(1.0):
            with contextlib.suppress(OSError):
                self._report()

    def close(self) -> None:
        """Stop reporting, and return once no report of this process's can be written any more: a
        process that restarts in place (and a test's next life of the same id) must not read its
        previous life's heartbeat as a second process started as its id."""
        self._stopped.set()
        if self._heart is not threading.current_thread():
            self._heart.join()

    def _newest(self) -> dict[str, Any] | None:
        return _newest_generation(self.dir)

    def _report_of(self, process: int) -> dict[str, Any] | None:
        """Process `process`'s report (`_report`), or None while it has written none (or half of one)."""
        try:
            body = orjson.loads((self.dir / f"process-{process}.json").read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def current(self) -> tuple[int, str | None]:
        """The newest generation and the savepoint it restores (its location; None: generation 0 of a
        deployment that started empty)."""
        body = self._newest()
        if body is None:
            return 0, None
        recorded = body.get("savepoint")
        return int(body["generation"]), _located(self.root, recorded) if recorded else None

    def latest_on_line(self) -> SavepointManifest | None:
        return latest_on_line(self.config.state.savepoint_dir)

    def _reports(self) -> dict[int, int | None] | None:
        """Every process's generation, when all have a report written since this process started and
        refreshed within the last seconds (else None)."""
        found: dict[int, int | None] = {}
        for i in range(self.processes):
            body = self._report_of(i)
            if body is None:
                return None
            at = float(body["at"])
            if at < self._started or time.time() - at > _FRESH_S or \
                    int(body.get("processes", self.processes)) != self.processes:
                return None
            found[i] = None if body["generation"] is None else int(body["generation"])
            self._intact[i] = bool(body.get("intact"))
        return found

    def _waiting(self, deadline: float, what: str) -> None:
        mine = self._report_of(self.process_id)  # rewritten every second by another too: two as one id
        # The one started later stops (a recheck probe saw the first, on its own volume, stop instead); the
        # other waits on, its report rewritten at its next heartbeat.
        if mine is not None and mine.get("boot") != self._boot and float(mine.get("at", 0)) >= self._started and \
                (float(mine.get("started", 0)), str(mine.get("boot"))) < (self._started, self._boot):
            raise SavepointError(f"state.on_lost_volume: another process reports as process {self.process_id} in "
                                 f"{self.dir}: two processes started as the same --process-id (or pod name); stop one "
                                 "of them, and give each process of the cluster its own id")
        seen = [i for i in range(self.processes) if i != self.process_id and self._fresh(i)]
        self._seen.update(seen)
        gone = sorted(i for i in self._seen - set(seen) if not self._fresh(i, within_s=_GONE_S))
        if gone:  # it refused to start (its log says why) or crashed: waiting the full timeout says nothing
            raise SavepointError(f"state.on_lost_volume: process(es) {', '.join(map(str, gone))} of {self.processes} "
                                 f"stopped while the cluster was forming ({what}): its log says why (a refused "
                                 "start or a crash); this process stops too, and the cluster forms once every "
                                 "process starts again")
        if self._refusals is not None and time.monotonic() >= self._refusals_next:
            self._refusals_next = time.monotonic() + _REFUSALS_EVERY_S
            refused = {i: line for i, line in self._refusals(self._started).items()
                       if i != self.process_id and i < self.processes and not self._fresh(i)}
            if refused:  # not running, and its last word was why: say it here, where the wait is
                i, line = min(refused.items())
                raise SavepointError(f"state.on_lost_volume: process {i} of {self.processes} does not join while "
                                     f"the cluster is forming ({what}): {line}; this process stops too, and the "
                                     "cluster forms once every process starts again")
        if time.monotonic() >= self._said_next:
            # An outside probe's pod with another state.savepoint_dir waited 300 s with no word: say every
            # 30 s who is missing, and where this process looks for them.
            self._said_next = time.monotonic() + _SAY_EVERY_S
            missing = [i for i in range(self.processes) if i != self.process_id and not self._fresh(i)]
            if missing and time.time() - self._started >= _SAY_EVERY_S:
                left = deadline - time.monotonic()
                log.warning(f"state.on_lost_volume: process(es) {', '.join(map(str, missing))} of {self.processes} "
                            f"have not reported in {self.dir} ({what}); every process must run with the same "
                            f"state.savepoint_dir, a directory they all share; waiting {left:.0f}s more")
        if time.monotonic() > deadline:
            stale = [i for i in range(self.processes) if not self._fresh(i)]
            raise SavepointError(f"state.on_lost_volume: {what} within {self.timeout_s:.0f}s; process(es) "
                                 f"{', '.join(map(str, stale)) or 'none'} of {self.processes} did not report in "
                                 f"{self.dir}: are they running, and is it the same shared directory for all?")
        time.sleep(0.25)

    def _fresh(self, i: int, within_s: float | None = None) -> bool:
        """Process i reported since this process started, and within the last `within_s` (by default
        _FRESH_S: the same test as `_reports`)."""
        body = self._report_of(i)
        if body is None or "at" not in body:
            return False
        at = float(body["at"])
        return at >= self._started and time.time() - at <= (_FRESH_S if within_s is None else within_s)

    def _raise(self, generation: int, reports: dict[int, int | None]) -> None:
        """Open `generation`: the savepoint the operator named, when every process starts empty (a
        rescale, a rollback, a move: also to a savepoint restored before); else the latest one on the
        cluster's current line (a lost volume)."""
        if self.explicit and all(g is None for g in reports.values()):
            chosen, why = self.explicit, "every process starts empty from the savepoint given"
        elif self.explicit and not self._restored_before(self.explicit):
            # A rollback with a volume left behind (an outside probe): going back to the line's latest
            # savepoint instead, with a warning, read as done to whoever asked for this one.
            raise self._not_restored(reports)
        else:
            latest = self.latest_on_line()
            if latest is None:
                raise SavepointError(f"state.on_lost_volume: a process's state is lost (generation "
                                     f"{generation - 1}) and {self.config.state.savepoint_dir} holds no savepoint of "
                                     f"the cluster's current line to restore it from; restore its volume, or start "
                                     f"over with `nextclick state reset` on every process and an empty {self.dir}")
            chosen = str(Destination(self.config.state.savepoint_dir).child(latest.id))
            why = "a process lost its state: the cluster goes back to the latest savepoint of its current line"
        if _create_once(self.dir / f"generation-{generation:06d}.json", orjson.dumps(
                {"generation": generation, "savepoint": _recorded(self.root, chosen), "created_at": _now(),
                 "by_process": self.process_id})):
            log.warning(why, extra={"generation": generation, "savepoint": chosen})

    def _not_restored(self, reports: dict[int, int | None]) -> SavepointError:
        holding = ", ".join(str(i) for i, g in sorted(reports.items()) if g is not None)
        return SavepointError(f"the savepoint given ({self.explicit}: --from-savepoint or state.initial_savepoint) "
                              f"is not restored while process(es) {holding} of {self.processes} still hold state: "
                              "a rollback starts every process empty; stop them all and empty each one's "
                              "state.dir and state.recovery_dir, or start without it to go on from the state "
                              "they hold")

    def _restored_before(self, savepoint: str) -> bool:
        """A generation of this cluster restored `savepoint` (so naming it again at a start is no rollback:
        the flag or setting stayed in the deployment's configuration)."""
        for path in _generations(self.dir):
            named = orjson.loads(path.read_bytes()).get("savepoint")
            if named and _same_place(_located(self.root, named), savepoint):
                return True
        return False

    def decide(self) -> Rejoin:
        """Wait for every process, then say what this one does before it starts."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            generation, savepoint = self.current()
            reports = self._reports()
            if reports is None:
                self._waiting(deadline, "not every process reported")
                continue
            # A process that started with state the cluster committed beside one with none: the cluster ran,
            # though no record says so when it ran before this mode was set (state.on_lost_volume = "stop",
            # whose refusal names this mode as the way out): the empty one's volume is lost.
            ran = (self.dir / f"running-{generation:06d}").exists() or (
                generation == 0 and self._newest() is None and None in reports.values() and
                any(self._intact.get(i) for i, g in reports.items() if g == 0))
            if self.mine == generation:
                if ran and any(g is None for g in reports.values()):
                    self._raise(generation + 1, reports)  # a process lost its state after the cluster ran at it
                    continue
                if self.explicit and not self._restored_before(self.explicit):
                    # Every process holds state and one names a savepoint never restored here: a rollback
                    # that emptied no volume (a recheck probe: the flag was ignored without a word).
                    raise self._not_restored(reports)
                return Rejoin(generation, savepoint)  # its state came from `savepoint` (if any): it resumes
            if ran:  # behind a generation the cluster has run: this process's state is lost (or stale)
                self._raise(generation + 1, reports)
                continue
            if savepoint is None:  # generation 0 before it ran: a new deployment
                return Rejoin(generation, None)
            log.info("rejoining at a newer generation", extra={"generation": generation, "savepoint": savepoint,
                                                               "from": self.mine,
                                                               "reports": {str(k): v for k, v in reports.items()}})
            return Rejoin(generation, savepoint, reset=self.has_leftovers, restore=True)

    def joined(self, generation: int, restored: str | None = None) -> None:
        """This process's state is at `generation` (`restored`: from that savepoint): record it, and wait
        until every process is there."""
        if generation == 0 and restored:  # a deployment that started from a savepoint: remember it was used
            _create_once(self.dir / "generation-000000.json", orjson.dumps(
                {"generation": 0, "savepoint": _recorded(self.root, restored), "created_at": _now(),
                 "by_process": self.process_id}))
        state_dir = Path(self.config.state.dir)
        Destination(state_dir).write_bytes(_GENERATION_FILE, orjson.dumps({"generation": generation}))
        self.mine = generation
        self._report()
        deadline = time.monotonic() + self.timeout_s
        while True:
            reports = self._reports()
            if reports is not None and all(g == generation for g in reports.values()):
                break
            if self.current()[0] != generation:
                raise SavepointError(f"state.on_lost_volume: the cluster moved to generation {self.current()[0]} "
                                     f"while this process joined {generation}; restarting picks it up")
            self._waiting(deadline, f"not every process reached generation {generation}")
        running = self.dir / f"running-{generation:06d}"
        if not running.exists():
            _create_once(running, b"")
