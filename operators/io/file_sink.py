"""The "file" decision sink: every decision as one JSON line in a local file.

For local debugging and tests: `flow.decision_sink = "file:/tmp/decisions.jsonl"` shows exactly
what the Kafka sink would send, without a consumer. Each line holds the record the Kafka sink
would produce: `{"topic": ..., "key": ..., "headers": {...}, "value": <the decision's JSON body>}`.

One partition, so one worker of one process appends to the file: in a cluster, the file is on
whichever process owns partition 0. Lines are flushed and fsynced when the epoch ends, before
Bytewax commits it, so a restart appends the uncommitted epoch's decisions again (at-least-once,
as with Kafka; `value.decision_id` tells duplicates apart).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from nextclick.operators.infra.config import Config, ConfigError
from nextclick.operators.io.sinks import OnFatal, OutMessage, exit_process


def json_line(message: OutMessage) -> bytes:
    """One record as a JSON line; the value, already JSON, is embedded byte for byte."""
    envelope = orjson.dumps({
        "topic": message.topic,
        "key": None if message.key is None else message.key.decode("utf-8", "backslashreplace"),
        "headers": {name: None if value is None else value.decode("utf-8", "backslashreplace")
                    for name, value in message.headers},
    })
    value = b"null" if message.value is None else message.value
    return envelope[:-1] + b',"value":' + value + b"}\n"


class _FilePartition(StatefulSinkPartition[OutMessage, None]):
    def __init__(self, path: Path, on_fatal: OnFatal) -> None:
        self._path = path
        self._on_fatal = on_fatal
        self._file: BinaryIO | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "ab")
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self._on_fatal(f"could not write decisions to {self._path} ({exc.strerror or exc}); "
                       "restart to replay the uncommitted epoch")

    def write_batch(self, values: list[OutMessage]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(b"".join(json_line(m) for m in values))
        except OSError as exc:
            self._fail(exc)

    def snapshot(self) -> None:
        # Before the epoch commits: the epoch's lines are on disk, or the process stops.
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class FileOutput(FixedPartitionedSink[OutMessage, None]):
    """Appends (key, OutMessage) items to one JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str], on_fatal: OnFatal = exit_process) -> None:
        self._path = Path(path)
        self._on_fatal = on_fatal

    def list_parts(self) -> list[str]:
        return ["0"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FilePartition:
        return _FilePartition(self._path, self._on_fatal)


def decision_sink(config: Config, target: str, on_fatal: OnFatal = exit_process) -> FileOutput:
    """The "file" decision sink: `file:<path>`, a JSON-lines file (created, or appended to)."""
    if not target.strip():
        raise ConfigError("flow.decision_sink: \"file\" needs a path, e.g. \"file:/tmp/decisions.jsonl\"")
    return FileOutput(target.strip(), on_fatal)
