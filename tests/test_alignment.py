"""Event-time alignment of the input partitions, without a broker: reading `ts`, the pacing rule, peers.

The rule (operators/io/alignment.py): a partition may deliver a message only if its event time is
at most `bound` ahead of the floor of every other partition that still has data. Partitions at
their end hold nobody back; one that never fetched holds everyone (except messages without a
readable ts) until it does, or until the idle timeout.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.infra.config import ConfigError, ParseConfig, load_config
from nextclick.operators.io.alignment import (
    DATA,
    END,
    HELD,
    IDLE,
    RETRY_FETCH_S,
    RETRY_PEER_S,
    UNREADABLE,
    WAITING,
    Alignment,
    Entry,
    Senders,
    ahead_waits,
    cut,
    decode_entry,
    effective_floor,
    encode_entry,
    event_time,
)
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import DeadLetter, Event, SourcePosition

NOW = 1_795_000_000_000
MIN = 60_000
CFG = ParseConfig()


def msg(ts: Any, **extra: Any) -> bytes:
    # json, not orjson: it writes integers of any size, as a producer might.
    return json.dumps({"event_id": "e1", "type": "page_view", "ts": ts, "customer_id": "c1", **extra}).encode()


# -- reading ts --------------------------------------------------------------------------------------


def test_event_time_reads_ts_as_the_parser_does() -> None:
    assert event_time(msg(NOW - MIN), NOW, CFG) == NOW - MIN
    assert event_time(msg("2026-11-18T11:05:40Z"), NOW, CFG) == NOW - MIN
    assert event_time(msg("2026-11-18T12:05:40.000+01:00"), NOW, CFG) == NOW - MIN
    assert event_time(msg(float(NOW - MIN)), NOW, CFG) == NOW - MIN
    # Only `ts` is decoded: whatever else the message holds, and where, does not matter.
    assert event_time(b'{"a": [1, {"b": null}], "ts": 5, "z": "' + b"x" * 1000 + b'"}', 10, CFG) == 5


RFC3339 = st.builds(
    lambda d, frac, sep, tz: f"{d.year:04d}-{d.month:02d}-{d.day:02d}{sep}{d:%H:%M:%S}{frac}{tz}",
    st.datetimes(),
    st.sampled_from(["", ".1", ".12", ".123", ".1234", ".123456789", ",123", ".", ".12a"]),
    st.sampled_from(["T", "t", " ", "_"]),
    st.sampled_from(["Z", "z", "+01:00", "-23:59", "+24:00", "+01:60", "+0100", "+01", "", "+01:00:30", "Zulu"]))


@settings(max_examples=500, deadline=None)
@given(ts=st.one_of(RFC3339, RFC3339.map(lambda t: t[:17] + "60" + t[19:]), st.text(min_size=19, max_size=32)))
def test_rfc3339_strings_read_as_the_parser_reads_them(ts: str) -> None:
    from nextclick.operators.io.alignment import _rfc3339_ms
    from nextclick.operators.io.parse import parse_ts

    try:
        expected: int | None = parse_ts(ts)
    except Exception:  # noqa: BLE001 - the parser refuses it: so must the fast way
        expected = None
    try:
        got: int | None = _rfc3339_ms(ts)
    except Exception:  # noqa: BLE001
        got = None
    assert got == expected


@pytest.mark.parametrize("value", [
    None, b"", b"not json", b"[1, 2]", b'{"ts": ', msg(None), msg(True), msg(1.5), msg("yesterday"),
    msg("2026-11-18T11:05:40"),  # no timezone
    b'{"event_id": "e1"}',  # no ts
    msg(NOW - 31 * 24 * 60 * MIN),  # older than parse.max_age_ms
    msg(NOW // 1000),  # seconds, not milliseconds
    msg(NOW + 6 * MIN),  # further ahead than parse.max_future_skew_ms
    msg(NOW, note="x" * 70_000),  # larger than parse.max_message_bytes
])
def test_what_the_parser_refuses_never_waits(value: bytes | None) -> None:
    assert event_time(value, NOW, CFG) == UNREADABLE


def test_a_ts_ahead_of_the_clock_is_marked_and_waits_with_what_follows_it_or_as_its_own_time() -> None:
    # One such event in a backlog must not pass for the partition being caught up, nor hold it back
    # until every other partition is live; nor may it overtake what is dated before it on another
    # partition (tests/test_source_polling.py). A float marks it: it moves no floor.
    assert event_time(msg(NOW + 4 * MIN), NOW, CFG) == NOW + 4 * MIN
    assert type(event_time(msg(NOW + 1), NOW, CFG)) is float
    assert type(event_time(msg(NOW), NOW, CFG)) is int
    old = NOW - 3 * 60 * MIN
    ahead = float(NOW + MIN)
    # In a backlog: with the next readable event behind it (an unreadable one stands for no time).
    assert ahead_waits([old, ahead, UNREADABLE, old + 100], at_end=False) == [
        old, float(old + 100), UNREADABLE, old + 100]
    # Consecutive ones go with the same neighbour; one dated before its neighbour keeps its own time.
    assert ahead_waits([ahead, float(NOW + 1), old], at_end=False) == [float(old), float(old), old]
    assert ahead_waits([float(NOW + 1), NOW + 5], at_end=False) == [float(NOW + 1), NOW + 5]
    # Last in its partition: its own time once the partition's end says nothing follows (an outside
    # probe: "its partition's newest plus the bound" let a quiet store topic's last purchases, dated
    # seconds ahead, overtake withdrawals minutes older on another topic); until then, unknown.
    assert ahead_waits([old, ahead], at_end=True) == [old, ahead]
    assert ahead_waits([old, ahead], at_end=False) == [old, math.inf]
    assert all(type(t) is float for t in ahead_waits([ahead, ahead, old], at_end=False)[:2])


def test_no_age_limit_for_backfills() -> None:
    old = NOW - 400 * 24 * 60 * MIN
    assert event_time(msg(old), NOW, ParseConfig(max_age_ms=0)) == old


@settings(max_examples=300, deadline=None)
@given(ts=st.one_of(
    st.integers(min_value=NOW - 40 * 24 * 60 * MIN, max_value=NOW + 10 * MIN),
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=30)))
def test_event_time_agrees_with_the_parser(ts: Any) -> None:
    value = msg(ts)
    parsed = parse_message(b"c1", value, None, SourcePosition("t", 0, 0), secret=b"s", now_ms=NOW, config=CFG)
    got = event_time(value, NOW, CFG)
    if isinstance(parsed, Event):
        assert got == parsed.ts and (type(got) is float) == (parsed.ts > NOW)  # a float: ahead of the clock
    else:
        assert isinstance(parsed, DeadLetter)
        assert parsed.reason in ("invalid_ts", "ts_too_old", "ts_in_future", "invalid_json", "schema_violation")
        if parsed.reason in ("invalid_ts", "ts_too_old", "ts_in_future"):
            assert got == UNREADABLE


# -- what a partition may deliver --------------------------------------------------------------------


def test_cut_delivers_the_prefix_within_the_limit_and_never_reorders() -> None:
    assert cut([1, 2, 3], None) == 3
    assert cut([1, 2, 3], 3) == 3
    assert cut([1, 2, 3], 2) == 2
    assert cut([5, 1, 2], 4) == 0  # 1 and 2 wait behind 5: a partition's order is kept
    assert cut([UNREADABLE, 7, UNREADABLE], 3) == 1
    assert cut([UNREADABLE, UNREADABLE], UNREADABLE) == 2  # they never wait
    assert cut([], 0) == 0


def test_effective_floor() -> None:
    assert effective_floor(DATA, 100, 0.0, 10.0) == 100
    assert effective_floor(HELD, 100, 0.0, 10.0) == 100
    assert effective_floor(WAITING, 100, 9.9, 10.0) == 100
    assert effective_floor(WAITING, 100, 10.0, 10.0) is None  # idle: stops holding others back
    assert effective_floor(WAITING, None, 0.0, 10.0) == UNREADABLE  # never fetched: unknown
    assert effective_floor(END, None, 0.0, 10.0) is None
    assert effective_floor(IDLE, 100, 0.0, 10.0) is None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def aligned(bound_ms: int = MIN, idle_ms: int = 10_000) -> tuple[Alignment, Clock]:
    clock = Clock()
    return Alignment(bound_ms, idle_ms, monotonic=clock), clock


def test_no_partition_runs_ahead_of_the_slowest_one_with_data() -> None:
    a, clock = aligned()
    web, email, store = a.slot("web#0"), a.slot("email#0"), a.slot("store#0")
    web.set(DATA, NOW, clock())
    email.set(DATA, NOW - 2 * MIN, clock())
    store.set(END, None, clock())
    assert a.limit(web) == (NOW - MIN, 0.0)  # email is 2 minutes behind: web may go 1 minute past it
    assert a.limit(email) == (NOW + MIN, 0.0)
    assert cut([NOW], a.limit(web)[0]) == 0 and cut([NOW - 2 * MIN], a.limit(email)[0]) == 1
    email.set(END, None, clock())  # caught up: nothing holds web back any more
    assert a.limit(web) == (None, RETRY_FETCH_S)


def test_a_partition_that_never_fetched_holds_everyone_until_the_idle_timeout() -> None:
    a, clock = aligned()
    web = a.slot("web#0")
    a.slot("email#0")
    web.set(DATA, NOW, clock())
    assert a.limit(web)[0] == UNREADABLE  # email's first fetch may hold anything
    clock.t += 9.9
    assert a.limit(web)[0] == UNREADABLE
    clock.t += 0.1  # idle: a broken partition must not stall the others forever
    assert a.limit(web)[0] is None


def test_a_fetching_partition_counts_at_what_it_last_delivered() -> None:
    a, clock = aligned(bound_ms=0)
    web, email = a.slot("web#0"), a.slot("email#0")
    web.set(HELD, NOW, clock())
    email.set(WAITING, NOW - MIN, clock())  # its buffer is empty, its fetch is in flight
    assert a.limit(web) == (NOW - MIN, RETRY_FETCH_S)
    clock.t += 5
    email.set(WAITING, NOW - MIN, clock())  # still waiting: the idle clock keeps running
    clock.t += 5
    assert a.limit(web) == (None, RETRY_FETCH_S)
    email.set(DATA, NOW - MIN + 1, clock())  # it delivers again: it counts again
    assert a.limit(web) == (NOW - MIN + 1, 0.0)


def test_a_partition_that_delivers_at_every_poll_is_never_idle() -> None:
    """It hands on all it fetched, so it waits again after every poll: that is not idleness."""
    a, clock = aligned(bound_ms=0)
    web, email = a.slot("web#0"), a.slot("email#0")
    web.set(HELD, NOW, clock())
    for step in range(30):  # 30 s of polls, 10 ms of event time each
        clock.t += 1
        email.set(WAITING, NOW - MIN + 10 * step, clock(), delivered=True)
        assert a.limit(web)[0] == NOW - MIN + 10 * step
    assert dict((name, state) for name, state, _ in a.local_views())["email#0"] == WAITING


def test_a_released_partition_holds_nobody_back() -> None:
    a, clock = aligned()
    web, email = a.slot("web#0"), a.slot("email#0")
    email.set(DATA, NOW - 10 * MIN, clock())
    assert a.release(web) is False
    assert a.release(email) is True  # the last one: the exchange can stop
    web2 = a.slot("web#0")
    assert a.limit(web2)[0] is None


# -- peers --------------------------------------------------------------------------------------------


def test_a_process_that_reads_every_partition_runs_the_exchange_for_presence_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, bool]] = []
    monkeypatch.setattr(Alignment, "start_exchange",
                        lambda self, kafka, topic, group, presence: started.append((topic, presence)))
    a, _ = aligned()
    a.expect(["web#0", "web#1"])
    a.slot("web#0")
    a.slot("web#1")
    a.join_exchange({}, "progress", "g")
    assert started == [("progress", True)]  # nobody to pace against: heartbeats only, for another deployment
    a.expect(["email#0"])  # another process (or a worker not yet polling) reads this one
    a.join_exchange({}, "progress", "g")
    assert started[-1] == ("progress", False)


def test_a_live_sender_of_a_partition_this_process_reads_is_another_deployment() -> None:
    """Each partition has one reader in a deployment: another live reader of it is a second deployment
    on the same topics (an outside probe: a restore started on new volumes while the old cluster ran,
    and both sent decisions, two ce_ids with different bodies). The later-started one stops."""
    mine = Senders("me", 10_000)
    other = Entry("web#0", DATA, NOW, 10_500, by="them", started=9_000)  # started before this one
    assert mine.saw(other, "g") is None  # one entry could be a stopping process's last
    assert mine.saw(other._replace(at=11_400), "g") is None
    line, stop = mine.saw(other._replace(at=11_500), "g") or ("", False)
    assert stop and "two deployments read web#0 as consumer group 'g'" in line and "this one started later" in line
    assert mine.saw(other._replace(at=20_000), "g") is None  # said once
    older = Senders("me", 10_000)
    newer = Entry("web#0", DATA, NOW, 10_500, by="them", started=12_000)
    older.saw(newer, "g")
    assert older.saw(newer._replace(at=12_000), "g") == (
        "two deployments read web#0 as consumer group 'g' (the other started 1970-01-01T00:00:12+00:00): both "
        "would send decisions and commit offsets; stop one; the other started later and stops", False)
    assert Senders("me", 1).saw(other._replace(by="me"), "g") is None  # its own entries come back
    assert Senders("me", 1).saw(other._replace(by=""), "g") is None  # an older version names no sender


def test_peers_count_once_the_exchange_runs() -> None:
    a, clock = aligned()
    a.expect(["web#0", "web#1", "email#0"])
    web = a.slot("web#0")
    web.set(DATA, NOW, clock())
    assert a.limit(web)[0] is None  # no exchange: other processes' partitions are unknown here
    a.exchanging = True
    assert a.limit(web) == (UNREADABLE, RETRY_PEER_S)  # not heard of yet: wait for the peers
    assert a.peer("web#1", DATA, NOW - 3 * MIN) is True
    assert a.peer("email#0", END, None) is True
    assert a.peer("web#1", DATA, NOW - 2 * MIN) is False
    assert a.limit(web) == (NOW - MIN, RETRY_PEER_S)
    assert a.peer("web#0", END, None) is False  # an entry about our own partition is ours to know
    assert a.limit(web) == (NOW - MIN, RETRY_PEER_S)
    clock.t += 10  # the peer stopped publishing: it stops holding us back
    assert a.limit(web)[0] is None


def test_unheard_peers_stop_counting_after_the_idle_timeout() -> None:
    a, clock = aligned()
    a.expect(["web#0", "web#1"])
    a.exchanging = True
    web = a.slot("web#0")
    web.set(DATA, NOW, clock())
    clock.t += 10
    assert a.limit(web)[0] is None


def test_published_states() -> None:
    a, clock = aligned()
    web, email, store = a.slot("web#0"), a.slot("email#0"), a.slot("store#0")
    web.set(HELD, NOW, clock())
    email.set(WAITING, NOW - MIN, clock())
    store.set(END, None, clock())
    clock.t += 11
    assert sorted(a.local_views()) == [("email#0", IDLE, NOW - MIN), ("store#0", END, None), ("web#0", DATA, NOW)]


def test_progress_entries_are_for_one_group_and_this_run() -> None:
    entry = encode_entry("g1", "web#3", DATA, NOW, 5_000, "s1", 4_000)
    assert decode_entry(entry, "g1", 5_000) == ("web#3", DATA, NOW, 5_000, "s1", 4_000)
    assert decode_entry(entry, "g2", 0) is None  # another flow sharing the topic
    assert decode_entry(entry, "g1", 5_001) is None  # published before this process started
    assert decode_entry(encode_entry("g1", "web#3", END, None, 5_000), "g1", 0) == ("web#3", END, None, 5_000, "", 0)
    for other in (None, b"", b"[]", b"{", orjson.dumps({"group": "g1", "partition": "w#0", "state": "x",
                                                        "floor": 1, "at": 1}),
                  orjson.dumps({"group": "g1", "partition": "w#0", "state": DATA, "floor": "1", "at": 1})):
        assert decode_entry(other, "g1", 0) is None


# -- configuration ------------------------------------------------------------------------------------


def test_alignment_settings() -> None:
    flow = load_config(None, {}).flow
    assert flow.align is True and flow.alignment_bound_ms == MIN and flow.alignment_idle_timeout_ms == 10_000
    env = {"NEXTCLICK_FLOW__ALIGNMENT_BOUND": "0", "NEXTCLICK_FLOW__ALIGNMENT_IDLE_TIMEOUT": "2500ms",
           "NEXTCLICK_FLOW__ALIGN": "false", "NEXTCLICK_TOPICS__PROGRESS": "p"}
    config = load_config(None, env)
    assert (config.flow.align, config.flow.alignment_bound_ms, config.flow.alignment_idle_timeout_ms) == \
        (False, 0, 2500)
    assert load_config(None, {"NEXTCLICK_FLOW__ALIGNMENT_BOUND": "90000ms"}).flow.alignment_bound_ms == 90_000


@pytest.mark.parametrize(("key", "value", "error"), [
    ("ALIGNMENT_BOUND", "soon", "[flow].alignment_bound: not a duration: 'soon'"),
    ("ALIGNMENT_BOUND", "-1m", "[flow].alignment_bound: not a duration: '-1m'"),
    ("ALIGNMENT_IDLE_TIMEOUT", "0", "[flow].alignment_idle_timeout must be positive, got '0'"),
    # Meant as 10 seconds, read as 10 ms it would let every partition count as idle at once.
    ("ALIGNMENT_IDLE_TIMEOUT", "10", '[flow].alignment_idle_timeout: 10 has no unit: write "10s" for seconds'),
    ("ALIGNMENT_BOUND", "90000", '[flow].alignment_bound: 90000 has no unit'),
])
def test_bad_alignment_settings_are_refused_with_the_key(key: str, value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, {f"NEXTCLICK_FLOW__{key}": value})


# -- the benchmark harness runs ------------------------------------------------------------------------


def test_bench_alignment_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.alignment import main

    main(["--events", "300", "--customers", "30", "--rounds", "1", "--partitions", "4"])
    out = capsys.readouterr().out
    assert "ts int" in out and "ts rfc3339" in out and "us/poll" in out
