"""The Kafka source: every partition of every input topic, resumed at the exact offset of the last epoch.

Why not Bytewax's stock KafkaSource: it prefetches up to 64 MB per partition and can't stop on
request. Here the prefetch stays small, a partition can hold back for event-time alignment
(operators/io/alignment.py), and each reports its event-time floor for the flow's frontier. The group
offsets it commits (one epoch behind, and once more at the end) are for lag tools only.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Callable, Mapping, NamedTuple, Sequence, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from nextclick.operators.frontier import LIVE_SLACK_MS
from nextclick.operators.infra import failpoints, health, metrics
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.alignment import (
    DATA,
    END,
    HELD,
    UNREADABLE,
    WAITING,
    Alignment,
    ahead_waits,
    cut,
    event_time,
)
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.records import Progress

log = logging.getLogger(__name__)

# How often an idle partition refreshes its lag gauge from the watermark its consumer caches (a
# partition that reads refreshes it with every batch).
_LAG_REFRESH_S = 1.0
# At most one log line per this many seconds about failed group-offset commits.
_COMMIT_WARN_EVERY_S = 60.0
_commit_warned_at = -_COMMIT_WARN_EVERY_S

# A partition that has nothing more to read right now (its fetch came back short) polls again at the
# next tick of a grid shared by every partition of the process, not at once and not on its own
# schedule: Bytewax polls every due partition in one activation of the input, so the whole dataflow
# then runs once per tick for all of them instead of once per partition and message (live, that
# per-activation cost was most of what a live event cost over a backlog one). A full fetch (a
# backlog) polls again at once.
POLL_TICK_S = 0.005  # flow.poll_tick's default
# While the process reads more than QUIET_RATE events a second, the grid's step grows in whole ticks,
# up to flow.poll_tick_max at BUSY_RATE: a busy process runs the dataflow less often, each time for
# more events, which is where live events cost more than a backlog's (docs/performance.md); a quiet one
# keeps the short step, since there a click waits for it and the CPU has room.
QUIET_RATE = 1_000.0
BUSY_RATE = 4_000.0
_RATE_WINDOW_S = 0.5  # how long the grid counts events before it picks its step again
_EPOCH = datetime.fromtimestamp(0, UTC)
# At most one Progress report per partition this often (the first and a partition's last go at once).
_PROGRESS_EVERY_S = 0.05
_UNKNOWN: Any = object()  # a partition's floor before its first fetch: it reports nothing yet


# NamedTuple's generated __new__ costs twice tuple.__new__; one RawMessage is built per message.
_new_tuple = tuple.__new__


class RawMessage(NamedTuple):
    """One Kafka record as read, before parsing; enough to dead-letter it byte for byte.

    A NamedTuple, not a frozen dataclass: one is built per input message, and a frozen dataclass
    costs about three times as much to build."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # a header may have no value


