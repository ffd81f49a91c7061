"""The state's identity on disk: its manifest, the recovery directory's marker, and the start plan.

State carries a small manifest (`<state.dir>/nextclick-state.json`): the shard count, the hash that
places customers in shards, the profile format, a fingerprint of the identifier secret (never the
secret), a lineage id and, after a savepoint restore, the restore point (the shard seqs and input
positions the flow starts from). The recovery directory carries a marker (`nextclick-recovery.json`)
with the same lineage id. The start-up policy that reads them (`check_start`, `nextclick state
reset`) is an operator tool: operators/tools/startup.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from nextclick.operators.profile.model import PROFILE_FORMAT
from nextclick.operators.state.layout import PROFILES, Family, has_store
from nextclick.operators.state.placement import HASH
from nextclick.operators.state.store import StateError

MANIFEST_FILE = "nextclick-state.json"


RECOVERY_MARKER = "nextclick-recovery.json"


# Layout of the state directory and of the keys inside a shard (operators/shard/logic.py).
STATE_FORMAT = 1


SHARD_HASH = "crc32"


SHARD_DIR = re.compile(r"^shard-(\d{4,})$")


class StateMismatch(StateError):
    """A start that would orphan, reset or roll back state; the message is one line that says why."""


def secret_fingerprint(secret: bytes) -> str:
    """Tells two secrets apart without revealing either (a keyed hash of a fixed text)."""
    return hmac.new(secret, b"nextclick state fingerprint v1", hashlib.sha256).hexdigest()[:16]


def shard_dirs(state_dir: str | Path) -> dict[int, Path]:
    """Shard directories present under `state_dir`, by shard number."""
    root = Path(state_dir)
    if not root.is_dir():
        return {}
    out = {}
    for child in root.iterdir():
        m = SHARD_DIR.fullmatch(child.name)
        if m and child.is_dir() and has_store(child):  # not one a crash interrupted while creating it
            out[int(m.group(1))] = child
    return out


@dataclass(frozen=True)
class RestorePoint:
    """Where a restored savepoint starts: each shard's seq and each input partition's next offset.

    `seqs` are the `profiles` shards'; `families` the other families' (identity, linked profiles:
    operators/state/layout.py), by family name and shard."""

    savepoint: str
    seqs: dict[int, int]
    positions: dict[str, int]
    families: dict[str, dict[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"savepoint": self.savepoint, "seqs": {str(k): v for k, v in sorted(self.seqs.items())},
                "positions": dict(sorted(self.positions.items())),
                "families": {name: {str(k): v for k, v in sorted(seqs.items())}
                             for name, seqs in sorted(self.families.items())}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RestorePoint:
        return cls(str(raw["savepoint"]), {int(k): int(v) for k, v in raw["seqs"].items()},
                   {str(k): int(v) for k, v in raw["positions"].items()},
                   {str(name): {int(k): int(v) for k, v in seqs.items()}
                    for name, seqs in raw.get("families", {}).items()})

    def seq(self, shard: int, family: str = PROFILES) -> int:
        seqs = self.seqs if family == PROFILES else self.families.get(family, {})
        return seqs.get(shard, 0)


@dataclass(frozen=True)
class StateManifest:
    shards: int
    secret_fingerprint: str
    lineage: str
    profile_format: int = PROFILE_FORMAT
    state_format: int = STATE_FORMAT
    shard_hash: str = SHARD_HASH
    created_at: str = ""
    restore: RestorePoint | None = None
    # The identity rules' priority the state was written with: it decides which identifier keys a
    # linked profile and so which family it is in (None: state from before identity stitching).
    identity_priority: tuple[str, ...] | None = None
    # How its shards are spread over workers (operators/state/placement.py); "hash" before the setting.
    shard_placement: str = HASH

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "kind": "nextclick-state", "state_format": self.state_format, "shards": self.shards,
            "shard_hash": self.shard_hash, "profile_format": self.profile_format,
            "secret_fingerprint": self.secret_fingerprint, "lineage": self.lineage, "created_at": self.created_at,
            "restore": self.restore.to_json() if self.restore else None,
            "identity_priority": list(self.identity_priority) if self.identity_priority else None,
            "shard_placement": self.shard_placement,
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, path: Path, raw: bytes) -> StateManifest:
        try:
            body = orjson.loads(raw)
            return cls(shards=int(body["shards"]), secret_fingerprint=str(body["secret_fingerprint"]),
                       lineage=str(body["lineage"]), profile_format=int(body["profile_format"]),
                       state_format=int(body["state_format"]), shard_hash=str(body["shard_hash"]),
                       created_at=str(body.get("created_at", "")),
                       restore=RestorePoint.from_json(body["restore"]) if body.get("restore") else None,
                       identity_priority=tuple(body["identity_priority"]) if body.get("identity_priority")
                       else None, shard_placement=str(body.get("shard_placement", HASH)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StateMismatch(f"{path} is not a readable nextclick state manifest ({type(exc).__name__}); "
                                f"it says which shard count and secret the state was written with: restore "
                                f"it from a backup rather than deleting it") from None


def family_dirs(state_dir: str | Path, family: Family) -> dict[int, Path]:
    """A family's shard directories present under `state_dir`, by shard number."""
    return shard_dirs(family.root(state_dir)) if family.subdir else shard_dirs(state_dir)


