"""One shard's state, without Bytewax: its profiles (a decoded cache in front of the store), its timer
index, erasure, quarantine, the input positions it has seen, and its checkpoints.

`ShardLogic` (operators/shard/logic.py) adapts this to Bytewax's stateful step. `ShardState` is the
coordinator: it applies a batch in order, ends the epoch and erases, and hands each job to one part:

- the cache and write-back (operators/shard/cache.py): decoded profiles stay in an LRU
  (`cache_profiles`) so a busy customer is not decoded and re-encoded on every batch. A changed profile
  is "dirty" until it is written to the store: at the epoch end, when it is evicted, or when too many
  are dirty (bounding the epoch-end pause): more early in an epoch, few by its end (`_epoch_started`).
- quarantine and poison replay (operators/shard/quarantine.py): one customer's bad data never stops
  the flow. An event whose processing raises is dead-lettered (`processing_error`: the original bytes,
  the exception class and step, no payload values) and the customer's profile is rebuilt as it was
  before that event, from the stored copy plus the events and timer turns applied since it was written.
  A stored profile that cannot be decoded is set aside (quarantined) for inspection; that customer's
  events are dead-lettered until it is erased.
- the merge barrier (operators/shard/merge_barrier.py), for identity stitching (operators/identity/):
  a `MoveOut` takes a profile out of this shard and sends it on as a `MoveIn`; a `MergeExpect` says
  which profiles are on their way to one of this shard's customers, whose items wait until they have
  all arrived (always within the epoch). Decisions say how the customer can be reached (`ids`,
  operators/rules/addressing.py).
- the timer runner (operators/shard/timer_runner.py): timer turns at the input's event-time frontier.

The input positions of the events applied are checkpointed with the profiles, so any consistent set
of shard checkpoints (a savepoint) says where the input resumes.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nextclick.operators.engine.steps import due_at, on_event, on_timers
from nextclick.operators.frontier import EventTimeFrontier
from nextclick.operators.infra import failpoints, metrics
from nextclick.operators.infra.clock import Clock
from nextclick.operators.profile.codec import decode_profile
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import (
    DeadLetter,
    Detach,
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
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.cache import (
    BACKLOG_DIRTY_FACTOR,
    DIRTY_LIMIT,
    EARLY_DIRTY_LIMIT,
    EARLY_SHARE,
    WRITE_CHUNK,
    ProfileCache,
)
from nextclick.operators.shard.common import ShardItem, ShardOutput, account, log, note_ids, undo_outcome
from nextclick.operators.shard.held import HeldEvents
from nextclick.operators.shard.merge_barrier import MergeBarrier
from nextclick.operators.shard.quarantine import Quarantine
from nextclick.operators.shard.timer_runner import TimerRunner
from nextclick.operators.state.epoch import EpochLedger
from nextclick.operators.state.erased import ErasedKeys
from nextclick.operators.state.keys import (
    HELD_EVENT_PREFIX,
    QUARANTINED,
    TIMER_PREFIX,
    is_held_of,
    is_timer_of,
    profile_key,
    quarantine_key,
    shard_path,
    timer_key,
)
from nextclick.operators.state.manifest import StartPlan
from nextclick.operators.state.savepoint_parts import report_part_failed, write_shard_part
from nextclick.operators.state.store import KeyValueStore, ShardStore, StateError
from nextclick.operators.state.timers import TimerIndex

__all__ = ["ShardContext", "ShardItem", "ShardOutput", "ShardState", "erase_customer", "open_store",
           "processing_error"]

# The store's own cache of encoded values: none. The shard keeps decoded profiles itself and hands
# the store the committed bytes it loaded, so an encoded copy would only be read on rare paths.
_STORE_CACHE = 0


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
    # What the start-up checks found (operators/tools/startup.py); None when a test drives shards directly.
    plan: StartPlan | None = None
    # Which family of stores these shards are (operators/state/layout.py): its name in the plan.
    family: str = "profiles"
    # True in the flow: timers fire by the input's event-time frontier, which the identity stage sends
    # (records.Frontier); nothing fires before the first one. False (tools and tests that drive a shard
    # directly): the clock is the frontier, as for an input that is caught up.
    await_frontier: bool = False
    # The profile view topic's writer (operators/io/profile_view.py): given, at each checkpoint, the
    # profiles changed in the epoch (None: erased or moved out); None when no view topic is configured.
    view: Callable[[list[tuple[str, Profile | None]], set[str]], int] | None = None
    # The flow's epoch length (flow.epoch_seconds): for its first EARLY_SHARE more profiles may stay
    # dirty (cache.EARLY_DIRTY_LIMIT). None: DIRTY_LIMIT throughout (tools and tests).
    epoch_s: float | None = None
    # Without identity stitching the sources report their floors to every shard (records.ShardProgress)
    # and each shard keeps the frontier over them itself (operators/shard/logic.py).
    direct: bool = False
    # Without identity stitching and with several readers: events wait for that frontier to reach their
    # time less this bound (flow.alignment_bound), for event-time order across readers
    # (operators/shard/held.py). None: one reader, or the identity stage orders them.
    order_bound_ms: int | None = None


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


class _EngineSteps:
    """The engine steps the parts call, looked up in this module at each call: the fault-injection
    tests replace `on_event` and `on_timers` here, and every part then runs the replacement."""

    @staticmethod
    def on_event(profile: Profile, event: Event, ruleset: RuleSet, out: Outcome | None = None) -> Outcome:
        return on_event(profile, event, ruleset) if out is None else on_event(profile, event, ruleset, out)

    @staticmethod
    def on_timers(profile: Profile, ruleset: RuleSet, now_ms: int, out: Outcome | None = None) -> Outcome:
        return on_timers(profile, ruleset, now_ms) if out is None else on_timers(profile, ruleset, now_ms, out)


class ShardState:
    """One shard's customers, opened at a committed seq (see `open`): a coordinator of its parts.

    - `cache` (operators/shard/cache.py): decoded profiles, the dirty set and its write-back;
    - `quarantine` (operators/shard/quarantine.py): setting customers aside, undoing a failed event;
    - `barrier` (operators/shard/merge_barrier.py): moving profiles out, merging moved ones in;
    - `runner` (operators/shard/timer_runner.py): timer turns at the frontier.

    Here: applying a batch in order, the epoch end (checkpoint, profile view, savepoints) and erasure.
    """

    def __init__(self, ctx: ShardContext, shard: int, store: KeyValueStore,
                 frontier: EventTimeFrontier | None = None) -> None:
        self.ctx, self.shard, self.store = ctx, shard, store
        self.timers = TimerIndex(store)
        self.frontier = frontier or EventTimeFrontier(ctx.clock.now_ms, await_input=ctx.await_frontier)
        # Input positions, erasures and savepoint requests, committed with the data at the epoch end.
        self.ledger = EpochLedger(store)
        ruleset = ctx.ruleset
        # Parts hold references down this list only (no cycle: a dropped shard closes its store at once).
        self.quarantine = Quarantine(store, ruleset, shard, _EngineSteps)
        self.cache = ProfileCache(store, self.timers, ruleset, ctx.cache_profiles, self.quarantine,
                                  viewing=ctx.view is not None)
        self.barrier = MergeBarrier(store, self.cache, ruleset, shard)
        self.runner = TimerRunner(store, self.timers, self.frontier, self.cache, ruleset, _EngineSteps,
                                  self.barrier.waiting)
        self.early_until = 0.0  # monotonic: until then the epoch is young (see `_epoch_started`)
        self.late_limit = DIRTY_LIMIT  # how many may stay dirty once it is not: set by each batch
        self._wound_down = False  # a wind-down turn wrote nothing: no more until the next batch
        self.erased = ErasedKeys(store)  # erased customers: their older events are not applied again
        # Event-time order across readers, if held.
        self.held = HeldEvents(store, ctx.order_bound_ms, self.frontier, ctx.clock.now_ms)
        self._epoch_started()

    def _epoch_started(self) -> None:
        """The first EARLY_SHARE of an epoch lets more profiles stay dirty; the rest writes them down in
        chunks, so the epoch-end pause finds no more than before (bench.live_cost measures both)."""
        epoch_s = self.ctx.epoch_s
        self.early_until = time.monotonic() + epoch_s * EARLY_SHARE if epoch_s else 0.0
        self._wound_down = False

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

    # Views of the parts' maps, for the tests that look inside a shard.
    @property
    def _live(self) -> OrderedDict[str, Profile]:
        return self.cache.live

    @property
    def _dirty(self) -> dict[str, int | None]:
        return self.cache.dirty

    @property
    def _waiting(self) -> dict[str, set[str]]:
        return self.barrier.waiting

    @property
    def _early(self) -> dict[str, dict[str, bytes | None]]:
        return self.barrier.early

    def _profiles(self, customers: list[str]) -> tuple[dict[str, Profile], set[str], set[str]]:
        return self.cache.load(customers)

    def next_due(self) -> int | None:
        """When the earliest timer falls due (on the frontier; may be early but never late), or None."""
        return self.runner.next_due()

    def due_now(self) -> bool:
        """Whether a timer turn has work at the frontier as it stands (False while it is unknown)."""
        return self.runner.due_now()

    def fire_due(self) -> list[ShardOutput]:
        """The timer turn at the frontier as it stands (nothing while it is unknown)."""
        return self.runner.fire_due()

    def wind_down_at(self) -> float | None:
        """When (monotonic) the dirty profiles over the late limit must start going to the store, so the
        epoch-end pause finds few even if no batch comes to write them; None if none are over it."""
        if self._wound_down or len(self.cache.dirty) <= self.late_limit:
            return None
        return self.early_until

    def wind_down(self) -> None:
        """Past the epoch's young part: write a chunk of the least recently changed dirty profiles, down
        to the limit the last batch set (a backlog's batch keeps its own profiles dirty)."""
        if time.monotonic() >= self.early_until:
            dirty = len(self.cache.dirty)
            self.cache.write_oldest(WRITE_CHUNK, keep=self.late_limit)
            self._wound_down = len(self.cache.dirty) == dirty  # nothing it could write: never spin

    def fire_timers(self, now: int) -> list[ShardOutput]:
        """The timer turn at frontier `now`: every customer due by it (a bounded number per call, so a
        storm of due timers after downtime drains over several turns while input keeps flowing)."""
        return self.runner.fire(now)

    def close(self) -> None:
        self.store.close()

    # -- applying -------------------------------------------------------------------------------

    def apply(self, values: list[ShardItem]) -> list[ShardOutput]:
        """Events, erasures, savepoint requests and identity moves, in order: decisions, dead letters
        and moved profiles out."""
        self.cache.new_turn()
        out: list[ShardOutput] = []
        ordering = self.held.order is not None
        if ordering:
            self.ledger.note_positions(values)  # held events are state from here: the input goes on after them
            values = self.held.ordered(values)
        if self.erased:
            values = self._without_erased(values)
        self._process(values, out)
        if not ordering:
            self.ledger.note_positions(values)
        return out

    def _process(self, values: list[ShardItem], out: list[ShardOutput]) -> None:
        """Events are applied in runs (one multi-get, one dirty-set update per run); an item about a
        customer applies after every earlier event of that customer in the batch and before every later
        one. Only an item about a customer the current run holds ends the run, and what a completed
        merge releases joins the run: a batch with identity moves keeps runs as long as one without."""
        barrier = self.barrier
        waiting, held = barrier.waiting, barrier.held
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
                # Applied now, as the item comes after them; their timer turns wait for the batch's
                # end: the barrier may still release more of the customer's items (a second merge).
                self._apply_events(run, out, turn=False)
                run, in_run = [], set()
            released: list[ShardItem] = []
            if isinstance(value, MoveIn):
                released = barrier.move_in(value)
            elif waiting and value.customer in waiting:
                held[value.customer].append(value)  # after the merge, as it came after the link
            elif isinstance(value, EraseRequest):
                self._turn_before_merge(value.customer, value.fire_before, out)
                self.erase(value.customer, at_ms=value.requested_at, follow_up=value.follow_up)
            elif isinstance(value, MoveOut):
                self._turn_before_merge(value.customer, value.at_ms, out)
                out.append(barrier.move_out(value))
            elif isinstance(value, MergeExpect):
                self._turn_before_merge(value.customer, value.at_ms, out)
                released = barrier.expect(value)
            elif isinstance(value, Detach):
                self._turn_before_merge(value.customer, value.at_ms, out)
                barrier.detach(value)
            if released:  # the merged customer's items that waited: next, in their order
                queue.extendleft(reversed(released))
        if run:
            self._apply_events(run, out)

    def _turn_before_merge(self, customer: str, at_ms: int | None, out: list[ShardOutput]) -> None:
        """A merge is an event at its link's time on every profile it joins: absences due by then fire
        first, on the profile as it stands (an event would fire them before it is applied), not later
        on the merged profile. Otherwise whether a cart abandoned before a sign-in is judged with the
        signed-in profile's consent and addresses would depend on whether the frontier's timer turn or
        the merge reached the shard first: on batching, partitions and processes."""
        if at_ms is not None:
            self.runner.fire_one(customer, at_ms, out)

    def _apply_events(self, events: list[Event], out: list[ShardOutput], *, turn: bool = True) -> None:
        """One run of events: loaded once, applied in order, a failed one dead-lettered and undone.
        `turn`: the timer turn of a profile the run leaves due may run at once (the batch's last run)."""
        cache = self.cache
        profiles, created, _ = cache.load(list(dict.fromkeys(e.customer for e in events)))
        # A large batch means a backlog: the input is already late, throughput is what counts, and
        # a busy customer should be encoded once per epoch rather than after every batch. A small
        # batch means the flow keeps up, and a short epoch-end pause is what counts. Timer turns
        # in between keep the limit the last batch set: a few due customers are no sign of either.
        self.late_limit = max(DIRTY_LIMIT, BACKLOG_DIRTY_FACTOR * len(profiles))
        self._wound_down = False
        cache.dirty_limit = max(EARLY_DIRTY_LIMIT, self.late_limit) if time.monotonic() < self.early_until \
            else self.late_limit
        cache.changing(profiles)
        ruleset, applied = self.ctx.ruleset, cache.applied
        outcome = Outcome()  # one for the whole batch: one allocation, not one per event
        types: dict[str, int] = {}  # a plain dict: a Counter costs a microsecond to make, per batch
        for event in events:
            customer = event.customer
            profile = profiles.get(customer)
            if profile is None:  # quarantined, now or earlier in this batch
                out.append(processing_error(event, "quarantined_profile", _Quarantined()))
                metrics.PROCESSING_ERRORS.labels("quarantined_profile", "Quarantined").inc()
                continue
            duplicates, marks = outcome.duplicates, (len(outcome.decisions), len(outcome.blocked), outcome.absences)
            if not profile.ids and event.id_type is not None:
                note_ids(profile, event)
            try:
                if failpoints.FAIL_CUSTOMERS and customer in failpoints.FAIL_CUSTOMERS:
                    raise failpoints.InjectedFailure("failpoint")
                on_event(profile, event, ruleset, outcome)
            except Exception as exc:  # noqa: BLE001 - one customer's bad data is that customer's dead letter
                undo_outcome(outcome, *marks)
                out.append(processing_error(event, "engine.on_event", exc))
                metrics.PROCESSING_ERRORS.labels("engine.on_event", type(exc).__name__).inc()
                log.warning("event not applied", extra={"shard": self.shard, "customer": customer,
                                                        "step": "engine.on_event", "exception": type(exc).__name__})
                cache.restore(customer, profiles)
                continue
            applied.setdefault(customer, []).append(event)
            if outcome.duplicates == duplicates:
                types[event.type] = types.get(event.type, 0) + 1
        live = cache.live
        for customer in [c for c in profiles if c not in applied]:
            # Every event of theirs failed since the profile was last written: it is as stored (a new
            # customer: nothing is stored), so there is nothing to write.
            cache.unchanged(customer)
            if customer in created:
                del profiles[customer]
                live.pop(customer, None)
        changed = {c: p for c, p in profiles.items() if c in live}
        cache.changed(changed, self.runner.due_after_batch(changed, outcome, turn=turn))
        account(outcome, out, profiles)
        for event_type, n in types.items():
            metrics.labelled(metrics.EVENTS, event_type).inc(n)

    # -- the epoch end ----------------------------------------------------------------------------

    def checkpoint(self) -> int:
        """The epoch end: write what is dirty and commit it with the positions; the new seq."""
        started = time.perf_counter()
        cache = self.cache
        self.barrier.settled(f"{self.ctx.family} shard {self.shard}")
        dirty = len(cache.dirty)
        cache.flush()
        self.held.checkpoint()
        if cache.viewed:
            self._publish_view()
        cache.committed.clear()  # from here on, reads return what this epoch wrote
        seq = self.ledger.commit(self._write_savepoint)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        self._epoch_started()
        label = self.shard if self.ctx.family == "profiles" else f"{self.ctx.family}/{self.shard}"
        metrics.observe_shard(label, len(cache.live), dirty, lambda: self.store.stats()["disk_bytes"])
        return seq

    def _publish_view(self) -> None:
        """The profile view's records of this epoch, before it commits (see `ProfileCache.view_changes`)."""
        assert self.ctx.view is not None
        self.ctx.view(*self.cache.view_changes(self.ctx.family))

    def _write_savepoint(self, request: SavepointRequest, seq: int) -> None:
        """This shard's part of an online savepoint: a RocksDB checkpoint of the seq just committed, on the
        shard's own volume, copied to the destination in the background (the epoch end does not wait)."""

        started = time.perf_counter()
        try:
            write_shard_part(self.store, request.path, self.shard, seq, self.ledger.positions,
                             request.token, self.ctx.plan.lineage if self.ctx.plan else None, request.store,
                             scratch=self.ctx.state_dir, request_id=request.request_id,
                             generation=self.ctx.plan.generation if self.ctx.plan else None)
        except (OSError, StateError) as exc:
            # The flow goes on; the savepoint is incomplete and `nextclick savepoint create` says so.
            log.error("savepoint part not written", extra={"shard": self.shard, "path": request.path,
                                                           "error": str(exc)})
            report_part_failed(request.path, self.shard, request.token, request.store, request.request_id,
                               f"the shard's checkpoint on its own volume failed: {exc}", getattr(exc, "errno", None))
            return
        log.info("savepoint part checkpointed, copying", extra={
            "shard": self.shard, "seq": seq, "path": request.path, "seconds": round(time.perf_counter() - started, 3)})

    def _without_erased(self, values: list[ShardItem]) -> list[ShardItem]:
        """Without the events of erased customers dated at or before their erasure: a replay after a
        crash or a restore reads them after the erasure (the control topic is not aligned), and
        applying them would bring the customer back (without identity stitching, nothing else stops them)."""
        before, kept = self.erased.before_erasure, []
        for value in values:
            if type(value) is Event and before(value.customer, value.ts):
                metrics.EVENTS_OF_ERASED.inc()
                continue
            kept.append(value)
        return kept

    def erase(self, customer: str, *, at_ms: int | None = None, follow_up: bool = False) -> bool:
        """Right to erasure: the profile, its timer and every undo pre-image of them, at once; the
        customer's events dated at or before `at_ms` (default: now) are not applied again.

        Counted only where a profile is there now: the identity stage sends a part to every family's
        shard of every identifier of a linked profile, and one of them holds it; an erasure repeated, or
        of an identifier nothing was ever keyed by, erases nothing (an outside probe: both were counted,
        so a report built on the counter named people who never were)."""
        at = self.ctx.clock.now_ms() if at_ms is None else at_ms
        key = profile_key(customer)
        # Also a profile this epoch moved out (a sign-in's merge) whose last record on the view is the one
        # committed before: it needs its tombstone as much (an outside probe: the cookie stayed on the view).
        present = customer in self.cache.live or self.store.get(key) is not None
        on_view = present or self.store.get_committed(key) is not None
        cache = self.cache
        done_here = self.erased.erased_at(customer)
        if follow_up and (done_here is not None and done_here >= at or present and self._started_after(customer, at)):
            # Done here already (this shard's own mark), or a profile started after the erasure: not the
            # erased person's (a follow-up finishes an erasure a crash stopped before it reached this shard).
            log.info("a follow-up erasure leaves this shard as it is", extra={
                "customer": customer, "family": self.ctx.family, "shard": self.shard})
            return False
        marks = self.erased.mark(customer, at)
        if on_view and self.ctx.view is not None:
            # Its tombstone goes out (acknowledged) before the erasure is committed, not at the checkpoint:
            # a crash in between left the view's last record live for good, as the replay finds nothing to
            # erase (an outside probe: the profile service showed an erased person's profile and orders).
            view_key = f"{self.ctx.family}/{customer}"
            self.ctx.view([(view_key, None)], {view_key})
            cache.unmark_viewed(customer)
        else:
            cache.mark_viewed(customer, erased=True)  # its tombstone on the view topic, saying so
        # Unwritten changes go too: the store's versions (pending, committed) are erased below.
        in_memory = cache.forget(customer)
        # Their held events from before it go now, counted as an erased person's are (`_without_erased`).
        metrics.EVENTS_OF_ERASED.inc(len(self.held.take(customer, lambda e: self.erased.before_erasure(
            customer, e.ts))))
        existed = erase_customer(self.store, customer, self.ctx.ruleset, marks=marks) or in_memory
        self.ledger.note_erased()
        if present:
            metrics.ERASURES.inc()
            failpoints.hit("erased")
        log.info("customer erased", extra={"customer": customer, "family": self.ctx.family, "shard": self.shard,
                                           "existed": existed})
        return existed

    def _started_after(self, customer: str, at_ms: int) -> bool:
        """The customer's profile holds nothing from at or before `at_ms` (its first event is later)."""
        profile = self.cache.live.get(customer)
        if profile is None:
            blob = self.store.get(profile_key(customer))
            try:
                profile = decode_profile(blob) if blob is not None and blob != QUARANTINED else None
            except Exception:  # noqa: BLE001 - unreadable: erased, on the safe side
                return False
        first = profile.facts.first_seen if profile is not None else None
        return first is not None and first > at_ms


class _Quarantined(Exception):
    """The customer's stored profile is set aside for inspection (see `Quarantine.set_aside`). Kept in
    this module: dead letters name it by its module (`exception_class`)."""

def erase_customer(store: KeyValueStore, customer: str, ruleset: RuleSet,
                   marks: Mapping[bytes, bytes] | None = None) -> bool:
    """Remove one customer from a shard's store, committed immediately; True if they were there. `marks`:
    the erasure's marks (`ErasedKeys.mark`), written in the same synced write.

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
    # Held events (operators/shard/held.py) too, stored or in undo records: their keys start with the customer.
    store.erase(keys + [k for k, _ in store.scan(HELD_EVENT_PREFIX + suffix + b"\0")],
                matching=lambda k: is_timer_of(k, suffix) or is_held_of(k, suffix), written=marks)
    return bool(versions)


