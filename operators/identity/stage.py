"""The identity stage: the flow's first stateful step, which sends every event to the profile it updates.

    parse ─ ("identity", item) ─ identity ─┬─ (shard key, item) ─ profiles ────────┬─ decisions, dead letters
                                           └─ ("<type>/<shard>", item) ─ linked_<type> ─┘
                                                             moved profiles ──┘ (to later families only)

One Bytewax key, one store (`<state.dir>/identity/shard-0000`, a ShardStore checkpointed in step with
the epochs like every shard). Why one: a link has to see the current state of every profile it joins,
and its guards the whole merged profile (how many cookies, which customer id). Split over keys, one
link would need a transaction across them, which a dataflow without cycles cannot run. One sequencer
also keeps the order of each input partition all the way to the profiles, as before. What it costs
per event is a dictionary lookup (an identifier linked to nothing, the common case, is remembered as
such) and one more hop: measured in docs/performance.md.

For each event:
- no other identifier (the common case): the profile of its identifier, or of the linked profile it
  belongs to (the event then carries that profile's key);
- other identifiers: `IdentityGraph.decide`. Already one profile: sent there. A refused link: sent
  where it would have gone without the link, counted by reason and logged (keys only, never raw
  values). A merge: the graph records it, every profile that joins is sent a `MoveOut` (in its family
  and shard), the merged profile's shard a `MergeExpect`, then the event goes there. The shard holds
  that customer's items until every moved profile has arrived (operators/shard/shard_state.py), so
  what came after the link applies after the merge.

The stage also keeps the input's event-time frontier (operators/frontier.py): each input partition's
Progress reports come in the stream behind its messages, and the frontier goes to every shard of every
family (a Frontier item, at most every FRONTIER_EVERY_S) behind everything routed before it. A shard
fires its timers by it, so it never fires one before an earlier event of its customer has arrived,
whatever process read that event.

With several readers (workers or processes) it first holds each event until that frontier has reached
its time less the alignment bound (operators/identity/order.py): alignment orders the reading, and each
reader's batches reach this stage on their own channel.

An erasure of any identifier forgets every identifier linked with it (graph, at once) and sends every
family's shard of each of them an erasure, so their profiles and the undo records of profiles moved
out of a shard go too. A savepoint request is copied to every shard of every family.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from bytewax.operators import StatefulBatchLogic

from nextclick.operators.event_order import CrossPartitionOrder, load_held, read_order, take_from, write_held
from nextclick.operators.exchange import flatten, grouped
from nextclick.operators.frontier import InputFrontier
from nextclick.operators.identity.graph import Component, IdentityGraph, Merge, Refusal
from nextclick.operators.identity.guards import IdentityRules
from nextclick.operators.identity.order import HELD_PREFIX, held_key
from nextclick.operators.infra import failpoints, metrics
from nextclick.operators.infra.clock import Clock, SystemClock
from nextclick.operators.profile.dedupe import earlier_keys, event_key
from nextclick.operators.records import (
    Detach,
    EraseRequest,
    Event,
    Frontier,
    MergeExpect,
    MoveOut,
    Progress,
    SavepointRequest,
)
from nextclick.operators.shard.shard_state import open_store
from nextclick.operators.state.epoch import EpochLedger
from nextclick.operators.state.layout import IDENTITY, Family, profile_families
from nextclick.operators.state.manifest import StartPlan
from nextclick.operators.state.placement import BALANCED
from nextclick.operators.state.savepoint_parts import write_shard_part
from nextclick.operators.state.store import KeyValueStore, StateError

IdentityItem = Event | EraseRequest | SavepointRequest | Progress
Routed = tuple[str, Any]
IDENTITY_KEY = "identity"  # the stage's one Bytewax key
# How often, at most, the frontier goes to every shard: each round is one item per shard of every
# family, and in a backlog the frontier moves with nearly every batch.
FRONTIER_EVERY_S = 0.25
replace_event = msgspec.structs.replace  # an Event with some fields changed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityContext:
    state_dir: Path  # state.dir
    shards: int
    rules: IdentityRules
    cache_identifiers: int = 131072
    keep_checkpoints: int = 64
    sync: bool = True
    plan: StartPlan | None = None
    clock: Clock = dataclasses.field(default_factory=SystemClock)  # caught-up partitions follow it
    placement: str = BALANCED  # state.shard_placement: the shards' Bytewax keys (operators/state/placement.py)
    # The rules file's dedupe horizon: a link event repeated within it links nothing (IdentityGraph.seen_link).
    dedupe_horizon_ms: int = 24 * 3600 * 1000
    # With several readers (workers or processes) and alignment on: flow.alignment_bound, by which events
    # are held until the frontier lets them go (operators/identity/order.py). None: read order is kept.
    order_bound_ms: int | None = None
    # Records an erasure's other identifiers on the control topic, acknowledged, before the graph forgets
    # them (keys, request id, requested_at): `EraseRequest.follow_up`. None: not recorded (tests, tools).
    record_erasure: Callable[[list[str], str, int], None] | None = None

    @property
    def family(self) -> Family:
        return Family(IDENTITY, IDENTITY, 1)


class _RefusalLog:
    """One log line per refused link, at most `per_minute` per reason (a misbehaving producer can send a
    placeholder id in every event); the next line says how many were not written."""

    def __init__(self, per_minute: int = 20) -> None:
        self.per_minute = per_minute
        self._window: dict[str, tuple[float, int, int]] = {}  # reason -> (window start, written, skipped)

    def write(self, reason: str, id_type: str, event: Event, profiles: list[str]) -> None:
        now = time.monotonic()
        start, written, skipped = self._window.get(reason, (now, 0, 0))
        if now - start >= 60:
            start, written = now, 0
        if written >= self.per_minute:
            self._window[reason] = (start, written, skipped + 1)
            return
        src = event.source
        log.info("link refused", extra={
            "reason": reason, "id_type": id_type, "profiles": profiles,
            "source": f"{src.topic}#{src.partition}@{src.offset}" if src is not None else None,
            "not_logged_before": skipped})
        self._window[reason] = (start, written + 1, 0)


class IdentityState:
    """The identity stage's state and routing, without Bytewax (the adapter is IdentityLogic)."""

    def __init__(self, ctx: IdentityContext, store: KeyValueStore) -> None:
        self.ctx, self.store = ctx, store
        self.graph = IdentityGraph(store, ctx.rules, ctx.cache_identifiers)
        shards = ctx.shards
        self.families = profile_families(shards, ctx.rules.anchors)
        # Bytewax keys of every family's shards: routes[anchor][shard], anchor None for `profiles`.
        self.routes: dict[str | None, list[str]] = {f.anchor: [f.route(n, ctx.placement) for n in range(shards)]
                                                    for f in self.families}
        self.ledger = EpochLedger(store)
        self._refusals = _RefusalLog()
        self.frontier = InputFrontier(ctx.clock.now_ms)
        self.frontier_moved = False  # a Progress report came since the frontier was last sent
        self._frontier_sent: tuple[int | None] | None = None
        self.order, self._held_stored = load_held(store.scan(HELD_PREFIX), ctx.order_bound_ms, ctx.clock.now_ms)
        # What `_apply` calls (innermost last) have still to route: an erasure met part way through a run
        # of released events takes from them too (`_take_erased`).
        self._applying: list[deque[IdentityItem]] = []

    @classmethod
    def open(cls, ctx: IdentityContext, seq: int | None) -> IdentityState:
        store = open_store(ctx.family.root(ctx.state_dir), IDENTITY, 0, seq, ctx.plan,
                           keep_checkpoints=ctx.keep_checkpoints, sync=ctx.sync, cache_size=4096)
        return cls(ctx, store)

    def route(self, anchor: str | None, key: str) -> str:
        return self.routes[anchor][zlib.crc32(key.encode()) % self.ctx.shards]

    # -- one batch ----------------------------------------------------------------------------------

    def apply(self, values: list[IdentityItem]) -> list[Routed]:
        order = self.order
        if order is None:
            out = self._apply(values)
        else:  # events wait for the frontier (operators/identity/order.py); commands and reports do not
            rest: list[IdentityItem] = []
            erased = self.graph.erased.checksums
            for value in values:
                # An erased person's event from before the erasure is not held (nor stored): it goes
                # now, to be dropped as such. Unless it joins identifiers not erased yet (a sign-in read
                # after the erasure): those go with it, after their own events before it, which wait in
                # the hold (a recheck probe: with two workers the sign-in went first, erased the cookie,
                # and the cookie's page views, let go later, were dropped with the ad due from them).
                if type(value) is Event and not (erased and self.graph.of_erased(value)
                                                 and not self._joins_others(value)):
                    order.hold(value)
                else:
                    rest.append(value)
            out = self._apply(rest)
            out += self.release()
            if self.ctx.order_bound_ms is None and not order.held:
                self.order = None  # what a run with several readers held is let go: read order from here
        self.ledger.note_positions(values)
        return out

    def release(self) -> list[Routed]:
        """The held events the frontier lets go, routed (none without a CrossPartitionOrder)."""
        if self.order is None or not self.order.held:
            return []
        return self._apply(self.order.release(*self.frontier.current()))

    def _apply(self, values: list[IdentityItem] | list[Event]) -> list[Routed]:
        out: list[Routed] = []
        queue: deque[IdentityItem] = deque(values)
        self._applying.append(queue)
        try:
            self._route(queue, out)
        finally:
            self._applying.pop()
        return out

    def _route(self, queue: deque[IdentityItem], out: list[Routed]) -> None:
        """Route what `queue` holds, in order (an erasure met on the way may take some of it: `_take_erased`)."""
        find, route0, shards, routes = self.graph.find, self.routes[None], self.ctx.shards, self.routes
        crc32 = zlib.crc32
        erased = self.graph.erased.checksums  # empty until the first erasure: one set test per event
        shared = self.graph.shared  # empty until two customer ids sign in on one cookie or device
        popleft = queue.popleft
        while queue:
            value = popleft()
            if type(value) is Event:
                if erased and self.graph.of_erased(value):
                    # An erased person's event from before the erasure (a replay after a crash or a
                    # restore reads it after the erasure): applying it would bring them back.
                    metrics.EVENTS_OF_ERASED.inc()
                    if value.links:
                        self._erase_linked(value, out)
                    continue
                if value.blocked:
                    self._refused_blocked(value)
                if shared and (value.customer in shared or any(key in shared for _, key in value.links)):
                    kept = self._unshared(value, out)
                    if kept is None:
                        continue
                    value = kept
                if not value.links or value.id_type is None:
                    customer = value.customer
                    found = find(customer)
                    if found is None:  # linked to nothing: its own profile, as before identity stitching
                        out.append((route0[crc32(customer.encode()) % shards], value))
                        continue
                    into, anchor = found
                    if into != customer:
                        value = replace_event(value, customer=into, id_type=anchor)
                    out.append((routes[anchor][crc32(into.encode()) % shards], value))
                    continue
                self._link(value, out)
            elif type(value) is EraseRequest:
                self._erase(value, out)
            elif type(value) is SavepointRequest:
                self._savepoint(value, out)
            elif type(value) is Progress:
                self.frontier.note(value.partition, value.floor, value.total)
                self.frontier_moved = True

    def frontier_items(self) -> list[Routed]:
        """The frontier for every shard of every family, if it is known and moved since it was last sent."""
        self.frontier_moved = False
        known, floor = self.frontier.current()
        if not known or self._frontier_sent == (floor,):
            return []
        self._frontier_sent = (floor,)
        clock = self.ctx.clock
        metrics.FRONTIER.set_function(lambda: (clock.now_ms() if floor is None else floor) / 1000)
        metrics.FRONTIER_CAUGHT_UP.set(floor is None)
        return [(route, Frontier(n, floor)) for routes in self.routes.values() for n, route in enumerate(routes)]

    def _to(self, component: Component, event: Event, out: list[Routed]) -> None:
        if component.key != event.customer:  # the event now names the profile (key and type) it updates
            event = replace_event(event, customer=component.key, id_type=component.type)
        out.append((self.route(component.type if component.linked else None, component.key), event))

    def _link(self, event: Event, out: list[Routed]) -> None:
        assert event.id_type is not None
        graph = self.graph
        outcome = graph.decide([(event.id_type, event.customer), *event.links])
        if isinstance(outcome, Component):
            self._to(outcome, event, out)
            return
        if isinstance(outcome, Refusal):
            metrics.LINKS_REFUSED.labels(outcome.reason, outcome.id_type).inc()
            # A second customer signed in on this cookie or device.
            marked = outcome.reason == "two_customer_ids" and self._share(event, out)
            primary = graph.component(event.id_type, event.customer)
            self._refusals.write(outcome.reason, outcome.id_type, event,
                                 sorted({graph.component(t, k).key for t, k in event.links} | {primary.key}))
            if marked:
                # Without the identifiers it just made shared, the event does what it will do when it comes
                # again: the rest of its links (the new customer's email) are made.
                kept = self._unshared(event, out, count=False)
                if kept is not None and kept.links:
                    self._link(kept, out)
                elif kept is not None:
                    self._plain(kept, out)
                return
            self._to(primary, event, out)  # a refused link changes nothing
            return
        if graph.seen_link(event.customer, event_key(event), event.ts, self.ctx.dedupe_horizon_ms,
                           earlier_keys(event)):
            # A repeat of a link event that joined profiles: it goes where its identifier's events go,
            # and the shard drops it as the duplicate it is; it joins nothing (the first copy's links
            # stand). Only joins are remembered: a write per signed-in event would cost 10% of a backlog.
            self._to(graph.component(event.id_type, event.customer), event, out)
            return
        self._merge(outcome, event, out)

    def _merge(self, merge: Merge, event: Event, out: list[Routed]) -> None:
        self.graph.apply(merge)
        into, target = merge.into, self.route(merge.anchor, merge.into)
        for anchor, key in merge.sources:
            out.append((self.route(anchor, key), MoveOut(key, into, target, at_ms=event.ts)))
        ids = merge.ids
        shared = self.graph.shared
        if shared:  # a shared cookie or device stays in the graph's group, never in the profile's addresses
            ids = {t: [k for k in keys if k not in shared] for t, keys in ids.items()}
            ids = {t: keys for t, keys in ids.items() if keys}
        out.append((target, MergeExpect(into, tuple(key for _, key in merge.sources), ids, at_ms=event.ts)))
        out.append((target, event if event.customer == into else
                    replace_event(event, customer=into, id_type=merge.anchor)))
        metrics.LINKS.labels(merge.anchor).inc()
        failpoints.hit("linked")

    def _share(self, event: Event, out: list[Routed]) -> bool:
        """After a sign-in as a second customer id was refused: the cookies and devices it names that are
        another customer's are shared from now on; True if it made any so."""
        graph = self.graph
        assert event.id_type is not None  # a link event: its identifier's type is known
        named = [(event.id_type, event.customer), *event.links]
        marked = False
        for customer in (k for t, k in named if t == "customer"):
            for key in graph.mark_shared(named, customer):
                log.info("a cookie or device is shared: its later events go to its own profile",
                         extra={"identifier": key})
                # The first customer's decisions stop addressing it (their ads would follow whoever uses
                # the kiosk next); the graph keeps the link, for erasure.
                owner = graph.component(next(t for t, k in named if k == key), key)
                out.append((self.route(owner.type, owner.key), Detach(owner.key, key, at_ms=event.ts)))
                marked = True
        return marked

    def _refused_blocked(self, event: Event) -> None:
        for id_type in event.blocked:
            metrics.LINKS_REFUSED.labels("blocked_value", id_type).inc()
            self._refusals.write("blocked_value", id_type, event, [event.customer])

    def _unshared(self, event: Event, out: list[Routed], *, count: bool = True) -> Event | None:
        """An event that names a shared cookie or device (`IdentityGraph.mark_shared`): whoever uses it
        now may be any of the customers who signed in on it, so it links to nobody. Keyed by it and naming
        nobody else, the event goes to the identifier's own profile (None: routed); naming someone else
        (a sign-in on the kiosk), it is theirs: the highest-priority other identifier keys it, and the rest
        still link. `count` False: the refusal is counted already (the sign-in that made it shared)."""
        shared = self.graph.shared
        links = tuple(link for link in event.links if link[1] not in shared)
        if count:
            for id_type, _ in (link for link in event.links if link[1] in shared):
                metrics.LINKS_REFUSED.labels("shared_identifier", id_type).inc()
        if event.customer not in shared:
            return replace_event(event, links=links)
        if event.links and count:
            metrics.LINKS_REFUSED.labels("shared_identifier", event.id_type or "unknown").inc()
        if not links:
            own = replace_event(event, links=()) if event.links else event
            out.append((self.route(None, event.customer), own))
            return None
        id_type, key = min(links, key=lambda link: self.ctx.rules.rank(link[0]))
        rest = tuple(link for link in links if link[1] != key)
        return replace_event(event, customer=key, id_type=id_type, links=rest)

    def _plain(self, event: Event, out: list[Routed]) -> None:
        """An event that names no other identifier: to its profile (apply's loop inlines this)."""
        found = self.graph.find(event.customer)
        if found is None:
            out.append((self.route(None, event.customer), event))
            return
        into, anchor = found
        if into != event.customer:
            event = replace_event(event, customer=into, id_type=anchor)
        out.append((self.route(anchor, into), event))

    def _erase_linked(self, event: Event, out: list[Routed]) -> None:
        """A link event from before an erasure names identifiers that it joined to the erased person
        when it was first read, and that the erasure then took with them: a replay reads the erasure
        first, when the graph does not hold that link yet. They go now, as they went then (the cookie's
        cart applied before this sign-in included).

        Unless the link was refused when it was first read, as it is now: a sign-in on another customer's
        cookie (a household's computer) joined the cookie to nobody and made it shared, so the cookie is
        shared again here and the other customer keeps it (an outside probe: in a backlog the erasure of
        the second person to sign in erased the first one's whole profile, their opt-out included). Any
        other refusal joined nothing to the erased person."""
        graph = self.graph
        erased_at = {key: graph.erased.erased_at(key) for key in graph.personal_keys(event)}
        at = max(t for t in erased_at.values() if t is not None and event.ts <= t)
        if event.id_type is not None:
            outcome = graph.decide([(event.id_type, event.customer), *event.links])
            if isinstance(outcome, Refusal):
                if outcome.reason != "two_customer_ids" or not self._share(event, out):
                    return
                erased_at = {key: graph.erased.erased_at(key) for key in graph.personal_keys(event)}  # not shared
        for key, since in erased_at.items():
            if since is None or since < at:
                self._erase(EraseRequest(key, "linked-by-an-erased-persons-event", event.source, requested_at=at,
                                         fire_before=event.ts), out, on_control=False)

    def _erase(self, request: EraseRequest, out: list[Routed], *, on_control: bool = True) -> None:
        """Every identifier linked with the one named, in the graph now and in every family's shards
        (the shard that holds the profile counts the erasure).

        The graph's erasure is committed at once, the shards' when they come to it: a crash in between
        left the other identifiers' profiles for good, as the replayed command found the graph's records
        gone (an outside probe: one erasure in 50 under random SIGKILLs, every one of a batch but the first
        under a kill at the first shard's erasure). So they are first recorded on the control topic as
        follow-ups (`record_erasure`), which a replay reads after the command and carries out.
        `on_control`: the request's own key is on the control topic (a command); an erasure a late
        sign-in carries (`_erase_linked`) records its own key too, since the replay finds it marked and
        carries nothing (an outside probe: a kill there left the cookie's profile for good)."""
        if request.follow_up:
            self._follow_up(request, out)
            return
        # With the graph's records goes what was stored of any held event naming them, undo records
        # included: also of events let go since (their keys deleted at a checkpoint, their pre-images
        # still in its undo record), and of a run with several readers before this one. One pass over
        # the undo records for both.
        linked = self.graph.members(request.customer)  # the key itself among them
        named = [key.encode() for key in linked]

        def naming(key: bytes) -> bool:
            return key[:1] == HELD_PREFIX and any(n in key for n in named)

        doomed = [key for key in self._held_stored if naming(key)]
        at = request.requested_at if request.requested_at is not None else self.ctx.clock.now_ms()
        unrecorded = [key for key in linked if not on_control or key != request.customer]
        if unrecorded and self.ctx.record_erasure is not None:
            self.ctx.record_erasure(unrecorded, request.request_id, at)
        members = self.graph.erase(request.customer, at_ms=at, also=doomed, matching=naming)
        self._held_stored.difference_update(doomed)
        if self.order is not None:  # held events from before it are the erased person's: they go now
            out += self._apply(self._take_erased(self.order))
        self.ledger.note_erased()
        log.info("identity erased", extra={"customer": request.customer, "identifiers": len(members)})
        for member in members:
            for family in self.families:
                out.append((self.route(family.anchor, member),
                            EraseRequest(member, request.request_id, request.source, requested_at=at,
                                         fire_before=request.fire_before)))

    def _follow_up(self, request: EraseRequest, out: list[Routed]) -> None:
        """One identifier of an erasure the identity stage recorded: to every family's shard of that key
        alone, where a profile the erasure has not reached goes (`EraseRequest.follow_up`). Not when the
        graph links the key again since to an identifier the erasure did not take: the profile it keys
        holds someone else's data (an outside probe: a family tablet's device, linked to another person's
        older cookie a second after the erasure, lost that person's cart to the follow-up). Linked again
        only with the erased person's own identifiers (they signed in again), it goes: a crash had left
        their profile from before the erasure under it (a third probe)."""
        graph, at = self.graph, request.requested_at
        if at is not None and graph.find(request.customer) is not None:
            erased_at = graph.erased.erased_at
            if any((erased_at(member) or -1) < at for member in graph.members(request.customer)):
                log.info("a follow-up erasure leaves an identifier linked since to another's",
                         extra={"customer": request.customer})
                return
        for family in self.families:
            out.append((self.route(family.anchor, request.customer), request))

    def _joins_others(self, event: Event) -> bool:
        """A link event that names an identifier not erased (yet): `_erase_linked` will erase it."""
        erased_at = self.graph.erased.erased_at
        return bool(event.links) and any(erased_at(key) is None for key in self.graph.personal_keys(event))

    def _take_erased(self, order: CrossPartitionOrder) -> list[Event]:
        """The erased person's held events, and those a held link event of theirs joins to them (a cookie's
        cart before its sign-in): out of the hold now, in time order. A recheck probe: with two readers the
        sign-in went first and erased the cookie while its cart still waited, which then counted as the
        erased person's, and the cart's email due before the sign-in was never decided (4 runs of 10)."""
        of_erased = self.graph.of_erased
        theirs = order.take(of_erased)
        joined: dict[str, int] = {}  # an identifier a taken link event names -> that event's time, the latest
        for event in theirs:
            if event.links:
                for key in self.graph.personal_keys(event):
                    joined[key] = max(joined.get(key, event.ts), event.ts)
        if joined:
            def joined_before(e: IdentityItem) -> bool:
                return type(e) is Event and e.ts <= joined.get(e.customer, -1)

            theirs += order.take(joined_before)
            # Also what the run of released events this erasure was met in has still to route: the cookie's
            # page views released with another person's sign-in whose erasure this is went after the sign-in
            # it took, counted as the erased person's, and the ad due from them was never decided (a probe
            # with --workers 2: 1-12 of 60 erased people's ads, every run).
            for pending in self._applying:
                theirs += take_from(pending, joined_before)  # type: ignore[arg-type]  # Events, by joined_before
        return sorted(theirs, key=lambda e: (e.ts, read_order(e)))

    def _savepoint(self, request: SavepointRequest, out: list[Routed]) -> None:
        self.ledger.savepoints.append(request)
        for family in self.families:
            for shard in range(family.shards):
                out.append((self.routes[family.anchor][shard],
                            dataclasses.replace(request, shard=shard, store=family.subdir)))

    # -- epoch end ----------------------------------------------------------------------------------

    def checkpoint(self) -> int:
        started = time.perf_counter()
        held = {held_key(e): e for e in self.order.events()} if self.order is not None else {}
        self._held_stored = write_held(self.store, self._held_stored, held)  # a resume holds them again
        seq = self.ledger.commit(self._write_savepoint)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        return seq

    def _write_savepoint(self, request: SavepointRequest, seq: int) -> None:

        try:
            write_shard_part(self.store, request.path, 0, seq, self.ledger.positions, request.token,
                             self.ctx.plan.lineage if self.ctx.plan else None, IDENTITY,
                             scratch=self.ctx.state_dir / IDENTITY, request_id=request.request_id,
                             generation=self.ctx.plan.generation if self.ctx.plan else None)
        except (OSError, StateError) as exc:
            log.error("savepoint part not written", extra={"family": IDENTITY, "path": request.path,
                                                           "error": str(exc)})

    def close(self) -> None:
        self.store.close()


