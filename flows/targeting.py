"""The targeting dataflow: Kafka events in, profiles in shards, CloudEvent decisions and dead letters out.

    kafka_in ─── parse ────┬─ (shard, event) ─────┬─ profiles (stateful by shard) ─┬─ unexpired ─ encode ─ decisions_out
    control_in ─ control ──┼─ (shard, command) ───┘                               │
                           └─ refused ────────────────────────── dead_letter ─────┴─ processing errors
                                                                      └─ dead_letters_out

Thin on purpose: every step is a function from `operators/`. The parse steps route each item to its
shard (a savepoint command goes to every shard). Before anything is wired, the state and recovery
directories are checked against the configuration (operators/state/manifest.py).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from operators.infra import metrics
from operators.infra.clock import Clock, SystemClock
from operators.infra.config import DEFAULT_RULES_FILE, Config, decision_topic, progress_topic
from operators.io.alignment import Alignment
from operators.io.control import parse_control
from operators.io.deadletter import dead_letter_record
from operators.io.decisions import encode_decision, expired
from operators.io.kafka import Aligned, KafkaInput, KafkaOutput, OutMessage, RawMessage
from operators.io.parse import parse_message
from operators.records import DeadLetter, Decision, EraseRequest, Event, SavepointRequest, SourcePosition
from operators.rules.loader import load_rules
from operators.rules.model import RuleSet
from operators.state.keys import shard_of
from operators.state.manifest import StartPlan, check_start
from operators.state.shard import ShardLogic
from operators.state.shard_state import ShardContext, ShardItem, ShardOutput

Routed = tuple[str, ShardItem]
# NamedTuple's generated __new__ costs twice tuple.__new__; one position is built per message.
position = tuple.__new__


def _is_routed(item: Routed | DeadLetter) -> TypeGuard[Routed]:
    return type(item) is tuple


def _is_decision(item: tuple[str, ShardOutput]) -> TypeGuard[tuple[str, Decision]]:
    return type(item[1]) is Decision


def _unkeyed(item: tuple[str, ShardOutput]) -> ShardOutput:
    return item[1]


def build_flow(config: Config, *, clock: Clock | None = None, stop: threading.Event | None = None,
               ruleset: RuleSet | None = None, name: str = "nextclick", plan: StartPlan | None = None) -> Dataflow:
    """Wire the flow; nothing here touches the network (partitions are listed when it runs).

    `plan` is what the start-up checks found; without one they run here against
    `config.state.recovery_dir`, which must be the recovery directory the flow runs with.
    """
    clock = clock or SystemClock()
    ruleset = ruleset or load_rules(config.flow.rules_file or DEFAULT_RULES_FILE)
    secret = config.privacy.resolve_secret()
    plan = plan if plan is not None else check_start(config, flow_name=name)
    shards = config.state.shards
    keys = [str(n) for n in range(shards)]
    parse_config = config.parse
    topics = config.topics
    savepoint_dir = Path(config.state.savepoint_dir)
    ctx = ShardContext(state_dir=Path(config.state.dir), shards=shards, ruleset=ruleset, clock=clock,
                       cache_profiles=config.state.cache_profiles_per_shard,
                       keep_checkpoints=config.state.keep_checkpoints, sync=config.state.sync, plan=plan)

    def parse_batch(batch: list[RawMessage]) -> list[Routed | DeadLetter]:
        now = clock.now_ms()
        out: list[Routed | DeadLetter] = []
        for m in batch:
            item = parse_message(m.key, m.value, m.headers, position(SourcePosition, (m.topic, m.partition, m.offset)),
                                 secret=secret, now_ms=now, config=parse_config)
            out.append((keys[shard_of(item.customer, shards)], item) if isinstance(item, Event) else item)
        return out

    def parse_control_batch(batch: list[RawMessage]) -> list[Routed | DeadLetter]:
        out: list[Routed | DeadLetter] = []
        for m in batch:
            item = parse_control(m.key, m.value, m.headers, SourcePosition(m.topic, m.partition, m.offset),
                                 secret=secret, savepoint_dir=savepoint_dir)
            if isinstance(item, EraseRequest):
                out.append((keys[shard_of(item.customer, shards)], item))
            elif isinstance(item, SavepointRequest):
                out.extend((keys[n], dataclasses.replace(item, shard=n)) for n in range(shards))
            elif item is not None:  # None: a drain request, for the drain watchers (operators/infra/drain.py)
                out.append(item)
        return out

    def dead_letter(dl: Any) -> tuple[str, OutMessage]:
        assert isinstance(dl, DeadLetter)
        metrics.DEAD_LETTERS.labels(dl.reason).inc()
        key, value, headers = dead_letter_record(dl, parse_config.redact_fields)
        msg = OutMessage(topics.dead_letter, key, value, headers)
        return f"{dl.source.topic}#{dl.source.partition}", msg

    def unexpired(decision: Decision) -> bool:
        """Decisions already stale when made (a backfill) are counted, not sent (docs/rules.md)."""
        if expired(decision, clock.now_ms()):
            metrics.EXPIRED.labels(decision.rule_id, decision.channel).inc()
            return False
        return True

    def to_message(decision: Decision) -> OutMessage:
        metrics.observe_decision(decision.rule_id, decision.channel, decision.decided_at, clock.now_ms())
        key, value, headers = encode_decision(decision)
        return OutMessage(decision_topic(topics.decisions, decision.channel), key, value, headers)

    start_positions = plan.restore.positions if plan.restore is not None else None
    # Event-time alignment of the inputs (not of the control topic: commands are not events).
    aligned = Aligned(Alignment(config.flow.alignment_bound_ms, config.flow.alignment_idle_timeout_ms),
                      clock.now_ms, parse_config) if config.flow.align else None
    flow = Dataflow(name)
    raw = op.input("kafka_in", flow, KafkaInput(
        config.kafka, topics.inputs, group_id=config.flow.group_id,
        start_from_beginning=topics.start_from_beginning, stop_at_end=config.flow.stop_at_end, stop=stop,
        start_positions=start_positions, aligned=aligned,
        progress_topic=progress_topic(topics) if aligned is not None else None))
    split = op.branch("valid", op.flat_map_batch("parse", raw, parse_batch), _is_routed)
    control_raw = op.input("control_in", flow, KafkaInput(
        config.kafka, [topics.control], group_id=config.flow.group_id, start_from_beginning=True,
        stop_at_end=config.flow.stop_at_end, stop=stop, start_positions=start_positions))
    control = op.branch("valid_control", op.flat_map_batch("control", control_raw, parse_control_batch),
                        _is_routed)
    work = op.merge("events_and_commands", split.trues, control.trues)
    results = op.branch("decided", op.stateful_batch("profiles", work, lambda resume: ShardLogic(ctx, resume)),
                        _is_decision)
    failed = op.map("processing_errors", results.falses, _unkeyed)
    refused = op.map("dead_letter", op.merge("refused", split.falses, control.falses, failed), dead_letter)
    op.output("dead_letters_out", refused, KafkaOutput(config.kafka, shards))
    fresh = op.filter_value("unexpired", results.trues, unexpired)
    op.output("decisions_out", op.map_value("encode", fresh, to_message), KafkaOutput(config.kafka, shards))
    return flow
