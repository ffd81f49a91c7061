"""The decision sink seam: a sink is one module plus config, and the file sink sends what Kafka sends."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.outputs import Sink
from confluent_kafka import Producer

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config, ConfigError, decision_topic
from nextclick.operators.io.decisions import decision_message, encode_decision
from nextclick.operators.io.file_sink import FileOutput, json_line
from nextclick.operators.io.kafka_sink import KafkaOutput
from nextclick.operators.io.sink_registry import DECISION_SINKS, SETTING, configured, decision_sink
from nextclick.operators.io.sinks import OutMessage
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import Decision
from tests.helpers import FlowThread, consume_all

T0 = 1_795_428_000_000


def sample() -> Decision:
    return Decision(decision_id="d-1", customer="k-1", rule_id="r", action="send", channel="email",
                    offer="o", priority=5, trigger="purchase", trigger_id="purchase:1", signals={"s": 1},
                    profile_version=3, decided_at=T0, expires_at=T0 + 3_600_000, purpose="marketing")


def test_kafka_is_the_default_and_every_registered_sink_builds_a_bytewax_sink(tmp_path: Path) -> None:
    config = Config()
    assert configured(config) == "kafka"
    assert isinstance(decision_sink(config), KafkaOutput)
    targets = {"kafka": "", "file": str(tmp_path / "d.jsonl")}
    assert set(DECISION_SINKS) == set(targets)
    for name, target in targets.items():
        assert isinstance(decision_sink(config, f"{name}:{target}" if target else name), Sink)
    assert isinstance(decision_sink(config, f"file:{tmp_path / 'd.jsonl'}"), FileOutput)


@pytest.mark.parametrize(("spec", "says"), [
    ("webhook:https://example.com", "unknown sink 'webhook' (known: file, kafka)"),
    ("file", "\"file\" needs a path"),
    ("kafka:elsewhere", "\"kafka\" takes no argument"),
])
def test_a_wrong_sink_is_one_line_naming_the_setting(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        decision_sink(Config(), spec)
    message = str(refused.value)
    assert message.startswith(f"{SETTING}: ") and says in message and "\n" not in message


def test_a_wrong_sink_is_refused_before_the_flow_is_wired(tmp_path: Path) -> None:
    from nextclick.flows.targeting import build_flow

    config = Config().replace(privacy={"secret": "s"}, state={"dir": str(tmp_path / "state"),
                                                              "recovery_dir": str(tmp_path / "rec")})
    with pytest.raises(ConfigError, match="unknown sink 'nowhere'"):
        build_flow(config, sink="nowhere")
    assert not (tmp_path / "state").exists()


def test_every_sink_receives_the_kafka_record_of_a_decision() -> None:
    decision = sample()
    key, value, headers = encode_decision(decision)
    message = decision_message(decision, "d.{channel}")
    assert message == OutMessage(decision_topic("d.{channel}", "email"), key, value, headers)
    line = orjson.loads(json_line(message))
    assert line == {"topic": "d.email", "key": "k-1", "headers": {h: v.decode() for h, v in headers},
                    "value": orjson.loads(value)}
    assert json_line(message).endswith(b',"value":' + value + b"}\n")  # the body byte for byte


def test_the_file_sink_appends_at_epoch_end_and_reports_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "out" / "d.jsonl"
    fatal: list[str] = []
    part = FileOutput(path, fatal.append).build_part("decisions_out", "0", None)
    message = decision_message(sample(), "d")
    part.write_batch([message, message])
    part.snapshot()
    assert path.read_bytes() == json_line(message) * 2 and fatal == []
    part.close()

    (tmp_path / "dir.jsonl").mkdir()
    FileOutput(tmp_path / "dir.jsonl", fatal.append).build_part("decisions_out", "0", None)
    assert len(fatal) == 1 and fatal[0].startswith(f"could not write decisions to {tmp_path / 'dir.jsonl'}")


@pytest.mark.broker
def test_the_file_sink_holds_the_decisions_the_kafka_sink_sends(kafka: dict[str, str], topic_prefix: str,
                                                                 tmp_path: Path) -> None:
    inputs, template = f"{topic_prefix}.in", f"{topic_prefix}.decisions.{{channel}}"
    email, call_center = decision_topic(template, "email"), decision_topic(template, "call_center")
    ensure_topics(kafka, {inputs: 1, email: 2, call_center: 1, f"{topic_prefix}.dlq": 1,
                          f"{topic_prefix}.control": 1})
    producer = Producer(kafka)
    for event in (
        {"event_id": "b-1", "type": "consent", "ts": T0, "customer_id": "bob", "channel": "email", "granted": True},
        {"event_id": "b-2", "type": "purchase", "ts": T0 + 60_000, "customer_id": "bob", "amount": 50.0},
        {"event_id": "a-1", "type": "consent", "ts": T0, "customer_id": "ann", "channel": "email", "granted": True},
        {"event_id": "a-2", "type": "purchase", "ts": T0 + 90_000, "customer_id": "ann", "amount": 80.0},
        {"event_id": "c-1", "type": "call_center_contact", "ts": T0 + 60_000, "customer_id": "carol",
         "outcome": "unresolved"},
    ):
        producer.produce(inputs, orjson.dumps(event), event["customer_id"].encode())
    assert producer.flush(10) == 0
    path = tmp_path / "decisions.jsonl"

    def run(name: str, sink: str | None, done: Callable[[], bool]) -> None:
        config = Config().replace(
            kafka=kafka, privacy={"secret": "s"}, state={"dir": str(tmp_path / name / "state"), "shards": 2},
            flow={"group_id": f"{topic_prefix}-{name}"},
            topics={"inputs": (inputs,), "decisions": template, "dead_letter": f"{topic_prefix}.dlq",
                    "control": f"{topic_prefix}.control"})
        with FlowThread(config, ManualClock(T0 + 5 * 60_000), tmp_path / name / "recovery", sink=sink):
            deadline = time.monotonic() + 60
            while not done() and time.monotonic() < deadline:
                time.sleep(0.2)

    def from_kafka() -> list[dict[str, Any]]:
        return [{"topic": m.topic(), "key": m.key().decode(), "headers": {h: v.decode() for h, v in m.headers()},
                 "value": orjson.loads(m.value())} for m in consume_all(kafka, [email, call_center], idle_s=0.5,
                                                                        timeout_s=5)]

    def from_file() -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []

    run("kafka", None, lambda: len(from_kafka()) >= 3)
    run("file", f"file:{path}", lambda: len(from_file()) >= 3)

    def ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda r: r["headers"]["ce_id"])

    sent, written = ordered(from_kafka()), ordered(from_file())
    assert len(sent) == 3
    assert written == sent
    assert sorted(r["value"]["reasons"]["rule_id"] for r in written) == [
        "call_center_follow_up", "post_purchase_cross_sell", "post_purchase_cross_sell"]


def test_the_sink_is_chosen_in_the_config_file_and_the_environment(tmp_path: Path) -> None:
    from nextclick.operators.infra.config import load_config

    toml = tmp_path / "nextclick.toml"
    toml.write_text(f'[flow]\ndecision_sink = "file:{tmp_path / "d.jsonl"}"\n')
    assert configured(load_config(toml, environ={})) == f"file:{tmp_path / 'd.jsonl'}"
    assert configured(load_config(toml, environ={"NEXTCLICK_FLOW__DECISION_SINK": "kafka"})) == "kafka"
    assert configured(load_config(None, environ={})) == "kafka"
    with pytest.raises(ConfigError, match="decision_sink"):
        decision_sink(load_config(None, environ={"NEXTCLICK_FLOW__DECISION_SINK": "webhook"}))
