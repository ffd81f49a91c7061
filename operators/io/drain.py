"""Graceful stop: SIGTERM (or SIGINT) stops the input, Bytewax finishes and commits the epoch, exit 0.

How one process drains: the stop event makes every input partition raise StopIteration at its next
poll; Bytewax then snapshots each partition at EOF (its final offset), closes the epoch, calls every
shard's `snapshot` (RocksDB checkpoint) and every sink partition's (producer flush), commits the
epoch to the recovery store and returns. A restart resumes exactly there: nothing is replayed, no
decision is emitted twice.

A Bytewax cluster completes only when the inputs of every process are done, so a signal to one
process must reach all of them: the signalled process publishes a drain request on the control
topic, and every process of the cluster runs a `DrainWatch` (a consumer of the control topic, from
its end) that stops its own input when a request for its consumer group arrives. The dataflow's
own control reader skips drain requests (operators/io/control.py).

Signals are blocked in every thread and a dedicated thread waits for them (`sigwait`), so they are
handled even while the main thread is inside Bytewax's Rust code. A second signal exits at once,
without committing the epoch (a restart replays it).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition

from nextclick.operators.io.kafka_admin import client_config

log = logging.getLogger("nextclick")

SIGNALS = {signal.SIGTERM, signal.SIGINT}


def block_signals() -> None:
    """Call before any thread starts: threads inherit the mask, so only `SignalWaiter` sees them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def drain_request(group_id: str, process_id: int, now_ms: int, reason: str) -> bytes:
    return orjson.dumps({"command": "drain", "request_id": f"drain-{group_id}-{process_id}-{now_ms}",
                         "group_id": group_id, "from_process": process_id, "requested_at": now_ms,
                         "reason": reason})


def parse_drain(value: bytes | None, group_id: str, since_ms: int) -> dict[str, Any] | None:
    """The drain request in `value` if it is one for `group_id`, made at or after `since_ms`.

    Older requests are ignored: they were for an earlier run of the cluster (the watcher starts at
    the end of the topic, but a broker may place "the end" early).
    """
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("command") != "drain" or body.get("group_id") != group_id:
        return None
    requested_at = body.get("requested_at")
    if not isinstance(requested_at, int) or requested_at < since_ms:
        return None
    return body


def publish_drain(kafka: Mapping[str, Any], topic: str, request: bytes, timeout_s: float = 10.0) -> bool:
    """Send a drain request; False (logged) if Kafka did not take it in time."""
    try:
        producer = Producer(client_config(kafka))
        producer.produce(topic, request, b"drain")
        left = producer.flush(timeout_s)
    except KafkaException as exc:
        log.error("could not publish the drain request; the other processes will not stop",
                  extra={"topic": topic, "error": str(exc)})
        return False
    if left:
        log.error("could not publish the drain request in time; the other processes will not stop",
                  extra={"topic": topic, "timeout_s": timeout_s})
        return False
    return True


class SignalWaiter(threading.Thread):
    """Waits for SIGTERM/SIGINT: the first calls `on_first(signum)`, the second exits at once."""

    def __init__(self, on_first: Callable[[int], None]) -> None:
        super().__init__(name="nextclick-signals", daemon=True)
        self._on_first = on_first

    def run(self) -> None:
        signum = signal.sigwait(SIGNALS)
        self._on_first(signum)
        signum = signal.sigwait(SIGNALS)
        log.warning("second signal: exiting now without finishing the epoch (a restart replays it)",
                    extra={"signal": signal.Signals(signum).name})
        logging.shutdown()
        os._exit(128 + signum)


class DrainWatch(threading.Thread):
    """Reads the control topic from its end; calls `on_drain(request)` for this group's next drain request."""

    def __init__(self, kafka: Mapping[str, Any], topic: str, group_id: str, since_ms: int,
                 on_drain: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name="nextclick-drain-watch", daemon=True)
        self._kafka, self._topic, self._group_id, self._since_ms = dict(kafka), topic, group_id, since_ms
        self._on_drain = on_drain
        self.stopped = threading.Event()
        self.watching = threading.Event()

    def run(self) -> None:
        # The flow's own group id: ACLs already allow it; this consumer never commits.
        consumer = Consumer(client_config(self._kafka, **{
            "group.id": self._group_id, "enable.auto.commit": False, "fetch.wait.max.ms": 100,
            "fetch.queue.backoff.ms": 10}))
        try:
            while not self.stopped.is_set():
                try:
                    meta = consumer.list_topics(self._topic, timeout=10).topics.get(self._topic)
                except KafkaException:
                    meta = None
                if meta is not None and meta.error is None and meta.partitions:
                    consumer.assign([TopicPartition(self._topic, p, OFFSET_END) for p in meta.partitions])
                    break
                self.stopped.wait(2)
            self.watching.set()
            while not self.stopped.is_set():
                for msg in consumer.consume(100, 0.2):
                    if msg.error() is not None:
                        continue
                    request = parse_drain(msg.value(), self._group_id, self._since_ms)
                    if request is not None:
                        self._on_drain(request)
                        return
        finally:
            consumer.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000
