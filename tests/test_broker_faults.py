"""Broker faults: down at start, dropped mid-run, and secrets kept out of logs and errors.

What the mid-run test pins down (Tansu keeps everything in memory, so a restarted broker has no
topics and no data): the flow neither crashes nor hangs while the broker is gone (librdkafka logs
connection errors and retries); when the broker comes back empty and the topics are recreated, each
input partition keeps reading from the offset it had reached, so messages at lower offsets of the
recreated topic are skipped without a warning. The flow still stops cleanly when asked.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.flows.local_broker import LocalBroker, free_port
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.infra.logs import configure_logging
from nextclick.operators.io.kafka_admin import redacted, wait_for_broker
from nextclick.operators.io.topics import ensure_topics
from tests.helpers import FlowThread, consume_all
from tests.waits import wait_until

PLANTED_PASSWORD = "pl4nted-Sasl-Passw0rd!"
ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    return free_port()  # free a moment ago, nothing listens on it


class CapturedLogs:
    """configure_logging into a string for the duration of a block, then the old handlers back."""

    def __enter__(self) -> io.StringIO:
        root = logging.getLogger()
        self._saved = (root.handlers[:], root.level)
        self.stream = io.StringIO()
        configure_logging("DEBUG", self.stream)
        return self.stream

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.handlers[:], root.level = self._saved


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    """The complete log lines so far (the flow may be writing the last one)."""
    text = stream.getvalue()
    return [orjson.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


# --- (a) broker down at start --------------------------------------------------------------------

@pytest.mark.broker
def test_a_security_setting_the_broker_refuses_is_named_at_once_not_retried(kafka: dict[str, str]) -> None:
    """SASL against a plaintext listener: librdkafka's own reason, in one line, without two minutes of
    retries (an outside probe: it read as "Kafka did not answer" and was retried for 120 s)."""
    sasl = {**kafka, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": "nextclick", "sasl.password": "not-a-secret"}
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        wait_for_broker(sasl, timeout_s=60, attempt_s=1)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert message.startswith(f"Kafka at {kafka['bootstrap.servers']} refused the connection's security settings (")
    assert "SASL" in message and "not-a-secret" not in message and "\n" not in message, message


def test_wait_for_broker_retries_with_backoff_then_raises() -> None:
    kafka = {"bootstrap.servers": f"127.0.0.1:{closed_port()}"}
    started = time.monotonic()
    with CapturedLogs() as logs, pytest.raises(ConnectionError) as info:
        wait_for_broker(kafka, timeout_s=3, attempt_s=0.5)
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed <= 3 + 0.5 + 2, elapsed
    message = str(info.value)
    assert message.startswith(f"Kafka at {kafka['bootstrap.servers']} did not answer within 3s (")
    assert "\n" not in message
    retries = [e for e in _lines(logs) if e["msg"] == "broker not reachable, retrying"]
    assert len(retries) >= 2
    delays = [float(e["retry_in_s"]) for e in retries]  # type: ignore[arg-type]
    assert delays == sorted(delays) and delays[0] == 0.2 and delays[1] == 0.4  # exponential backoff
    assert all(e["level"] == "warning" and e["error"] for e in retries)


def _run_cli(*args: str, env_extra: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTCLICK_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "nextclick", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_run_against_a_closed_port_exits_with_one_line(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    proc = _run_cli("run", "--broker-timeout", "3", env_extra={
        "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "NEXTCLICK_PRIVACY__SECRET": "test-secret",
        "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "recovery"),
        "NEXTCLICK_STATE__DIR": str(tmp_path / "state"),
    })
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    # Everything but the last line is a JSON log line (the retries); the last is the one-line error.
    errors = [line for line in lines if not line.startswith("{")]
    assert errors == [lines[-1]], proc.stderr
    assert lines[-1].startswith(f"nextclick: error: Kafka at {bootstrap} did not answer within 3s")
    assert any(orjson.loads(line)["msg"] == "broker not reachable, retrying" for line in lines[:-1])
    assert not (tmp_path / "recovery").exists()


# --- (c) secrets never in logs or errors ---------------------------------------------------------

def _sasl(port: int) -> dict[str, str]:
    return {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN", "sasl.username": "nextclick", "sasl.password": PLANTED_PASSWORD}


def test_sasl_password_is_not_in_logs_or_errors() -> None:
    kafka = _sasl(closed_port())
    with CapturedLogs() as logs:
        with pytest.raises(ConnectionError) as info:
            wait_for_broker(kafka, timeout_s=2, attempt_s=0.5)
        with pytest.raises(ConnectionError) as debug_info:  # even with every librdkafka debug context on
            wait_for_broker({**kafka, "debug": "all"}, timeout_s=1, attempt_s=0.5)
        logging.getLogger("nextclick.test").info("config", extra={"sasl_password": PLANTED_PASSWORD,
                                                                   "kafka": redacted(kafka)})
    text = logs.getvalue()
    assert "did not answer" in str(info.value)
    assert len(text.splitlines()) > 3  # the retries (and librdkafka's debug lines) were captured
    for where in (text, str(info.value), repr(info.value), str(debug_info.value)):
        assert PLANTED_PASSWORD not in where
    assert redacted(kafka)["sasl.password"] == "***"
    assert {k: v for k, v in redacted(kafka).items() if k != "sasl.password"} == {
        k: v for k, v in kafka.items() if k != "sasl.password"}
    for name in ("ssl.key.password", "sasl.oauthbearer.client.secret", "ssl.keystore.password", "ssl.key.pem"):
        assert redacted({name: PLANTED_PASSWORD})[name] == "***"


def test_cli_error_and_logs_do_not_show_the_sasl_password(tmp_path: Path) -> None:
    proc = _run_cli("run", "--broker-timeout", "2", env_extra={
        "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
        "NEXTCLICK_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "NEXTCLICK_KAFKA__SASL_MECHANISM": "PLAIN",
        "NEXTCLICK_KAFKA__SASL_USERNAME": "nextclick",
        "NEXTCLICK_KAFKA__SASL_PASSWORD": PLANTED_PASSWORD,
        "NEXTCLICK_PRIVACY__SECRET": "test-secret",
        "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "recovery"),
        "NEXTCLICK_LOG_LEVEL": "DEBUG",
    })
    assert proc.returncode != 0 and "did not answer" in proc.stderr.strip().splitlines()[-1]
    assert PLANTED_PASSWORD not in proc.stderr + proc.stdout


# --- (b) connection dropped mid-run ---------------------------------------------------------------

T0 = 1_795_428_000_000
MIN = 60_000


def _events(first: int, n: int) -> list[bytes]:
    return [orjson.dumps({"event_id": f"e{i}", "type": "call_center_contact", "ts": T0 + i, "customer_id": f"c{i}",
                          "topic": "billing", "outcome": "unresolved"}) for i in range(first, first + n)]


def _applied() -> float:
    return sum(metrics.counter_values(metrics.EVENTS).values())


def _views() -> float:
    return metrics.counter_values(metrics.EVENTS).get(("page_view",), 0.0)


@pytest.mark.broker
def test_broker_restart_mid_run_is_survived_but_loses_the_position(tmp_path: Path) -> None:
    started = time.monotonic()
    port = free_port()
    broker = LocalBroker(port).start()
    kafka = {"bootstrap.servers": broker.bootstrap}
    names = {"inputs": ("bf.web",), "decisions": "bf.decisions", "dead_letter": "bf.dlq", "control": "bf.control"}
    all_topics = {"bf.web": 1, "bf.decisions": 1, "bf.dlq": 1, "bf.control": 1}

    def produce(values: list[bytes]) -> None:
        producer = Producer(kafka)
        for v in values:
            producer.produce("bf.web", v, b"k")
        assert producer.flush(10) == 0

    config = Config().replace(kafka=kafka, topics=names, state={"dir": str(tmp_path / "state"), "shards": 2},
                              privacy={"secret": "s"})
    try:
        ensure_topics(kafka, all_topics)
        produce(_events(0, 5))
        with CapturedLogs() as logs:
            flow = FlowThread(config, ManualClock(T0 + 10 * MIN), tmp_path / "recovery")
            flow.thread.start()
            try:
                deadline = time.monotonic() + 20
                while len(consume_all(kafka, ["bf.decisions"], idle_s=0.3)) < 5:
                    assert time.monotonic() < deadline and not flow.failures, flow.failures
                    time.sleep(0.3)
                applied, views = _applied(), _views()

                broker.stop()  # the connection drops; Tansu loses every topic and message

                def refused() -> list[dict[str, object]]:
                    return [e for e in _lines(logs) if e["logger"] == "librdkafka" and "Connection refused" in
                            str(e["msg"])]

                wait_until(lambda: bool(refused()), "the lost connection to be logged", failures=flow.failures)
                assert flow.thread.is_alive() and not flow.failures  # neither crashed nor stopped
                assert all(PLANTED_PASSWORD not in str(e) for e in refused())

                broker = LocalBroker(port).start()  # same address, empty broker
                ensure_topics(kafka, all_topics)
                # Offsets 0..4 of the recreated topic (each would be a decision), below the position 5, then
                # at offset 5 a page view (no decision): the reader has fetched the recreated partition
                # once that one is applied.
                produce(_events(100, 5) + [orjson.dumps({"event_id": "e105", "type": "page_view", "ts": T0 + 105,
                                                         "customer_id": "c105", "page_type": "home"})])
                wait_until(lambda: _views() > views, "the message at the reader's position", failures=flow.failures)
                assert flow.thread.is_alive() and not flow.failures
                # Observed: the partition reader goes on from offset 5; offsets 0..4 are skipped.
                assert _applied() == applied + 1
                assert consume_all(kafka, ["bf.decisions"], idle_s=0.3) == []
            finally:
                flow.stop_event.set()
                flow.thread.join(20)
        assert not flow.thread.is_alive(), "the flow did not stop within 20 s of the stop request"
        assert not flow.failures, flow.failures
    finally:
        broker.stop()
    assert time.monotonic() - started < 45

