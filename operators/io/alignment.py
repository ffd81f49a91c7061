"""Event-time alignment of the input partitions: in catch-up, every partition advances together.

Kafka orders nothing across partitions. Live, every partition is near the present, so that does
not matter; in catch-up (after downtime, a first start from the beginning, a backfill) one topic
could otherwise run hours of event time ahead of another, and a customer's events from the slower
topic would arrive late and drop out of the signals. So, as Flink's watermark alignment and Kafka
Streams' timestamp-ordered task input do:

    no input partition delivers an event whose event time is more than `bound` ahead of the
    event-time floor of any other input partition that still has data.

A partition's **floor** is the event time of its next undelivered message (state `data`: messages
are buffered), or of the last message it delivered while its fetch is in flight (`waiting`; the
next message is assumed no older); a partition that reported its end (`end`) has no floor and holds
nobody back. A partition that has never read anything has an unknown floor: until it fetches, only
messages without a readable `ts` pass. A `waiting` partition that neither delivers nor reports its
end within the idle timeout stops counting (`idle`), as Kafka Streams' `max.task.idle.ms`. Once
caught up every partition is at its end, or `bound` within the present, so nothing waits.

"Has data" comes from the consumer itself: librdkafka's partition-EOF event (enable.partition.eof)
says the fetch position reached the end of the partition as the broker's fetch response gave it,
and a later message clears it. Watermarks from ListOffsets are not used: some brokers (Tansu)
undercount them.

Event time is the payload's `ts`, read cheaply here (msgspec decodes that one field and skims the
rest). A message whose `ts` cannot be read, or that the parser will refuse as too old or too far
ahead, never waits: it is delivered at once and dead-lettered downstream.

A `ts` ahead of the clock (a producer's fast clock, within the parser's limit) is a time nobody has
reached, and says little about where its partition is. It never moves its partition's floor: read as
"now", one such event in a backlog hours old made the partition look caught up, and the event-time
frontier jumped to the clock, firing every pending timer hours early. It waits as an event at its
own time, but no later than the next readable event behind it in its partition (`ahead_waits`): in a
backlog it goes with its neighbours instead of holding its partition back until every other has
caught up; last in its partition it waits for the others to catch up with it, so an event 90 s ahead
cannot overtake a withdrawal dated before it on another topic. Live, a skew under the bound never
waits. `event_time` marks such a time by giving it as a float.

Within a process the partitions share one `Alignment` (per flow). Across the processes of a cluster,
each publishes its partitions' floors to a small compacted topic (`topics.progress`, keyed by
group and partition) and reads everyone else's, from the end (`ProgressExchange`). A peer's floor is
a lower bound of its true position (floors only move forward in an ordered partition, and a floor
is republished whenever it moved by a quarter of the bound), so pacing against it never lets a
process run further ahead than the bound; the price is a round trip through Kafka (~10-20 ms) each
time the slowest partition changes hands between processes. Entries published before this process
started (an earlier run) or not refreshed within the idle timeout (a process that stopped) are
ignored.

The same entries tell **two deployments on one set of topics** apart (a restore started on new
volumes while the old cluster still runs): in one deployment each partition has one reader, so a
live entry for a partition this process reads, from another sender, is another deployment's. The
one that started later stops with one line (`on_conflict`); the other logs it and goes on. A process
that reads every partition publishes its entries for this alone, at a heartbeat's pace.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Union

import msgspec
import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition

from nextclick.operators.events.schemas import TS_MIN
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.io.parse import parse_ts

log = logging.getLogger(__name__)

# The event time of a message that never waits (unreadable, or refused by the parser anyway). Also
# the limit while some partition's floor is unknown: then only such messages pass.
UNREADABLE = -(1 << 62)

# A partition's state. HELD: it has messages but could deliver none (it publishes as DATA).
DATA, HELD, WAITING, IDLE, END = "data", "held", "waiting", "idle", "end"

# When a held partition looks again: at once if the partition it waits for is local and has
# messages (it delivers at its next poll); after a fetch's worth if that one is fetching; after a
# peer's publish's worth if it is another process's.
RETRY_FETCH_S = 0.001
RETRY_PEER_S = 0.005

# How often the exchange publishes changed floors and polls the peers' (seconds).
PUBLISH_EVERY_S = 0.005


class _Ts(msgspec.Struct):
    ts: Union[int, float, str, None] = None


_decode_ts = msgspec.json.Decoder(_Ts).decode


def event_time(value: bytes | None, now_ms: int, config: ParseConfig) -> int | float:
    """The message's `ts` as the parser reads it; UNREADABLE when it must not wait; a float when it is
    ahead of `now_ms` (see the module docstring: it must not stand for the partition's position).

    UNREADABLE: no value, too large, not a JSON object, no valid `ts`, a `ts` the parser refuses
    (older than `max_age_ms`, further ahead than `max_future_skew_ms`, before year 1). Never raises:
    this runs in the source, before the parser, so an exception here would stop the flow on the same
    message at every restart, with nothing dead-lettered. Whatever it cannot read is UNREADABLE, and
    the parser names the reason.
    """
    if value is None or len(value) > config.max_message_bytes:
        return UNREADABLE
    try:
        try:
            ts = _decode_ts(value).ts
        except RecursionError:
            ts = _ts_without_recursion(value)
        if type(ts) is not int:
            if ts is None or (type(ts) is float and not ts.is_integer()):
                return UNREADABLE
            ts = _rfc3339_ms(ts) if type(ts) is str else parse_ts(ts)
        if ts > now_ms:
            return float(ts) if ts - now_ms <= config.max_future_skew_ms else UNREADABLE
        if config.max_age_ms > 0:
            if now_ms - ts > config.max_age_ms:
                return UNREADABLE
        elif ts < TS_MIN:  # no age limit: the parser still refuses a ts before year 1
            return UNREADABLE
        return ts
    except Exception:  # noqa: BLE001 - malformed JSON (msgspec.DecodeError), a bad ts, or anything else
        return UNREADABLE


def _ts_without_recursion(value: bytes) -> Any:
    """`ts` read by orjson, for text nested deeper than msgspec may skip on this thread's stack.

    msgspec skims nested values recursively, within the Python recursion limit, so where it gives
    up depends on how deep the caller's stack already is. orjson, the parser's decoder, nests to a
    fixed depth (1024) without Python recursion: reading `ts` with it keeps `event_time` agreeing with
    the parser at any stack depth. Raises on what orjson refuses (the parser refuses it too).
    """
    payload = orjson.loads(value)
    return payload.get("ts") if type(payload) is dict else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_fromisoformat = datetime.fromisoformat


def _rfc3339_ms(ts: str) -> int:
    """`parse_ts` for a string, about 8 times faster on the common shapes (datetime's C parser).

    Only strings shaped exactly like RFC 3339 (`YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to 9
    digits, then `Z` or `+HH:MM`) take the fast way; both truncate the fraction to milliseconds.
    Anything else, or anything the C parser refuses, is `parse_ts`'s to read or refuse (the C parser
    takes fractions of any length, which `parse_ts` refuses beyond 9 digits).
    """
    n = len(ts)
    if n >= 20 and ts.isascii() and ts[10] == "T" and ts[4] == "-" and ts[7] == "-" and ts[13] == ":" \
            and ts[16] == ":":
        if ts[-1] == "Z":
            zone = n - 1
        elif n >= 25 and ts[-6] in "+-" and ts[-3] == ":" and ts[-5:-3] <= "23" and ts[-2:] <= "59":
            zone = n - 6
        else:
            zone = 0
        if zone == 19 or (20 < zone <= 29 and ts[19] == "." and ts[20:zone].isdigit()):
            try:
                dt = _fromisoformat(ts)
            except ValueError:
                return parse_ts(ts)
            if dt.tzinfo is not None:
                return (dt - _EPOCH) // _MS
    return parse_ts(ts)


def ahead_waits(ts: list[int | float], at_end: bool) -> list[int | float]:
    """The times a partition's waiting messages wait as, with each one dated ahead of the clock (a float)
    resolved: its own time, but no later than the next readable time behind it in its partition (in a
    backlog it goes with its neighbours: a device with a wrong clock does not hold its partition back
    until every other has caught up). With nothing readable behind it, the partition has read all it
    has: at its end it waits as its own time, until the others have caught up with it (an outside probe:
    waiting as "its partition's newest plus the bound", the last purchases of a quiet store topic, dated
    seconds ahead, went before withdrawals minutes older on the web topic and got cross-sells); before
    the end is known it waits for the next fetch to tell (inf). Still floats: they move no floor."""
    out = list(ts)
    behind: int | None = None  # the next readable time behind position i
    for i in range(len(out) - 1, -1, -1):
        t = out[i]
        if type(t) is float:
            out[i] = min(t, float(behind)) if behind is not None else (t if at_end else math.inf)
        elif t != UNREADABLE:
            behind = t  # type: ignore[assignment]
    return out


def cut(ts: Sequence[int | float], limit: int | None) -> int:
    """How many leading messages may go: the longest prefix whose event times are all <= `limit`.

    Never reorders: a message past the limit holds back every message behind it in its partition.
    """
    if limit is None or not ts or max(ts) <= limit:
        return len(ts)
    for i, t in enumerate(ts):
        if t > limit:
            return i
    return len(ts)  # pragma: no cover - max(ts) > limit means some t > limit


def effective_floor(state: str, floor: int | None, quiet_s: float, idle_s: float) -> int | None:
    """What one other partition contributes to the limit: None (holds nobody back) or a floor.

    `quiet_s`: how long a `waiting` partition has been waiting (or how long ago a peer's entry
    arrived). An unknown floor is UNREADABLE: only messages that never wait may pass.
    """
    if state == END or state == IDLE or quiet_s >= idle_s:
        return None
    return UNREADABLE if floor is None else floor


class Slot:
    """One local input partition's view, written by its worker thread, read by everyone else.

    `view` is replaced whole (state, floor, since), so a reader on another thread never sees half an
    update.
    """

    __slots__ = ("name", "view")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.view: tuple[str, int | None, float] = (WAITING, None, now)

    def set(self, state: str, floor: int | None, now: float, *, delivered: bool = False) -> None:
        """`delivered`: this poll handed messages on. A partition that hands on all it fetches waits
        again after every poll, and is not idle for that (an outside probe: throttled partitions that
        delivered every 100 ms went idle after `idle_s`, the frontier passed their unread backlog, and
        customers got cross-sells after withdrawing consent)."""
        old_state, _, since = self.view
        self.view = (state, floor, since if state == old_state == WAITING and not delivered else now)

    def published(self, now: float, idle_s: float) -> tuple[str, int | None]:
        state, floor, since = self.view
        if state == WAITING and now - since >= idle_s:
            return IDLE, floor
        return (DATA if state == HELD else state), floor


class Alignment:
    """Every aligned input partition of one flow: this process's slots and the peers' entries."""

    def __init__(self, bound_ms: int, idle_timeout_ms: int, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.bound_ms = bound_ms
        self.idle_s = idle_timeout_ms / 1000
        self._monotonic = monotonic
        self.started = monotonic()
        self._lock = threading.Lock()
        self._slots: dict[str, Slot] = {}
        self._local: tuple[Slot, ...] = ()
        self._expected: set[str] = set()
        self._remote_names: tuple[str, ...] = ()
        # Peer entries: partition -> (state, floor, monotonic time received).
        self._remote: dict[str, tuple[str, int | None, float]] = {}
        # Peers count only while an exchange runs; without one, this process aligns its own partitions.
        self.exchanging = False
        self._open = 0
        self._exchange: ProgressExchange | None = None

    def now(self) -> float:
        return self._monotonic()

    # -- membership ----------------------------------------------------------------------------------

    def expect(self, names: Iterable[str]) -> None:
        """Every partition of the flow's inputs, local or not (from `list_parts`)."""
        with self._lock:
            self._expected.update(names)
            self._refresh()

    def slot(self, name: str) -> Slot:
        """The slot of a partition this process reads (one per partition; reopened after a rebuild)."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = Slot(name, self.now())
            else:
                slot.set(WAITING, None, self.now())
            self._open += 1
            self._refresh()
            return slot

    def release(self, slot: Slot) -> bool:
        """The partition closed: it holds nobody back any more. True when it was the last one open."""
        slot.set(END, None, self.now())
        with self._lock:
            self._open -= 1
            return self._open == 0

    def _refresh(self) -> None:
        self._local = tuple(self._slots.values())
        self._remote_names = tuple(sorted(self._expected - self._slots.keys()))

    def reads(self, name: str) -> bool:
        """This process reads partition `name`."""
        return name in self._slots

    def local_views(self) -> list[tuple[str, str, int | None]]:
        now = self.now()
        return [(s.name, *s.published(now, self.idle_s)) for s in self._local]

    # -- peers ---------------------------------------------------------------------------------------

    def peer(self, name: str, state: str, floor: int | None) -> bool:
        """A peer's entry for partition `name` arrived; True if it is the first heard of it."""
        if name in self._slots:
            return False
        first = name not in self._remote
        self._remote[name] = (state, floor, self.now())
        return first

    # -- the rule ------------------------------------------------------------------------------------

    def limit(self, me: Slot) -> tuple[int | None, float]:
        """The latest event time `me` may deliver now (None: no limit), and how soon to look again
        if that holds it back: at once when the slowest partition is one of this process's with
        messages to deliver, else after a fetch or a peer's publish may have moved it."""
        now = self.now()
        idle = self.idle_s
        lowest: int | None = None
        retry = RETRY_FETCH_S
        for slot in self._local:
            if slot is me:
                continue
            state, floor, since = slot.view
            f = effective_floor(state, floor, now - since if state == WAITING else 0.0, idle)
            if f is None:
                continue
            if f == UNREADABLE:
                return UNREADABLE, RETRY_FETCH_S
            if lowest is None or f < lowest:
                lowest, retry = f, (0.0 if state == DATA else RETRY_FETCH_S)
        if self.exchanging:
            remote = self._remote
            for name in self._remote_names:
                entry = remote.get(name)
                if entry is None:
                    # Not heard of yet: a peer that has not published. Wait for it, up to the idle timeout.
                    if now - self.started < idle:
                        return UNREADABLE, RETRY_PEER_S
                    continue
                f = effective_floor(entry[0], entry[1], now - entry[2], idle)
                if f is None:
                    continue
                if f == UNREADABLE:
                    return UNREADABLE, RETRY_PEER_S
                if lowest is None or f < lowest:
                    lowest, retry = f, RETRY_PEER_S
        return (None if lowest is None else lowest + self.bound_ms), retry

    # -- the exchange's lifetime ---------------------------------------------------------------------

    def start_exchange(self, kafka: Mapping[str, Any], topic: str, group_id: str, *, presence: bool = False) -> None:
        with self._lock:
            if self._exchange is None:
                self._exchange = ProgressExchange(self, kafka, topic, group_id, presence=presence)
                self._exchange.start()

    def join_exchange(self, kafka: Mapping[str, Any], topic: str, group_id: str) -> None:
        """`start_exchange`; when this process reads every partition of the flow no peer has a floor to
        send and none needs this process's, so it runs for presence only: heartbeats that tell another
        deployment on the same topics, at a fraction of the polling.

        Called by a partition's first poll, once its worker has opened all of its partitions; a
        partition another worker has not opened yet counts as a peer's (the exchange then runs)."""
        with self._lock:
            shared = bool(self._remote_names)
        self.start_exchange(kafka, topic, group_id, presence=not shared)

    def stop_exchange(self) -> None:
        with self._lock:
            exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.stop.set()
            exchange.join(3)  # it publishes the final states; a broker that is gone must not hold the stop


def entry_key(group_id: str, name: str) -> bytes:
    return f"{group_id}/{name}".encode()


class Entry(NamedTuple):
    """One progress entry; `by` and `started` name its sender's run ("" and 0 from an older version)."""

    partition: str
    state: str
    floor: int | None
    at: int
    by: str = ""
    started: int = 0


def encode_entry(group_id: str, name: str, state: str, floor: int | None, at_ms: int, by: str = "",
                 started_ms: int = 0) -> bytes:
    return orjson.dumps({"group": group_id, "partition": name, "state": state, "floor": floor, "at": at_ms,
                         "by": by, "started": started_ms})


def decode_entry(value: bytes | None, group_id: str, since_ms: int) -> Entry | None:
    """A progress entry for `group_id` published at or after `since_ms`.

    Anything else (another flow's entry, an earlier run's, a malformed one) is None.
    """
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("group") != group_id:
        return None
    at, name, state, floor = body.get("at"), body.get("partition"), body.get("state"), body.get("floor")
    if type(at) is not int or at < since_ms or type(name) is not str or state not in (DATA, WAITING, IDLE, END):
        return None
    if floor is not None and type(floor) is not int:
        return None
    by, started = body.get("by", ""), body.get("started", 0)
    return Entry(name, state, floor, at, by if type(by) is str else "", started if type(started) is int else 0)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# A sender seen this long (its own clock) is alive: a stopping process's final entries are one burst.
CONFLICT_CONFIRM_MS = 1_000
# How long a process that only publishes (it reads every partition) waits for entries between rounds.
PRESENCE_POLL_S = 0.5


def _log_conflict(line: str) -> None:
    log.error(line)


on_conflict: Callable[[str], None] = _log_conflict
"""What the later-started of two deployments on one set of topics does (flows/runner: stop, one line)."""


class Senders:
    """Other senders' entries for partitions this process reads: another deployment, once one is live."""

    def __init__(self, token: str, started_ms: int) -> None:
        self.token, self.started_ms = token, started_ms
        self._seen: dict[str, list[int]] = {}  # sender -> [first at, last at]
        self._told: set[str] = set()

    def saw(self, entry: Entry, group_id: str) -> tuple[str, bool] | None:
        """When `entry` confirms another live deployment (once per sender): the line to report, and
        whether this process is the later-started one, which stops."""
        if not entry.by or entry.by == self.token or entry.by in self._told:
            return None
        span = self._seen.setdefault(entry.by, [entry.at, entry.at])
        span[0], span[1] = min(span[0], entry.at), max(span[1], entry.at)
        if span[1] - span[0] < CONFLICT_CONFIRM_MS:
            return None
        self._told.add(entry.by)
        later = (self.started_ms, self.token) > (entry.started, entry.by)
        started = datetime.fromtimestamp(entry.started / 1000, UTC).isoformat(timespec="seconds")
        line = (f"two deployments read {entry.partition} as consumer group {group_id!r} (the other started "
                f"{started}): both would send decisions and commit offsets; stop one")
        return line + ("; this one started later and stops" if later else "; the other started later and stops"), later


class ProgressExchange(threading.Thread):
    """Publishes this process's partition floors and reads the peers' (from the topic's end).

    A floor is republished when its state changed or it moved by a quarter of the bound, and every
    partition at least every third of the idle timeout (a heartbeat), so a peer's view of it is
    never staler than that. The topic is looked up before the thread starts, so that a process never
    runs its partitions unpaced while its peers are still unheard of. Failures are logged: without
    the exchange each process still aligns its own partitions.
    """

    def __init__(self, alignment: Alignment, kafka: Mapping[str, Any], topic: str, group_id: str, *,
                 presence: bool = False) -> None:
        super().__init__(name="nextclick-progress", daemon=True)
        self.alignment = alignment
        self.topic, self.group_id = topic, group_id
        self.presence = presence  # this process reads every partition: it publishes for `Senders` only
        self.stop = threading.Event()
        self.since_ms = wall_ms()
        self.senders = Senders(uuid.uuid4().hex[:16], self.since_ms)
        self._sent: dict[str, tuple[str, int | None, float]] = {}
        self._first_at: int | None = None  # when this process published its first entry (wall ms)
        self._consumer = Consumer(client_config(kafka, **{
            "group.id": group_id, "enable.auto.commit": False, "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 5}))
        self._producer = Producer(client_config(kafka, **{"linger.ms": 2, "compression.type": "lz4"}))
        # Pacing needs the topic before the partitions run; presence alone looks it up in its thread.
        self._assigned = False if presence else self._assign()
        if not self._assigned and not presence:
            self._missing()

    def _missing(self) -> None:
        log.warning("the progress topic does not exist: input alignment holds within each process only, and "
                    "a second deployment on these topics goes unseen, until it does (create it with "
                    "`nextclick topics create`)", extra={"topic": self.topic})

    def _assign(self) -> bool:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        except KafkaException:
            return False
        if meta is None or meta.error is not None or not meta.partitions:
            return False
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in meta.partitions])
        self.alignment.exchanging = True
        return True

    def run(self) -> None:
        try:
            if self.presence:
                self._assigned = self._assign()
                if not self._assigned:
                    self._missing()
            while not self._assigned and not self.stop.wait(2):
                self._assigned = self._assign()
            wait_s = PRESENCE_POLL_S if self.presence else PUBLISH_EVERY_S
            while not self.stop.is_set():
                self._publish(final=False)
                for msg in self._consumer.consume(500, wait_s):
                    if msg.error() is not None:
                        continue
                    entry = decode_entry(msg.value(), self.group_id, self.since_ms)
                    if entry is None:
                        continue
                    if self.alignment.reads(entry.partition):
                        conflict = self.senders.saw(entry, self.group_id)
                        if conflict is not None and conflict[1]:
                            self._last_word()
                            on_conflict(conflict[0])
                        elif conflict is not None:
                            _log_conflict(conflict[0])
                    elif self.alignment.peer(entry.partition, entry.state, entry.floor):
                        # A peer just started (or we did): it has not heard our floors yet.
                        self._sent.clear()
            if self._assigned:
                self._publish(final=True)
        except Exception as exc:  # noqa: BLE001 - progress sharing is best effort; the flow goes on
            log.error("progress exchange stopped: input alignment now holds within this process only",
                      extra={"error": str(exc)})
        finally:
            self.alignment.exchanging = False
            self._producer.flush(1)
            self._consumer.close()

    def _last_word(self) -> None:
        """This process stops for the other deployment, which counts a sender once its entries span
        CONFLICT_CONFIRM_MS: its entries reach that span first, so the other logs why (a CI run: this
        one stopped within its first second and the other never said a word)."""
        if self._first_at is not None:
            left_ms = self._first_at + CONFLICT_CONFIRM_MS + 50 - wall_ms()
            if left_ms > 0:
                time.sleep(left_ms / 1000)
        self._publish(final=True)
        self._producer.flush(2)

    def _publish(self, *, final: bool) -> None:
        now = self.alignment.now()
        heartbeat = self.alignment.idle_s / 3
        step = self.alignment.bound_ms // 4
        at = wall_ms()
        for name, state, floor in self.alignment.local_views():
            last = self._sent.get(name)
            if not final and last is not None and last[0] == state and now - last[2] < heartbeat and (
                    floor == last[1] or (floor is not None and last[1] is not None and 0 <= floor - last[1] < step)):
                continue
            self._producer.produce(self.topic, encode_entry(self.group_id, name, state, floor, at,
                                                            self.senders.token, self.since_ms),
                                   entry_key(self.group_id, name))
            self._sent[name] = (state, floor, now)
            if self._first_at is None:
                self._first_at = at
        self._producer.poll(0)
