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

from operators.io.kafka import ensure_topics

pytestmark = pytest.mark.broker


def test_undeliverable_decisions_exit_non_zero_with_reason(kafka: dict[str, str], topic_prefix: str,
                                                            tmp_path: Path) -> None:
    inputs, control, dlq = f"{topic_prefix}.in", f"{topic_prefix}.control", f"{topic_prefix}.dlq"
    ensure_topics(kafka, {inputs: 1, control: 1, dlq: 1})  # the decisions topic is never created
    producer = Producer(kafka)
    now = int(time.time() * 1000)
    producer.produce(inputs, orjson.dumps({"event_id": "c-1", "type": "call_center_contact", "ts": now,
                                           "customer_id": "carol", "outcome": "unresolved"}), b"carol")
    assert producer.flush(10) == 0
    env = {**os.environ,
           "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": kafka["bootstrap.servers"],
           "NEXTCLICK_KAFKA__MESSAGE_TIMEOUT_MS": "3000",
           "NEXTCLICK_KAFKA__ALLOW_AUTO_CREATE_TOPICS": "false",
           "NEXTCLICK_PRIVACY__SECRET": "s",
           "NEXTCLICK_TOPICS__INPUTS": inputs, "NEXTCLICK_TOPICS__CONTROL": control,
           "NEXTCLICK_TOPICS__DEAD_LETTER": dlq, "NEXTCLICK_TOPICS__DECISIONS": f"{topic_prefix}.missing",
           "NEXTCLICK_STATE__DIR": str(tmp_path / "state"), "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "rec"),
           "NEXTCLICK_FLOW__EPOCH_SECONDS": "0.5"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 70, done.stderr[-2000:]
    assert "nextclick: fatal: could not deliver" in done.stderr
    assert time.monotonic() - started < 60