def read_manifest(state_dir: str | Path) -> StateManifest | None:
    path = Path(state_dir) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return StateManifest.from_json(path, raw)


def write_manifest(state_dir: str | Path, manifest: StateManifest, *, replace: bool = False) -> None:
    """Atomically (temp file, fsync, rename); without `replace`, only if none exists yet."""
    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / MANIFEST_FILE, manifest.to_json(), replace=replace)


def _write_atomic(path: Path, data: bytes, *, replace: bool) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if it exists: two processes starting at once keep the first
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_marker(recovery_dir: str | Path) -> str | None:
    """The lineage the recovery directory belongs to, or None when it has no marker."""
    path = Path(recovery_dir) / RECOVERY_MARKER
    try:
        body = orjson.loads(path.read_bytes())
        return str(body["lineage"])
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StateMismatch(f"{path} is not a readable nextclick recovery marker ({type(exc).__name__})") from None


def write_marker(recovery_dir: str | Path, lineage: str) -> None:
    _write_atomic(Path(recovery_dir) / RECOVERY_MARKER, orjson.dumps({"lineage": lineage}), replace=True)


START_LOCK_FILE = ".nextclick-start.lock"
# In state.dir while a restore puts shards in place (operators/tools/savepoint.py): the restore point,
# and "from", the savepoint's location.
RESTORING_FILE = ".nextclick-restoring.json"
RESTORE_STAGING_PREFIX = ".restore-"  # in state.dir: the shards a restore fetched, until renamed into place


def clear_restore_staging(state_dir: Path) -> None:
    """Remove what killed restores fetched and never renamed into place (nothing reads it again)."""
    for path in state_dir.glob(f"{RESTORE_STAGING_PREFIX}*") if state_dir.is_dir() else ():
        shutil.rmtree(path, ignore_errors=True)


# Held by a running flow for its whole life, one per process id: processes of one cluster may share
# a state directory, two flows as the same process must not (the second would write its own
# execution into the first's recovery, which no later start could resume from).
RUN_LOCK_PREFIX = ".nextclick-run-"


def run_lock_path(state_dir: Path, process_id: int) -> Path:
    return state_dir / f"{RUN_LOCK_PREFIX}{process_id}.lock"


def hold_run_lock(state_dir: Path, process_id: int) -> IO[bytes]:
    """Take this process's run lock, or say in one line that another flow holds it. Keep the returned
    file open for the life of the flow: the lock goes with the process, however it ends. Taken once
    the start-up checks passed, so a start they refuse leaves no lock file behind."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_lock_path(state_dir, process_id), "a+b")
    if not _try_lock(fh):
        fh.close()
        raise StateError(f"state.dir {state_dir} is in use: another nextclick process runs the flow there as "
                         f"process {process_id}; stop it first (one flow per state directory and process id), or "
                         "give this one its own state.dir and state.recovery_dir") from None
    return fh


def running_flows(state_dir: Path) -> list[str]:
    """The process ids whose run lock in `state_dir` is held now, as "process N" (empty: no flow runs)."""
    held: list[str] = []
    for path in sorted(state_dir.glob(f"{RUN_LOCK_PREFIX}*.lock")) if state_dir.is_dir() else ():
        with open(path, "rb") as fh:  # a read only descriptor locks as well (a read-only snapshot)
            if _try_lock(fh):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            else:
                held.append(f"process {path.name[len(RUN_LOCK_PREFIX):-len('.lock')]}")
    return held


def _try_lock(fh: IO[bytes]) -> bool:
    """Take `fh`'s exclusive lock if nobody holds it; False if someone does."""
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def start_lock(state_dir: Path) -> Iterator[None]:
    """Processes sharing one state directory check and create it one at a time."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(state_dir / START_LOCK_FILE, "a+b")  # noqa: SIM115 - closed by the with below
    except OSError as exc:  # an outside probe's read-only mount read "[Errno 30] Read-only file system: '…'"
        raise StateError(f"state.dir {state_dir}: {exc.strerror or exc}: every start and `state reset` write "
                         "there first: give a writable directory") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class StartPlan:
    """What the checks found, and what the flow needs to resume exactly."""

    lineage: str
    fresh: bool
    # shard -> seq the recovery committed, when this directory holds every recovery partition
    # (per-process recovery directories each see only part of it: then None).
    committed: dict[int, int] | None
    restore: RestorePoint | None = None
    notes: list[str] = field(default_factory=list)
    # The same for the other families (identity, linked profiles), by family name.
    committed_families: dict[str, dict[int, int]] = field(default_factory=dict)
    # The recovery directory holds a committed epoch: this process goes on from where its cluster was
    # (False for a new deployment and right after a restore). Every process of a cluster agrees, unless
    # a volume was lost (operators/io/cluster_hello.py).
    resumes: bool = False
    # The cluster generation of state.on_lost_volume = "restore" (operators/tools/savepoint.py) this
    # process runs at; None without that mode. Online savepoint parts carry it.
    generation: int | None = None

    def restore_seq(self, shard: int, family: str = PROFILES) -> int:
        return self.restore.seq(shard, family) if self.restore else 0

    def committed_for(self, family: str) -> dict[int, int] | None:
        if family == PROFILES or self.committed is None:
            return self.committed
        return self.committed_families.get(family, {})

    def start_offset(self, topic: str, partition: int) -> int | None:
        return self.restore.positions.get(f"{topic}#{partition}") if self.restore else None
