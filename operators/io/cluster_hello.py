"""What each process of a cluster says about itself at start, so that a cluster that cannot form says why.

Bytewax (Timely) needs every process started with the same `--workers`, the same list of
`--addresses` and one count of recovery partitions; otherwise the processes connect and then fail
with nothing but "Send thread panic" (or a closed socket), which the runner would report as a lost
peer, again at every restart. So before the dataflow runs, each process of a multi-process run
publishes a hello on the control topic (key `hello/<group>/<process>`): its release, workers,
cluster size, recovery partitions and shared settings (the `cluster_settings`, by name). When the
cluster fails, the runner reads its peers' latest hellos and, if they differ from its own, names
what differs in one line. The happy path costs one produce.

The dataflow's control reader skips hellos (operators/io/control.py), as it skips drain requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from nextclick.operators.exchange import setting_differences
from nextclick.operators.io.kafka_admin import client_config

log = logging.getLogger("nextclick")

# How much earlier than this process a peer's hello may have been said to count: a cluster forms
# within a pod's start-up allowance (4 minutes), and a hello older than this is an earlier start's.
LOOK_BACK_MS = 10 * 60 * 1000


def hello(group_id: str, process_id: int, processes: int, workers: int, recovery_partitions: int, release: str,
          settings: Mapping[str, str], now_ms: int) -> dict[str, Any]:
    return {"command": "hello", "group_id": group_id, "process": process_id, "processes": processes,
            "workers": workers, "recovery_partitions": recovery_partitions, "release": release,
            "settings": dict(settings), "started_at": now_ms}


def publish_hello(kafka: Mapping[str, Any], topic: str, record: dict[str, Any], timeout_s: float = 10.0) -> bool:
    """Best effort: a hello that cannot be published only costs the explanation of a failed start."""
    try:
        producer = Producer(client_config(kafka))
        producer.produce(topic, orjson.dumps(record), f"hello/{record['group_id']}/{record['process']}".encode())
        left = producer.flush(timeout_s)
    except KafkaException as exc:
        left, error = 1, str(exc)
    else:
        error = "timed out"
    if left:
        log.warning("could not publish this process's hello on the control topic; a cluster that fails to form "
                    "will be reported as a lost peer", extra={"topic": topic, "error": error})
    return not left


def peer_hellos(kafka: Mapping[str, Any], topic: str, group_id: str, since_ms: int, processes: int,
                timeout_s: float = 10.0) -> dict[int, dict[str, Any]]:
    """Each process's latest hello for `group_id` published at or after `since_ms` (empty if unreadable);
    read until every one of `processes` has said one and the topic is quiet, or `timeout_s`."""
    found: dict[int, dict[str, Any]] = {}
    consumer = Consumer(client_config(kafka, **{"group.id": group_id, "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return found
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in meta.partitions],
                                            timeout=timeout_s)
        consumer.assign([tp for tp in starts if tp.offset >= 0])
        # Not to an end-of-partition event: a broker's high watermark may lag what it has (Tansu's does),
        # and a peer whose hello is missing would be taken for one started alike.
        deadline, quiet, everyone = time.monotonic() + timeout_s, 0, set(range(processes))
        while not (quiet >= 2 and everyone <= found.keys()) and time.monotonic() < deadline:
            batch = consumer.consume(500, 0.3)
            quiet = 0 if batch else quiet + 1
            for msg in batch:
                if msg.error() is None and (record := parse_hello(msg.value(), group_id)) is not None:
                    if record["started_at"] >= since_ms:
                        found[record["process"]] = record
    except KafkaException as exc:
        log.warning("could not read the peers' hellos", extra={"topic": topic, "error": str(exc)})
    finally:
        consumer.close()
    return found


def parse_hello(value: bytes | None, group_id: str) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("command") != "hello" or body.get("group_id") != group_id:
        return None
    counts = ("process", "processes", "workers", "recovery_partitions", "started_at")
    if (not all(type(body.get(name)) is int for name in counts) or not isinstance(body.get("release"), str)
            or not isinstance(body.get("settings"), dict)
            or not all(isinstance(v, str) for v in body["settings"].values())):
        return None  # not one a process of this release wrote
    return body


def differences(mine: Mapping[str, Any], peers: Mapping[int, Mapping[str, Any]]) -> str | None:
    """One line naming how the peers' hellos differ from this process's, or None if they do not."""
    parts: list[str] = []
    # A process past this cluster's size is an earlier, larger cluster's: not a peer now.
    for process in sorted(p for p in peers if p != mine["process"] and 0 <= p < mine["processes"]):
        theirs = peers[process]
        said: list[str] = []
        for name, flag in (("workers", "--workers"), ("processes", "processes in --addresses"),
                           ("recovery_partitions", "recovery partitions (--recovery-per-process or -partitions)")):
            if theirs.get(name) != mine[name]:
                said.append(f"{flag} {theirs.get(name)} there, {mine[name]} here")
        if theirs.get("release") != mine["release"]:
            said.append(f"nextclick {theirs.get('release')} there, {mine['release']} here")
        said += setting_differences(theirs.get("settings", {}), mine["settings"])
        if said:
            parts.append(f"process {process} runs with {'; '.join(said)}")
    if not parts:
        return None
    return (f"the processes of this cluster were started differently ({' / '.join(parts)}; this is process "
            f"{mine['process']}): start every process with the same --workers, --addresses, recovery flags, release "
            "and configuration (docs/operations.md, \"One configuration for every process\")")
