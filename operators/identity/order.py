"""Event-time order across input partitions read by several workers, at the identity stage.

The alignment (operators/io/alignment.py) lets no partition deliver an event more than
`flow.alignment_bound` ahead of the slowest partition's floor, so a customer's events on two topics
more than the bound apart are *read* in event-time order. With one reader, read order is the order the
identity stage sees. With several (`--workers`, or a cluster), each reader sends its batches on its own
channel, and Timely orders the items of one channel, never two channels against each other: in a
backlog, where 70 s of event time pass in a millisecond of reading, a purchase read first on one worker
reached the stage after a consent withdrawal read 70 s of event time later on another (an outside
probe: cross-sells to customers who had withdrawn consent, 3 runs of 3).

So with several readers the stage holds each event until the input frontier (the lowest floor over
every partition, from the Progress reports that follow each partition's messages on its channel) has
reached its time less the bound. By then every event more than the bound older, from any partition, has
arrived: a partition's floor is the time of its next message. What is released goes out partition by
partition in the order read, the partitions' queues merged by event time. Events of one partition keep
their order; events less than the bound apart keep no promised order, as documented.

Held events are part of the stage's state: written to its store at every checkpoint (without the raw
message, which is never stored), read back when it resumes, so a replay after SIGKILL or a restored
savepoint holds them as the run that read them did. Each is its own key, named with every identifier
it names (`held_key`), so that an erasure removes it and its undo pre-images as it does the
identifiers' own records.
"""

from __future__ import annotations

import heapq
import struct
from collections import deque
from collections.abc import Callable
from operator import attrgetter

import msgspec

from nextclick.operators.records import Event

HELD_PREFIX = b"w"  # (waiting) in the identity store: one key per event held at the checkpoint (`held_key`)
_POSITION = struct.Struct(">IQ")
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(Event).decode


def held_key(event: Event) -> bytes:
    """`w<every identifier key the event names, comma-separated>\0<topic>\0<partition, offset>`."""
    named = ",".join([event.customer, *(key for _, key in event.links)]).encode()
    source = event.source
    where = (event.event_id.encode() if source is None
             else source.topic.encode() + b"\0" + _POSITION.pack(source.partition, source.offset))
    return HELD_PREFIX + named + b"\0" + where


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


class CrossPartitionOrder:
    """Events held until the frontier reaches their time less `bound_ms`, one FIFO queue per partition."""

    __slots__ = ("bound_ms", "_queues", "held")

    def __init__(self, bound_ms: int) -> None:
        self.bound_ms = bound_ms
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
        for queue in self._queues.values():
            if limit is None:
                prefix = list(queue)
                queue.clear()
            else:
                prefix = []
                while queue and queue[0].ts <= limit:
                    prefix.append(queue.popleft())
            if prefix:
                prefixes.append(prefix)
        if not prefixes:
            return []
        released = prefixes[0] if len(prefixes) == 1 else list(heapq.merge(*prefixes, key=_ts))
        self.held -= len(released)
        return released

    def take(self, which: Callable[[Event], bool]) -> list[Event]:
        """The held events `which` picks, out of the queues now (an erasure's: its person's held events go
        at once rather than wait, in the stage's state, for the frontier)."""
        taken: list[Event] = []
        if not self.held:
            return taken
        for partition, queue in self._queues.items():
            if any(which(e) for e in queue):
                kept: deque[Event] = deque()
                for e in queue:
                    (taken if which(e) else kept).append(e)
                self._queues[partition] = kept
        self.held -= len(taken)
        return taken

    def events(self) -> list[Event]:
        return [e for queue in self._queues.values() for e in queue]
