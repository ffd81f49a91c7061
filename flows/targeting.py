"""The targeting dataflow: Kafka events in, identity resolved, profiles in shards, CloudEvent decisions
and dead letters out.

    kafka_in ─── parse ─────┬─ ("identity", event) ──┬─ identity ─┬─ profiles ───────┬─ unexpired ─ encode ─┐
    control_in ─ control ───┼─ ("identity", command) ┘            ├─ linked_<type> ──┤   (moved profiles   │
                            │                                     └─ ...            ─┤    flow to later    │
                            └─ refused ──────────────────────────────── dead_letter ─┴─   families)      decisions_out
                                                                            └─ dead_letters_out

Thin on purpose: every step is a function from `operators/`. What crosses to the identity stage
and from it to the shards is one list per batch and destination (operators/exchange.py), not one
item per event: Bytewax routes and pickles per item. The identity stage (one key,
operators/identity/stage.py) sends each event to the shard of the profile it updates, in the family
of stores that profile lives in (operators/state/layout.py): `profiles` for identifiers linked to
nothing, as before identity stitching, and one `linked_<type>` family per identifier type a linked
profile can be keyed by. A link moves profiles only to later families, so the graph has no cycle.
Without identity stitching (`identity.stitching = false`) there is no identity stage and no linked
family: the parse step sends each event to its `profiles` shard itself (operators/identity/direct.py).
Before anything is wired, the state and recovery directories are checked against the configuration
(operators/tools/startup.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from nextclick.operators.exchange import Batch, declare_settings, grouped
from nextclick.operators.identity.direct import DirectRoutes
from nextclick.operators.identity.guards import load_identity_rules
from nextclick.operators.identity.stage import IDENTITY_KEY, IdentityContext, IdentityLogic
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import Clock, SystemClock
from nextclick.operators.infra.config import Config, progress_topic
from nextclick.operators.io.alignment import Alignment
from nextclick.operators.io.control import ErasureRecorder, parse_control, savepoint_not_wanted
from nextclick.operators.io.deadletter import dead_letter_record
from nextclick.operators.io.decisions import decision_message, expired
from nextclick.operators.io.kafka_sink import KafkaOutput
from nextclick.operators.io.kafka_source import Aligned, KafkaInput, PollGrid, RawMessage
from nextclick.operators.io.parse import parse_message
from nextclick.operators.io.profile_view import ProfileViewWriter
from nextclick.operators.io.sink_registry import decision_sink
from nextclick.operators.io.sinks import OutMessage
from nextclick.operators.profile.facts import configure_orders
from nextclick.operators.records import (
    DeadLetter,
    Decision,
    EraseRequest,
    Event,
    MoveIn,
    Progress,
    SavepointRequest,
    SourcePosition,
)
from nextclick.operators.rules.loader import load_configured_rules
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.logic import ResumeState, ShardLogic
from nextclick.operators.shard.shard_state import ShardContext, ShardOutput
from nextclick.operators.state.layout import CONTROL_STEP, INPUT_STEP, profile_families
from nextclick.operators.state.manifest import StartPlan
from nextclick.operators.tools.startup import check_start, cluster_settings

log = logging.getLogger("nextclick")

Routed = tuple[str, Any]
# NamedTuple's generated __new__ costs twice tuple.__new__; one position is built per message.
position = tuple.__new__
_routed = itemgetter(1)  # the identity stage emits (its key, (shard key, item)): keep the inner pair


def _is_routed(item: Routed | DeadLetter) -> TypeGuard[Routed]:
    return type(item) is tuple


def _is_decision(item: tuple[str, ShardOutput]) -> TypeGuard[tuple[str, Decision]]:
    return type(item[1]) is Decision


def _is_moved(item: tuple[str, ShardOutput]) -> bool:
    return type(item[1]) is MoveIn


def _unkeyed(item: tuple[str, ShardOutput]) -> ShardOutput:
    return item[1]


def _moved_to(item: tuple[str, Any]) -> tuple[str, MoveIn]:
    moved = item[1]
    return moved.route, moved


def _to_profiles(item: tuple[str, Any]) -> bool:
    """`profiles` shards' keys are a number (and a placement suffix); linked ones "<type>/<n>"."""
    return "/" not in item[0]


def _shard_builder(ctx: ShardContext) -> Callable[[ResumeState | None], ShardLogic]:
    return lambda resume: ShardLogic(ctx, resume)


def _prefixed(prefix: str) -> Any:
    def test(item: tuple[str, Any]) -> bool:
        return bool(item[0].startswith(prefix))
    return test


