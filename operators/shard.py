"""A state shard: the one Bytewax stateful step, keyed by shard rather than by customer.

Bytewax keeps each key's state as Python objects in RAM, recovers it through SQLite and charges
every pending timer on every activation, so customers are not Bytewax keys. A shard holds many
customers' profiles in its own RocksDB (behind a bounded cache), keeps its own timer index and asks
Bytewax for one `notify_at`: its earliest deadline. Bytewax's recovery holds only `{"seq": n}` per
shard; the RocksDB checkpoint with that seq is written in `snapshot`, at the epoch boundary, and a
resume rolls RocksDB back to the seq Bytewax committed (see operators/store.py).
"""

from __future__ import annotations

import heapq
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import orjson
from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.clock import Clock
from operators.engine import Outcome, due_at, on_event, on_timers
from operators.events import Event
from operators.profile import Profile, new_profile
from operators.rules import Decision, RuleSet
from operators.store import ShardStore, StateError

PROFILE_PREFIX = b"p"
TIMER_PREFIX = b"t"
_DUE = struct.Struct(">Q")
# Customers handled per RocksDB multi-get when many timers fall due at once.
_TIMER_CHUNK = 1000

ResumeState = dict[str, int]


def shard_of(customer: str, shards: int) -> int:
    """Stable across processes and runs (never Python's salted `hash`)."""
    return zlib.crc32(customer.encode()) % shards


def shard_path(state_dir: str | Path, shard: int) -> Path:
    return Path(state_dir) / f"shard-{shard:04d}"


def profile_key(customer: str) -> bytes:
    return PROFILE_PREFIX + customer.encode()


def timer_key(due_ms: int, customer: str) -> bytes:
    return TIMER_PREFIX + _DUE.pack(due_ms) + customer.encode()


@dataclass(frozen=True)
class ShardContext:
    """What every shard of one flow shares: configuration, rules and the injectable clock."""

    state_dir: Path
    shards: int
    ruleset: RuleSet
    clock: Clock
    cache_profiles: int = 4096
    keep_checkpoints: int = 64
    sync: bool = True


class TimerIndex:
    """Each customer's next due time, persisted as `t<due><customer>` keys and mirrored in a heap.

    The heap may hold stale entries (a customer's due time moved); they are skipped on pop and the
    heap is rebuilt when they outnumber the live ones.
    """

    def __init__(self, store: ShardStore) -> None:
        self._store = store
        self._due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        # Popped as due but not yet re-evaluated: they need a heap entry again even if unchanged.
        self._unheaped: set[str] = set()
        for key, _ in store.scan(TIMER_PREFIX):
            due = _DUE.unpack_from(key, 1)[0]
            customer = key[1 + _DUE.size:].decode()
            self._due[customer] = due
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(due, customer) for customer, due in self._due.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._due)

    def set(self, customer: str, due: int | None) -> None:
        old = self._due.get(customer)
        requeue = customer in self._unheaped
        self._unheaped.discard(customer)
        if old == due:
            if requeue and due is not None:
                heapq.heappush(self._heap, (due, customer))
            return
        if old is not None:
            self._store.delete(timer_key(old, customer))
            del self._due[customer]
        if due is not None:
            self._store.put(timer_key(due, customer), b"")
            self._due[customer] = due
            heapq.heappush(self._heap, (due, customer))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._rebuild()

    def earliest(self) -> int | None:
        while self._heap:
            due, customer = self._heap[0]
            if self._due.get(customer) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now_ms: int) -> list[str]:
        """Customers due by `now_ms`; they stay indexed until their profile is re-evaluated."""
        out: list[str] = []
        while True:
            due = self.earliest()
            if due is None or due > now_ms:
                return out
            _, customer = heapq.heappop(self._heap)
            self._unheaped.add(customer)
            out.append(customer)

    def forget(self, customer: str) -> int | None:
        """Drop a customer from the index (erasure); returns the due time it had."""
        self._unheaped.discard(customer)
        return self._due.pop(customer, None)


