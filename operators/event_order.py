"""Event-time order across input partitions read by several workers: events held until the input's
frontier reaches their time less the bound, then let go partition by partition in the order read,
merged by event time.

Each reader sends its batches on its own channel, and Timely orders the items of one channel, never two
channels against each other. Where the events of several readers meet (the identity stage,
operators/identity/order.py; without identity stitching, each shard, operators/shard/shard_state.py),
this restores event-time order for events more than `flow.alignment_bound` apart: once the frontier
(the lowest floor over every partition, from the Progress reports that follow each partition's
messages on its channel) has reached an event's time less the bound, every event more than the bound
older, from any partition, has arrived, since a partition's floor is the time of its next message.
Events of one partition keep their order; events less than the bound apart keep no promised order,
as documented (docs/rules.md, "Ordering").

An event dated ahead of the clock (a device whose clock runs fast) is judged as the sources judge it
(operators/io/alignment.ahead_waits): as its own time, but no later than the next event behind it in
its partition that is not ahead. So in a backlog it goes with its neighbours, where its own time held
the rest of its partition back until the input had caught up, and those events came too late (an
outside probe: with two readers, a wrong clock in a backlog five hours old changed 33 decisions); last
in its partition it waits for the frontier to reach it.

Held events are state where they are held: written at each checkpoint (`encode_held`, without the raw
message, which is never stored) and held again on resume, in `read_order`.
"""

from __future__ import annotations

import heapq
import struct
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Protocol, TypeVar

import msgspec

from nextclick.operators.records import Event

_POSITION = struct.Struct(">IQ")
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(Event).decode


def where_read(event: Event) -> bytes:
    """`<topic>\0<partition, offset>` (its event id when it has no position): what makes a held event's
    key its own."""
    source = event.source
    return (event.event_id.encode() if source is None
            else source.topic.encode() + b"\0" + _POSITION.pack(source.partition, source.offset))


def encode_held(event: Event) -> bytes:
    """The event as stored while held: without the raw message, which is never stored."""
    return _ENCODE(msgspec.structs.replace(event, raw=None) if event.raw is not None else event)


def decode_held(data: bytes) -> Event:
    return _DECODE(data)


def read_order(event: Event) -> tuple[str, int, int]:
    """Where the event was read: how held events read back from a store go back in their order."""
    source = event.source
    return ("", -1, 0) if source is None else (source.topic, source.partition, source.offset)


_ts = attrgetter("ts")
Partition = tuple[str, int]
T = TypeVar("T")


def take_from(queue: deque[T], which: Callable[[T], bool]) -> list[T]:
    """The items of `queue` that `which` picks, taken out of it in place; the rest keep their order."""
    if not any(which(item) for item in queue):
        return []
    taken: list[T] = []
    kept: list[T] = []
    for item in queue:
        (taken if which(item) else kept).append(item)
    queue.clear()
    queue.extend(kept)
    return taken


class CrossPartitionOrder:
    """Events held until the frontier reaches their time less `bound_ms`, one FIFO queue per partition."""

    __slots__ = ("bound_ms", "now_ms", "_queues", "held")

    def __init__(self, bound_ms: int, now_ms: Callable[[], int]) -> None:
        """`now_ms`: the flow's clock, which an event dated ahead of it is (see the module docstring)."""
        self.bound_ms, self.now_ms = bound_ms, now_ms
        self._queues: dict[Partition, deque[Event]] = {}
        self.held = 0

    def hold(self, event: Event) -> None:
        source = event.source
        partition = ("", -1) if source is None else (source.topic, source.partition)
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = deque()
        queue.append(event)
        self.held += 1

    def release(self, known: bool, floor: int | None) -> list[Event]:
        """What the frontier lets go: `known` False (not every partition has reported) releases nothing,
        `floor` None (every partition caught up) everything. Each partition's releasable prefix, in the
        order read, merged with the others' by event time."""
        if not self.held or not known:
            return []
        prefixes: list[list[Event]] = []
        limit = None if floor is None else floor + self.bound_ms
        waits: dict[int, int] = {}  # id(event) -> the time an event dated ahead of the clock went as
        now: int | None = None
        for queue in self._queues.values():
            if limit is None:
                prefix = list(queue)
                queue.clear()
            else:
                prefix = []
                while queue:
                    head = queue[0]
                    if head.ts > limit:
                        if now is None:
                            now = self.now_ms()
                        if head.ts <= now:
                            break
                        behind = next((e.ts for e in queue if e.ts <= now), None)  # its partition's time
                        if behind is None or behind > limit:
                            break
                        waits[id(head)] = behind
                    prefix.append(queue.popleft())
            if prefix:
                prefixes.append(prefix)
        if not prefixes:
            return []
        if len(prefixes) == 1:
            released = prefixes[0]
        else:
            key = _ts if not waits else (lambda e: waits.get(id(e), e.ts))
            released = list(heapq.merge(*prefixes, key=key))
        self.held -= len(released)
        return released

    def take(self, which: Callable[[Event], bool]) -> list[Event]:
        """The held events `which` picks, out of the queues now (an erasure's: its person's held events go
        at once rather than wait, in the holder's state, for the frontier)."""
        taken: list[Event] = []
        if not self.held:
            return taken
        for queue in self._queues.values():
            taken += take_from(queue, which)
        self.held -= len(taken)
        return taken

    def events(self) -> list[Event]:
        return [e for queue in self._queues.values() for e in queue]


class HeldStore(Protocol):
    """What of a store the held events are written through (operators/state/store.py)."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


def load_held(stored: Iterable[tuple[bytes, bytes]], bound_ms: int | None,
              now_ms: Callable[[], int]) -> tuple[CrossPartitionOrder | None, set[bytes]]:
    """The order a holder resumes with, and the keys its store holds: events held by a run with several
    readers stay held when one reader resumes them (a rescale to one process), until the frontier lets
    them go, and so does what is read after them. None when nothing is to be held."""
    events = {key: decode_held(value) for key, value in stored}
    if bound_ms is None and not events:
        return None, set()
    order = CrossPartitionOrder(bound_ms or 0, now_ms)
    for event in sorted(events.values(), key=read_order):
        order.hold(event)
    return order, set(events)


def write_held(store: HeldStore, stored: set[bytes], held: dict[bytes, Event]) -> set[bytes]:
    """At a checkpoint: the held events' keys that changed since the last one (`stored`) put or deleted;
    the keys stored now."""
    if not held and not stored:
        return stored
    for key in stored.difference(held):
        store.delete(key)
    for key in held.keys() - stored:
        store.put(key, encode_held(held[key]))
    return set(held)
