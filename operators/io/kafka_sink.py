"""The Kafka sink: one shared idempotent producer per process, flushed once per epoch.

Why not Bytewax's stock KafkaSink: it flushes after every batch. This one flushes in `snapshot`,
which Bytewax calls before it commits the epoch: that makes decisions and dead letters
at-least-once without a broker round trip per batch. It is the default decision sink ("kafka",
operators/io/sinks.py) and the dead-letter sink.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, Callable, Mapping

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from nextclick.operators.infra import metrics
from nextclick.operators.infra.config import Config, ConfigError
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.io.sinks import OnFatal, OutMessage, exit_process
from nextclick.operators.state.placement import key_base


def sink_producer_config(kafka: Mapping[str, str]) -> dict[str, Any]:
    """Settings of the producer every sink partition shares."""
    return client_config(kafka, **{"linger.ms": 5, "enable.idempotence": True, "compression.type": "lz4"})


_producers: dict[tuple[tuple[str, str], ...], Producer] = {}
_producers_lock = threading.Lock()


def shared_producer(kafka: Mapping[str, str]) -> Producer:
    """One idempotent producer per process and configuration, shared by all sink partitions."""
    key = tuple(sorted((k, str(v)) for k, v in kafka.items()))
    with _producers_lock:
        producer = _producers.get(key)
        if producer is None:
            producer = Producer(sink_producer_config(kafka))
            _producers[key] = producer
        return producer


class _SinkPartition(StatefulSinkPartition[OutMessage, None]):
    def __init__(self, producer: Producer, on_fatal: Callable[[str], None]) -> None:
        self._producer = producer
        self._on_fatal = on_fatal
        self._failure: str | None = None

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            return
        metrics.DELIVERY_ERRORS.labels(msg.topic() or "", err.name()).inc()
        if self._failure is None:
            self._failure = err.str()

    def write_batch(self, values: list[OutMessage]) -> None:
        produce = self._producer.produce
        try:
            for m in values:
                while True:
                    try:
                        produce(m.topic, m.value, m.key, headers=list(m.headers), on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        self._producer.poll(0.05)
            self._producer.poll(0)
        except KafkaException as exc:
            self._on_fatal(f"Kafka producer failed: {exc.args[0].str() if exc.args else exc}")

    def snapshot(self) -> None:
        # Called by Bytewax at epoch close, before the epoch commits: everything written must be
        # acknowledged now, or a crash after the commit would lose it. flush() returns once every
        # message is delivered or has failed (librdkafka's delivery.timeout.ms, 5 min by default),
        # so a broker that comes back within that time costs a pause, not a restart.
        remaining = self._producer.flush()
        if remaining or self._failure:
            self._on_fatal(f"could not deliver {remaining or 'some'} message(s) to Kafka "
                           f"({self._failure or 'timeout'}); restart to replay the uncommitted epoch")

    def close(self) -> None:
        self._producer.flush(30)


class KafkaOutput(FixedPartitionedSink[OutMessage, None]):
    """Writes (key, OutMessage) items; items keyed by a numeric shard id stay on that shard's worker."""

    def __init__(self, kafka: Mapping[str, str], parts: int,
                 on_fatal: Callable[[str], None] = exit_process) -> None:
        self._kafka = dict(kafka)
        self._parts = parts
        self._on_fatal = on_fatal

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self._parts)]

    def part_fn(self, item_key: str) -> int:
        number = key_base(item_key)  # a `profiles` shard's key is its number, with its placement suffix
        return int(number) if number.isdigit() else zlib.adler32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPartition:
        return _SinkPartition(shared_producer(self._kafka), self._on_fatal)


def decision_sink(config: Config, target: str, on_fatal: OnFatal = exit_process) -> KafkaOutput:
    """The "kafka" decision sink: each decision to its topic, keyed by customer, CloudEvents headers."""
    if target:
        raise ConfigError(f"flow.decision_sink: \"kafka\" takes no argument, got \"kafka:{target}\" "
                          "(its topics are topics.decisions)")
    return KafkaOutput(config.kafka, config.state.shards, on_fatal)
