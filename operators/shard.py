"""A state shard: the one Bytewax stateful step, keyed by shard rather than by customer.

Bytewax keeps each key's state as Python objects in RAM, recovers it through SQLite and charges
every pending timer on every activation, so customers are not Bytewax keys. A shard holds many
customers' profiles in its own RocksDB (behind a bounded cache), keeps its own timer index and asks
Bytewax for one `notify_at`: its earliest deadline. Bytewax's recovery holds only `{"seq": n}` per
shard; the RocksDB checkpoint with that seq is written in `snapshot`, at the epoch boundary, and a
resume rolls RocksDB back to the seq Bytewax committed (see operators/store.py).
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Container, Iterable

import orjson
from bytewax.operators import StatefulBatchLogic

from operators import failpoints, metrics
from operators.clock import Clock
from operators.engine import Outcome, due_at, on_event, on_timers
from operators.events import EraseRequest, Event
from operators.profile import Profile, new_profile
from operators.rules import Decision, RuleSet
from operators.store import ShardStore, StateError

PROFILE_PREFIX = b"p"
TIMER_PREFIX = b"t"
_DUE = struct.Struct(">Q")
# Customers handled per RocksDB multi-get when many timers fall due at once.
_TIMER_CHUNK = 1000
# Due customers handled per activation; the rest wait for the next one, so a burst can't stall input.
_TIMER_LIMIT = 20_000
_STORE_CACHE = 256
# Changed-but-unwritten profiles a shard may hold before it writes the least recently changed half
# (but never the profiles the current batch changed). Whatever is dirty at the epoch end is encoded
# while the worker waits, so this bounds that pause when batches are small (live traffic).
_DIRTY_LIMIT = 32
# ... or this many times the customers the current batch changed, if that is more.
_BACKLOG_DIRTY_FACTOR = 4

ResumeState = dict[str, int]
_CLEAN: Any = object()  # `_dirty` has no entry: the profile is as the store holds it

log = logging.getLogger(__name__)


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
    """Each customer's next due time as a `t<due><customer>` key in the shard's store.

    Keys sort by due time, so the earliest timers are a prefix scan away and nothing per customer
    is held in memory: only `earliest()`, a hint that may be early (its timer moved or was
    erased) but never late. Invariant: a key exists for exactly the due time of the stored profile.
    """

    def __init__(self, store: ShardStore) -> None:
        self._store = store
        self._next: int | None = None
        for key, _ in store.scan(TIMER_PREFIX):
            self._next = _DUE.unpack_from(key, 1)[0]
            break

    def move(self, customer: str, old: int | None, new: int | None) -> None:
        if old == new:
            return
        if old is not None:
            self._store.delete(timer_key(old, customer))
        if new is not None:
            self._store.put(timer_key(new, customer), b"")
            if self._next is None or new < self._next:
                self._next = new

    def earliest(self) -> int | None:
        return self._next

    def hint(self, due: int | None) -> None:
        """A profile's due time changed but is not written yet: wake up for it all the same."""
        if due is not None and (self._next is None or due < self._next):
            self._next = due

    def due(self, now_ms: int, limit: int, skip: Container[str] = ()) -> list[tuple[str, int]]:
        """Up to `limit` (customer, due) pairs due by `now_ms`, earliest first.

        Customers in `skip` are passed over: their keys are stale (the shard holds a newer, unwritten
        profile and answers for its due time itself).
        """
        out: list[tuple[str, int]] = []
        self._next = None
        for key, _ in self._store.scan(TIMER_PREFIX):
            due = _DUE.unpack_from(key, 1)[0]
            if due > now_ms or len(out) >= limit:
                self._next = min(due, now_ms) if len(out) >= limit else due
                break
            customer = key[1 + _DUE.size:].decode()
            if customer not in skip:
                out.append((customer, due))
        return out


