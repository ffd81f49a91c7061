"""A sink that cannot deliver ends the process with a clear reason instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from nextclick.operators.io.topics import ensure_topics

pytestmark = pytest.mark.broker


def test_undeliverable_decisions_exit_non_zero_with_reason(kafka: dict[str, str], topic_prefix: str,
                                                            tmp_path: Path) -> None:
    inputs, control, dlq = f"{topic_prefix}.in", f"{topic_prefix}.control", f"{topic_prefix}.dlq"
    decisions = f"{topic_prefix}.decisions"
    # Every topic exists at start (a missing output topic is refused before the flow runs); the
    # decisions topic is deleted once the flow is ready, so its first decision cannot be delivered.
    ensure_topics(kafka, {inputs: 1, control: 1, dlq: 1, decisions: 1})
    env = {**os.environ,
           "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": kafka["bootstrap.servers"],
           "NEXTCLICK_KAFKA__MESSAGE_TIMEOUT_MS": "3000",
           "NEXTCLICK_KAFKA__ALLOW_AUTO_CREATE_TOPICS": "false",
           "NEXTCLICK_PRIVACY__SECRET": "s", "NEXTCLICK_LOG_LEVEL": "INFO",
           "NEXTCLICK_TOPICS__INPUTS": inputs, "NEXTCLICK_TOPICS__CONTROL": control,
           "NEXTCLICK_TOPICS__DEAD_LETTER": dlq, "NEXTCLICK_TOPICS__DECISIONS": decisions,
           "NEXTCLICK_STATE__DIR": str(tmp_path / "state"), "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "rec"),
           "NEXTCLICK_FLOW__EPOCH_SECONDS": "0.5"}
    log = tmp_path / "run.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nextclick", "run"], env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    try:
        while '"msg":"ready"' not in log.read_text():
            assert proc.poll() is None and time.monotonic() - started < 30, log.read_text()[-2000:]
            time.sleep(0.1)
        admin = AdminClient(kafka)  # kept alive until the future resolves
        for future in admin.delete_topics([decisions], operation_timeout=10).values():
            future.result()
        producer = Producer(kafka)
        now = int(time.time() * 1000)
        producer.produce(inputs, orjson.dumps({"event_id": "c-1", "type": "call_center_contact", "ts": now,
                                               "customer_id": "carol", "outcome": "unresolved"}), b"carol")
        assert producer.flush(10) == 0
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log.read_text()
    assert rc == 70, stderr[-2000:]
    assert "nextclick: fatal: could not deliver" in stderr
    assert time.monotonic() - started < 60
