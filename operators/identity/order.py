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

from nextclick.operators.event_order import CrossPartitionOrder, decode_held, encode_held, read_order, where_read
from nextclick.operators.records import Event

__all__ = ["HELD_PREFIX", "CrossPartitionOrder", "decode_held", "encode_held", "held_key", "read_order"]

HELD_PREFIX = b"w"  # (waiting) in the identity store: one key per event held at the checkpoint (`held_key`)


def held_key(event: Event) -> bytes:
    """`w<every identifier key the event names, comma-separated>\0<topic>\0<partition, offset>`."""
    named = ",".join([event.customer, *(key for _, key in event.links)]).encode()
    return HELD_PREFIX + named + b"\0" + where_read(event)