class ShardLogic(StatefulBatchLogic[Event | EraseRequest, Decision, ResumeState]):
    """One shard's profiles, timers and checkpoints."""

    def __init__(self, ctx: ShardContext, resume: ResumeState | None) -> None:
        # Bytewax's builder is not told its key: a resumed shard finds its id in the resume record,
        # a new one from the first event routed to it.
        self.ctx = ctx
        self.shard: int | None = None
        # Erasures since the last checkpoint: their bytes are purged from the files at the epoch end.
        self._erased = 0
        self._live: OrderedDict[str, Profile] = OrderedDict()
        self._dirty: dict[str, int | None] = {}
        # Each dirty profile's own due time (the store's timer index still holds the old one).
        self._dirty_due: dict[str, int | None] = {}
        # How many may stay dirty: set by each batch of events (see `_apply_events`).
        self._dirty_limit = _DIRTY_LIMIT
        self._store: ShardStore | None = None
        self._timers: TimerIndex | None = None
        if resume is not None:
            self._open(int(resume["shard"]), int(resume["seq"]))

    def _open(self, shard: int, seq: int) -> None:
        ctx = self.ctx
        # Decoded profiles are cached in `_live`; the store's own cache of encoded bytes stays small.
        store = ShardStore(shard_path(ctx.state_dir, shard), cache_size=_STORE_CACHE,
                           keep_checkpoints=ctx.keep_checkpoints, sync=ctx.sync)
        on_disk = store.seq
        if store.seq != seq:
            try:
                store.rollback_to(seq)
            except StateError as exc:
                store.close()
                raise StateError(f"shard {shard}: state dir and recovery dir disagree ({exc}); "
                                 "was the recovery directory replaced or the state directory copied?") from exc
        self.shard, self._store, self._timers = shard, store, TimerIndex(store)
        log.info("shard opened", extra={"shard": shard, "resume_seq": seq, "seq_on_disk": on_disk})

    @property
    def store(self) -> ShardStore:
        assert self._store is not None, "shard used before it was opened"
        return self._store

    @property
    def timers(self) -> TimerIndex:
        assert self._timers is not None, "shard used before it was opened"
        return self._timers

    # -- profile I/O ----------------------------------------------------------------------------
    #
    # Decoded profiles stay in `_live` (an LRU bounded by cache_profiles) so a busy customer is not
    # decoded and re-encoded on every batch. A changed profile is "dirty" until it is written to the
    # store: at the epoch end (snapshot), when it is evicted, or when too many are dirty. `_dirty`
    # maps it to the due time the store's timer index still holds for it, `_dirty_due` to its own.

    def _profiles(self, customers: list[str]) -> tuple[dict[str, Profile], set[str]]:
        """Decoded profiles (new ones for customers never seen) and which of them are new."""
        live = self._live
        out: dict[str, Profile] = {}
        missing: list[str] = []
        for customer in customers:
            profile = live.get(customer)
            if profile is None:
                missing.append(customer)
            else:
                live.move_to_end(customer)
                out[customer] = profile
        created: set[str] = set()
        if missing:
            for customer, blob in zip(missing, self.store.get_many([profile_key(c) for c in missing])):
                if blob is None:
                    created.add(customer)
                    out[customer] = live[customer] = new_profile(customer)
                else:
                    out[customer] = live[customer] = orjson.loads(blob)
        return out, created

    def _changing(self, profiles: dict[str, Profile]) -> None:
        """Call before changing these profiles: remember the due time their stored copy is indexed under.

        `_dirty` is kept in order of last change, so the profiles written early are the ones least
        likely to change again before the epoch ends.
        """
        ruleset = self.ctx.ruleset
        dirty = self._dirty
        for customer, profile in profiles.items():
            indexed = dirty.pop(customer, _CLEAN)
            dirty[customer] = due_at(profile, ruleset) if indexed is _CLEAN else indexed

    def _changed(self, profiles: dict[str, Profile]) -> None:
        ruleset, timers, dirty_due = self.ctx.ruleset, self.timers, self._dirty_due
        for customer, profile in profiles.items():
            dirty_due[customer] = due = due_at(profile, ruleset)
            timers.hint(due)
        live, limit = self._live, self.ctx.cache_profiles
        while len(live) > limit:
            customer, profile = live.popitem(last=False)
            if customer in self._dirty:
                self._write(customer, profile)
        limit = max(self._dirty_limit, _BACKLOG_DIRTY_FACTOR * len(profiles))
        if len(self._dirty) > limit:
            # Never the ones this batch changed (they sit at the end of `_dirty`).
            keep = max(limit // 2, len(profiles))
            for customer in list(itertools.islice(self._dirty, len(self._dirty) - keep)):
                self._write(customer, live[customer])

    def _write(self, customer: str, profile: Profile) -> None:
        """Write one dirty profile and move its timer key to its own due time."""
        indexed = self._dirty.pop(customer)
        self.store.put(profile_key(customer), orjson.dumps(profile))
        self.timers.move(customer, indexed, self._dirty_due.pop(customer))

    def _flush(self) -> None:
        """Write every dirty profile (and its timer) to the store's pending set."""
        live = self._live
        for customer in list(self._dirty):
            self._write(customer, live[customer])

    def _due_customers(self, now_ms: int) -> list[tuple[str, int]]:
        """Customers whose timers are due by `now_ms`: written ones from the store's index, dirty
        ones from their own due time (their index keys are stale), so nothing is written first."""
        dirty_due = self._dirty_due
        due = self.timers.due(now_ms, _TIMER_LIMIT, skip=dirty_due)
        for customer, at in dirty_due.items():
            if at is not None and at <= now_ms:
                due.append((customer, at))
            else:
                self.timers.hint(at)
        return due

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

    def _apply_events(self, events: list[Event], decisions: list[Decision]) -> None:
        profiles, _ = self._profiles(list(dict.fromkeys(e.customer for e in events)))
        # A large batch means a backlog: the input is already late, throughput is what counts, and
        # a busy customer should be encoded once per epoch rather than after every batch. A small
        # batch means the flow keeps up, and a short epoch-end pause is what counts. Timer turns
        # in between keep the limit the last batch set: a few due customers are no sign of either.
        self._dirty_limit = max(_DIRTY_LIMIT, _BACKLOG_DIRTY_FACTOR * len(profiles))
        self._changing(profiles)
        ruleset = self.ctx.ruleset
        outcomes = [on_event(profiles[e.customer], e, ruleset) for e in events]
        self._changed(profiles)
        self._account(outcomes, decisions)
        types = Counter(e.type for e, o in zip(events, outcomes) if not o.duplicate)
        for event_type, n in types.items():
            metrics.EVENTS.labels(event_type).inc(n)

    # -- Bytewax callbacks ----------------------------------------------------------------------

    def on_batch(self, values: list[Event | EraseRequest]) -> tuple[list[Decision], bool]:
        if self._store is None:
            # New to Bytewax's recovery: anything already on disk was never committed.
            self._open(shard_of(values[0].customer, self.ctx.shards), 0)
        decisions: list[Decision] = []
        run: list[Event] = []
        for value in values:
            if isinstance(value, Event):
                run.append(value)
                continue
            # An erase applies after everything before it in the batch and before everything after.
            if run:
                self._apply_events(run, decisions)
                run = []
            self.erase(value.customer)
        if run:
            self._apply_events(run, decisions)
        return decisions, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Decision], bool]:
        now = self.ctx.clock.now_ms()
        decisions: list[Decision] = []
        due = self._due_customers(now)
        for start in range(0, len(due), _TIMER_CHUNK):
            chunk = due[start:start + _TIMER_CHUNK]
            profiles, created = self._profiles([customer for customer, _ in chunk])
            for customer, at in chunk:
                if customer in created:
                    # A timer with no profile behind it (its customer was erased): drop it, never
                    # let it bring the customer back.
                    self.timers.move(customer, at, None)
                    del profiles[customer]
                    del self._live[customer]
            self._changing(profiles)
            outcomes = [on_timers(p, self.ctx.ruleset, now) for p in profiles.values()]
            self._changed(profiles)
            self._account(outcomes, decisions)
        return decisions, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._timers is None:
            return None
        due = self._timers.earliest()
        return None if due is None else self.ctx.clock.wall_deadline(due)

    def snapshot(self) -> ResumeState:
        started = time.perf_counter()
        dirty = len(self._dirty)
        self._flush()
        failpoints.hit("before_checkpoint")
        seq = self.store.checkpoint()
        # The window a crash test aims at: RocksDB has the checkpoint, Bytewax has not committed it.
        failpoints.hit("after_checkpoint")
        if self._erased:
            self.store.purge()
            self._erased = 0
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        assert self.shard is not None
        metrics.observe_shard(self.shard, len(self._live), dirty, lambda: self.store.stats()["disk_bytes"])
        return {"shard": self.shard, "seq": seq}

    def erase(self, customer: str) -> bool:
        """Right to erasure: the profile, its timer and every undo pre-image of them, at once."""
        # Unwritten changes go too: the store's versions (pending, committed) are erased below.
        in_memory = self._live.pop(customer, None) is not None
        self._dirty.pop(customer, None)
        self._dirty_due.pop(customer, None)
        existed = erase_customer(self.store, customer, self.ctx.ruleset) or in_memory
        self._erased += 1
        metrics.ERASURES.inc()
        log.info("customer erased", extra={"customer": customer, "shard": self.shard, "existed": existed})
        return existed


def erase_customer(store: ShardStore, customer: str, ruleset: RuleSet) -> bool:
    """Remove one customer from a shard's store, committed immediately; True if they were there.

    Both the current profile's timer and the last checkpoint's (they differ when the timer moved in
    this epoch) are removed, so no restore can leave a timer that points at the customer.
    """
    key = profile_key(customer)
    versions = {store.get(key), store.get_committed(key)} - {None}
    keys = [key]
    for raw in versions:
        assert raw is not None
        due = due_at(orjson.loads(raw), ruleset)
        if due is not None:
            keys.append(timer_key(due, customer))
    store.erase(keys)
    return bool(versions)


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
