"""The canonical records that move between operators.

Everything downstream of parsing sees only these types: an `Event` that passed validation and
carries no PII, or a `DeadLetter` that carries the original bytes and the reason they were refused.
What one customer's turn of the loop produces is here too: the `Trigger` rules react to, the
`Decision` that goes out, the `Blocked` candidates, and the `Outcome` that collects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec


class SourcePosition(NamedTuple):
    """Where a message came from, so a dead letter can name it and be replayed onto it.

    A NamedTuple for the same reason as `kafka_source.RawMessage`: one is built per input message."""

    topic: str
    partition: int
    offset: int


class Event(msgspec.Struct, frozen=True, gc=False):
    """A validated event, keyed by the pseudonymous customer key.

    `attrs` holds only the fields the event type's schema declares as targeting attributes
    (amount, sku, category, consent purpose...); personal fields never get here.

    A frozen msgspec Struct, not a dataclass: one is built per input message, and a Struct is built
    in a third of a frozen slotted dataclass's time (its `__init__` goes through `object.__setattr__`
    per field). `gc=False`: an event holds strings, numbers and tuples, never a cycle.
    """

    event_id: str
    type: str
    ts: int  # event time, epoch milliseconds UTC
    customer: str  # pseudonymous customer key (keyed hash of the raw identifier)
    channel: str
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)
    source: SourcePosition | None = None
    # The message as read (key, value, headers), held only in memory so that an event whose
    # processing fails can still be dead-lettered byte for byte; never stored, logged or emitted
    # (left out of `repr`).
    raw: RawRecord | None = None
    # Identity (operators/identity/): the type of the identifier `customer` was made from, the other
    # identifiers the event names as (type, pseudonymous key) - each a link to `customer` -, and the
    # types of those refused in the parser as blocked values. None/empty for events built elsewhere.
    id_type: str | None = None
    links: tuple[tuple[str, str], ...] = ()
    blocked: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"Event(event_id={self.event_id!r}, type={self.type!r}, ts={self.ts!r}, customer={self.customer!r}, "
                f"channel={self.channel!r}, attrs={self.attrs!r}, source={self.source!r}, id_type={self.id_type!r}, "
                f"links={self.links!r}, blocked={self.blocked!r})")


# Kafka key, value and headers of a message as read (a header may have no value).
RawRecord = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the flow refused, byte for byte, with the reason it was refused.

    `reason` is a stable machine-readable class (see docs/data-contract.md); `message` explains it
    to a person and never quotes PII from the payload.
    """

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    source: SourcePosition
    reason: str
    message: str
    # processing_error only: the Python exception class and the step that raised it.
    exception_class: str | None = None
    step: str | None = None
    # Measured quantities that depend on when the message was read (how far `ts` was off the clock),
    # as (header name, value): extra headers, so that `message` stays the same on every replay.
    measured: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EraseRequest:
    """Right to erasure, from the control topic: remove one customer from live state and checkpoints."""

    customer: str  # pseudonymous customer key
    request_id: str
    source: SourcePosition | None = None
    # When it was asked for (ms; the command's `requested_at`): events of the erased identifiers dated
    # at or before it are not applied again (operators/state/erased.py). None: when the flow reads it.
    requested_at: int | None = None
    # An erasure a link event from before it carries to the identifiers it joined (the identity stage's
    # `_erase_linked`): that event's time. The profile's absences due by then fire first, as they did
    # when the event was read before the erasure (an outside probe: in a backlog the cookie's cart, due
    # before its sign-in, was erased unsent, or sent, as the frontier's timer turn happened to come).
    fire_before: int | None = None
    # One of the identifiers a linked erasure reached, recorded by the identity stage on the control topic
    # before it erased the graph (`follow_up: true`): carried out on that key alone (the graph is not
    # consulted, a new link may be there), and its profiles only if they hold data from at or before
    # `requested_at` (a profile started later is someone's activity after the erasure). It finishes an
    # erasure that a crash stopped between the graph and the shards.
    follow_up: bool = False


@dataclass(frozen=True, slots=True)
class SavepointRequest:
    """From the control topic, one copy per shard: copy the shard into `path` at the end of this epoch.

    `token` is chosen once per parse of the command, so every shard's part of one attempt shares it
    and a replayed command (a new parse) writes a separate attempt (operators/tools/savepoint.py)."""

    shard: int
    request_id: str
    path: str
    token: str
    source: SourcePosition | None = None
    # The family of stores the shard belongs to: its directory under state.dir ("" for profiles;
    # operators/state/layout.py).
    store: str = ""
    # When the requester stops waiting (ms since the epoch), from the command's `expires_at`; None if it
    # gave none. A command read after it (replayed, or read by a flow started late) is not carried out.
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class MoveOut:
    """Identity stage -> the shard holding `customer`'s profile: take it out of the shard and send it
    on to `into` (the key of the profile it merges into), whose shard's Bytewax key is `route`."""

    customer: str
    into: str
    route: str
    source: SourcePosition | None = None
    # The link event's time: the profile's absences due by it fire first, on the profile as it stands,
    # as an event at that time would fire them (operators/engine/steps.py, `on_event`).
    at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class MergeExpect:
    """Identity stage -> the shard of `customer`, the key of a merged profile: the profiles keyed
    `sources` are on their way (as MoveIn); hold this customer's items until all have arrived, merge
    them in, and record `ids` (every identifier of the merged profile, by type)."""

    customer: str
    sources: tuple[str, ...]
    ids: dict[str, list[str]]
    source: SourcePosition | None = None
    at_ms: int | None = None  # as MoveOut's: the customer's own absences due by it fire before the merge