ResumeState = dict[str, int]


class IdentityLogic(StatefulBatchLogic[IdentityItem | list[IdentityItem], Routed, ResumeState]):
    """Bytewax's callbacks for the identity stage's one key."""

    def __init__(self, ctx: IdentityContext, resume: ResumeState | None) -> None:
        self.state = IdentityState.open(ctx, None if resume is None else int(resume["seq"]))
        self._frontier_next = datetime.now(UTC)  # when the frontier may go out again

    def on_batch(self, values: list[IdentityItem | list[IdentityItem]]) -> tuple[list[Routed], bool]:
        items = flatten(values)
        metrics.IDENTITY_ITEMS.inc(len(items))
        out = self.state.apply(items)
        if self.state.frontier_moved and datetime.now(UTC) >= self._frontier_next:
            out += self._send_frontier()
        return grouped(out), StatefulBatchLogic.RETAIN

    def _send_frontier(self) -> list[Routed]:
        self._frontier_next = datetime.now(UTC) + timedelta(seconds=FRONTIER_EVERY_S)
        return self.state.frontier_items()

    def notify_at(self) -> datetime | None:
        return self._frontier_next if self.state.frontier_moved else None

    def on_notify(self) -> tuple[list[Routed], bool]:
        return grouped(self._send_frontier()), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Routed], bool]:
        # The input ended: its last reports (with --stop-at-end, "caught up") go out now, behind what
        # they release.
        return grouped(self.state.release() + self.state.frontier_items()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> ResumeState:
        return {"shard": 0, "seq": self.state.checkpoint()}