class ShardLogic(StatefulBatchLogic[Event, Decision, ResumeState]):
    """One shard's profiles, timers and checkpoints."""

    def __init__(self, ctx: ShardContext, resume: ResumeState | None) -> None:
        # Bytewax's builder is not told its key: a resumed shard finds its id in the resume record,
        # a new one from the first event routed to it.
        self.ctx = ctx
        self.shard: int | None = None
        self._store: ShardStore | None = None
        self._timers: TimerIndex | None = None
        if resume is not None:
            self._open(int(resume["shard"]), int(resume["seq"]))

    def _open(self, shard: int, seq: int) -> None:
        ctx = self.ctx
        store = ShardStore(shard_path(ctx.state_dir, shard), cache_size=ctx.cache_profiles,
                           keep_checkpoints=ctx.keep_checkpoints, sync=ctx.sync)
        if store.seq != seq:
            try:
                store.rollback_to(seq)
            except StateError as exc:
                store.close()
                raise StateError(f"shard {shard}: state dir and recovery dir disagree ({exc}); "
                                 "was the recovery directory replaced or the state directory copied?") from exc
        self.shard, self._store, self._timers = shard, store, TimerIndex(store)

    @property
    def store(self) -> ShardStore:
        assert self._store is not None, "shard used before it was opened"
        return self._store

    @property
    def timers(self) -> TimerIndex:
        assert self._timers is not None, "shard used before it was opened"
        return self._timers

    # -- profile I/O ----------------------------------------------------------------------------

    def _load(self, customers: list[str]) -> dict[str, Profile]:
        raw = self.store.get_many([profile_key(c) for c in customers])
        return {c: (orjson.loads(r) if r is not None else new_profile(c)) for c, r in zip(customers, raw)}

    def _save(self, profiles: dict[str, Profile]) -> None:
        for customer, profile in profiles.items():
            self.store.put(profile_key(customer), orjson.dumps(profile))
            self.timers.set(customer, due_at(profile, self.ctx.ruleset))

    @staticmethod
    def _account(outcomes: Iterable[Outcome], out: list[Decision]) -> None:
        blocked: Counter[tuple[str, str]] = Counter()
        duplicates = late = absences = 0
        for o in outcomes:
            out.extend(o.decisions)
            for b in o.blocked:
                blocked[(b.rule_id, b.reason)] += 1
            duplicates += o.duplicate
            late += o.late
            absences += o.absences
        for (rule, reason), n in blocked.items():
            metrics.BLOCKED.labels(rule, reason).inc(n)
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        if late:
            metrics.LATE.inc(late)
        if absences:
            metrics.ABSENCES.inc(absences)

    # -- Bytewax callbacks ----------------------------------------------------------------------

    def on_batch(self, values: list[Event]) -> tuple[list[Decision], bool]:
        if self._store is None:
            # New to Bytewax's recovery: anything already on disk was never committed.
            self._open(shard_of(values[0].customer, self.ctx.shards), 0)
        profiles = self._load(list(dict.fromkeys(e.customer for e in values)))
        ruleset = self.ctx.ruleset
        outcomes = [on_event(profiles[e.customer], e, ruleset) for e in values]
        self._save(profiles)
        decisions: list[Decision] = []
        self._account(outcomes, decisions)
        for decision in decisions:
            metrics.DECISIONS.labels(decision.rule_id).inc()
        types = Counter(e.type for e, o in zip(values, outcomes) if not o.duplicate)
        for event_type, n in types.items():
            metrics.EVENTS.labels(event_type).inc(n)
        return decisions, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Decision], bool]:
        now = self.ctx.clock.now_ms()
        due = self.timers.pop_due(now)
        decisions: list[Decision] = []
        for start in range(0, len(due), _TIMER_CHUNK):
            profiles = self._load(due[start:start + _TIMER_CHUNK])
            outcomes = [on_timers(p, self.ctx.ruleset, now) for p in profiles.values()]
            self._save(profiles)
            self._account(outcomes, decisions)
        for decision in decisions:
            metrics.DECISIONS.labels(decision.rule_id).inc()
        return decisions, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._timers is None:
            return None
        due = self._timers.earliest()
        return None if due is None else self.ctx.clock.wall_deadline(due)

    def snapshot(self) -> ResumeState:
        started = time.perf_counter()
        seq = self.store.checkpoint()
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        assert self.shard is not None
        return {"shard": self.shard, "seq": seq}

    # -- tools ----------------------------------------------------------------------------------

    def erase(self, customer: str) -> bool:
        """Right to erasure: profile, timers and every undo pre-image go, committed at once."""
        raw = self.store.get(profile_key(customer))
        due = self.timers.forget(customer)
        keys = [profile_key(customer)] + ([timer_key(due, customer)] if due is not None else [])
        self.store.erase(keys)
        return raw is not None


def read_profile(state_dir: str | Path, shards: int, customer: str) -> dict[str, Any] | None:
    """The committed profile of one customer, read-only (works while the flow runs)."""
    path = shard_path(state_dir, shard_of(customer, shards))
    if not path.exists():
        return None
    store = ShardStore.open_read_only(path)
    try:
        raw = store.get(profile_key(customer))
        return None if raw is None else orjson.loads(raw)
    finally:
        store.close()
