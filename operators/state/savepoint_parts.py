"""A shard's part of an online savepoint, and where savepoints live (a directory or an object store).

The running flow writes parts: right after its epoch-end checkpoint a shard takes a RocksDB checkpoint
on its own volume (hard links: milliseconds) and copies it in the background into a staging prefix of
the destination, named by the attempt's token (operators/tools/savepoint.py assembles the parts, writes
the manifest last, and restores). `Destination` hides whether that is a shared directory or an
S3-compatible URL (fsspec).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from nextclick.operators.infra.config import is_url
from nextclick.operators.state.keys import shard_path
from nextclick.operators.state.layout import PROFILES
from nextclick.operators.state.store import KeyValueStore, StateError, dir_bytes

log = logging.getLogger(__name__)


MANIFEST = "savepoint.json"
STAGING_PREFIX = ".parts-"
PART_SUFFIX = ".part.json"
FAILED_SUFFIX = ".failed.json"  # a shard's part could not be written: why, for the waiting CLI
# When not even that note fits (a destination full to the last byte): an empty file whose name says it,
# `<shard>.failed.<request digest>.<errno name>`.
FAILED_MARK = ".failed."


def request_digest(request_id: str | None) -> str:
    """Names a request in an empty failure mark (`FAILED_MARK`), whose name is all it can carry."""
    return hashlib.sha256((request_id or "").encode()).hexdigest()[:12]
SCRATCH_PREFIX = ".savepoint-"  # a shard's local checkpoint, on its own volume, until it is copied out


class SavepointError(StateError):
    """A savepoint cannot be made, read or restored; the message says why in one line."""


_MANGLED_URL = re.compile(r"^([a-z][a-z0-9+.-]*):/(?!/)")


class _Guarded:
    """An fsspec file system whose failures (no credentials, access denied, no such bucket, endpoint down)
    are one SavepointError line naming the location; FileNotFoundError stays itself (callers test for it)."""

    def __init__(self, fs: Any, location: str) -> None:
        self._fs, self._location = fs, location

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._fs, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except FileNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001 - botocore and aiohttp raise many kinds
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise SavepointError(f"{self._location}: the object store failed ({type(exc).__name__}: {detail}); "
                                     "check the bucket, the AWS_* credentials and AWS_ENDPOINT_URL") from None

        return call


class Destination:
    """A savepoint's place: a directory (a shared mount) or an object-store prefix, reached through fsspec
    (s3fs for s3://; credentials and endpoint from the usual AWS_* variables). Names inside it are
    relative, with "/" separators."""

    def __init__(self, location: str | Path) -> None:
        # `Path("s3://b/p")` is "s3:/b/p": a location that went through a Path gets its "//" back.
        text = _MANGLED_URL.sub(r"\1://", os.fspath(location))
        self.remote = is_url(text)
        self.location = text.rstrip("/") if self.remote else os.path.normpath(text)
        if self.remote:
            import fsspec

            fs = fsspec.filesystem(text.split("://", 1)[0])
            self._root = str(fs._strip_protocol(self.location)).rstrip("/")
            self.fs = _Guarded(fs, self.location)
        self.path = Path(self.location)

    def __str__(self) -> str:
        return self.location

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Destination:
        return Destination(f"{self.location}/{name}")

    def describe(self, rel: str) -> str:
        return f"{self.location}/{rel}"

    def _remote(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def read_bytes(self, rel: str) -> bytes:
        """FileNotFoundError when absent."""
        if not self.remote:
            return (self.path / rel).read_bytes()
        with self.fs.open(self._remote(rel), "rb") as fh:
            return bytes(fh.read())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Whole or not at all: a temporary file renamed into place (one PUT for an object store)."""
        if self.remote:
            self.fs.pipe_file(self._remote(rel), data)
            return
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a full destination keeps no empty leftovers
            raise

    def files(self, under: str = "") -> list[str]:
        """Every file below `under`, relative to the destination (fresh: no listing cache)."""
        if not self.remote:
            base = self.path / under if under else self.path
            if not base.is_dir():
                return []
            return sorted(p.relative_to(self.path).as_posix() for p in base.rglob("*") if p.is_file())
        self.fs.invalidate_cache()
        prefix = self._remote(under)
        try:
            found = self.fs.find(prefix)
        except FileNotFoundError:
            return []
        return sorted(str(f)[len(self._root) + 1:] for f in found)

    def children(self) -> list[str]:
        """The names directly inside (savepoints, in a savepoint_dir)."""
        if not self.remote:
            return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        self.fs.invalidate_cache()
        try:
            return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._root, detail=False))
        except FileNotFoundError:
            return []

    def is_empty(self) -> bool:
        if not self.remote:
            return not self.path.exists() or not any(self.path.iterdir())
        return not self.files()

    def is_dir(self, rel: str) -> bool:
        return (self.path / rel).is_dir() if not self.remote else bool(self.files(rel))

    def put_dir(self, local: Path, rel: str) -> int:
        """Copy a flat directory (a RocksDB checkpoint) to `rel`; hard links where the file system allows.
        The bytes copied."""
        items = sorted(local.iterdir())
        total = sum(item.stat().st_size for item in items)
        if self.remote:  # one batch: fsspec uploads the files concurrently
            self.fs.put([str(i) for i in items], [self._remote(f"{rel}/{i.name}") for i in items])
            return total
        for item in items:
            target = self.path / rel / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
        return total

    def get_dir(self, rel: str, local: Path) -> None:
        """Copy `rel` (a RocksDB directory) into the new directory `local`."""
        if not self.remote:
            copy_db(self.path / rel, local)
            return
        local.mkdir(parents=True)
        names = self.files(rel)  # one batch: fsspec downloads the files concurrently
        self.fs.get([self._remote(n) for n in names], [str(local / n.rsplit("/", 1)[-1]) for n in names])

    def move(self, rel: str, to: str) -> None:
        """Within a directory only (objects are left where they are: see `root`)."""
        (self.path / to).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path / rel, self.path / to)

    def remove(self, rel: str) -> None:
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self._remote(rel), recursive=True)
        elif (self.path / rel).is_dir():
            shutil.rmtree(self.path / rel, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.path / rel).unlink()

    def size(self) -> int:
        if not self.remote:
            return dir_bytes(self.path)
        self.fs.invalidate_cache()
        return int(self.fs.du(self._root))


