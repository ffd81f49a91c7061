"""Checks `nextclick run` makes before it starts the dataflow, so that a mistake gets a clear line.

Inside the dataflow the same mistakes surface as a Bytewax panic deep in a worker; here they name
the setting and the path or topic, before any state is touched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from confluent_kafka.admin import AdminClient

from nextclick.operators.channels import DECISION_CHANNELS
from nextclick.operators.errors import NextclickError
from nextclick.operators.infra.config import Config, decision_topic
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.state.layout import CONTROL_STEP, INPUT_STEP
from nextclick.operators.state.recovery_db import read_recovery


class PreflightError(NextclickError, RuntimeError):
    """The flow cannot start; the message names the setting and what to do."""


def writable_dir(path: str | os.PathLike[str], setting: str) -> None:
    """Prove files can be created in `path` (or, if it is missing, in the directory that would hold it),
    in each directory in it (shards), and that each file in it (Bytewax's recovery partitions) opens
    for writing. Leaves nothing behind: the start-up checks that follow write only once all passed."""
    root = Path(path).absolute()
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent

    def refuse(target: Path, exc: OSError) -> PreflightError:
        reason = exc.strerror or str(exc)
        if where != root:
            return PreflightError(f"{setting}: cannot create {root}: {reason} (in {where})")
        return PreflightError(f"{setting}: cannot write to {target}: {reason}")

    children = sorted(root.iterdir()) if where == root and root.is_dir() else []
    for target in [where, *(p for p in children if p.is_dir())]:
        try:
            fd, probe = tempfile.mkstemp(prefix=".nextclick-write-check-", dir=target)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise refuse(target, exc) from None
    for existing in children:
        if existing.is_file():
            try:
                with open(existing, "ab"):  # opening for append writes nothing
                    pass
            except OSError as exc:
                raise refuse(existing, exc) from None


def check_directories(config: Config) -> None:
    writable_dir(config.state.dir, "state.dir")
    writable_dir(config.state.recovery_dir, "state.recovery_dir")


def output_topics(config: Config) -> list[tuple[str, str]]:
    """(topic, setting) of every topic the flow writes."""
    decisions = config.topics.decisions
    names = sorted({decision_topic(decisions, c) for c in DECISION_CHANNELS}) if "{channel}" in decisions \
        else [decisions]
    view = [(config.topics.profiles, "topics.profiles")] if config.topics.profiles else []
    return [(t, "topics.decisions") for t in names] + [(config.topics.dead_letter, "topics.dead_letter"), *view]


def check_topics(kafka: Mapping[str, Any], config: Config, timeout_s: float = 30.0) -> None:
    """Refuse to start without every topic the flow reads or writes.

    A missing output topic is refused too, not left to the broker: one that creates topics on first
    write gives it the default partitions and retention, and one that does not fails every epoch.
    """
    metadata = AdminClient(client_config(kafka)).list_topics(timeout=timeout_s).topics
    existing = set(metadata)
    inputs = [*((t, "topics.inputs") for t in config.topics.inputs), (config.topics.control, "topics.control")]
    for topic, setting in inputs:
        if topic not in existing:
            raise PreflightError(f"input topic {topic!r} does not exist ({setting}); "
                                 "create it with `nextclick topics create`")
    counts = {t: len(metadata[t].partitions) for t, _ in inputs}
    positions = read_positions(config.state.recovery_dir)
    dropped = sorted({key.rpartition("#")[0] for key in positions} - counts.keys())
    if dropped:
        held = ", ".join(sorted((key for key in positions if key.rpartition("#")[0] == dropped[0]),
                                key=_partition_number))
        raise PreflightError(
            f"{dropped[0]!r} is no longer an input (topics.inputs, topics.control), but state.recovery_dir holds its "
            f"read positions ({held}), "
            "and the flow cannot resume without them: name it again to go on reading it; to stop reading it, go "
            "through a savepoint (docs/operations.md, \"Removing an input topic\"). Nothing was started or changed")
    gone = vanished_partitions(counts, positions)
    if gone:
        topic = next(iter(gone))
        count = f"{counts[topic]} partition{'' if counts[topic] == 1 else 's'}"
        raise PreflightError(
            f"input topic {topic!r} has {count}, but state.recovery_dir holds read positions of "
            f"partitions it no longer has ({', '.join(gone[topic])}): was it deleted and created again? Nothing "
            "was started or changed; docs/operations.md, \"An input topic with fewer partitions\", says what to do")
    missing = [(t, setting) for t, setting in output_topics(config) if t not in existing]
    if missing:
        named = ", ".join(f"{t!r} ({setting})" for t, setting in missing)
        raise PreflightError(f"output topic{'s' if len(missing) > 1 else ''} {named} "
                             f"do{'' if len(missing) > 1 else 'es'} not exist; create "
                             f"{'them' if len(missing) > 1 else 'it'} with `nextclick topics create` "
                             "(a broker that creates topics on first write uses its default partitions "
                             "and retention)")


def read_positions(recovery_dir: str | Path) -> list[str]:
    """The input partitions ("topic#n") whose read positions Bytewax's recovery holds here, committed."""
    view = read_recovery(recovery_dir)
    return [key for step, snapshots in view.snapshots.items()
            if step.rsplit(".", 1)[-1] in (INPUT_STEP, CONTROL_STEP) for key in snapshots]


def vanished_partitions(counts: Mapping[str, int], known: list[str]) -> dict[str, list[str]]:
    """Per topic, the partitions recovery read from that the topic no longer has, in order. Bytewax
    resumes each one it holds a position for and panics on one the topic does not list (one process:
    "Key StateKey(...) is not in this worker's routing map"; a cluster: each process blames the other
    as a lost peer, on every restart). Topics not in `counts` are not ours to judge."""
    gone: dict[str, list[str]] = {}
    for key in known:
        topic, _, number = key.rpartition("#")
        if topic in counts and number.isdigit() and int(number) >= counts[topic]:
            gone.setdefault(topic, []).append(key)
    return {topic: sorted(keys, key=_partition_number) for topic, keys in sorted(gone.items())}


def _partition_number(key: str) -> int:
    """"web#10" -> 10, so that partitions are named in their order (#2 before #10)."""
    number = key.rpartition("#")[2]
    return int(number) if number.isdigit() else -1
