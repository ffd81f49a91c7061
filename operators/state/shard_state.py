"""One shard's state, without Bytewax: its profiles (a decoded cache in front of the store), its timer
index, erasure, quarantine, the input positions it has seen, and its checkpoints.

`ShardLogic` (operators/state/shard.py) adapts this to Bytewax's stateful step. Here:

- Decoded profiles stay in an LRU (`cache_profiles`) so a busy customer is not decoded and re-encoded
  on every batch. A changed profile is "dirty" until it is written to the store: at the epoch end,
  when it is evicted, or when too many are dirty (bounding the epoch-end pause).
- One customer's bad data never stops the flow. An event whose processing raises is dead-lettered
  (`processing_error`: the original bytes, the exception class and step, no payload values) and the
  customer's profile is rebuilt as it was before that event, from the stored copy plus the events and
  timer turns applied since it was written. A stored profile that cannot be decoded is set aside
  (quarantined) for inspection; that customer's events are dead-lettered until it is erased.
- The input positions of the events applied are checkpointed with the profiles, so any consistent set
  of shard checkpoints (a savepoint) says where the input resumes.
- Identity stitching (operators/identity/): a `MoveOut` takes a profile out of this shard and sends it
  on as a `MoveIn`; a `MergeExpect` says which profiles are on their way to one of this shard's
  customers. Until they have all arrived (always within the epoch: they come from earlier steps of the
  same epoch), that customer's items wait, so the moved profiles are merged before anything that came
  after the link, whatever order the two paths deliver in. Decisions say how the customer can be
  reached (`ids`, operators/identity/addressing.py).
"""

from __future__ import annotations

import base64
import itertools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from operators.engine import due_at, on_event, on_timers
from operators.frontier import EventTimeFrontier
from operators.identity.addressing import address
from operators.infra import failpoints, metrics
from operators.infra.clock import Clock
from operators.profile.codec import decode_profile, encode_profile, stored_as_dict
from operators.profile.facts import ProfileEncodeError
from operators.profile.merge import merge_all
from operators.profile.model import Profile, new_profile
from operators.records import (
    DeadLetter,
    Decision,
    EraseRequest,
    Event,
    Frontier,
    MergeExpect,
    MoveIn,
    MoveOut,
    Outcome,
    SavepointRequest,
    SourcePosition,
)
from operators.rules.model import RuleSet
from operators.state.epoch import EpochLedger
from operators.state.keys import (
    QUARANTINED,
    TIMER_PREFIX,
    is_timer_of,
    profile_key,
    quarantine_key,
    shard_of,
    shard_path,
    timer_key,
)
from operators.state.manifest import StartPlan
from operators.state.store import UNKNOWN, KeyValueStore, ShardStore, StateError, Unknown
from operators.state.timers import TimerIndex

# Customers handled per RocksDB multi-get when many timers fall due at once.
_TIMER_CHUNK = 1000
# Due customers handled per timer turn; the rest wait for the next one, so a burst can't stall input.
_TIMER_LIMIT = 2000
# The store's own cache of encoded values: none. The shard keeps decoded profiles itself and hands
# the store the committed bytes it loaded, so an encoded copy would only be read on rare paths.
_STORE_CACHE = 0
# Changed-but-unwritten profiles a shard may hold before it writes the least recently changed half
# (but never the profiles the current batch changed). Whatever is dirty at the epoch end is encoded
# while the worker waits, so this bounds that pause when batches are small (live traffic).
_DIRTY_LIMIT = 32
# ... or this many times the customers the current batch changed, if that is more.
_BACKLOG_DIRTY_FACTOR = 4

ShardItem = Event | EraseRequest | SavepointRequest | MoveOut | MergeExpect | MoveIn | Frontier
ShardOutput = Decision | DeadLetter | MoveIn
_CLEAN: Any = object()  # `_dirty` has no entry: the profile is as the store holds it

log = logging.getLogger(__name__)


def processing_error(event: Event, step: str, exc: BaseException) -> DeadLetter:
    """The dead letter of an event whose processing raised: original bytes, class and step, no values."""
    key, value, headers = event.raw if event.raw is not None else (None, None, ())
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    source = event.source if event.source is not None else SourcePosition("(unknown)", -1, -1)
    return DeadLetter(key, value, headers, source, "processing_error",
                      f"{step} raised {name}; the event was not applied and the customer's profile is as it "
                      f"was before it", exception_class=name, step=step)


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
    # What the start-up checks found (operators/state/manifest.py); None when a test drives shards directly.
    plan: StartPlan | None = None
    # Which family of stores these shards are (operators/state/layout.py): its name in the plan.
    family: str = "profiles"
    # True in the flow: timers fire by the input's event-time frontier, which the identity stage sends
    # (records.Frontier); nothing fires before the first one. False (tools and tests that drive a shard
    # directly): the clock is the frontier, as for an input that is caught up.
    await_frontier: bool = False
    # The profile view topic's writer (operators/io/profile_view.py): given, at each checkpoint, the
    # profiles changed in the epoch (None: erased or moved out); None when no view topic is configured.
    view: Callable[[list[tuple[str, Profile | None]]], int] | None = None