@dataclass(frozen=True, slots=True)
class Detach:
    """Identity stage -> the shard of `customer`: `key` (a cookie or device a second customer id signed
    in on, now shared) no longer addresses this profile. Its past stays in the profile; decisions stop
    naming it, so the next person at the kiosk is not shown this customer's offers."""

    customer: str
    key: str
    source: SourcePosition | None = None
    # The link event's time, as MoveOut's: the profile's absences due by it fire first, still addressed
    # by the key (an outside probe: in a backlog they fired after it, without the cookie's address).
    at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class MoveIn:
    """A profile taken out of its shard, on its way to the shard of `customer` (Bytewax key `route`).
    `blob` is the profile as stored (None: the identifier had no profile)."""

    customer: str
    moved: str
    blob: bytes | None
    route: str
    source: SourcePosition | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """Source -> identity stage, in the stream right behind the messages it accounts for: how far one
    input partition has got in event time.

    `floor` is the event time of the partition's next message (nothing older is expected from it), or
    None when the partition is caught up (at its end, idle, or within a moment of the present): then it
    advances with the clock. `total` is how many input partitions the flow reads, so the frontier is
    known only once every one of them has reported (operators/frontier.py).
    """

    partition: str
    floor: int | None
    total: int
    source: None = None


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """Source -> every shard, without identity stitching (`identity.stitching = false`): one input
    partition's Progress, right behind the messages it accounts for on the channel to this shard, so a
    shard that fires by the lowest floor over every partition has applied every event older than it."""

    shard: int
    partition: str
    floor: int | None
    total: int
    source: None = None


@dataclass(frozen=True, slots=True)
class Frontier:
    """Identity stage -> every shard: the input's event-time frontier (None: caught up, follow the
    clock). It comes after everything the stage routed before it, so a shard that fires its timers by
    it has already applied every event older than it."""

    shard: int
    floor: int | None
    source: None = None


class Trigger(NamedTuple):
    """What a decision reacts to: an event (name = event type) or a fired absence signal.

    A NamedTuple: one is built for every event that has rules to judge."""

    name: str
    trigger_id: str  # deterministic: the event id, or "<signal>:<start ts>"
    ts: int
    attrs: dict[str, Any]
    # An event's (its id is unique only within its source: the type tells two sources' ids apart).
    event: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """A targeting decision ready to be encoded as a CloudEvent."""

    decision_id: str
    customer: str
    rule_id: str
    action: str
    channel: str
    offer: str | None
    priority: int
    trigger: str
    trigger_id: str
    decided_at: int
    expires_at: int
    profile_version: int
    signals: dict[str, Any]
    # The rule's consent purpose, and whether it is a promotion (false: a service message, which
    # complaints do not suppress): additive decision fields (schemas/decision.v1.json).
    purpose: str = "marketing"
    promotion: bool = True
    # How the profile can be reached (operators/rules/addressing.py): the decision channels it has
    # an identifier for, and for this decision's channel the (id type, pseudonymous key) to use.
    # None when the profile's identifiers are unknown (stored before they were recorded).
    reachable: tuple[str, ...] | None = None
    address: tuple[str, str] | None = None
    # The rule's decision parameters (`params`: name -> value read from the trigger or the profile);
    # None when the rule declares none, so such decisions' bodies are as before (additive field).
    params: dict[str, Any] | None = None
    # The rules file's `[addresses]` preference, every channel's (channel, id types best first), when
    # it sets one; None: the defaults (operators/rules/addressing.py). Not part of the body.
    address_types: tuple[tuple[str, tuple[str, ...]], ...] | None = None


class Blocked(NamedTuple):
    """A rule that matched but a gate refused (consent, complaint, cooldown, caps), by reason."""

    customer: str
    rule_id: str
    channel: str
    reason: str
    trigger_id: str


class Outcome:
    """What one or more event or timer turns produced (a shard passes one per batch to save the
    allocations): decisions, blocked candidates, and counts of duplicates, late events and absences."""

    __slots__ = ("absences", "blocked", "decisions", "duplicates", "lates", "stale_signals")

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.blocked: list[Blocked] = []
        self.duplicates = 0
        self.lates = 0
        self.absences = 0
        # Names of signals a profile held state of that the rules no longer have (renamed or removed).
        self.stale_signals: list[str] = []

    @property
    def duplicate(self) -> bool:
        """For one event's outcome: it repeated an event_id already applied."""
        return self.duplicates > 0

    @property
    def late(self) -> bool:
        """For one event's outcome: it was older than the allowed lateness."""
        return self.lates > 0