def build_flow(config: Config, *, clock: Clock | None = None, stop: threading.Event | None = None,
               ruleset: RuleSet | None = None, name: str = "nextclick", plan: StartPlan | None = None,
               sink: str | None = None, readers: int | None = None) -> Dataflow:
    """Wire the flow; nothing here touches the network (partitions are listed when it runs).

    `plan` is what the start-up checks found; without one they run here against
    `config.state.recovery_dir`, which must be the recovery directory the flow runs with. `sink`, if
    given, replaces `flow.decision_sink` (operators/io/sink_registry.py): where decisions go. `readers`:
    how many workers read the input in the whole cluster (None: not known, taken as several); with more
    than one, the identity stage restores event-time order across their channels
    (operators/identity/order.py), or without stitching each shard does (operators/shard/held.py).
    """
    decisions_out = decision_sink(config, sink)  # first: a wrong value is refused before anything is opened
    clock = clock or SystemClock()
    ruleset = ruleset or load_configured_rules(config)  # flow.rules_file and flow.tracking_plan
    tracking_plan = ruleset.plan
    identity_rules = load_identity_rules(config.identity.file or None)
    secret = config.privacy.resolve_secret()
    declare_settings(cluster_settings(config, secret))  # what this process's batches carry to its peers
    plan = plan if plan is not None else check_start(config, flow_name=name)
    shards = config.state.shards
    parse_config = config.parse
    topics = config.topics
    savepoint_dir = Path(config.state.savepoint_dir)
    state_dir = Path(config.state.dir)
    stitching = config.identity.stitching
    # Without stitching: no identity stage and no linked families; events go straight to their shard.
    families = profile_families(shards, identity_rules.anchors if stitching else ())
    direct = None if stitching else DirectRoutes(shards, config.state.shard_placement)
    several = readers is None or readers > 1
    configure_orders(config.profile.recent_orders, config.profile.recent_orders_max_age_ms)
    # The profile view topic: written by each shard's checkpoint, before the epoch commits.
    view = ProfileViewWriter(config.kafka, topics.profiles, ruleset, clock).publish if topics.profiles else None
    identity = IdentityContext(state_dir=state_dir, shards=shards, rules=identity_rules,
                               cache_identifiers=config.identity.cache_identifiers,
                               keep_checkpoints=config.state.keep_checkpoints, sync=config.state.sync, plan=plan,
                               clock=clock, placement=config.state.shard_placement,
                               dedupe_horizon_ms=ruleset.dedupe_horizon_ms,
                               order_bound_ms=config.flow.alignment_bound_ms
                               if config.flow.align and several else None,
                               record_erasure=ErasureRecorder(config.kafka, config.topics.control))

    def parse_batch(batch: list[RawMessage | Progress]) -> list[Routed | DeadLetter]:
        """The batch's events and progress reports as one list for the identity stage
        (operators/exchange.py), in the order read; dead letters on their own. Without stitching,
        one list per shard instead (operators/identity/direct.py)."""
        now = clock.now_ms()
        out: list[Routed | DeadLetter] = []
        to_identity: Batch = Batch()
        to_shards: list[Routed] = []
        for m in batch:
            if isinstance(m, Progress):  # the source's event-time floor, on to the frontier
                if direct is None:
                    to_identity.append(m)
                else:
                    direct.progress(m, to_shards)
                continue
            item = parse_message(m.key, m.value, m.headers, position(SourcePosition, (m.topic, m.partition, m.offset)),
                                 secret=secret, now_ms=now, config=parse_config, guards=identity_rules,
                                 plan=tracking_plan, consent_purposes=ruleset.consent_purposes)
            if not isinstance(item, Event):
                out.append(item)
            elif direct is None:
                to_identity.append(item)
            else:
                direct.event(item, to_shards)
        if to_identity:
            out.append((IDENTITY_KEY, to_identity))
        if to_shards:
            out += grouped(to_shards)
        return out

    def parse_control_batch(batch: list[RawMessage | Progress]) -> list[Routed | DeadLetter]:
        out: list[Routed | DeadLetter] = []
        for m in batch:
            if isinstance(m, Progress):  # not aligned: it reports none
                continue
            item = parse_control(m.key, m.value, m.headers, SourcePosition(m.topic, m.partition, m.offset),
                                 secret=secret, savepoint_dir=savepoint_dir, now_ms=clock.now_ms(),
                                 max_future_skew_ms=parse_config.max_future_skew_ms)
            if isinstance(item, SavepointRequest):
                # The requester's wall clock set expires_at, so the wall clock judges it (not `clock`).
                reason = savepoint_not_wanted(item, time.time_ns() // 1_000_000)
                if reason is not None:
                    # Not the request_id: free text from whoever writes to the control topic (logs hold no PII).
                    log.warning("savepoint command not carried out", extra={"path": item.path, "reason": reason})
                    continue
            if isinstance(item, (EraseRequest, SavepointRequest)):
                if direct is None:
                    out.append((IDENTITY_KEY, item))  # it reaches every shard it concerns from there
                else:
                    direct.command(item, out)
            elif item is not None:  # None: a drain request, for the drain watchers (operators/io/drain.py)
                out.append(item)
        return out

    def dead_letter(dl: Any) -> tuple[str, OutMessage]:
        assert isinstance(dl, DeadLetter)
        metrics.labelled(metrics.DEAD_LETTERS, dl.reason).inc()
        key, value, headers = dead_letter_record(dl, parse_config.redact_fields)
        msg = OutMessage(topics.dead_letter, key, value, headers)
        return f"{dl.source.topic}#{dl.source.partition}", msg

    def unexpired(decision: Decision) -> bool:
        """Decisions already stale when made (a backfill) are counted, not sent (docs/rules.md)."""
        if expired(decision, clock.now_ms()):
            metrics.labelled(metrics.EXPIRED, decision.rule_id, decision.channel).inc()
            return False
        return True

    def to_message(decision: Decision) -> OutMessage:
        metrics.observe_decision(decision.rule_id, decision.channel, decision.decided_at, clock.now_ms())
        return decision_message(decision, topics.decisions)

    start_positions = plan.restore.positions if plan.restore is not None else None
    # Event-time alignment of the inputs (not of the control topic: commands are not events). Without
    # it (`flow.align = false`) nothing is held back, but every partition still reports its floor for
    # the event-time frontier the timers fire by (operators/frontier.py).
    aligned = Aligned(Alignment(config.flow.alignment_bound_ms, config.flow.alignment_idle_timeout_ms),
                      clock.now_ms, parse_config, pace=config.flow.align)
    flow = Dataflow(name)
    # One polling grid for every input of the process: Bytewax advances their epochs together.
    grid = PollGrid(config.flow.poll_tick_s, config.flow.poll_tick_max_s)
    raw = op.input(INPUT_STEP, flow, KafkaInput(
        config.kafka, topics.inputs, group_id=config.flow.group_id,
        start_from_beginning=topics.start_from_beginning, stop_at_end=config.flow.stop_at_end, stop=stop,
        start_positions=start_positions, aligned=aligned,
        progress_topic=progress_topic(topics) if config.flow.align else None, grid=grid))
    split = op.branch("valid", op.flat_map_batch("parse", raw, parse_batch), _is_routed)
    control_raw = op.input(CONTROL_STEP, flow, KafkaInput(
        config.kafka, [topics.control], group_id=config.flow.group_id, start_from_beginning=True,
        stop_at_end=config.flow.stop_at_end, stop=stop, start_positions=start_positions,
        grid=grid))
    control = op.branch("valid_control", op.flat_map_batch("control", control_raw, parse_control_batch),
                        _is_routed)
    work = op.merge("events_and_commands", split.trues, control.trues)
    if direct is not None:
        inputs = {families[0].name: [work]}  # already keyed by shard
    else:
        routed = op.map("routed", op.stateful_batch("identity", work, lambda resume: IdentityLogic(identity, resume)),
                        _routed)
        # Each family's share of what the identity stage routed; `profiles` (by far the most) first.
        to_profiles = op.branch("to_profiles", routed, _to_profiles)
        inputs = {families[0].name: [to_profiles.trues]}
        rest = to_profiles.falses
        for family in families[1:]:
            share = op.branch(f"to_{family.name}", rest, _prefixed(f"{family.anchor}/"))
            inputs[family.name] = [share.trues]
            rest = share.falses
    decided: list[Any] = []
    failed: list[Any] = [split.falses, control.falses]
    for n, family in enumerate(families):
        ctx = ShardContext(state_dir=family.root(state_dir), shards=shards, ruleset=ruleset, clock=clock,
                           cache_profiles=config.state.cache_profiles_per_shard,
                           keep_checkpoints=config.state.keep_checkpoints, sync=config.state.sync, plan=plan,
                           family=family.name, await_frontier=True, view=view,
                           epoch_s=config.flow.epoch_seconds, direct=direct is not None,
                           # Without the identity stage the shards restore event-time order across readers.
                           order_bound_ms=config.flow.alignment_bound_ms
                           if direct is not None and config.flow.align and several else None)
        first = n == 0  # `profiles` keeps the step names it always had
        items = inputs[family.name][0] if len(inputs[family.name]) == 1 else \
            op.merge(f"into_{family.name}", *inputs[family.name])
        out = op.stateful_batch(family.name, items, _shard_builder(ctx))
        results = op.branch("decided" if first else f"decided_{family.name}", out, _is_decision)
        decided.append(results.trues)
        others = op.branch(f"moved_from_{family.name}", results.falses, _is_moved)
        failed.append(op.map("processing_errors" if first else f"processing_errors_{family.name}",
                             others.falses, _unkeyed))
        if n + 1 < len(families):  # profiles move only to later families
            moved = op.map(f"moves_from_{family.name}", others.trues, _moved_to)
            for later in families[n + 1:]:
                inputs[later.name].append(op.filter(f"moves_{family.name}_to_{later.name}", moved,
                                                    _prefixed(f"{later.anchor}/")))
    refused = op.map("dead_letter", op.merge("refused", *failed), dead_letter)
    op.output("dead_letters_out", refused, KafkaOutput(config.kafka, shards))
    all_decided = decided[0] if len(decided) == 1 else op.merge("decisions", *decided)
    fresh = op.filter_value("unexpired", all_decided, unexpired)
    op.output("decisions_out", op.map_value("encode", fresh, to_message), decisions_out)
    return flow