@dataclass(frozen=True)
class _Merge:
    """A merge applied to a profile (kept with the events applied since it was written, so that a
    failed event can be undone exactly): the moved profiles' bytes and the identifiers recorded."""

    blobs: tuple[bytes, ...]
    ids: dict[str, list[str]]


def open_store(state_dir: Path, family: str, shard: int, seq: int | None, plan: StartPlan | None, *,
               keep_checkpoints: int, sync: bool, cache_size: int = _STORE_CACHE) -> ShardStore:
    """Open one shard of a family at the seq Bytewax committed (`seq`), or, when Bytewax has no state
    for it (None), at the restore point (0 for a new deployment). Refuses anything that loses commits."""
    path = shard_path(state_dir, shard)
    label = f"shard {shard}" if family == "profiles" else f"{family} shard {shard}"
    if seq is None:
        committed = plan.committed_for(family) if plan is not None else None
        if committed is not None and shard in committed:
            raise StateError(f"{label}: the recovery directory committed seq {committed[shard]} for "
                             "it but Bytewax resumed it with no state: was the flow started without its "
                             "recovery directory (bytewax.run -r)?")
        target = plan.restore_seq(shard, family) if plan is not None else 0
    else:
        target = seq
        if not path.exists():
            raise StateError(f"{label}: the recovery directory committed seq {seq} but there is no "
                             f"state directory {path} (state.dir): restore it, or restore a savepoint; after "
                             "a change in the number of processes with per-process volumes, move shards "
                             "through a savepoint")
    store = ShardStore(path, cache_size=cache_size, keep_checkpoints=keep_checkpoints, sync=sync)
    rolled_back_from = store.seq
    try:
        if store.seq != target:
            store.rollback_to(target)
        if seq is not None:
            store.mark_committed(seq)
    except StateError as exc:
        store.close()
        raise StateError(f"{label}: state dir and recovery dir disagree ({exc}); "
                         "was the recovery directory replaced or the state directory copied?") from exc
    log.info("shard opened", extra={"family": family, "shard": shard, "seq": store.seq, "resumed": seq is not None,
                                    "rolled_back_from": rolled_back_from if rolled_back_from != store.seq else None,
                                    "committed_floor": store.committed_floor})
    return store