def _warn_commit_failure(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """Group offsets are for monitoring only: a failed commit is logged (at most once a minute), never fatal."""
    global _commit_warned_at
    failed = [p for p in partitions or () if p.error is not None]
    if err is None and not failed:
        return
    now = time.monotonic()
    if now - _commit_warned_at < _COMMIT_WARN_EVERY_S:
        return
    _commit_warned_at = now
    first = err if err is not None else failed[0].error
    reason = first.str() if first is not None else "unknown error"
    log.warning("could not commit input offsets to the consumer group (lag tools will lag; recovery is "
                "unaffected)", extra={"error": reason, "partitions": [f"{p.topic}#{p.partition}" for p in failed]})


def source_consumer_config(kafka: Mapping[str, str], group_id: str, *, stop_at_end: bool = False,
                           partition_eof: bool = False) -> dict[str, Any]:
    """Settings of the consumer behind each input partition.

    Recovery never reads the group's offsets (positions come from Bytewax's snapshots); the flow
    commits them, one epoch behind, only so that standard lag tools see the group (see `snapshot`).
    Partition-EOF events tell an aligned partition it has caught up (operators/io/alignment.py).
    """
    return client_config(kafka, **{
        "group.id": group_id,
        "enable.auto.commit": False,
        "on_commit": _warn_commit_failure,
        "enable.partition.eof": stop_at_end or partition_eof,
        # Report an out-of-range offset to us instead of silently jumping to the end.
        "auto.offset.reset": "error",
        # librdkafka's default 1 s backoff stalls any consumer slower than the broker.
        "fetch.queue.backoff.ms": 10,
        # How long the broker may hold a fetch when there is no data. Kafka answers as soon as
        # data arrives; brokers that don't (Tansu) would add up to this much latency (default 500).
        "fetch.wait.max.ms": 20,
        "queued.max.messages.kbytes": 8192,
    })


def next_tick(now_s: float, tick_s: float = POLL_TICK_S) -> datetime:
    """The first tick of the shared polling grid after `now_s` (epoch seconds)."""
    tick_us = round(tick_s * 1_000_000)  # in whole microseconds: 0.005 has no exact float
    return _EPOCH + timedelta(microseconds=(int(now_s * 1_000_000) // tick_us + 1) * tick_us)


def grid_step(rate: float, tick_s: float, max_tick_s: float) -> float:
    """The polling grid's step for a process reading `rate` events a second: `tick_s` up to QUIET_RATE,
    `max_tick_s` from BUSY_RATE, whole ticks in between (so every step's ticks are ticks of the
    shortest: partitions that picked their step a moment apart still wake together)."""
    if max_tick_s <= tick_s or rate <= QUIET_RATE:
        return tick_s
    share = min(1.0, (rate - QUIET_RATE) / (BUSY_RATE - QUIET_RATE))
    return tick_s * (1 + int(share * (max_tick_s / tick_s - 1) + 1e-9))


class PollGrid:
    """The grid every input partition of a process polls on once it has read what there was (the
    inputs and the control reader share one: Bytewax advances their epochs together). Its step is
    `grid_step` of the rate the partitions read at over the last _RATE_WINDOW_S."""

    def __init__(self, tick_s: float = POLL_TICK_S, max_tick_s: float | None = None) -> None:
        self.tick_s = tick_s
        self.max_tick_s = max(tick_s, max_tick_s if max_tick_s is not None else tick_s)
        self.step_s = tick_s
        self._count = 0
        self._since = time.monotonic()

    def read(self, n: int, now: float) -> None:
        """`n` events read at `now` (monotonic); worker threads race on the count, which only has to
        be about right."""
        self._count += n
        elapsed = now - self._since
        if elapsed >= _RATE_WINDOW_S:
            rate, self._count, self._since = self._count / elapsed, 0, now
            self.step_s = grid_step(rate, self.tick_s, self.max_tick_s)

    def next_tick(self, now_s: float) -> datetime:
        if self.max_tick_s > self.tick_s:
            self.read(0, time.monotonic())  # traffic that stopped: back to the short step
        return next_tick(now_s, self.step_s)


_Headers = list[tuple[str, bytes | None]]  # as confluent-kafka gives them: a header may have no value


class Aligned(NamedTuple):
    """What an input partition needs to take part in event-time alignment and the event-time frontier.

    With `pace` False the partitions are not held back (`flow.align = false`), but each still reports
    its floor for the frontier the flow's timers fire by (operators/frontier.py)."""

    alignment: Alignment
    now_ms: Callable[[], int]  # the flow's clock: a `ts` ahead of it moves no floor (alignment.ahead_waits)
    parse: ParseConfig  # the parser's bounds: what it refuses never waits
    pace: bool = True


class _KafkaPartition(StatefulSourcePartition[RawMessage | Progress, int]):
    def __init__(self, config: dict[str, Any], topic: str, partition: int, offset: int,
                 batch_size: int, stop: threading.Event | None, stop_at_end: bool,
                 aligned: Aligned | None = None, exchange: Callable[[], None] | None = None,
                 total: int = 0, grid: PollGrid | None = None) -> None:
        self._consumer = Consumer(config)
        self._grid = grid or PollGrid()
        self._topic, self._partition = topic, partition
        self._next_offset = offset
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._batch_size = batch_size
        self._stop, self._stop_at_end = stop, stop_at_end
        self._eof = False
        self._idle = False
        self._drained = False  # the last fetch came back short: nothing more to read right now
        # Event-time alignment: fetched messages wait here until the others have caught up; the
        # snapshot offset never passes them, so a restart reads them again.
        self._aligned = aligned
        self._exchange = exchange  # joins the cross-process exchange at the first poll (if it must)
        self._slot = aligned.alignment.slot(f"{topic}#{partition}") if aligned is not None else None
        self._pending: list[RawMessage] = []
        self._pending_ts: list[int | float] = []
        self._ahead = 0  # how many of them are dated ahead of the clock (floats)
        self._at_end = False
        self._held = False
        self._retry = timedelta(0)
        self._floor_ms: int | None = None  # the latest event time delivered
        # The event-time frontier: what this partition last reported (operators/records.Progress), and
        # when; `total` is how many input partitions the flow has.
        self._total = total
        self._reported: Any = _UNKNOWN
        self._reported_at = 0.0
        self._throttle = failpoints.THROTTLE_INPUT.get(f"{topic}#{partition}") or failpoints.THROTTLE_INPUT.get(topic)
        self._throttled_until = 0.0
        # Monitoring: probes, the progress log, metrics, the consumer group's offsets.
        self._status = health.STATUS.partition(topic, partition)
        self._read = metrics.INPUT_MESSAGES.labels(topic, str(partition))
        self._lag = metrics.CONSUMER_LAG.labels(topic, str(partition))
        self._event_time = metrics.INPUT_EVENT_TIME.labels(topic, str(partition))
        self._held_s = metrics.INPUT_HELD_SECONDS.labels(topic, str(partition))
        self._polled_at = time.monotonic()
        self._lag_at = 0.0
        self._snapshot_at: float | None = None
        self._committable: int | None = None
        self._committed: int | None = None

    def _fetch(self, room: int) -> list[Any]:
        """Up to `room` records from the consumer's queue (fewer under a test throttle)."""
        if self._throttle is not None:
            per_fetch, pause_s = self._throttle
            now = time.monotonic()
            if now < self._throttled_until:
                return []
            self._throttled_until = now + pause_s
            room = min(room, per_fetch)
            if room <= 0:  # a partition that never gets anything (the idle-timeout test)
                return []
        return self._consumer.consume(room, 0)

    def _handle_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            self._lag_at = 0.0  # refresh below: the lag is 0 now unless more arrived
            self._at_end = True
            if self._stop_at_end:
                self._eof = True
            return
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            # Our offset is gone (retention deleted unread data, or the topic was recreated).
            # Never skip silently: say so, and go on from the earliest message there is.
            log.error("input offset out of range; resuming at the earliest available offset",
                      extra={"topic": self._topic, "partition": self._partition,
                             "offset": self._next_offset, "error": error.str()})
            # Messages waiting for alignment came from before that offset: they are delivered as read.
            self._consumer.seek(TopicPartition(self._topic, self._partition, OFFSET_BEGINNING))
            return
        if error.fatal():
            raise RuntimeError(f"Kafka consumer for {self._topic}[{self._partition}] failed: {error.str()}")
        log.warning("kafka consume error", extra={"topic": self._topic, "partition": self._partition,
                                                  "error": error.str()})

    def next_batch(self) -> list[RawMessage | Progress]:
        if self._stop is not None and self._stop.is_set():
            self._status.ended = True
            raise StopIteration()
        if self._aligned is not None:
            return self._next_aligned()
        if self._eof:
            self._status.ended = True
            raise StopIteration()
        batch: list[RawMessage | Progress] = []
        fetched = self._fetch(self._batch_size)
        self._drained = len(fetched) < self._batch_size
        for msg in fetched:
            error = msg.error()
            if error is not None:
                self._handle_error(error)
                continue
            offset = msg.offset()
            assert offset is not None
            self._next_offset = offset + 1
            headers = msg.headers()
            batch.append(_new_tuple(RawMessage, (self._topic, self._partition, offset, msg.key(), msg.value(),
                                                 tuple(cast(_Headers, headers)) if headers else ())))
        self._idle = not batch
        self._polled(batch)
        return batch

    def _next_aligned(self) -> list[RawMessage | Progress]:
        aligned, slot = self._aligned, self._slot
        assert aligned is not None and slot is not None
        if self._exchange is not None:
            self._exchange()
            self._exchange = None
        pending, pending_ts = self._pending, self._pending_ts
        room = self._batch_size - len(pending)
        now_ms = aligned.now_ms()
        drained = False  # no fetch (what waits filled the batch): more may be there, look again at once
        if room > 0:
            parse = aligned.parse
            fetched = self._fetch(room)
            drained = len(fetched) < room
            for msg in fetched:
                error = msg.error()
                if error is not None:
                    self._handle_error(error)
                    continue
                offset = msg.offset()
                assert offset is not None
                value = msg.value()
                headers = msg.headers()
                pending.append(RawMessage(self._topic, self._partition, offset, msg.key(), value,
                                          tuple(cast(_Headers, headers)) if headers else ()))
                ts = event_time(value, now_ms, parse)
                if type(ts) is float:  # ahead of the clock: it waits as `ahead_waits` says
                    self._ahead += 1
                pending_ts.append(ts)
                self._at_end = self._eof = False
        if not pending:
            if self._eof:
                slot.set(END, None, aligned.alignment.now())
                if self._reported is not None:  # its last word: caught up (then the input ends)
                    return self._report([], None)
                self._status.ended = True
                raise StopIteration()
            slot.set(END if self._at_end else WAITING, self._floor_ms, aligned.alignment.now())
            self._idle, self._held = True, False
            self._polled([])
            return self._report([], self._contribution(now_ms))
        limit, retry_s = aligned.alignment.limit(slot) if aligned.pace else (None, 0.0)
        waits = ahead_waits(pending_ts, self._at_end) if self._ahead else pending_ts
        n = cut(waits, limit)
        batch = cast(list[RawMessage | Progress], pending[:n])
        head = waits[n] if n < len(waits) else None
        if n:
            delivered = max(pending_ts[:n])
            if type(delivered) is float:  # times ahead of the clock stand for no position
                delivered = max((t for t in pending_ts[:n] if type(t) is int), default=UNREADABLE)
            if delivered != UNREADABLE and (self._floor_ms is None or delivered > self._floor_ms):
                self._floor_ms = int(delivered)
            self._next_offset = pending[n - 1].offset + 1
            if self._ahead:
                self._ahead -= sum(1 for t in pending_ts[:n] if type(t) is float)
            del pending[:n], pending_ts[:n]
        now = aligned.alignment.now()
        if pending:
            assert head is not None
            if head == math.inf:  # dated ahead, and whether anything follows it is not known yet
                slot.set(DATA if n else HELD, self._floor_ms, now)
            else:
                slot.set(DATA if n else HELD, int(head), now)
                self._event_time.set(head / 1000)
        else:
            slot.set(END if self._at_end else WAITING, self._floor_ms, now, delivered=n > 0)
            if self._floor_ms is not None:
                self._event_time.set(self._floor_ms / 1000)
        if self._held:
            self._held_s.inc(time.monotonic() - self._polled_at)
        self._held = not n
        self._retry = timedelta(seconds=retry_s)
        self._idle = False
        self._drained = drained and not pending
        self._polled(batch)
        return self._report(batch, self._contribution(now_ms))

    def _contribution(self, now_ms: int) -> Any:
        """What this partition adds to the event-time frontier now: its floor, None when it is caught
        up (at its end, idle, or reading events within LIVE_SLACK_MS of the present), or _UNKNOWN
        before it knows anything (it has not fetched, and is not idle yet)."""
        aligned = self._aligned
        assert aligned is not None and self._slot is not None
        state, floor, since = self._slot.view
        if state == END:
            return None
        if state == WAITING:
            if aligned.alignment.now() - since >= aligned.alignment.idle_s:
                return None
        if floor is None or floor == UNREADABLE:
            return _UNKNOWN
        return None if floor >= now_ms - LIVE_SLACK_MS else floor

    def _report(self, batch: list[RawMessage | Progress], floor: Any) -> list[RawMessage | Progress]:
        """Append a Progress report behind the batch when this partition's contribution changed (at most
        every _PROGRESS_EVERY_S, except the first and the last, "caught up" at the input's end)."""
        if floor is _UNKNOWN or floor == self._reported:
            return batch
        now = time.monotonic()
        if self._reported is not _UNKNOWN and now - self._reported_at < _PROGRESS_EVERY_S and not (
                floor is None and self._eof):
            return batch  # reported at a later poll (an idle partition is polled every few ms)
        self._reported, self._reported_at = floor, now
        batch.append(Progress(f"{self._topic}#{self._partition}", floor, self._total))
        return batch

    def _polled(self, batch: list[Any]) -> None:
        now = time.monotonic()
        self._polled_at = now
        self._status.last_poll = now
        if batch:
            self._read.inc(len(batch))
            self._grid.read(len(batch), now)
            self._refresh_lag(now)  # a local read of the watermark the fetch response carried: cheap
        elif now - self._lag_at >= _LAG_REFRESH_S:
            self._refresh_lag(now)

    def _refresh_lag(self, now: float) -> None:
        """High watermark (as the consumer's last fetch response gave it: no broker request) minus
        the next offset to read."""
        self._lag_at = now
        position = self._next_offset
        try:
            if position < 0:  # nothing read yet: where the consumer will fetch from, once it knows
                position = self._consumer.position([TopicPartition(self._topic, self._partition)])[0].offset
            high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._partition),
                                                        cached=True)[1]
        except KafkaException:
            return
        if position is not None and position >= 0 and high is not None and high >= 0:
            self._lag.set(max(0, high - position))

    def next_awake(self) -> datetime | None:
        # One held back by alignment looks again when the partition it waits for may have moved
        # (alignment.limit); one with nothing more to read waits for the next tick (flow.poll_tick).
        if self._held:
            return datetime.now(UTC) + self._retry
        return self._grid.next_tick(time.time()) if self._idle or self._drained else None

    def snapshot(self) -> int:
        # Bytewax polls this partition in epoch k only once every earlier epoch has passed its
        # recovery commit, and this snapshot ends epoch k: the previous snapshot's offset is
        # committed state now. That one goes to the consumer group (one epoch behind, for lag
        # tools only; recovery never reads it).
        now = time.monotonic()
        if self._snapshot_at is not None:
            metrics.EPOCH_SECONDS.observe(now - self._snapshot_at)
        self._snapshot_at = now
        if self._committable is not None and self._committable != self._committed:
            self._commit(self._committable)
        if self._next_offset >= 0:
            self._committable = self._next_offset
            self._status.offset = self._next_offset
        self._status.snapshots += 1
        self._refresh_lag(now)
        return self._next_offset

    def _commit(self, offset: int) -> None:
        try:
            self._consumer.commit(offsets=[TopicPartition(self._topic, self._partition, offset)],
                                  asynchronous=True)
            self._committed = offset
        except KafkaException as exc:
            _warn_commit_failure(exc.args[0] if exc.args else None, [])

    def close(self) -> None:
        self._status.ended = True
        if self._aligned is not None and self._slot is not None:
            if self._aligned.alignment.release(self._slot):
                self._aligned.alignment.stop_exchange()
        self._consumer.close()


class KafkaInput(FixedPartitionedSource[RawMessage | Progress, int]):
    """Every partition of every input topic, each resumed at the exact offset of the last epoch."""

    def __init__(self, kafka: Mapping[str, str], topics: Sequence[str], *, group_id: str = "nextclick",
                 start_from_beginning: bool = True, stop_at_end: bool = False, batch_size: int = 1000,
                 stop: threading.Event | None = None, start_positions: Mapping[str, int] | None = None,
                 aligned: Aligned | None = None, progress_topic: str | None = None,
                 poll_tick_s: float = POLL_TICK_S, grid: PollGrid | None = None) -> None:
        """`start_positions` ("topic#partition" -> next offset) is a restored savepoint's: partitions
        Bytewax has no offset for start there, or at the beginning when the savepoint has none.

        `aligned`: pace the partitions in event time (operators/io/alignment.py); with
        `progress_topic`, together with the other processes of the cluster. `grid`: the polling grid,
        shared with the process's other inputs (a fixed one of step `poll_tick_s` when not given).
        """
        self._kafka = dict(kafka)
        self._aligned = aligned
        self._progress_topic = progress_topic
        self._start_positions = start_positions
        self._topics = list(topics)
        self._group_id = group_id
        self._start = OFFSET_BEGINNING if start_from_beginning else OFFSET_END
        self._stop_at_end = stop_at_end
        self._batch_size = batch_size
        self._stop = stop
        self._total = 0  # how many partitions list_parts found (each worker lists them all)
        self._grid = grid or PollGrid(poll_tick_s)

    def list_parts(self) -> list[str]:
        config = client_config(self._kafka, **{"group.id": self._group_id})
        consumer = Consumer(config)
        try:
            parts = []
            for topic in self._topics:
                meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    raise RuntimeError(f"input topic {topic!r} does not exist or has no partitions "
                                       f"({meta.error if meta is not None else 'missing'})")
                parts += [f"{topic}#{p}" for p in sorted(meta.partitions)]
            self._total = len(parts)
            if self._aligned is not None:
                self._aligned.alignment.expect(parts)
            health.STATUS.listed()
            return parts
        finally:
            consumer.close()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        topic, _, partition = for_part.rpartition("#")
        config = source_consumer_config(self._kafka, self._group_id, stop_at_end=self._stop_at_end,
                                        partition_eof=self._aligned is not None)
        exchange: Callable[[], None] | None = None
        if self._aligned is not None and self._progress_topic:
            exchange = functools.partial(self._aligned.alignment.join_exchange, self._kafka,
                                         self._progress_topic, self._group_id)
        if resume_state is not None:
            offset = resume_state
        elif self._start_positions is not None:
            offset = self._start_positions.get(for_part, OFFSET_BEGINNING)
        else:
            offset = self._start
        return _KafkaPartition(config, topic, int(partition), offset, self._batch_size, self._stop,
                               self._stop_at_end, self._aligned, exchange, self._total, self._grid)


# How long the final group commit may take. It is for lag tools only, and a drain must finish inside
# the pod's grace period: with the broker down a synchronous commit waits for the coordinator (46 s
# seen), so it runs in a thread that is abandoned after this long.
FINAL_COMMIT_TIMEOUT_S = 5.0


def commit_final_offsets(kafka: Mapping[str, str], group_id: str,
                         status: health.FlowStatus = health.STATUS,
                         timeout_s: float = FINAL_COMMIT_TIMEOUT_S) -> int:
    """After the dataflow completed (its last epoch committed), give the consumer group the final
    positions of this process's input partitions, which the one-epoch-behind commits never reach.

    Returns how many partitions were committed. Monitoring only: a failure is logged, not raised,
    and the call returns within `timeout_s` whatever the broker does.
    """
    offsets = [TopicPartition(p.topic, p.partition, p.offset) for p in status.finished_partitions()
               if p.offset is not None and p.offset >= 0]
    if not offsets:
        return 0
    done: list[int] = []

    def commit() -> None:
        consumer = Consumer(client_config(kafka, **{"group.id": group_id, "enable.auto.commit": False,
                                                    "socket.timeout.ms": int(timeout_s * 1000)}))
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False) or []
            _warn_commit_failure(None, result)
            done.append(sum(1 for tp in result if tp.error is None))
        except KafkaException as exc:
            _warn_commit_failure(exc.args[0] if exc.args else None, offsets)
            done.append(0)
        finally:
            consumer.close()

    # A daemon thread: one still blocked in librdkafka when the process exits does not hold it up.
    worker = threading.Thread(target=commit, name="nextclick-final-commit", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not done:
        log.warning("gave up committing the final input offsets to the consumer group (lag tools will show "
                    "the previous epoch's; recovery is unaffected)",
                    extra={"timeout_s": timeout_s, "partitions": [f"{o.topic}#{o.partition}" for o in offsets]})
        return 0
    return done[0]
