"""The targeting dataflow: Kafka events in, profiles in shards, CloudEvent decisions and dead letters out.

    kafka_in ─── parse ───┬─ events ──┬─ key by shard ─ profiles (stateful_batch) ─ encode ─ decisions_out
    control_in ─ control ─┼─ erasures ┘
                          └─ refused ─ dead_letters_out

Thin on purpose: every step is a function from `operators/`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from operators import metrics
from operators.clock import Clock, SystemClock
from operators.config import DEFAULT_RULES_FILE, Config, decision_topic
from operators.control import parse_control
from operators.deadletter import dead_letter_record
from operators.decisions import encode_decision
from operators.events import DeadLetter, EraseRequest, Event, SourcePosition
from operators.kafka_io import KafkaInput, KafkaOutput, OutMessage, RawMessage
from operators.parse import parse_message
from operators.rules import Decision, RuleSet, load_rules
from operators.shard import ShardContext, ShardLogic, shard_of


def _is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
    return isinstance(item, Event)


def _is_erase(item: EraseRequest | DeadLetter) -> TypeGuard[EraseRequest]:
    return isinstance(item, EraseRequest)


def build_flow(config: Config, *, clock: Clock | None = None, stop: threading.Event | None = None,
               ruleset: RuleSet | None = None, name: str = "nextclick") -> Dataflow:
    """Wire the flow; nothing here touches the network (partitions are listed when it runs)."""
    clock = clock or SystemClock()
    ruleset = ruleset or load_rules(config.flow.rules_file or DEFAULT_RULES_FILE)
    secret = config.privacy.resolve_secret()
    shards = config.state.shards
    parse_config = config.parse
    topics = config.topics
    ctx = ShardContext(state_dir=Path(config.state.dir), shards=shards, ruleset=ruleset, clock=clock,
                       cache_profiles=config.state.cache_profiles_per_shard,
                       keep_checkpoints=config.state.keep_checkpoints, sync=config.state.sync)

    def parse_batch(batch: list[RawMessage]) -> list[Event | DeadLetter]:
        now = clock.now_ms()
        return [parse_message(m.key, m.value, m.headers, SourcePosition(m.topic, m.partition, m.offset),
                              secret=secret, now_ms=now, config=parse_config) for m in batch]

    def parse_control_batch(batch: list[RawMessage]) -> list[EraseRequest | DeadLetter]:
        parsed = (parse_control(m.key, m.value, m.headers, SourcePosition(m.topic, m.partition, m.offset),
                                secret=secret) for m in batch)
        return [c for c in parsed if c is not None]  # None: a drain request (operators/drain.py)

    def dead_letter(dl: Any) -> tuple[str, OutMessage]:
        assert isinstance(dl, DeadLetter)
        metrics.DEAD_LETTERS.labels(dl.reason).inc()
        key, value, headers = dead_letter_record(dl, parse_config.redact_fields)
        msg = OutMessage(topics.dead_letter, key, value, headers)
        return f"{dl.source.topic}#{dl.source.partition}", msg

    def to_message(decision: Decision) -> OutMessage:
        metrics.observe_decision(decision.rule_id, decision.channel, decision.decided_at, clock.now_ms())
        key, value, headers = encode_decision(decision)
        return OutMessage(decision_topic(topics.decisions, decision.channel), key, value, headers)

    flow = Dataflow(name)
    raw = op.input("kafka_in", flow, KafkaInput(
        config.kafka, topics.inputs, group_id=config.flow.group_id,
        start_from_beginning=topics.start_from_beginning, stop_at_end=config.flow.stop_at_end, stop=stop))
    parsed = op.flat_map_batch("parse", raw, parse_batch)
    split = op.branch("valid", parsed, _is_event)
    control_raw = op.input("control_in", flow, KafkaInput(
        config.kafka, [topics.control], group_id=config.flow.group_id, start_from_beginning=True,
        stop_at_end=config.flow.stop_at_end, stop=stop))
    control = op.branch("valid_control", op.flat_map_batch("control", control_raw, parse_control_batch),
                        _is_erase)
    refused = op.map("dead_letter", op.merge("refused", split.falses, control.falses), dead_letter)
    op.output("dead_letters_out", refused, KafkaOutput(config.kafka, shards))
    work = op.merge("events_and_erasures", split.trues, control.trues)
    keyed = op.key_on("by_shard", work, lambda e: str(shard_of(e.customer, shards)))
    decisions = op.stateful_batch("profiles", keyed, lambda resume: ShardLogic(ctx, resume))
    op.output("decisions_out", op.map_value("encode", decisions, to_message), KafkaOutput(config.kafka, shards))
    return flow
