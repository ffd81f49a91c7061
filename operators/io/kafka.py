"""Kafka at the edges of the flow, split by job (issue #24):

- operators/io/kafka_source.py: the partitioned source with exact offsets (`KafkaInput`, `RawMessage`,
  `Aligned`) and the final group-offset commit;
- operators/io/kafka_sink.py: the epoch-flushed sink (`KafkaOutput`, `shared_producer`), the default
  decision sink;
- operators/io/kafka_admin.py: client settings (`client_config`, `redacted`) and `wait_for_broker`;
- operators/io/topics.py: topic admin (`ensure_topics`, `nextclick topics create`);
- operators/io/sinks.py: the decision sink protocol, `OutMessage` and `exit_process`.

Nothing is defined here any more.
"""

from __future__ import annotations

# re-exported until the package rename updates its importers
from operators.io import kafka_sink, kafka_source
from operators.io.kafka_admin import client_config, redacted, wait_for_broker
from operators.io.sinks import OutMessage, exit_process
from operators.io.topics import ensure_topics

RawMessage = kafka_source.RawMessage
shared_producer = kafka_sink.shared_producer
_KafkaPartition = kafka_source._KafkaPartition
_SinkPartition = kafka_sink._SinkPartition

__all__ = ["OutMessage", "RawMessage", "_KafkaPartition", "_SinkPartition", "client_config", "ensure_topics",
           "exit_process", "redacted", "shared_producer", "wait_for_broker"]
