"""Shared builders for the domain-logic tests: events, rule files and a tiny per-customer driver."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

import nextclick.operators
from nextclick.operators.channels import EVENT_CHANNELS
from nextclick.operators.engine.steps import on_event, on_timers
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.profile.model import Facts, Profile, new_profile
from nextclick.operators.records import Event, Outcome
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.signals.base import Signal

SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
# A fixed, day-aligned event time (2026-11-18T00:00:00Z) so bucket and tumbling edges are predictable.
T0 = 1_795_000_000_000 - 1_795_000_000_000 % DAY

DEFAULT_RULES_PATH = Path(nextclick.operators.__file__).resolve().parent / "rules" / "default_rules.toml"

_ids = itertools.count(1)


def make_event(type: str, ts: int, customer: str = "c1", event_id: str | None = None, **attrs: Any) -> Event:
    """A validated event as the parser would emit it (channel derived from the type)."""
    return Event(event_id=event_id or f"ev-{next(_ids)}", type=type, ts=ts, customer=customer,
                 channel=EVENT_CHANNELS[type], attrs=dict(attrs))


def consent(ts: int, channel: str = "email", granted: bool = True, purpose: str = "marketing",
            **kw: Any) -> Event:
    return make_event("consent", ts, channel=channel, granted=granted, purpose=purpose, **kw)


@lru_cache(maxsize=1)
def default_rules() -> RuleSet:
    return load_rules(DEFAULT_RULES_PATH)


def durable_part(profile: Profile) -> Facts:
    return profile.facts


def transient_parts(profile: Profile) -> dict[str, Any]:
    """Everything in a profile that expires: empty (and None) once it all has."""
    return {"signals": profile.signals, "fired": profile.history.fired, "sent": profile.history.sent,
            "seen": profile.seen, "prune_at": profile.prune_at, "expire_at": profile.expire_at}


def apply_transient(profile: Profile, event: Event, signals: tuple[Signal, ...]) -> None:
    """Fold an on-time event into these signals only, as the engine does for the signals it touches."""
    for signal in signals:
        if event.type in signal.touched_by:
            signal.apply(profile, event)


def signal_view(profile: Profile, signals: tuple[Signal, ...], ref_ms: int) -> dict[str, Any]:
    """Every attribute of these signals as rules would read it at `ref_ms`."""
    return {attribute: signal.value(attribute, profile.signals.get(signal.name), ref_ms)
            for signal in signals for attribute in signal.attributes}


def write_rules(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class Customer:
    """One customer's profile driven through the engine, collecting everything that comes out."""

    def __init__(self, ruleset: RuleSet | None = None, customer: str = "c1") -> None:
        self.ruleset = ruleset or default_rules()
        self.profile = new_profile(customer)
        self.customer = customer
        self.outcomes: list[Outcome] = []

    def send(self, type: str, ts: int, **attrs: Any) -> Outcome:
        return self.apply(make_event(type, ts, customer=self.customer, **attrs))

    def apply(self, event: Event) -> Outcome:
        out = on_event(self.profile, event, self.ruleset)
        self.outcomes.append(out)
        return out

    def apply_all(self, events: Iterable[Event]) -> list[Outcome]:
        return [self.apply(e) for e in events]

    def tick(self, now_ms: int) -> Outcome:
        out = on_timers(self.profile, self.ruleset, now_ms)
        self.outcomes.append(out)
        return out

    def grant_email(self, ts: int) -> None:
        self.apply(consent(ts, "email", True))


def fired(out: Outcome) -> list[tuple[str, str, str]]:
    """(rule_id, channel, trigger) of every decision in an outcome."""
    return [(d.rule_id, d.channel, d.trigger) for d in out.decisions]


def reasons(out: Outcome) -> list[tuple[str, str]]:
    return [(b.rule_id, b.reason) for b in out.blocked]


class FlowThread:
    """The real flow (Kafka in and out, RocksDB state) in a background thread, stopped on request."""

    def __init__(self, config: Any, clock: Any, recovery_dir: Any, sink: str | None = None) -> None:
        """`sink` replaces `flow.decision_sink` (operators/io/sink_registry.py)."""
        import threading
        from datetime import timedelta
        from pathlib import Path

        from bytewax.recovery import RecoveryConfig, init_db_dir
        from bytewax.testing import run_main

        from nextclick.flows.targeting import build_flow

        Path(recovery_dir).mkdir(parents=True, exist_ok=True)
        init_db_dir(Path(recovery_dir), 1)
        # The start-up checks read the recovery directory the flow runs with from the configuration.
        config = config.replace(state={"recovery_dir": str(recovery_dir)})
        self.stop_event = threading.Event()
        self.failures: list[BaseException] = []
        flow = build_flow(config, clock=clock, stop=self.stop_event, sink=sink, readers=1)

        def run() -> None:
            try:
                run_main(flow, epoch_interval=timedelta(milliseconds=500),
                         recovery_config=RecoveryConfig(str(recovery_dir)))
            except BaseException as exc:
                self.failures.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> FlowThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the flow did not stop"
        assert not self.failures, self.failures


def consume_all(kafka: Mapping[str, str], topics: Iterable[str], *, idle_s: float = 1.0,
                timeout_s: float = 30.0) -> list[Any]:
    """Read every message currently in `topics` (tests, tools): count by consuming, not watermarks."""
    config = client_config(kafka, **{"group.id": f"nextclick-reader-{time.time_ns()}",
                                     "enable.auto.commit": False, "enable.partition.eof": True,
                                     "fetch.queue.backoff.ms": 10})
    consumer = Consumer(config)
    try:
        assignments = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            # Offset 0, not OFFSET_BEGINNING: an outside probe saw Tansu answer 2 for a partition's earliest
            # offset while offsets 0 and 1 still held two decisions, which then read as missing. Test topics
            # have no retention, so 0 is where every partition starts.
            assignments += [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(assignments)
        pending = {(tp.topic, tp.partition) for tp in assignments}
        out = []
        deadline = time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while pending and time.monotonic() < deadline and time.monotonic() - last_seen < max(idle_s, 5.0):
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((msg.topic(), msg.partition()))
                    continue
                last_seen = time.monotonic()
                out.append(msg)
        return out
    finally:
        consumer.close()


def raw_entries(path: Path) -> list[tuple[bytes, bytes]]:
    """Every key and value of a store as RocksDB holds them: data, undo records and bookkeeping (what an
    erasure must leave no trace in)."""
    from rocksdict import AccessType, Options, Rdict

    db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return list(db.items())
    finally:
        db.close()


def one_shard_savepoint(shard_dir: Path, dest: Path, seq: int) -> Path:
    """An offline savepoint of one `profiles` shard (checkpointed at `seq`), as `savepoint create` lays it out."""
    import shutil

    from nextclick.operators.tools.savepoint import SavepointManifest, _write_manifest

    shutil.copytree(shard_dir, dest / "shard-0000")
    _write_manifest(dest, SavepointManifest(
        id=dest.name, created_at="2026-12-07T00:00:00+00:00", mode="offline", shards=1, secret_fingerprint="f",
        seqs={0: seq}, positions={}, source_lineage=None))
    return dest
