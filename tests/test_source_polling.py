"""When an input partition asks Bytewax to poll it again (operators/io/kafka_source.py): at once while
it has more to read, at the next tick of a grid shared by every partition once it has read what
there was, so live traffic runs the dataflow once per tick for all partitions, not once per message."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.recovery import init_db_dir
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import strategies as st

from nextclick.flows.targeting import build_flow
from nextclick.operators.infra.config import ConfigError, ParseConfig, load_config
from nextclick.operators.io.alignment import Alignment
from nextclick.operators.io.kafka_source import (
    POLL_TICK_S,
    Aligned,
    KafkaInput,
    PollGrid,
    grid_step,
    next_tick,
)
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import Progress

TICK = timedelta(seconds=POLL_TICK_S)


@given(st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False))
def test_the_next_tick_is_on_the_grid_and_at_most_one_tick_ahead(now_s: float) -> None:
    tick = next_tick(now_s)
    since_epoch = tick - datetime.fromtimestamp(0, UTC)
    assert since_epoch % TICK < timedelta(microseconds=2) or TICK - since_epoch % TICK < timedelta(microseconds=2)
    ahead = tick - datetime.fromtimestamp(now_s, UTC)  # which rounds to the microsecond
    assert timedelta(microseconds=-1) < ahead <= TICK + timedelta(microseconds=1)


def test_partitions_polled_within_one_tick_wake_together() -> None:
    start = 1_800_000_000.0  # on the grid
    ticks = {next_tick(start + f * POLL_TICK_S) for f in (0.01, 0.3, 0.6, 0.99)}
    assert ticks == {datetime.fromtimestamp(start, UTC) + TICK}


def _events(n: int, first_ts: int, prefix: str = "e", customer: str = "c1") -> list[bytes]:
    return [orjson.dumps({"event_id": f"{prefix}{i}", "type": "page_view", "ts": first_ts + i,
                          "customer_id": customer}) for i in range(n)]


def _waits_for_the_next_tick(part: Any, tick: timedelta = TICK) -> None:
    before = datetime.now(UTC)
    awake = part.next_awake()
    assert awake is not None and before < awake <= before + tick + timedelta(milliseconds=1)
    assert (awake - datetime.fromtimestamp(0, UTC)) % tick < timedelta(microseconds=2)  # on the grid


def _read_until(part: Any, n: int) -> list[Any]:
    """Poll until `n` messages came, the way Bytewax would if it polled without waiting."""
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += [m for m in part.next_batch() if not isinstance(m, Progress)]
    return got


def test_a_partition_that_read_what_there_was_waits_for_the_next_tick_and_one_with_more_polls_at_once(
        kafka: dict[str, str], topic_prefix: str) -> None:
    topic = f"{topic_prefix}.events"
    ensure_topics(kafka, {topic: 1})
    now_ms = int(time.time() * 1000)
    producer = Producer(kafka)
    for value in _events(30, now_ms - 1000):
        producer.produce(topic, value, b"c1", partition=0)
    assert producer.flush(10) == 0
    source = KafkaInput(kafka, [topic], group_id=topic_prefix, stop_at_end=False, batch_size=10,
                        aligned=Aligned(Alignment(60_000, 10_000), lambda: now_ms, ParseConfig()))
    part = source.build_part("kafka_in", f"{topic}#0", None)
    try:
        # Batches of 10 from a backlog of 30: the first fetches come back full, and poll again at once.
        first = _read_until(part, 10)
        assert len(first) == 10
        assert part.next_awake() is None
        rest = _read_until(part, 20)
        assert len(rest) == 20
        # Everything read, and a poll that finds nothing: the next comes at the next tick.
        assert [m for m in part.next_batch() if not isinstance(m, Progress)] == []
        _waits_for_the_next_tick(part)
        # A short fetch that did deliver waits for the tick too.
        producer.produce(topic, _events(1, now_ms - 1000)[0], b"c1", partition=0)
        assert producer.flush(10) == 0
        assert len(_read_until(part, 1)) == 1
        _waits_for_the_next_tick(part)
    finally:
        part.close()


def test_a_partition_that_delivers_what_it_held_back_without_fetching_polls_again_at_once(
        kafka: dict[str, str], topic_prefix: str) -> None:
    """Its batch was full of messages alignment held back: whether more wait in Kafka is not known."""
    topic = f"{topic_prefix}.held"
    ensure_topics(kafka, {topic: 2})
    now_ms = int(time.time() * 1000)
    producer = Producer(kafka)
    for value in _events(30, now_ms - 1000, "a"):  # partition 0: later events
        producer.produce(topic, value, b"c1", partition=0)
    for value in _events(5, now_ms - 60_000, "b", "c2"):  # partition 1: earlier ones, which partition 0 waits for
        producer.produce(topic, value, b"c2", partition=1)
    assert producer.flush(10) == 0
    source = KafkaInput(kafka, [topic], group_id=topic_prefix, stop_at_end=False, batch_size=10,
                        aligned=Aligned(Alignment(0, 60_000), lambda: now_ms, ParseConfig()))
    late, early = (source.build_part("kafka_in", f"{topic}#{n}", None) for n in (0, 1))
    try:
        deadline = time.monotonic() + 20
        while len(late._pending) < 10 and time.monotonic() < deadline:  # noqa: SLF001 - fetched, held
            assert [m for m in late.next_batch() if not isinstance(m, Progress)] == []
        assert len(late._pending) == 10  # noqa: SLF001
        assert len(_read_until(early, 5)) == 5
        delivered: list[Any] = []
        while not delivered and time.monotonic() < deadline:
            early.next_batch()  # at its end: it holds nobody back
            delivered = [m for m in late.next_batch() if not isinstance(m, Progress)]
        assert len(delivered) == 10 and not late._pending  # noqa: SLF001
        assert late.next_awake() is None  # 20 more are in Kafka: no tick's wait
    finally:
        late.close()
        early.close()


def test_flow_poll_tick_sets_the_grid(kafka: dict[str, str], topic_prefix: str) -> None:
    """A longer `flow.poll_tick`: a partition that read what there was waits for the next 50 ms tick."""
    config = load_config(None, {"NEXTCLICK_FLOW__POLL_TICK": "50ms"})
    assert config.flow.poll_tick_s == 0.05
    topic = f"{topic_prefix}.tick"
    ensure_topics(kafka, {topic: 1})
    source = KafkaInput(kafka, [topic], group_id=topic_prefix, stop_at_end=False,
                        poll_tick_s=config.flow.poll_tick_s)
    part = source.build_part("kafka_in", f"{topic}#0", None)
    try:
        deadline = time.monotonic() + 20
        while part.next_awake() is None and time.monotonic() < deadline:  # until a poll finds nothing
            part.next_batch()
        _waits_for_the_next_tick(part, timedelta(milliseconds=50))
        time.sleep(0.05 - time.time() % 0.05 + 0.005)  # 5 ms into a 50 ms tick: the next is 45 ms away
        assert part.next_awake() - datetime.now(UTC) > timedelta(milliseconds=30)  # type: ignore[operator]
    finally:
        part.close()


def test_every_input_of_the_flow_polls_on_the_configured_grid(tmp_path: Path) -> None:
    """The control topic's reader too: Bytewax advances an input's epochs only when it is polled, and an
    input that has advanced waits for the others by re-activating at once. Two inputs on different grids
    made the worker spin between their epoch advances: idle, at a 100 ms tick, 0.28 cores against 0.03
    on one grid (docs/performance.md, "Live: the poll tick")."""
    (tmp_path / "recovery").mkdir()
    init_db_dir(tmp_path / "recovery", 1)
    config = load_config(None, {"NEXTCLICK_FLOW__POLL_TICK": "50ms", "NEXTCLICK_PRIVACY__DEMO": "true",
                                "NEXTCLICK_STATE__DIR": str(tmp_path / "state"),
                                "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "recovery")})
    inputs = {step.step_id: step.source for step in build_flow(config).substeps if type(step).__name__ == "input"}
    assert set(inputs) == {"nextclick.kafka_in", "nextclick.control_in"}
    grids = {id(source._grid): source._grid for source in inputs.values()}
    assert len(grids) == 1 and next(iter(grids.values())).tick_s == 0.05  # one grid, shared


@pytest.mark.parametrize(("rate", "step_ms"), [(0, 5), (1_000, 5), (1_600, 5), (2_000, 10), (2_500, 10), (3_000, 15),
                                              (3_999, 15), (4_000, 20), (50_000, 20)])
def test_a_busy_process_polls_on_a_longer_step_of_the_same_grid(rate: float, step_ms: int) -> None:
    step = grid_step(rate, 0.005, 0.02)
    assert step == pytest.approx(step_ms / 1000)
    assert grid_step(rate, 0.005, 0.005) == 0.005  # poll_tick_max = poll_tick: fixed
    assert grid_step(rate, 0.02, 0.005) == 0.02  # a max below the tick: the tick


def test_the_grid_follows_the_rate_read_and_comes_back_when_traffic_stops() -> None:
    grid = PollGrid(0.005, 0.02)
    start = time.monotonic()
    grid.read(0, start)
    for i in range(1, 11):  # 5,000 events a second for half a second
        grid.read(250, start + i * 0.05)
    assert grid.step_s == pytest.approx(0.02)
    tick = grid.next_tick(1_800_000_000.0)
    assert (tick - datetime.fromtimestamp(0, UTC)) % timedelta(milliseconds=20) == timedelta(0)
    grid.read(0, start + 1.2)  # nothing read for 0.7 s
    assert grid.step_s == pytest.approx(0.005)


@pytest.mark.parametrize("tick", ["0ms", "500ms", "soon"])
@pytest.mark.parametrize("key", ["POLL_TICK", "POLL_TICK_MAX"])
def test_a_poll_tick_out_of_range_is_refused_in_one_line(tick: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[flow\]\.{key.lower()}"):
        load_config(None, {f"NEXTCLICK_FLOW__{key}": tick})


def test_one_event_ahead_of_the_clock_in_a_backlog_leaves_the_partition_behind(
        kafka: dict[str, str], topic_prefix: str) -> None:
    """A backlog three hours old with one event a minute ahead of the clock (a producer's fast clock,
    within the parser's limit) in its middle. Read as "now", it made the partition look caught up: its
    report said None, the frontier jumped to the clock and every pending timer fired hours early. Its
    reports must stay at the backlog's event times until the partition reaches its end."""
    topic = f"{topic_prefix}.future"
    ensure_topics(kafka, {topic: 1})
    now_ms = int(time.time() * 1000)
    old = now_ms - 3 * 3_600_000
    producer = Producer(kafka)
    values = _events(20, old, "a") + _events(1, now_ms + 60_000, "future") + _events(20, old + 100, "b")
    for value in values:
        producer.produce(topic, value, b"c1", partition=0)
    assert producer.flush(10) == 0
    source = KafkaInput(kafka, [topic], group_id=topic_prefix, stop_at_end=True, batch_size=5,
                        aligned=Aligned(Alignment(60_000, 10_000), lambda: now_ms, ParseConfig()))
    part = source.build_part("kafka_in", f"{topic}#0", None)
    reports: list[tuple[int, int | None]] = []  # (messages read by then, the floor reported)
    read = 0
    try:
        deadline = time.monotonic() + 20
        while read < len(values) and time.monotonic() < deadline:
            batch = part.next_batch()
            read += sum(1 for m in batch if not isinstance(m, Progress))
            reports += [(read, m.floor) for m in batch if isinstance(m, Progress)]
            time.sleep(0.06)  # past the reports' rate limit: every poll may report
    finally:
        part.close()
    assert read == len(values) and len(reports) > 3
    before_the_end = [floor for at, floor in reports if at < len(values)]
    assert before_the_end and all(f is not None and f <= old + 120 for f in before_the_end), reports


def test_an_event_ahead_of_the_clock_waits_for_an_earlier_one_on_another_partition(
        kafka: dict[str, str], topic_prefix: str) -> None:
    """A consent withdrawal on one topic, then a purchase from a store whose clock runs 90 s fast on
    another, both read after downtime. Delivered at once, the purchase overtook the withdrawal and its
    email went out (an outside probe: 40 of 40). It waits as an event at its own time: more than the
    bound after the withdrawal, so until that partition delivered it."""
    email, store = f"{topic_prefix}.email", f"{topic_prefix}.store"
    ensure_topics(kafka, {email: 1, store: 1})
    now_ms = int(time.time() * 1000)
    producer = Producer(kafka)
    producer.produce(store, _events(1, now_ms + 90_000, "purchase")[0], b"c1", partition=0)
    producer.produce(email, _events(1, now_ms - 3_000, "withdrawal")[0], b"c1", partition=0)
    assert producer.flush(10) == 0
    assert _store_first(kafka, topic_prefix, store, email, now_ms, 2) == ["withdrawal0", "purchase0"]


def _store_first(kafka: dict[str, str], group: str, store: str, other: str, now_ms: int, expected: int) -> list[str]:
    """The event ids two aligned partitions deliver (bound 1 min), the store's polled first every round."""
    source = KafkaInput(kafka, [other, store], group_id=group, stop_at_end=False, batch_size=5,
                        aligned=Aligned(Alignment(60_000, 2_000), lambda: now_ms, ParseConfig()))
    parts = [source.build_part("kafka_in", f"{topic}#0", None) for topic in (store, other)]
    delivered: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while len(delivered) < expected and time.monotonic() < deadline:
            for part in parts:
                delivered += [orjson.loads(m.value)["event_id"] for m in part.next_batch()
                              if not isinstance(m, Progress)]
            time.sleep(0.01)
    finally:
        for part in parts:
            part.close()
    return delivered


def test_the_last_event_of_a_quiet_partition_dated_ahead_waits_for_the_others_to_catch_up(
        kafka: dict[str, str], topic_prefix: str) -> None:
    """A quiet store topic: a sale twenty minutes ago, then one from a till whose clock runs 30 s fast;
    a consent withdrawal two minutes ago on the web topic. Waiting as "its partition's newest plus the
    bound" (19 minutes ago), the fast till's sale went before the withdrawal, and 100 of 100 customers
    got a cross-sell after withdrawing (an outside probe; with two readers the shards' hold put it
    back in order, so the same events decided otherwise by reader count). Last in its partition, it
    waits as its own time."""
    web, store = f"{topic_prefix}.web", f"{topic_prefix}.store"
    ensure_topics(kafka, {web: 1, store: 1})
    now_ms = int(time.time() * 1000)
    producer = Producer(kafka)
    producer.produce(store, _events(1, now_ms - 20 * 60_000, "old-sale")[0], b"c2", partition=0)
    producer.produce(store, _events(1, now_ms + 30_000, "fast-sale")[0], b"c1", partition=0)
    producer.produce(web, _events(1, now_ms - 2 * 60_000, "withdrawal")[0], b"c1", partition=0)
    assert producer.flush(10) == 0
    assert _store_first(kafka, topic_prefix, store, web, now_ms, 3) == ["old-sale0", "withdrawal0", "fast-sale0"]


def test_an_event_ahead_of_the_clock_in_a_backlog_goes_with_its_neighbours(
        kafka: dict[str, str], topic_prefix: str) -> None:
    """Two partitions three hours behind, one with an event a minute ahead of the clock in its middle.
    Held as "now", it held the rest of its partition back until the other had read all of its three
    hours, so those events came hours out of order. It waits at most the bound past its own
    partition's time instead: each partition delivers within the bound of the other."""
    a, b = f"{topic_prefix}.a", f"{topic_prefix}.b"
    ensure_topics(kafka, {a: 1, b: 1})
    now_ms = int(time.time() * 1000)
    old = now_ms - 3 * 3_600_000
    producer = Producer(kafka)
    values = {a: _events(10, old, "a") + _events(1, now_ms + 60_000, "future") + _events(10, old + 100, "b"),
              b: [orjson.dumps({"event_id": f"o{i}", "type": "page_view", "ts": old + i * 270_000,
                                "customer_id": "c2"}) for i in range(20)]}
    for topic, batch in values.items():
        for value in batch:
            producer.produce(topic, value, b"c1", partition=0)
    assert producer.flush(10) == 0
    source = KafkaInput(kafka, [a, b], group_id=topic_prefix, stop_at_end=False, batch_size=5,
                        aligned=Aligned(Alignment(60_000, 60_000), lambda: now_ms, ParseConfig()))
    parts = [source.build_part("kafka_in", f"{topic}#0", None) for topic in (a, b)]
    order: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while len(order) < 41 and time.monotonic() < deadline:
            for part in parts:
                order += [orjson.loads(m.value)["event_id"] for m in part.next_batch() if not isinstance(m, Progress)]
            time.sleep(0.01)
    finally:
        for part in parts:
            part.close()
    assert len(order) == 41
    assert order.index("b9") < order.index("o2"), order  # o2 is 9 minutes after every "b": past the bound