class ShardState:
    """One shard's customers, opened at a committed seq (see `open`)."""

    def __init__(self, ctx: ShardContext, shard: int, store: KeyValueStore,
                 frontier: EventTimeFrontier | None = None) -> None:
        self.ctx, self.shard, self.store = ctx, shard, store
        self.timers = TimerIndex(store)
        self.frontier = frontier or EventTimeFrontier(ctx.clock.now_ms, await_input=ctx.await_frontier)
        # Input positions, erasures and savepoint requests, committed with the data at the epoch end.
        self.ledger = EpochLedger(store)
        self._live: OrderedDict[str, Profile] = OrderedDict()
        self._dirty: dict[str, int | None] = {}
        # Each dirty profile's own due time (the store's timer index still holds the old one).
        self._dirty_due: dict[str, int | None] = {}
        # How many may stay dirty: set by each batch of events (see `_apply_events`).
        self._dirty_limit = _DIRTY_LIMIT
        # Per dirty customer, what was applied since the profile was last written (events, and the
        # clock of timer turns): replayed onto the stored copy to undo a failed event exactly.
        self._applied: dict[str, list[Event | int | _Merge]] = {}
        # Replay logs of profiles written since the last turn, freed at the start of the next one.
        self._retired: list[list[Event | int | _Merge]] = []
        # The committed bytes of profiles loaded since the last checkpoint and not yet written: the
        # store's undo pre-image for them, so writing them needs no second read.
        self._committed: dict[str, bytes | None] = {}
        # Identity stitching, within one epoch: per customer, the moved profiles still to come, those
        # that came, the identifiers to record, and the items held until the merge is done; and moved
        # profiles that arrived before their MergeExpect.
        self._waiting: dict[str, set[str]] = {}
        self._arrived: dict[str, dict[str, bytes | None]] = {}
        self._merge_ids: dict[str, dict[str, list[str]]] = {}
        self._held: dict[str, list[ShardItem]] = {}
        self._early: dict[str, dict[str, bytes | None]] = {}
        # Customers whose stored profile changed (written, erased, moved out) in this epoch: the profile
        # view's records at the checkpoint. Only kept when there is a view.
        self._viewed: set[str] = set()

    @classmethod
    def open(cls, ctx: ShardContext, shard: int, seq: int | None,
             frontier: EventTimeFrontier | None = None) -> ShardState:
        """Open the shard's store at the seq Bytewax committed (`seq`), or, when Bytewax has no state for
        it (None), at the restore point (0 for a new deployment). Refuses anything that loses commits.
        `frontier`: what the shard learnt of the input's frontier before it had state to open."""
        # Decoded profiles are cached in the state; the store's own cache of encoded bytes stays small.
        store = open_store(ctx.state_dir, ctx.family, shard, seq, ctx.plan, keep_checkpoints=ctx.keep_checkpoints,
                           sync=ctx.sync)
        return cls(ctx, shard, store, frontier)

    def next_due(self) -> int | None:
        """When the earliest timer falls due (on the frontier; may be early but never late), or None."""
        return self.timers.earliest()

    def due_now(self) -> bool:
        """Whether a timer turn has work at the frontier as it stands (False while it is unknown)."""
        due, now = self.timers.earliest(), self.frontier.now()
        return due is not None and now is not None and due <= now

    def fire_due(self) -> list[ShardOutput]:
        """The timer turn at the frontier as it stands (nothing while it is unknown)."""
        now = self.frontier.now()
        return [] if now is None else self.fire_timers(now)

    def close(self) -> None:
        self.store.close()

    # -- profile I/O ----------------------------------------------------------------------------
    #
    # `_live` holds decoded profiles (LRU); `_dirty` maps each changed-but-unwritten profile to the due
    # time the store's timer index still holds for it, `_dirty_due` to its own.

    def _profiles(self, customers: list[str]) -> tuple[dict[str, Profile], set[str], set[str]]:
        """Decoded profiles (new ones for customers never seen), which of them are new, and which
        customers are quarantined (not in the returned profiles)."""
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
        quarantined: set[str] = set()
        if missing:
            store, committed = self.store, self._committed
            keys = [profile_key(c) for c in missing]
            for customer, key, blob in zip(missing, keys, store.get_many(keys)):
                if store.unchanged_since_checkpoint(key):
                    committed[customer] = blob
                if blob is None:
                    created.add(customer)
                    out[customer] = live[customer] = new_profile(customer)
                    continue
                if blob == QUARANTINED:
                    quarantined.add(customer)
                    continue
                try:
                    profile = decode_profile(blob)
                except Exception as exc:  # noqa: BLE001 - bad stored bytes are one customer's problem
                    self._quarantine(customer, "decode_profile", exc, blob)
                    quarantined.add(customer)
                    continue
                out[customer] = live[customer] = profile
        return out, created, quarantined

    def _changing(self, profiles: dict[str, Profile], indexed_at: dict[str, int] | None = None) -> None:
        """Call before changing these profiles: remember the due time their stored copy is indexed under
        (`indexed_at`: already known from the timer index, for clean ones).

        `_dirty` is kept in order of last change, so the profiles written early are the ones least
        likely to change again before the epoch ends.
        """
        ruleset = self.ctx.ruleset
        dirty = self._dirty
        for customer, profile in profiles.items():
            indexed = dirty.pop(customer, _CLEAN)
            if indexed is _CLEAN:
                indexed = indexed_at[customer] if indexed_at and customer in indexed_at else due_at(profile, ruleset)
            dirty[customer] = indexed

    def _changed(self, profiles: dict[str, Profile], dues: dict[str, int | None] | None = None) -> None:
        """After changing these profiles: note their due times (`dues`: already computed, for some),
        then write the least recently changed ones if the cache or the dirty set is over its bound."""
        ruleset, timers, dirty_due = self.ctx.ruleset, self.timers, self._dirty_due
        for customer, profile in profiles.items():
            due = dues[customer] if dues is not None and customer in dues else due_at(profile, ruleset)
            dirty_due[customer] = due
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
                if customer in live:
                    self._write(customer, live[customer])

    def _write(self, customer: str, profile: Profile) -> None:
        """Write one dirty profile and move its timer key to its own due time."""
        try:
            blob = encode_profile(profile)
        except ProfileEncodeError as exc:
            # Never store a value that would not read back as written (e.g. a non-finite number).
            self._live.pop(customer, None)
            self._quarantine(customer, "encode_profile", exc, None, profile_due=self._dirty_due.get(customer))
            return
        indexed = self._dirty.pop(customer)
        applied = self._applied.pop(customer, None)
        if applied:
            # Freeing an event costs about a microsecond; at the epoch end that would lengthen the
            # pause the worker waits through, so the next turn frees them instead.
            self._retired.append(applied)
        committed = self._committed.pop(customer, UNKNOWN)
        self.store.put(profile_key(customer), blob, committed=committed)
        if self.ctx.view is not None:
            self._viewed.add(customer)
        # Loaded unchanged since the checkpoint: its timer key is unchanged too.
        self.timers.move(customer, indexed, self._dirty_due.pop(customer), committed=committed is not UNKNOWN)

    def _flush(self) -> None:
        """Write every dirty profile (and its timer) to the store's pending set."""
        live = self._live
        for customer in list(self._dirty):
            if customer in live:
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

    # -- poison isolation -----------------------------------------------------------------------

    def _rebuild(self, customer: str) -> Profile:
        """The customer's profile as it was after the last step that succeeded: the stored copy with
        everything applied since it was written replayed onto it (the engine is deterministic)."""
        blob = self.store.get(profile_key(customer))
        profile = new_profile(customer) if blob is None else decode_profile(blob)
        ruleset = self.ctx.ruleset
        for step in self._applied.get(customer, ()):
            if isinstance(step, Event):
                _note_ids(profile, step)
                on_event(profile, step, ruleset)
            elif isinstance(step, _Merge):
                merge_all(profile, [decode_profile(b) for b in step.blobs], ruleset)
                profile.ids = {t: list(keys) for t, keys in step.ids.items()}
            else:
                on_timers(profile, ruleset, step)
        return profile

    def _restore_after_failure(self, customer: str, profiles: dict[str, Profile]) -> bool:
        """Put the customer's pre-failure profile back in place; False if it had to be quarantined."""
        try:
            profile = self._rebuild(customer)
        except Exception as exc:  # noqa: BLE001 - a replay that fails too: set the customer aside
            profiles.pop(customer, None)
            self._live.pop(customer, None)
            self._quarantine(customer, "replay", exc, None)
            return False
        profiles[customer] = self._live[customer] = profile
        return True

    def _quarantine(self, customer: str, step: str, exc: BaseException, blob: bytes | None,
                    profile_due: int | None = None) -> None:
        """Set a customer's stored profile aside for inspection and stop processing them.

        The quarantine record keeps the stored bytes (pseudonymous state only) and why; the profile
        key points at it; the customer's timer keys go, so nothing fires for them.
        """
        store = self.store
        indexed = {self._dirty.pop(customer, None), profile_due, self._dirty_due.pop(customer, None)} - {None}
        self._applied.pop(customer, None)
        self._committed.pop(customer, None)
        self._live.pop(customer, None)
        key = profile_key(customer)
        stored = blob if blob is not None else store.get(key)
        if stored == QUARANTINED:
            return
        record = {"customer": customer, "step": step, "exception": type(exc).__name__,
                  "stored_base64": None if stored is None else base64.b64encode(stored).decode()}
        store.put(quarantine_key(customer), orjson.dumps(record))
        store.put(key, QUARANTINED)
        for due in indexed:
            assert due is not None
            store.delete(timer_key(due, customer))
        me = customer.encode()
        for tkey in [k for k, _ in store.scan(TIMER_PREFIX) if is_timer_of(k, me)]:
            store.delete(tkey)
        metrics.QUARANTINED.labels(step).inc()
        log.error("customer profile quarantined", extra={"shard": self.shard, "customer": customer, "step": step,
                                                         "exception": type(exc).__name__})

    # -- applying -------------------------------------------------------------------------------

    @staticmethod
    def _account(outcome: Outcome, out: list[ShardOutput], profiles: dict[str, Profile]) -> None:
        for decision in outcome.decisions:
            profile = profiles.get(decision.customer)
            out.append(address(decision, profile.ids if profile is not None else None))
        if outcome.blocked:
            blocked: Counter[tuple[str, str]] = Counter((b.rule_id, b.reason) for b in outcome.blocked)
            for (rule, reason), n in blocked.items():
                metrics.BLOCKED.labels(rule, reason).inc(n)
        if outcome.duplicates:
            metrics.DUPLICATES.inc(outcome.duplicates)
        if outcome.lates:
            metrics.LATE.inc(outcome.lates)
        if outcome.absences:
            metrics.ABSENCES.inc(outcome.absences)

    @staticmethod
    def _undo_outcome(outcome: Outcome, decisions: int, blocked: int, absences: int) -> None:
        """Forget what a failed turn added to the batch's outcome (it is as if it never ran)."""
        del outcome.decisions[decisions:]
        del outcome.blocked[blocked:]
        outcome.absences = absences

    def _apply_events(self, events: list[Event], out: list[ShardOutput]) -> None:
        profiles, created, _ = self._profiles(list(dict.fromkeys(e.customer for e in events)))
        # A large batch means a backlog: the input is already late, throughput is what counts, and
        # a busy customer should be encoded once per epoch rather than after every batch. A small
        # batch means the flow keeps up, and a short epoch-end pause is what counts. Timer turns
        # in between keep the limit the last batch set: a few due customers are no sign of either.
        self._dirty_limit = max(_DIRTY_LIMIT, _BACKLOG_DIRTY_FACTOR * len(profiles))
        self._changing(profiles)
        ruleset, applied = self.ctx.ruleset, self._applied
        outcome = Outcome()  # one for the whole batch: one allocation, not one per event
        types: Counter[str] = Counter()
        for event in events:
            customer = event.customer
            profile = profiles.get(customer)
            if profile is None:  # quarantined, now or earlier in this batch
                out.append(processing_error(event, "quarantined_profile", _Quarantined()))
                metrics.PROCESSING_ERRORS.labels("quarantined_profile", "Quarantined").inc()
                continue
            duplicates, marks = outcome.duplicates, (len(outcome.decisions), len(outcome.blocked), outcome.absences)
            if not profile.ids and event.id_type is not None:
                _note_ids(profile, event)
            try:
                if failpoints.FAIL_CUSTOMERS and customer in failpoints.FAIL_CUSTOMERS:
                    raise failpoints.InjectedFailure("failpoint")
                on_event(profile, event, ruleset, outcome)
            except Exception as exc:  # noqa: BLE001 - one customer's bad data is that customer's dead letter
                self._undo_outcome(outcome, *marks)
                out.append(processing_error(event, "engine.on_event", exc))
                metrics.PROCESSING_ERRORS.labels("engine.on_event", type(exc).__name__).inc()
                log.warning("event not applied", extra={"shard": self.shard, "customer": customer,
                                                        "step": "engine.on_event", "exception": type(exc).__name__})
                self._restore_after_failure(customer, profiles)
                continue
            applied.setdefault(customer, []).append(event)
            if outcome.duplicates == duplicates:
                types[event.type] += 1
        for customer in [c for c in profiles if c not in applied]:
            # Every event of theirs failed since the profile was last written: it is as stored (a new
            # customer: nothing is stored), so there is nothing to write.
            self._dirty.pop(customer, None)
            self._dirty_due.pop(customer, None)
            self._committed.pop(customer, None)
            if customer in created:
                del profiles[customer]
                self._live.pop(customer, None)
        changed = {c: p for c, p in profiles.items() if c in self._live}
        self._changed(changed, self._timers_due_now(changed, outcome))
        self._account(outcome, out, profiles)
        for event_type, n in types.items():
            metrics.EVENTS.labels(event_type).inc(n)

    # -- turns --------------------------------------------------------------------------------------

    def apply(self, values: list[ShardItem]) -> list[ShardOutput]:
        """Events, erasures, savepoint requests and identity moves, in order: decisions, dead letters
        and moved profiles out."""
        self._retired.clear()
        out: list[ShardOutput] = []
        self._process(values, out)
        self.ledger.note_positions(values)
        return out

    def _process(self, values: list[ShardItem], out: list[ShardOutput]) -> None:
        """Events are applied in runs (one multi-get, one dirty-set update per run); an item about a
        customer applies after every earlier event of that customer in the batch and before every later
        one. Only an item about a customer the current run holds ends the run, and what a completed
        merge releases joins the run: a batch with identity moves keeps runs as long as one without."""
        waiting, held = self._waiting, self._held
        if not waiting:
            for value in values:
                if type(value) is not Event:
                    break
            else:  # only events, no merge under way (the common case): one run, as before identity moves
                if values:
                    self._apply_events(values, out)  # type: ignore[arg-type]
                return
        run: list[Event] = []
        in_run: set[str] = set()
        queue = deque(values)
        while queue:
            value = queue.popleft()
            if type(value) is Event:
                customer = value.customer
                if waiting and customer in waiting:
                    held[customer].append(value)
                else:
                    run.append(value)
                    in_run.add(customer)
                continue
            if isinstance(value, SavepointRequest):  # acts at the epoch end, whatever came before
                self.ledger.savepoints.append(value)
                continue
            if isinstance(value, Frontier):  # the timer turns after this batch may go as far as it
                self.frontier.advance(value.floor)
                continue
            if value.customer in in_run:
                self._apply_events(run, out)
                run, in_run = [], set()
            released: list[ShardItem] = []
            if isinstance(value, MoveIn):
                released = self._move_in(value)
            elif waiting and value.customer in waiting:
                held[value.customer].append(value)  # after the merge, as it came after the link
            elif isinstance(value, EraseRequest):
                self.erase(value.customer, count=not value.part)
            elif isinstance(value, MoveOut):
                out.append(self._move_out(value))
            elif isinstance(value, MergeExpect):
                released = self._expect(value)
            if released:  # the merged customer's items that waited: next, in their order
                queue.extendleft(reversed(released))
        if run:
            self._apply_events(run, out)

    # -- identity: moving and merging profiles ------------------------------------------------------

    def _move_out(self, request: MoveOut) -> MoveIn:
        """Take a profile out of this shard (its timer too; an ordinary change, undone by a rollback)."""
        customer = request.customer
        key = profile_key(customer)
        profile = self._live.pop(customer, None)
        blob: bytes | None = None
        committed: bytes | None | Unknown = UNKNOWN
        if profile is not None:
            try:
                blob = encode_profile(profile)
            except ProfileEncodeError as exc:
                # As in _write: set the customer aside here; the merged profile starts without it.
                self._quarantine(customer, "encode_profile", exc, None, profile_due=self._dirty_due.get(customer))
                return MoveIn(request.into, customer, None, request.route)
            committed = self._committed.pop(customer, UNKNOWN)
        else:
            stored = self.store.get(key)
            if self.store.unchanged_since_checkpoint(key):
                committed = stored
            if stored == QUARANTINED:
                # Its record stays here for inspection; the merged profile starts without it.
                log.warning("quarantined profile not moved", extra={"shard": self.shard, "customer": customer,
                                                                    "into": request.into})
                return MoveIn(request.into, customer, None, request.route)
            if stored is not None:
                try:
                    profile = decode_profile(stored)
                except Exception as exc:  # noqa: BLE001 - bad stored bytes are one customer's problem
                    self._quarantine(customer, "decode_profile", exc, stored)
                    return MoveIn(request.into, customer, None, request.route)
                # What is stored goes as it is (format 1 is rewritten, so the merge reads one format).
                blob = stored if stored[:1] != b"{" else encode_profile(profile)
        if profile is not None:
            indexed = self._dirty.pop(customer, _CLEAN)
            if indexed is _CLEAN:
                indexed = due_at(profile, self.ctx.ruleset)
            self._dirty_due.pop(customer, None)
            self._applied.pop(customer, None)
            self.store.delete(key, committed=committed)
            self.timers.move(customer, indexed, None, committed=committed is not UNKNOWN)
            if self.ctx.view is not None:
                self._viewed.add(customer)  # absorbed by a merge: its tombstone on the view topic
            metrics.PROFILES_MOVED.inc()
        self._committed.pop(customer, None)
        failpoints.hit("moved_out")
        return MoveIn(request.into, customer, blob, request.route)

    def _expect(self, request: MergeExpect) -> list[ShardItem]:
        customer = request.customer
        early = self._early.get(customer, {})
        # Moved profiles of this merge that came first; those of a later merge of the same customer stay.
        arrived = {source: early.pop(source) for source in request.sources if source in early}
        if not early:
            self._early.pop(customer, None)
        self._waiting[customer] = set(request.sources) - set(arrived)
        self._arrived[customer] = arrived
        self._merge_ids[customer] = request.ids
        self._held[customer] = []
        return self._complete(customer) if not self._waiting[customer] else []

    def _move_in(self, moved: MoveIn) -> list[ShardItem]:
        customer = moved.customer
        waiting = self._waiting.get(customer)
        if waiting is None or moved.moved not in waiting:
            # Here before its MergeExpect (the two come by different paths): kept until it comes.
            self._early.setdefault(customer, {})[moved.moved] = moved.blob
            return []
        waiting.discard(moved.moved)
        self._arrived[customer][moved.moved] = moved.blob
        return self._complete(customer) if not waiting else []

    def _complete(self, customer: str) -> list[ShardItem]:
        """Every moved profile is here: merge them into the customer's; returns what waited for it."""
        del self._waiting[customer]
        blobs = tuple(blob for _, blob in sorted(self._arrived.pop(customer).items()) if blob is not None)
        ids = self._merge_ids.pop(customer)
        held = self._held.pop(customer)
        profiles, _, quarantined = self._profiles([customer])
        if customer in quarantined:
            log.error("moved profiles not merged into a quarantined profile", extra={
                "shard": self.shard, "customer": customer, "moved": len(blobs)})
            return held
        self._changing(profiles)
        profile = profiles[customer]
        try:
            merge_all(profile, [decode_profile(b) for b in blobs], self.ctx.ruleset)
            profile.ids = {t: list(keys) for t, keys in ids.items()}
        except Exception as exc:  # noqa: BLE001 - one customer's bad data is that customer's problem
            metrics.PROCESSING_ERRORS.labels("merge", type(exc).__name__).inc()
            self._live.pop(customer, None)
            self._quarantine(customer, "merge", exc, None, profile_due=self._dirty.get(customer))
            return held
        self._applied.setdefault(customer, []).append(_Merge(blobs, ids))
        self._changed(profiles)
        metrics.MERGES.inc()
        failpoints.hit("merged")
        return held

    def fire_timers(self, now: int) -> list[ShardOutput]:
        """The timer turn at frontier `now`: every customer due by it (a bounded number per call, so a
        storm of due timers after downtime drains over several turns while input keeps flowing)."""
        self._retired.clear()
        out: list[ShardOutput] = []
        due = self._due_customers(now)
        if self._waiting:  # their turn comes once their merge is done
            due = [(customer, at) for customer, at in due if customer not in self._waiting]
        live = self._live
        cold = [(customer, at) for customer, at in due if customer not in live]
        if len(cold) < len(due):
            self._fire_live([(customer, at) for customer, at in due if customer in live], now, out)
        for start in range(0, len(cold), _TIMER_CHUNK):
            self._fire_cold(cold[start:start + _TIMER_CHUNK], now, out)
        return out

    def _fire_live(self, due: list[tuple[str, int]], now: int, out: list[ShardOutput]) -> None:
        """Timer turns of profiles in the cache: changed in place, written with the rest of the dirty."""
        profiles, _, _ = self._profiles([customer for customer, _ in due])
        self._changing(profiles, dict(due))
        outcome = Outcome()
        for customer, profile in list(profiles.items()):
            self._run_timers(customer, profile, now, outcome, profiles)
        self._changed(profiles)
        self._account(outcome, out, profiles)

    def _fire_cold(self, due: list[tuple[str, int]], now: int, out: list[ShardOutput]) -> None:
        """Timer turns of profiles only the store holds: read, turned and written back at once.

        A storm after downtime is mostly these. They never enter the cache, so the drain neither evicts
        the customers live traffic is using nor pays for the dirty bookkeeping of profiles that change
        once; and, written at once, they need no replay log (a failed turn is undone by not writing).
        """
        store, timers, ruleset = self.store, self.timers, self.ctx.ruleset
        keys = [profile_key(customer) for customer, _ in due]
        outcome = Outcome()
        turned: dict[str, Profile] = {}
        for (customer, at), key, blob in zip(due, keys, store.get_many(keys), strict=True):
            committed: bytes | None | Unknown = blob if store.unchanged_since_checkpoint(key) else UNKNOWN
            if blob is None or blob == QUARANTINED:
                # A timer with no profile behind it (erased), or one set aside: drop it, never let it
                # bring the customer back or fire for them.
                timers.move(customer, at, None)
                continue
            try:
                profile = decode_profile(blob)
            except Exception as exc:  # noqa: BLE001 - bad stored bytes are one customer's problem
                self._quarantine(customer, "decode_profile", exc, blob, profile_due=at)
                continue
            marks = (len(outcome.decisions), len(outcome.blocked), outcome.absences)
            try:
                on_timers(profile, ruleset, now, outcome)
            except Exception as exc:  # noqa: BLE001 - a timer that keeps failing would spin: set it aside
                self._undo_outcome(outcome, *marks)
                metrics.PROCESSING_ERRORS.labels("engine.on_timers", type(exc).__name__).inc()
                self._quarantine(customer, "engine.on_timers", exc, blob, profile_due=at)
                continue
            try:
                encoded = encode_profile(profile)
            except ProfileEncodeError as exc:
                # Never store a value that would not read back as written (e.g. a non-finite number).
                self._undo_outcome(outcome, *marks)
                self._quarantine(customer, "encode_profile", exc, blob, profile_due=at)
                continue
            store.put(key, encoded, committed=committed)
            if self.ctx.view is not None:
                self._viewed.add(customer)
            timers.move(customer, at, due_at(profile, ruleset), committed=committed is not UNKNOWN)
            turned[customer] = profile
        self._account(outcome, out, turned)

    def _run_timers(self, customer: str, profile: Profile, now: int, outcome: Outcome,
                    profiles: dict[str, Profile]) -> bool:
        """One customer's timer turn at `now`; False if it failed and the customer was set aside."""
        marks = (len(outcome.decisions), len(outcome.blocked), outcome.absences)
        try:
            on_timers(profile, self.ctx.ruleset, now, outcome)
        except Exception as exc:  # noqa: BLE001 - a timer that keeps failing would spin: set it aside
            self._undo_outcome(outcome, *marks)
            metrics.PROCESSING_ERRORS.labels("engine.on_timers", type(exc).__name__).inc()
            del profiles[customer]
            self._live.pop(customer, None)
            self._quarantine(customer, "engine.on_timers", exc, None, profile_due=self._dirty.get(customer))
            return False
        self._applied.setdefault(customer, []).append(now)
        return True

    def _timers_due_now(self, profiles: dict[str, Profile], outcome: Outcome) -> dict[str, int | None]:
        """Due times of profiles a batch just changed, after running the timer turn of those already due.

        A profile can be due on the frontier as soon as its events are applied (the frontier went past
        its deadline in the same batch, or the input is caught up and its deadline is past). Its turn
        would come at the next notification anyway, a moment later, after a round through the timer
        index; running it here, on the profile in hand, is the same turn without that round. Removes
        from `profiles` any customer whose turn failed (set aside).
        """
        ruleset = self.ctx.ruleset
        dues: dict[str, int | None] = {}
        now = self.frontier.now()
        for customer, profile in list(profiles.items()):
            due = due_at(profile, ruleset)
            if due is not None:
                if now is not None and due <= now:
                    if not self._run_timers(customer, profile, now, outcome, profiles):
                        continue
                    due = due_at(profile, ruleset)
            dues[customer] = due
        return dues

    def checkpoint(self) -> int:
        """The epoch end: write what is dirty and commit it with the positions; the new seq."""
        started = time.perf_counter()
        if self._waiting or self._early:
            # Moved profiles come from earlier steps of the same epoch, which Bytewax has finished
            # before it snapshots this one: anything still waiting is a bug, and committing would lose it.
            raise StateError(f"{self.ctx.family} shard {self.shard}: an epoch ended with moved profiles still "
                             f"expected for {len(self._waiting)} customer(s) and {len(self._early)} unclaimed")
        dirty = len(self._dirty)
        self._flush()
        if self._viewed:
            self._publish_view()
        self._committed.clear()  # from here on, reads return what this epoch wrote
        seq = self.ledger.commit(self._write_savepoint)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        label = self.shard if self.ctx.family == "profiles" else f"{self.ctx.family}/{self.shard}"
        metrics.observe_shard(label, len(self._live), dirty, lambda: self.store.stats()["disk_bytes"])
        return seq

    def _publish_view(self) -> None:
        """The profile view's records of this epoch, before it commits: each changed profile as the store
        now holds it (the cached copy is the same once flushed), a tombstone for one that is gone; a
        quarantined one is left as it was last shown."""
        assert self.ctx.view is not None
        live, store, family = self._live, self.store, self.ctx.family
        changes: list[tuple[str, Profile | None]] = []
        for customer in sorted(self._viewed):
            profile = live.get(customer)
            if profile is None:
                blob = store.get(profile_key(customer))
                if blob == QUARANTINED:
                    continue
                try:
                    profile = None if blob is None else decode_profile(blob)
                except Exception:  # noqa: BLE001 - it is quarantined when next read; not shown meanwhile
                    continue
            # Keyed by family too: a profile moved to a later family may keep its key there, and its
            # tombstone in the first must not remove the merged record.
            changes.append((f"{family}/{customer}", profile))
        self._viewed.clear()
        self.ctx.view(changes)

    def _write_savepoint(self, request: SavepointRequest, seq: int) -> None:
        """This shard's part of an online savepoint: a RocksDB checkpoint of the seq just committed, on the
        shard's own volume, copied to the destination in the background (the epoch end does not wait)."""
        from operators.state.savepoint import write_shard_part

        started = time.perf_counter()
        try:
            write_shard_part(self.store, request.path, self.shard, seq, self.ledger.positions,
                             request.token, self.ctx.plan.lineage if self.ctx.plan else None, request.store,
                             scratch=self.ctx.state_dir)
        except (OSError, StateError) as exc:
            # The flow goes on; the savepoint is incomplete and `nextclick savepoint create` says so.
            log.error("savepoint part not written", extra={"shard": self.shard, "path": request.path,
                                                           "error": str(exc)})
            return
        log.info("savepoint part checkpointed, copying", extra={
            "shard": self.shard, "seq": seq, "path": request.path, "seconds": round(time.perf_counter() - started, 3)})

    def erase(self, customer: str, *, count: bool = True) -> bool:
        """Right to erasure: the profile, its timer and every undo pre-image of them, at once.

        `count` False for one of the parts of an erasure the identity stage counted (it erases every
        identifier of a linked profile in every family)."""
        # Unwritten changes go too: the store's versions (pending, committed) are erased below.
        in_memory = self._live.pop(customer, None) is not None
        self._dirty.pop(customer, None)
        self._dirty_due.pop(customer, None)
        self._applied.pop(customer, None)
        self._committed.pop(customer, None)
        existed = erase_customer(self.store, customer, self.ctx.ruleset) or in_memory
        if self.ctx.view is not None:
            self._viewed.add(customer)  # its tombstone on the view topic
        self.ledger.note_erased()
        if count:
            metrics.ERASURES.inc()
        log.info("customer erased", extra={"customer": customer, "family": self.ctx.family, "shard": self.shard,
                                           "existed": existed})
        return existed