# One background copier per process: a shard's epoch end only takes a hard-linked checkpoint, and the
# copy to the destination (another file system, or an object store) runs beside the flow. Not daemon
# threads: a process that drains waits for the parts it started.
_COPIER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="savepoint-copy")


def _who() -> str:
    """Names this process in a part, so a savepoint that misses parts can say who did not answer."""
    return os.environ.get("NEXTCLICK_POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def _part_rel(token: str, shard: int, subdir: str) -> str:
    name = shard_path("", shard).name
    return f"{STAGING_PREFIX}{token}/{subdir}/{name}" if subdir else f"{STAGING_PREFIX}{token}/{name}"


def report_part_failed(dest: str | Path, shard: int, token: str, subdir: str, request_id: str | None,
                       error: str, code: int | None = None) -> None:
    """Leave a note beside the part that could not be written, so `savepoint create --online` names the
    cause at once instead of waiting out its timeout (an operator probe: a full destination). Removes
    what the failed copy left first: on a full destination, that is what makes room for the note."""
    where = Destination(dest)
    rel = _part_rel(token, shard, subdir)
    note = {"shard": shard, "family": subdir, "process": _who(), "request_id": request_id, "error": error[:500]}
    try:
        where.remove(rel)
        where.write_bytes(f"{rel}{FAILED_SUFFIX}", orjson.dumps(note))
        return
    except Exception:  # noqa: BLE001 - no room for the note: an empty file's name, below
        pass
    reason = errno.errorcode.get(code or 0, "EIO")
    try:
        where.write_bytes(f"{rel}{FAILED_MARK}{request_digest(request_id)}.{reason}", b"")
    except Exception as exc:  # noqa: BLE001 - the log line is then all there is
        log.error("savepoint failure not reported at the destination", extra={
            "shard": shard, "path": where.describe(rel), "error": str(exc)})


def write_shard_part(store: KeyValueStore, dest: str | Path, shard: int, seq: int, positions: dict[str, int],
                     token: str, lineage: str | None, subdir: str = "", *,
                     scratch: Path | None = None, request_id: str | None = None,
                     generation: int | None = None) -> Future[None] | None:
    """One shard's part of an online savepoint (called by the shard right after its checkpoint).

    `subdir`: its family's directory ("" for profiles; operators/state/layout.py). `scratch`: a directory
    on the shard's own volume: the RocksDB checkpoint is taken there (hard links, milliseconds) and
    copied to `dest` in the background (the future; errors are logged, the CLI names the missing part).
    Without it the checkpoint is written straight into a local `dest` (tests, tools). `generation`: the
    cluster generation the process runs at (StartPlan.generation), which the savepoint records."""
    where = Destination(dest)
    name = shard_path("", shard).name
    rel = _part_rel(token, shard, subdir)
    part = {"shard": shard, "seq": seq, "positions": positions, "lineage": lineage, "token": token,
            "family": subdir, "process": _who(), "request_id": request_id, "generation": generation}
    if scratch is None and not where.remote:
        target = where.path / rel
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        store.create_checkpoint(target)
        part["bytes"] = dir_bytes(target)
        where.write_bytes(f"{rel}{PART_SUFFIX}", orjson.dumps(part))
        return None
    # One directory per shard and attempt, no shared parent: copies finish in any order, each removes its own.
    local = (scratch or Path(os.environ.get("TMPDIR", "/tmp"))) / f"{SCRATCH_PREFIX}{token}-{subdir or PROFILES}-{name}"
    if local.exists():
        shutil.rmtree(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    store.create_checkpoint(local)

    def copy() -> None:
        started = time.perf_counter()
        try:
            where.remove(rel)  # what an earlier, interrupted copy of this part left
            part["bytes"] = where.put_dir(local, rel)
            where.write_bytes(f"{rel}{PART_SUFFIX}", orjson.dumps(part))  # last: the part is complete
        except Exception as exc:  # noqa: BLE001 - a background copy: log it, the CLI names the missing part
            log.error("savepoint part not copied", extra={"shard": shard, "family": subdir or PROFILES,
                                                          "path": where.describe(rel), "error": str(exc)})
            report_part_failed(dest, shard, token, subdir, request_id, str(exc), getattr(exc, "errno", None))
            return
        finally:
            shutil.rmtree(local, ignore_errors=True)
        log.info("savepoint part written", extra={"shard": shard, "family": subdir or PROFILES, "seq": seq,
                                                  "path": where.describe(rel), "bytes": part["bytes"],
                                                  "seconds": round(time.perf_counter() - started, 3)})

    return _COPIER.submit(copy)


def copy_db(src: Path, dest: Path) -> None:
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
