"""Hostile bytes at the source: every message on an input topic becomes an event or a dead letter.

With alignment on (the default), the Kafka source reads each message's `ts` (`alignment.event_time`)
before the parse step (`parse_message`, as flows/targeting.py's `parse_batch` calls it) sees it. An
exception in either stops the flow, on the same message at every restart, with nothing
dead-lettered and nothing committed: a 2 KB message nested 1,000 arrays deep once did exactly that.
So these tests feed arbitrary and adversarial bytes through that whole path, and through the real
flow and broker, and ask that every message ends as an `Event` (whose event time the source read as
the parser did) or as a dead letter with a reason, byte for byte; a message whose `ts` cannot be
read never waits.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nextclick.operators.events.schemas import TS_MAX, TS_MIN
from nextclick.operators.identity.guards import default_identity_rules
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.alignment import UNREADABLE, cut, event_time
from nextclick.operators.io.deadletter import (
    CLASS_HEADER,
    DEAD_LETTER_MAX_BYTES,
    MESSAGE_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    REASON_HEADER,
    REASONS,
    TOPIC_HEADER,
    TRUNCATED_HEADER,
    dead_letter_record,
)
from nextclick.operators.io.parse import JSON_MAX_DEPTH, parse_message
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import DeadLetter, Event, SourcePosition
from nextclick.operators.rules.arbitration import decision_id
from tests.flowrun import SECRET as FLOW_SECRET
from tests.flowrun import FlowSetup, read_decisions, read_profiles, run_to_end
from tests.helpers import consume_all

NOW = 1_795_428_000_000  # 2026-11-22T10:00:00Z
MIN = 60_000
HOUR = 60 * MIN
CFG = ParseConfig()
SECRET = b"hostile-source-secret"
SRC = SourcePosition("nextclick.web", 0, 42)
GUARDS = default_identity_rules()

# As confluent-kafka gives them: a header's value may be None, which parse_message's hint leaves out.
Headers = Any


def source_path(key: bytes | None, value: bytes | None, headers: Headers = None, *, now: int = NOW,
                config: ParseConfig = CFG) -> tuple[int, Event | DeadLetter]:
    """What the flow does with one input message: the aligned source reads its event time, then the
    parse step parses it (the arguments flows/targeting.py's `parse_batch` passes)."""
    at = event_time(value, now, config)
    return at, parse_message(key, value, headers, SRC, secret=SECRET, now_ms=now, config=config, guards=GUARDS)


def check(key: bytes | None, value: bytes | None, headers: Headers = None, *, now: int = NOW,
          config: ParseConfig = CFG) -> tuple[int, Event | DeadLetter]:
    """The contract of the source path on one message; returns what `source_path` gave."""
    at, item = source_path(key, value, headers, now=now, config=config)
    if isinstance(item, Event):
        # The source paced it by the event time the parser gave it; a ts ahead of the clock comes as a
        # float: it stands for no position (operators/io/alignment.py).
        assert at == item.ts and type(at) is (float if item.ts > now else int), (value, at, item.ts)
        return at, item
    assert type(at) is int
    assert isinstance(item, DeadLetter), item
    assert item.reason in REASONS and item.reason != "internal_error", (item.reason, item.message)
    assert item.message
    assert item.key == key and item.value == value  # byte for byte
    # What goes onto the dead-letter topic: the original bytes, headers naming the reason.
    dl_key, dl_value, dl_headers = dead_letter_record(item)
    assert (dl_key, dl_value) == (key, value)
    named = dict(dl_headers)
    assert named[REASON_HEADER] == item.reason.encode()
    assert named[CLASS_HEADER] == REASONS[item.reason].encode()
    assert named[MESSAGE_HEADER] == item.message.encode()
    if at == UNREADABLE:
        assert cut([at], UNREADABLE) == 1  # never waits, not even for a partition that never fetched
    return at, item


def at_stack_depth(frames: int, fn: Callable[[], Any]) -> Any:
    """`fn()` called `frames` Python frames deeper: msgspec's nesting limit moves with the stack."""
    return fn() if frames <= 0 else at_stack_depth(frames - 1, fn)


def headroom() -> int:
    """Frames left below the recursion limit, minus what the source path itself needs."""
    return sys.getrecursionlimit() - sum(1 for _ in traceback.walk_stack(None)) - 150


def envelope(ts: bytes = str(NOW - 2 * HOUR).encode(), *, extra: bytes = b"", before_ts: bytes = b"") -> bytes:
    """A valid page view, written by hand so that anything can go around or into its `ts`."""
    return (b'{"event_id":"h-1","type":"page_view","customer_id":"c1",' + before_ts + b'"ts":' + ts
            + extra + b',"page_type":"product"}')


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# -- explicit adversarial cases -----------------------------------------------------------------------

DEEP = 3 * JSON_MAX_DEPTH  # deeper than any decoder here reads
DIGITS = b"1" * 5000

# (name, value, reason, whether the ts is unreadable: None where the ts itself is fine and only the
# rest is hostile, which the source may or may not notice). Each is refused, whatever the stack depth.
HOSTILE: list[tuple[str, bytes | None, str, bool | None]] = [
    # The message of the issue: 1,000 nested arrays, 2 KB (alone it is not an object).
    ("1000 nested arrays", arrays(1000), "not_an_object", True),
    ("1000 nested arrays before ts, no type", b'{"x":' + arrays(1000) + b',"ts":' + str(NOW).encode() + b"}",
     "missing_type", False),
    ("deep arrays before ts", envelope(before_ts=b'"x":' + arrays(DEEP) + b","), "invalid_json", True),
    ("deep arrays after ts", envelope(extra=b',"x":' + arrays(DEEP)), "invalid_json", True),
    ("deep objects before ts", envelope(before_ts=b'"x":' + objects(DEEP) + b","), "invalid_json", True),
    ("deep objects alone", objects(DEEP), "invalid_json", True),
    ("deep unclosed arrays", b'{"x":' + b"[" * DEEP, "invalid_json", True),
    ("ts nested in arrays", envelope(arrays(1000)), "invalid_ts", True),
    ("ts nested in objects", envelope(objects(1000)), "invalid_ts", True),
    ("ts nested too deep", envelope(arrays(DEEP)), "invalid_json", True),
    ("ts an object", envelope(b'{"$date":' + str(NOW).encode() + b"}"), "invalid_ts", True),
    ("ts of 5000 digits", envelope(DIGITS), "invalid_json", True),
    ("ts of -5000 digits", envelope(b"-" + DIGITS), "invalid_json", True),
    ("ts of 5000 digits and a fraction", envelope(DIGITS + b".5"), "invalid_json", True),
    ("ts of 5000 digit exponent", envelope(b"1e" + DIGITS), "invalid_json", True),
    ("ts a string of 5000 digits", envelope(b'"' + DIGITS + b'"'), "invalid_ts", True),
    ("RFC 3339 ts with 5000 fraction digits", envelope(b'"2026-11-22T08:00:00.' + DIGITS + b'Z"'), "invalid_ts",
     True),
    ("RFC 3339 ts in year 1", envelope(b'"0001-01-01T00:00:00Z"'), "ts_too_old", True),
    ("ts of 30 digits", envelope(b"1" * 30), "ts_in_future", True),
    ("ts 1e308", envelope(b"1e308"), "ts_in_future", True),
    ("ts 1e400", envelope(b"1e400"), "invalid_json", True),
    ("ts -1e308", envelope(b"-1e308"), "ts_too_old", True),
    ("ts NaN", envelope(b"NaN"), "invalid_json", True),
    ("ts Infinity", envelope(b"Infinity"), "invalid_json", True),
    ("ts -Infinity", envelope(b"-Infinity"), "invalid_json", True),
    ("ts true", envelope(b"true"), "invalid_ts", True),
    ("huge number elsewhere", envelope(extra=b',"n":' + DIGITS), "invalid_json", None),
    ("NaN elsewhere", envelope(extra=b',"n":NaN'), "invalid_json", None),
    ("invalid UTF-8 in a string", envelope(extra=b',"note":"caf\xe9"'), "invalid_utf8", None),
    ("invalid UTF-8 in ts", envelope(b'"2026-11-22T08:00:00\xffZ"'), "invalid_utf8", True),
    ("invalid UTF-8 in a key", envelope(extra=b',"\xc3\x28":1'), "invalid_utf8", None),
    ("UTF-8 encoded surrogate", envelope(extra=b',"note":"\xed\xa0\x80"'), "invalid_utf8", None),
    ("overlong UTF-8", envelope(extra=b',"note":"\xc0\xaf"'), "invalid_utf8", None),
    ("lone surrogate escape", envelope(extra=b',"note":"\\ud800"'), "invalid_json", None),
    ("UTF-16", envelope().decode().encode("utf-16"), "invalid_utf8", True),
    ("NUL bytes", b"\x00" * 64, "invalid_json", True),
    ("NUL byte after the object", envelope() + b"\x00", "invalid_json", None),
    ("NUL byte in a string", envelope(extra=b',"note":"a\x00b"'), "invalid_json", None),
    ("NUL byte in ts", envelope(b'"2026-11-22T08:00:00\x00Z"'), "invalid_json", True),
    ("empty", b"", "empty_value", True),
    ("tombstone", None, "empty_value", True),
    ("whitespace", b" \n\t ", "invalid_json", True),
    ("byte order mark", b"\xef\xbb\xbf" + envelope(), "invalid_json", True),
    ("null", b"null", "not_an_object", True),
    ("a number", b"1795420800000", "not_an_object", True),
    ("a string", b'"x"', "not_an_object", True),
    ("an array of events", b"[" + envelope() + b"]", "not_an_object", True),
    ("ts twice", envelope(extra=b',"ts":' + str(NOW).encode()), "invalid_json", None),
    ("too large and deep", b"[" * (CFG.max_message_bytes + 1), "too_large", True),
]


def test_the_hostile_cases_are_distinct_and_cover_the_kinds() -> None:
    assert len({name for name, *_ in HOSTILE}) == len(HOSTILE)
    assert len({value for _, value, *_ in HOSTILE}) == len(HOSTILE)
    reasons = {reason for _, _, reason, _ in HOSTILE}
    assert reasons >= {"invalid_json", "invalid_utf8", "invalid_ts", "not_an_object", "empty_value",
                       "missing_type", "ts_in_future", "ts_too_old", "too_large"}


@pytest.mark.parametrize(("name", "value", "reason", "unreadable"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_message_is_dead_lettered_with_its_reason_at_any_stack_depth(
        name: str, value: bytes | None, reason: str, unreadable: bool | None) -> None:
    room = headroom()
    assert room > 300, "the test itself runs too deep to say anything"
    results = {frames: at_stack_depth(frames, lambda: check(b"c1", value, [("origin", b"x"), ("n", None)]))
               for frames in (0, room // 2, room)}
    at, item = results[0]
    assert isinstance(item, DeadLetter) and item.reason == reason, (name, item)
    if unreadable:
        assert at == UNREADABLE, name
    elif unreadable is False:
        assert at == NOW, name  # read as the parser reads the ts
    # Stable: the same verdict and event time however deep the caller's stack is.
    for got_at, got in results.values():
        assert got_at == at and isinstance(got, DeadLetter)
        assert (got.reason, got.message) == (item.reason, item.message)


def test_depth_and_number_overflow_are_named_in_the_message() -> None:
    _, deep = check(b"c1", envelope(extra=b',"x":' + arrays(DEEP)))
    _, digits = check(b"c1", envelope(DIGITS))
    assert isinstance(deep, DeadLetter) and isinstance(digits, DeadLetter)
    assert deep.message == (f"message value is not valid JSON: nested deeper than {JSON_MAX_DEPTH} levels "
                            "of arrays and objects")
    assert digits.message == "message value is not valid JSON: a number too large for a double"
    _, plain = check(b"c1", b'{"ts": ')
    assert isinstance(plain, DeadLetter) and plain.message == "message value is not valid JSON"


@pytest.mark.parametrize("depth", [1, 100, 500, 900, 1000, JSON_MAX_DEPTH - 1])
@pytest.mark.parametrize("nest", [arrays, objects], ids=["arrays", "objects"])
def test_a_valid_event_with_a_deep_extra_field_is_an_event_read_at_its_ts(
        depth: int, nest: Callable[[int], bytes]) -> None:
    """Extra fields are accepted and dropped, up to the parser's decoder's depth; the source must
    pace such an event by its ts even where msgspec gives up on it (near the recursion limit)."""
    ts = NOW - 2 * HOUR
    value = envelope(str(ts).encode(), before_ts=b'"x":' + nest(depth) + b",")
    room = headroom()
    for frames in (0, room // 2, room):
        at, item = at_stack_depth(frames, lambda: check(b"c1", value))
        assert isinstance(item, Event) and item.ts == ts and at == ts, (frames, item)


NO_AGE_LIMIT = ParseConfig(max_age_ms=0)  # as for a backfill


@pytest.mark.parametrize("ts", [b"-9223372036854775808", b"-99999999999999999999", b"-1e308", b"-1e300",
                                str(TS_MIN - 1).encode(), b'"0001-01-01T00:00:00+00:01"'])
def test_without_an_age_limit_a_ts_before_year_1_is_refused(ts: bytes) -> None:
    """Nothing else refuses it then, and such a ts stopped the flow further on (-2**63: `year ... is
    out of range`; below: `can't serialize ints < -2**63`)."""
    at, item = check(b"c1", envelope(ts), config=NO_AGE_LIMIT)
    assert isinstance(item, DeadLetter) and item.reason == "invalid_ts" and at == UNREADABLE, item


def test_without_an_age_limit_the_first_and_last_millisecond_are_events() -> None:
    at, item = check(b"c1", envelope(str(TS_MIN).encode()), config=NO_AGE_LIMIT)
    assert isinstance(item, Event) and item.ts == at == TS_MIN
    _, item = check(b"c1", envelope(str(TS_MAX).encode()), config=ParseConfig(max_future_skew_ms=TS_MAX))
    assert isinstance(item, Event) and item.ts == TS_MAX


def test_an_escaped_nul_in_a_string_is_legal_json() -> None:
    at, item = check(b"c1", envelope(extra=b',"note":"a\\u0000b"'))
    assert isinstance(item, Event) and at == NOW - 2 * HOUR


@pytest.mark.parametrize("key", [None, b"", b" ", b"\x00", b"\xff\xfe", b"\xed\xa0\x80", b"c1\x00c2", b"k" * 10_000])
def test_hostile_keys_never_raise(key: bytes | None) -> None:
    for value in (envelope().replace(b'"customer_id":"c1",', b""), envelope(), arrays(DEEP)):
        check(key, value)


# -- properties -------------------------------------------------------------------------------------

JSON_TOKENS = st.sampled_from([
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b'"ts"', b'"type"', b'"page_view"', b'"event_id"',
    b'"customer_id"', b'"e"', b"0", b"-", b"1795420800000", b"1e400", b"1" * 400, b"NaN", b"Infinity",
    b"null", b"true", b" ", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\u0000", b"\\ud800",
    b'"2026-11-22T08:00:00Z"', b"[" * 1100, b"]" * 1100, b'{"a":' * 1100, b"}" * 1100,
])


@st.composite
def hostile_values(draw: st.DrawFn) -> bytes:
    """A valid event, then one or two hostile edits: deep nesting somewhere, a hostile ts, a hostile
    number, invalid UTF-8, NUL bytes, another JSON value instead of the object, truncation."""
    ts = draw(st.integers(min_value=NOW - 40 * 24 * HOUR, max_value=NOW + HOUR))
    nest = draw(st.sampled_from([arrays, objects]))
    # Up to well past the recursion limit, which Hypothesis raises (to about 2,000) while it runs a test.
    depth = draw(st.integers(min_value=0, max_value=6000)
                 | st.sampled_from([JSON_MAX_DEPTH - 1, JSON_MAX_DEPTH, JSON_MAX_DEPTH + 1, 2500, 6000]))
    digits = draw(st.integers(min_value=1, max_value=6000))
    hostile_ts = draw(st.sampled_from([
        str(ts).encode(), nest(depth), b"[" + str(ts).encode() + b"]", b'{"ms":' + str(ts).encode() + b"}",
        b"9" * digits, b"-" + b"9" * digits, b"0." + b"9" * digits, b"1e" + str(digits).encode(),
        b"NaN", b"Infinity", b"-Infinity", b'"' + b"9" * digits + b'"',
        b'"2026-11-22T08:00:00.' + b"9" * digits + b'Z"',
        b"null", b"true", b'""', str(ts / 1000).encode(),
    ]))
    where = draw(st.sampled_from(["before", "after", "none"]))
    filler = b'"x":' + nest(depth) + b","
    value = envelope(hostile_ts, before_ts=filler if where == "before" else b"",
                     extra=b"," + filler[:-1] if where == "after" else b"")
    edit = draw(st.sampled_from(["none", "inject", "truncate", "wrap", "replace"]))
    if edit == "inject":
        at = draw(st.integers(min_value=0, max_value=len(value)))
        junk = draw(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\x00" * 8]))
        value = value[:at] + junk + value[at:]
    elif edit == "truncate":
        value = value[:draw(st.integers(min_value=0, max_value=len(value)))]
    elif edit == "wrap":
        value = draw(st.sampled_from([b"[", b'{"e":', b'"'])) + value
    elif edit == "replace":
        value = b"".join(draw(st.lists(JSON_TOKENS, max_size=12)))
    return value


KEYS = st.none() | st.binary(max_size=24) | st.sampled_from([b"c1", b" ", b"\x00", b"\xff", b"c1\x00"])
HEADERS = st.none() | st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3)
CONFIGS = st.sampled_from([CFG, ParseConfig(max_age_ms=0), ParseConfig(max_message_bytes=3000)])
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(key=KEYS, value=st.none() | st.binary(max_size=3000), headers=HEADERS, config=CONFIGS)
@example(key=b"c1", value=b'{"x":' + arrays(2000) + b',"ts":1}', headers=None, config=CFG)
def test_arbitrary_bytes_through_the_source_path(key: bytes | None, value: bytes | None, headers: Headers,
                                                 config: ParseConfig) -> None:
    check(key, value, headers, config=config)


@PROPERTY
@given(key=KEYS, value=hostile_values(), headers=HEADERS, config=CONFIGS)
def test_adversarial_bytes_through_the_source_path(key: bytes | None, value: bytes, headers: Headers,
                                                   config: ParseConfig) -> None:
    check(key, value, headers, config=config)


@PROPERTY
@given(value=hostile_values(), frames=st.integers(min_value=0, max_value=600))
def test_the_verdict_does_not_depend_on_the_stack(value: bytes, frames: int) -> None:
    at, item = check(b"c1", value)
    deeper_at, deeper = at_stack_depth(min(frames, headroom()), lambda: check(b"c1", value))
    assert deeper_at == at
    assert type(deeper) is type(item)
    if isinstance(item, DeadLetter):
        assert isinstance(deeper, DeadLetter) and (deeper.reason, deeper.message) == (item.reason, item.message)


# -- end to end: the real flow, the real broker, alignment on ----------------------------------------

CUSTOMERS = 6


def _backlog(now: int) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], dict[str, set[str]]]:
    """Valid events two hours old: per customer a consent and a purchase on one topic, an unresolved
    call on the other. (messages of topic a, of topic b, expected decision ids by customer)."""
    start = now - 2 * HOUR
    a: list[tuple[bytes, bytes]] = []
    b: list[tuple[bytes, bytes]] = []
    expected: dict[str, set[str]] = {}
    for c in range(CUSTOMERS):
        who = f"cust-{c}"
        t = start + c * MIN
        a.append((who.encode(), orjson.dumps({"event_id": f"{who}-consent", "type": "consent", "ts": t,
                                              "customer_id": who, "channel": "email", "granted": True})))
        a.append((who.encode(), orjson.dumps({"event_id": f"{who}-buy", "type": "purchase", "ts": t + 2 * MIN,
                                              "customer_id": who, "order_id": f"o-{c}", "amount": 50.0,
                                              "currency": "EUR"})))
        b.append((who.encode(), orjson.dumps({"event_id": f"{who}-call", "type": "call_center_contact",
                                              "ts": t + 3 * MIN, "customer_id": who, "topic": "billing",
                                              "outcome": "unresolved"})))
        key = pseudonymize("customer", who, FLOW_SECRET.encode())
        expected[key] = {decision_id(key, "post_purchase_cross_sell", f"{who}-buy", "purchase"),
                         decision_id(key, "call_center_follow_up", f"{who}-call", "call_center_contact")}
    return a, b, expected


E2E_HOSTILE: list[tuple[str, bytes, str]] = [
    ("1000 nested arrays in an object", b'{"x":' + arrays(1000) + b',"ts":' + str(NOW).encode() + b"}",
     "missing_type"),
    ("deep arrays", envelope(extra=b',"x":' + arrays(2000)), "invalid_json"),
    ("deep objects", envelope(before_ts=b'"x":' + objects(2000) + b","), "invalid_json"),
    ("nested ts", envelope(arrays(1000)), "invalid_ts"),
    ("5000-digit ts", envelope(DIGITS), "invalid_json"),
    ("invalid UTF-8", envelope(extra=b',"note":"caf\xe9"'), "invalid_utf8"),
    ("NUL bytes", b"\x00" * 32 + envelope(), "invalid_json"),
    ("NaN ts", envelope(b"NaN"), "invalid_json"),
]
# With no age limit (a backfill), also a ts before year 1, which nothing else refuses then.
E2E_NO_AGE_LIMIT = [
    ("ts -2**63", envelope(b"-9223372036854775808"), "invalid_ts"),
    ("ts below int64", envelope(b"-99999999999999999999"), "invalid_ts"),
]


@pytest.mark.broker
@pytest.mark.parametrize(("env", "hostile"), [({}, E2E_HOSTILE),
                                              ({"NEXTCLICK_PARSE__MAX_AGE_MS": "0"}, E2E_HOSTILE + E2E_NO_AGE_LIMIT)],
                         ids=["defaults", "no age limit"])
def test_hostile_messages_on_aligned_input_topics_are_dead_lettered_and_the_run_ends(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path, env: dict[str, str],
        hostile: list[tuple[str, bytes, str]]) -> None:
    now = int(time.time() * 1000)
    a, b, expected = _backlog(now)
    topics = (f"{topic_prefix}.a", f"{topic_prefix}.b")
    ensure_topics(kafka, {topics[0]: 1, topics[1]: 1})
    # Hostile messages between the valid events, on both topics, each unique.
    stream: dict[str, list[tuple[bytes, bytes]]] = {topics[0]: list(a), topics[1]: list(b)}
    sent: dict[bytes, tuple[str, str]] = {}
    for n, (_, value, reason) in enumerate(hostile):
        topic = topics[n % 2]
        at = 1 + (n // 2) * 2
        stream[topic].insert(min(at, len(stream[topic])), (b"hostile-key", value))
        sent[value] = (topic, reason)
    assert len(sent) == len(hostile)
    producer = Producer(kafka)
    for topic, messages in stream.items():
        for key, value in messages:
            producer.produce(topic, value, key, headers=[("origin", b"hostile-source")])
    assert producer.flush(30) == 0

    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=topics,
                             extra_env={"NEXTCLICK_FLOW__ALIGN": "true", **env})
    ensure_topics(kafka, {f"{setup.control}.progress": 1})
    run_to_end(setup, timeout_s=90, log=tmp_path / "flow.log")  # asserts exit 0

    # Each hostile message: dead-lettered exactly once, byte for byte, with headers naming the reason.
    dead = consume_all(kafka, [setup.dead_letter])
    assert sorted(d.value() for d in dead) == sorted(sent), [d.value()[:40] for d in dead]
    offsets = {topic: {value: i for i, (_, value) in enumerate(msgs)} for topic, msgs in stream.items()}
    for record in dead:
        topic, reason = sent[record.value()]
        assert record.key() == b"hostile-key"
        headers = record.headers()
        named = dict(headers)
        assert headers[0] == ("origin", b"hostile-source")
        assert named[TOPIC_HEADER] == topic.encode()
        assert named[PARTITION_HEADER] == b"0"
        assert named[OFFSET_HEADER] == str(offsets[topic][record.value()]).encode()
        assert named[CLASS_HEADER] == REASONS[reason].encode()
        assert named[REASON_HEADER] == reason.encode()
        assert named[MESSAGE_HEADER]

    # The valid events around them were applied: every customer's profile and decisions are there.
    profiles = read_profiles(setup.state_dir, setup.shards)
    assert set(expected) <= set(profiles)
    decided = {d.ce_id for d in read_decisions(kafka, setup.decisions)}
    for customer, ids in expected.items():
        assert ids <= decided, customer


@pytest.mark.broker
def test_a_message_of_a_mebibyte_is_dead_lettered_cut_and_the_run_goes_on(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """A producer with default settings may write a message of about 1 MiB; the dead-letter copy of it
    (plus its headers) was over the flow's own producer limit, which stopped the flow at that message
    on every restart. The copy is cut to DEAD_LETTER_MAX_BYTES and says what was cut."""
    a, b, expected = _backlog(int(time.time() * 1000))
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 1})
    big_value = envelope(extra=b',"x":"' + b"A" * 1_040_000 + b'"')
    big_key = b"k" * 1_000_000
    messages = [*a[:2], (b"big", big_value), *a[2:4], (big_key, b"{"), *a[4:], *b]
    producer = Producer({**kafka, "message.max.bytes": 2_000_000})
    for key, value in messages:
        producer.produce(topic, value, key, headers=[("origin", b"big-source")])
    assert producer.flush(30) == 0
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic])
    run_to_end(setup, timeout_s=90, log=tmp_path / "flow.log")  # asserts exit 0

    dead = {d.offset(): d for d in consume_all(kafka, [setup.dead_letter])}
    assert len(dead) == 2
    cut_value, cut_key = sorted(dead.values(), key=lambda d: int(dict(d.headers())[OFFSET_HEADER]))
    for record, reason, offset in ((cut_value, "too_large", 2), (cut_key, "invalid_json", 5)):
        named = dict(record.headers())
        assert (named[REASON_HEADER], named[OFFSET_HEADER], named["origin"]) == (
            reason.encode(), str(offset).encode(), b"big-source")
        size = len(record.key() or b"") + len(record.value() or b"") + sum(
            len(n) + len(v or b"") for n, v in record.headers())
        assert size <= DEAD_LETTER_MAX_BYTES
    assert dict(cut_value.headers())[TRUNCATED_HEADER] == f"value {len(big_value)} -> {len(cut_value.value())}".encode()
    assert big_value.startswith(cut_value.value()) and cut_value.key() == b"big"
    assert dict(cut_key.headers())[TRUNCATED_HEADER] == b"key 1000000 -> 16384"
    assert cut_key.value() == b"{" and big_key.startswith(cut_key.key())

    decided = {d.ce_id for d in read_decisions(kafka, setup.decisions)}
    for customer, ids in expected.items():
        assert ids <= decided, customer
