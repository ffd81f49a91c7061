"""`python -m bench.relay`: the broker's own latency floor, measured the way the flow is measured.

Copies every message of one topic to another with the flow's own client settings (the input
partitions' consumer, the sinks' producer) and nothing in between: no parsing, no state, no
Bytewax. Latency through it is what the broker and the two client hops cost by themselves, so
`bench.run` subtracts nothing and reports it next to the flow's.

    python -m bench.relay --bootstrap HOST:PORT --source IN --sink OUT --partitions 4 --stop-file F
"""

from __future__ import annotations

import argparse
import os
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from nextclick.operators.io.kafka_sink import sink_producer_config
from nextclick.operators.io.kafka_source import source_consumer_config


def relay(bootstrap: str, source: str, sink: str, partitions: int, stop_file: str) -> int:
    kafka = {"bootstrap.servers": bootstrap}
    consumer = Consumer(source_consumer_config(kafka, f"bench-relay-{time.time_ns()}"))
    consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in range(partitions)])
    producer = Producer(sink_producer_config(kafka))
    copied = 0
    try:
        while not os.path.exists(stop_file):
            # Like a Bytewax input partition: a non-blocking poll, then a 5 ms nap when idle.
            msgs = consumer.consume(1000, 0)
            for msg in msgs:
                error = msg.error()
                if error is not None:
                    if error.fatal() or error.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise RuntimeError(f"relay consumer failed: {error.str()}")
                    continue
                while True:
                    try:
                        producer.produce(sink, msg.value(), msg.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
                copied += 1
            producer.poll(0)
            if not msgs:
                time.sleep(0.005)
    finally:
        producer.flush(30)
        consumer.close()
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--stop-file", required=True, help="the relay stops when this file appears")
    args = parser.parse_args(argv)
    copied = relay(args.bootstrap, args.source, args.sink, args.partitions, args.stop_file)
    print(f"relayed {copied} messages", flush=True)


if __name__ == "__main__":
    main()
