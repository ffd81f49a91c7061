"""The query service's own copy of the profile view topic: a RocksDB of records, indexed by identifier key.

    p<view key>               -> the record (JSON, as on the topic)
    i<id type>\\0<id key>      -> <as_of>\\t<version>\\t<view key>: the profile holding that identifier
    o<partition>              -> the next offset to read (stored with the records of each batch)

Records come from several partitions, with no order between them: a merged profile's record can be
read before or after the tombstone of a profile it absorbed (another key, maybe another partition),
and even before an older record of it. So an identifier points at the newest record that lists it, by
(as_of, version), and a tombstone removes only the index entries that still point at its own key.
Each batch (records and its offsets) is one atomic write, so a killed service resumes where it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Options, Rdict, WriteBatch

from nextclick.operators.state.store_db import compact_all

RECORD, INDEX, OFFSET = b"p", b"i", b"o"


def _index_key(id_type: str, key: str) -> bytes:
    return INDEX + id_type.encode() + b"\0" + key.encode()


class ViewIndex:
    """Records and the identifier index; written by one consumer thread, read by any."""

    def __init__(self, path: str | Path, *, fresh: bool = False) -> None:
        self.path = Path(path)
        if fresh and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(self.path), options)

    def close(self) -> None:
        self._db.close()

    def purge(self) -> None:
        """Rewrite the store's files without what was deleted (its log flushed, every level compacted): an
        erased profile's bytes stay in RocksDB's files until then (an outside probe found them there)."""
        compact_all(self._db)

    def offsets(self) -> dict[int, int]:
        """The next offset to read per partition, as last stored."""
        out: dict[int, int] = {}
        for key, value in self._db.items(from_key=OFFSET):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(OFFSET):
                break
            out[int(key[1:])] = int(value)
        return out

    def apply(self, records: Iterable[tuple[int, int, bytes, bytes | None]]) -> int:
        """Fold a batch of (partition, offset, key, value) into the store, atomically; records applied."""
        db = self._db
        batch = WriteBatch(raw_mode=True)
        # What this batch already wrote, so that later records in it see it (RocksDB's batch is write-only).
        pending: dict[bytes, bytes | None] = {}

        def get(key: bytes) -> bytes | None:
            if key in pending:
                return pending[key]
            value = db.get(key)
            assert value is None or isinstance(value, bytes)  # raw mode
            return value

        def put(key: bytes, value: bytes) -> None:
            pending[key] = value
            batch.put(key, value)

        def delete(key: bytes) -> None:
            pending[key] = None
            batch.delete(key)

        def unindex(rkey: bytes, old: bytes, kept: dict[str, list[str]]) -> None:
            """The identifiers the record `old` listed and `kept` does not stop pointing at it (those
            that point at a newer record of another profile already are left alone)."""
            for id_type, keys in orjson.loads(old).get("ids", {}).items():
                for key in keys:
                    if key not in kept.get(id_type, ()):
                        ikey = _index_key(id_type, key)
                        entry = get(ikey)
                        if entry is not None and entry.split(b"\t", 2)[2] == rkey:
                            delete(ikey)

        n = 0
        offsets: dict[int, int] = {}
        for partition, offset, rkey, value in records:
            offsets[partition] = offset + 1
            view_key = rkey.decode()
            record_key = RECORD + rkey
            old = get(record_key)
            if value is None:  # a tombstone: the record goes, and the identifiers that point at it
                if old is not None:
                    delete(record_key)
                    unindex(rkey, old, {})
                n += 1
                continue
            body: dict[str, Any] = orjson.loads(value)
            if old is not None:  # identifiers the profile no longer lists (a shared cookie) stop pointing at it
                unindex(rkey, old, body.get("ids", {}))
            put(record_key, value)
            rank = (int(body["as_of"]), int(body["version"]))
            entry_value = f"{rank[0]}\t{rank[1]}\t{view_key}".encode()
            for id_type, keys in body.get("ids", {}).items():
                for key in keys:
                    ikey = _index_key(id_type, key)
                    entry = get(ikey)
                    if entry is not None:
                        at, version, holder = entry.split(b"\t", 2)
                        if holder != rkey and (int(at), int(version)) > rank:
                            continue  # a newer record of another profile lists it (this one is stale)
                    put(ikey, entry_value)
            n += 1
        for partition, offset in offsets.items():
            batch.put(OFFSET + str(partition).encode(), str(offset).encode())
        db.write(batch)
        return n

    def lookup(self, id_type: str, key: str) -> bytes | None:
        """The record of the profile holding identifier `key` of `id_type`, or None.

        A profile whose identifier types were never recorded (stored before they were, operators/profile/
        model.py) has no index entries, nor has an identifier that a profile listed and no longer does (a
        shared cookie): either is found under its own key in the first family."""
        entry = self._db.get(_index_key(id_type, key))
        if entry is not None:
            record: bytes | None = self._db.get(RECORD + entry.split(b"\t", 2)[2])
            if record is not None:
                return record
        # No profile lists it (or the one that did no longer does: a shared cookie): its own, if it has one.
        fallback: bytes | None = self._db.get(RECORD + f"profiles/{key}".encode())
        return fallback

    def count(self) -> int:
        """Records held (a scan: for tests and the startup log, not per request)."""
        n = 0
        for key in self._db.keys(from_key=RECORD):
            assert isinstance(key, bytes)  # raw mode
            if not key.startswith(RECORD):
                break
            n += 1
        return n