def _note_ids(profile: Profile, event: Event) -> None:
    """A profile of one identifier learns which type it is keyed by, from its first event that says."""
    if not profile.ids and event.id_type is not None:
        profile.ids = {event.id_type: [profile.customer]}


class _Quarantined(Exception):
    """The customer's stored profile is set aside for inspection (see `ShardState._quarantine`)."""


def erase_customer(store: KeyValueStore, customer: str, ruleset: RuleSet) -> bool:
    """Remove one customer from a shard's store, committed immediately; True if they were there.

    Both the current profile's timer and the last checkpoint's (they differ when the timer moved in
    this epoch) are removed, so no restore can leave a timer that points at the customer. A
    quarantined customer's record goes too, and (their due times being unknown) every timer key of theirs.
    So do the timer keys undo records hold for them whatever their due time: a profile moved out of the
    shard (identity stitching) left its last timer's key only there.
    """
    key = profile_key(customer)
    versions = {store.get(key), store.get_committed(key)} - {None}
    keys = [key, quarantine_key(customer)]
    for raw in versions:
        assert raw is not None
        try:
            due = due_at(decode_profile(raw), ruleset)
        except Exception:  # noqa: BLE001 - quarantined or undecodable: find its timers by scanning
            keys += [k for k, _ in store.scan(TIMER_PREFIX) if is_timer_of(k, customer.encode())]
            continue
        if due is not None:
            keys.append(timer_key(due, customer))
    suffix = customer.encode()
    store.erase(keys, matching=lambda k: is_timer_of(k, suffix))
    return bool(versions)


def read_profile(state_dir: str | Path, shards: int, customer: str) -> dict[str, Any] | None:
    """The committed profile of one customer, read-only (works while the flow runs).

    `customer` is the key of any of the customer's identifiers: a linked one reads as the profile it
    belongs to (resolved through the identity graph, operators/identity/graph.py). A quarantined
    customer reads as `{"quarantined": {...}}`: why, and the stored bytes.
    """
    from operators.identity.graph import resolve_offline
    from operators.state.layout import family_of_anchor, has_store

    key, anchor = resolve_offline(state_dir, customer)
    path = family_of_anchor(anchor, shards).path(state_dir, shard_of(key, shards))
    if not has_store(path):
        return None
    store = ShardStore.open_read_only(path)
    try:
        raw = store.get(profile_key(key))
        if raw == QUARANTINED:
            record = store.get(quarantine_key(key))
            return {"customer": key, "quarantined": orjson.loads(record) if record else {}}
        return None if raw is None else stored_as_dict(raw)
    finally:
        store.close()
