"""The profile view topic (`[topics] profiles`): at each epoch commit, the latest version of every profile
changed in that epoch, keyed by profile key; a tombstone for a profile erased or absorbed by a merge.

At the edge on purpose: the shard (operators/shard/shard_state.py) only says which profiles changed and
hands over their current versions at its checkpoint; this module turns them into records
(operators/engine/view.py) and owns the producer. It produces and flushes before the shard's
checkpoint returns, so before Bytewax commits the epoch: a record is never missing for a committed
epoch. A crash after the flush and before the commit replays the epoch and writes its records again,
so they are at-least-once; the topic is compacted and a later record for a key replaces an earlier
one, and a replay writes the same profiles again, so the last write wins with the latest version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from nextclick.operators.engine.view import VIEW_SCHEMA, profile_view
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import Clock
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.io.kafka_sink import shared_producer
from nextclick.operators.io.sinks import exit_process
from nextclick.operators.profile.model import Profile
from nextclick.operators.rules.model import RuleSet

log = logging.getLogger(__name__)

HEADERS: list[tuple[str, str | bytes | None]] = [("schema", VIEW_SCHEMA.encode())]
# An erased profile's tombstone says so (a merged-away profile's says nothing): the profile service then
# purges its own store's files of the record (flows/serve.py), as a shard does.
ERASED_HEADERS: list[tuple[str, str | bytes | None]] = [*HEADERS, ("reason", b"erased")]


def is_erasure(headers: Any) -> bool:
    """A view record's headers (as confluent-kafka gives them) say it is an erased profile's tombstone."""
    return isinstance(headers, list) and ("reason", b"erased") in headers


def view_record(key: str, profile: Profile | None, ruleset: RuleSet, now_ms: int) -> tuple[bytes, bytes | None]:
    """(key, value) of one profile's record; value None is the tombstone."""
    if profile is None:
        return key.encode(), None
    return key.encode(), orjson.dumps(profile_view(key, profile, ruleset, now_ms))


class ProfileViewWriter:
    """Writes the view records of one process's shards (every shard's checkpoint calls `publish`)."""

    def __init__(self, kafka: Mapping[str, str], topic: str, ruleset: RuleSet, clock: Clock, *,
                 on_fatal: Callable[[str], None] = exit_process, producer: Producer | None = None) -> None:
        self.topic, self.ruleset, self.clock, self._on_fatal = topic, ruleset, clock, on_fatal
        self._producer = producer if producer is not None else shared_producer(kafka)
        self._lock = threading.Lock()  # one failure slot for the worker threads that share it
        self._failure: str | None = None

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            metrics.DELIVERY_ERRORS.labels(msg.topic() or "", err.name()).inc()
            with self._lock:
                self._failure = self._failure or err.str()

    def publish(self, changes: Iterable[tuple[str, Profile | None]],
                erased: set[str] | frozenset[str] = frozenset()) -> int:
        """Produce one record per changed profile and wait until every one is acknowledged; the count.
        `erased`: the keys of those gone by the right to erasure (their tombstones say so).

        A record that cannot be delivered stops the process (as the decision sink does): the epoch is not
        committed, and a restart replays it, writing its records again."""
        now, ruleset, produce, topic = self.clock.now_ms(), self.ruleset, self._producer.produce, self.topic
        n = 0
        try:
            for key, profile in changes:
                rkey, value = view_record(key, profile, ruleset, now)
                headers = ERASED_HEADERS if value is None and key in erased else HEADERS
                while True:
                    try:
                        produce(topic, value, rkey, headers=headers, on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        self._producer.poll(0.05)
                n += 1
        except KafkaException as exc:
            self._on_fatal(f"Kafka producer failed on the profile view: {exc.args[0].str() if exc.args else exc}")
            return n
        if n:
            remaining = self._producer.flush()
            if remaining or self._failure:
                self._on_fatal(f"could not deliver {remaining or 'some'} profile view record(s) to Kafka "
                               f"({self._failure or 'timeout'}); restart to replay the uncommitted epoch")
        return n


def send_tombstones(kafka: Mapping[str, str], topic: str, keys: Iterable[str], *, timeout_s: float = 30.0) -> int:
    """Tombstones for these view keys, acknowledged (an erasure made with the flow stopped, which writes none
    itself); raises ConnectionError if the broker does not take them within `timeout_s`."""
    producer = Producer(client_config(kafka, **{"enable.idempotence": True}))
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    n = 0
    for key in keys:
        producer.produce(topic, None, key.encode(), headers=ERASED_HEADERS, on_delivery=delivered)
        n += 1
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise ConnectionError(f"could not deliver {remaining or len(failures)} tombstone(s) to {topic} "
                              f"({failures[0] if failures else 'timeout'}); the state is erased: run the erase "
                              "again once the broker is reachable, to write them")
    return n
