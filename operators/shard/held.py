"""Event-time order across readers in a shard, without identity stitching (`identity.stitching = false`).

Without the identity stage each reader sends events straight to their shard, on its own channel, so a
shard is where the events of several readers meet: a purchase read on one worker and a consent
withdrawal read 70 s of event time later on another could arrive in either order (the identity stage
had the same hole until it held events, operators/identity/order.py). So with several readers a
shard holds each event until its own view of the input's frontier, built from the sources' progress
reports (operators/shard/logic.py), has reached its time less `flow.alignment_bound`, and lets events
go in the order operators/event_order.py gives.

What is held is the shard's state: written at each checkpoint under its customer (`held_event_key`),
so that a resume after SIGKILL and a restored savepoint hold it again, a re-shard moves it with the
customer and an erasure removes it and its undo pre-images with the customer's other keys.
"""

from __future__ import annotations

from collections.abc import Callable

from nextclick.operators.event_order import load_held, where_read, write_held
from nextclick.operators.frontier import EventTimeFrontier
from nextclick.operators.records import Event, Frontier
from nextclick.operators.shard.common import ShardItem
from nextclick.operators.state.keys import HELD_EVENT_PREFIX, held_event_key, is_held_of
from nextclick.operators.state.store import KeyValueStore


class HeldEvents:
    """A shard's held events: `order` holds and lets go, `checkpoint` stores what is held."""

    def __init__(self, store: KeyValueStore, bound_ms: int | None, frontier: EventTimeFrontier,
                 now_ms: Callable[[], int]) -> None:
        """`bound_ms` None: one reader, nothing to hold; events a run with several readers held (and
        stored) are let go by the frontier all the same, and read order is kept behind them. `frontier`:
        the shard's, as its Frontier items have moved it so far."""
        self.store, self.bound_ms, self.frontier = store, bound_ms, frontier
        self.order, self._stored = load_held(store.scan(HELD_EVENT_PREFIX), bound_ms, now_ms)

    def ordered(self, values: list[ShardItem]) -> list[ShardItem]:
        """The batch with its events held, and what the frontier lets go put before the Frontier item
        that let it go (timers fire by that frontier after the events it covers); the rest in place."""
        order = self.order
        if order is None:
            return values
        out: list[ShardItem] = []
        last: tuple[bool, int | None] | None = None  # the batch's last Frontier item, if any
        for value in values:
            kind = type(value)
            if kind is Event:
                order.hold(value)  # type: ignore[arg-type]
                continue
            if kind is Frontier:
                last = (True, value.floor)  # type: ignore[union-attr]
                out += order.release(*last)
            out.append(value)
        if last is None:  # events after no report of this batch: judged by the frontier as it stands
            frontier = self.frontier
            now = frontier.now()
            last = (True, None) if frontier.live else (now is not None, now)
        out += order.release(*last)
        if self.bound_ms is None and not order.held:
            self.order = None  # what several readers held is let go: read order from here
        return out

    def take(self, customer: str, of_erased: Callable[[Event], bool]) -> list[Event]:
        """An erasure: the customer's held events it says are theirs from before it leave the hold now
        (their stored keys go with the customer's, `erase_customer`)."""
        if self.order is None:
            return []
        taken = self.order.take(lambda e: e.customer == customer and of_erased(e))
        self._stored = {key for key in self._stored if not is_held_of(key, customer.encode())}
        return taken

    def checkpoint(self) -> None:
        """What is held is state: the keys that changed since the last checkpoint."""
        held = {held_event_key(e.customer, where_read(e)): e for e in self.order.events()} \
            if self.order is not None else {}
        self._stored = write_held(self.store, self._stored, held)
