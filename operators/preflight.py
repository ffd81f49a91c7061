"""Checks `nextclick run` makes before it starts the dataflow, so that a mistake gets a clear line.

Inside the dataflow the same mistakes surface as a Bytewax panic deep in a worker; here they name
the setting and the path or topic, before any state is touched.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from confluent_kafka.admin import AdminClient

from operators.config import Config, decision_topic
from operators.kafka_io import client_config
from operators.rules import DECISION_CHANNELS

log = logging.getLogger("nextclick")


class PreflightError(RuntimeError):
    """The flow cannot start; the message names the setting and what to do."""


def writable_dir(path: str | os.PathLike[str], setting: str) -> Path:
    """Create `path` if missing; prove a file can be created in it and in each directory in it (shards),
    and that each file in it (Bytewax's recovery partitions) opens for writing."""
    root = Path(path)

    def refuse(where: object, exc: OSError) -> PreflightError:
        return PreflightError(f"{setting}: cannot write to {where}: {exc.strerror or exc}")

    try:
        root.mkdir(parents=True, exist_ok=True)
        children = sorted(root.iterdir())
    except OSError as exc:
        raise refuse(exc.filename or root, exc) from None
    for where in [root, *(p for p in children if p.is_dir())]:
        try:
            fd, probe = tempfile.mkstemp(prefix=".nextclick-write-check-", dir=where)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise refuse(where, exc) from None
    for existing in children:
        if existing.is_file():
            try:
                with open(existing, "ab"):  # opening for append writes nothing
                    pass
            except OSError as exc:
                raise refuse(existing, exc) from None
    return root


def init_recovery_dir(path: Path, partitions: int) -> None:
    """Create Bytewax's recovery partitions unless they exist; processes starting together take turns."""
    from bytewax.recovery import init_db_dir

    with open(path / ".nextclick-init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not any(p.suffix == ".sqlite3" for p in path.iterdir()):
            init_db_dir(path, partitions)
            log.info("recovery directory initialised", extra={"recovery_dir": str(path), "partitions": partitions})


def output_topics(config: Config) -> list[tuple[str, str]]:
    """(topic, setting) of every topic the flow writes."""
    decisions = config.topics.decisions
    names = sorted({decision_topic(decisions, c) for c in DECISION_CHANNELS}) if "{channel}" in decisions \
        else [decisions]
    return [(t, "topics.decisions") for t in names] + [(config.topics.dead_letter, "topics.dead_letter")]


def check_topics(kafka: Mapping[str, Any], config: Config, timeout_s: float = 30.0) -> list[str]:
    """Refuse to start without the topics the flow reads; return the missing topics it writes.

    A missing output topic is only a warning: brokers that create topics on first write are common.
    """
    existing = set(AdminClient(client_config(kafka)).list_topics(timeout=timeout_s).topics)
    for topic, setting in [*((t, "topics.inputs") for t in config.topics.inputs),
                           (config.topics.control, "topics.control")]:
        if topic not in existing:
            raise PreflightError(f"input topic {topic!r} does not exist ({setting}); "
                                 "create it with `nextclick topics create`")
    missing = [t for t, _ in output_topics(config) if t not in existing]
    for topic in missing:
        log.warning("output topic does not exist: the broker must create it on first write, or decisions "
                    "cannot be delivered (create it with `nextclick topics create`)", extra={"topic": topic})
    return missing
