"""The control topic: parse_control's refusals and identifier forms, and an online erase end to end."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import AccessType, Options, Rdict

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config, ParseConfig
from nextclick.operators.io.control import parse_control, savepoint_not_wanted
from nextclick.operators.io.deadletter import REASONS
from nextclick.operators.io.parse import parse_message
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import DeadLetter, EraseRequest, SavepointRequest, SourcePosition
from nextclick.operators.state.keys import shard_of, shard_path
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import FlowThread, consume_all
from tests.waits import store_seq

SECRET = b"control-secret"
SRC = SourcePosition("nextclick.control", 0, 9)
NOW = 1_795_428_000_000


def control(body: object | bytes | None, key: bytes | None = b"k") -> EraseRequest | DeadLetter:
    value = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    return parse_control(key, value, [("h", b"v")], SRC, secret=SECRET)


@pytest.mark.parametrize(("value", "reason"), [
    (None, "empty_value"),
    (b"", "empty_value"),
    (b'{"command": "erase",', "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (orjson.dumps(["erase"]), "not_an_object"),
    (orjson.dumps("erase"), "not_an_object"),
    (orjson.dumps({"request_id": "r1", "customer_id": "c"}), "unknown_command"),
    (orjson.dumps({"command": "forget", "request_id": "r1", "customer_id": "c"}), "unknown_command"),
    (orjson.dumps({"command": "ERASE", "request_id": "r1", "customer_id": "c"}), "unknown_command"),
    (orjson.dumps({"command": "erase", "customer_id": "c"}), "schema_violation"),
    (orjson.dumps({"command": "erase", "request_id": "", "customer_id": "c"}), "schema_violation"),
    (orjson.dumps({"command": "erase", "request_id": 7, "customer_id": "c"}), "schema_violation"),
    (orjson.dumps({"command": "erase", "request_id": "r1"}), "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_id": ""}), "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "ABC"}), "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "A" * 32}), "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "id_type": "passport", "id": "x"}),
     "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "id_type": "email", "id": ""}), "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "id": "someone@example.com"}), "missing_identifier"),
    # An outside probe: an id_type that is a list or an object stopped the flow (unhashable), and every
    # restart that read it again.
    (orjson.dumps({"command": "erase", "request_id": "r1", "id_type": ["email"], "id": "x@example.com"}),
     "missing_identifier"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "id_type": {"t": "email"}, "id": "x@example.com"}),
     "missing_identifier"),
    # "$" matches before a final newline: a key or name with one must not pass as valid.
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "a" * 32 + "\n"}), "missing_identifier"),
    (orjson.dumps({"command": "savepoint", "request_id": "r1", "name": "sp1\n"}), "schema_violation"),
    (orjson.dumps({"command": "savepoint", "request_id": "r1", "name": "sp1", "expires_at": "soon"}),
     "schema_violation"),
    (orjson.dumps({"command": "savepoint", "request_id": "r1", "name": "sp1", "expires_at": 1.5e12}),
     "schema_violation"),
    (orjson.dumps({"command": "savepoint", "request_id": "r1", "name": "sp1", "expires_at": True}),
     "schema_violation"),
    # A follow-up (what the identity stage records of an erasure) is by customer_key, with requested_at.
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "a" * 32, "follow_up": True}),
     "schema_violation"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_id": "c", "requested_at": 5, "follow_up": True}),
     "schema_violation"),
    (orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "a" * 32, "requested_at": 5,
                   "follow_up": "yes"}), "schema_violation"),
    # Which one would win is the decoder's choice, and an erasure must not hinge on it.
    (b'{"command": "erase", "request_id": "r1", "customer_id": "victim", "customer_id": "bystander"}',
     "invalid_json"),
    (b'{"command": "erase", "request_id": "r1", "id_type": "email", "id": "a", "id": "someone@example.com"}',
     "invalid_json"),
])
def test_every_refusal(value: bytes | None, reason: str) -> None:
    result = control(value)
    assert isinstance(result, DeadLetter)
    assert result.reason == reason and reason in REASONS
    assert (result.key, result.value, result.headers, result.source) == (b"k", value, (("h", b"v"),), SRC)
    for planted in (b"someone@example.com", b"passport"):
        assert planted not in result.message.encode()


def test_a_follow_up_erasure_is_read_as_one() -> None:
    result = control(orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "a" * 32,
                                   "requested_at": 5, "follow_up": True}))
    assert isinstance(result, EraseRequest) and result.follow_up and result.requested_at == 5
    plain = control(orjson.dumps({"command": "erase", "request_id": "r1", "customer_key": "a" * 32}))
    assert isinstance(plain, EraseRequest) and not plain.follow_up


def test_a_duplicated_key_is_named_only_if_it_is_a_control_field() -> None:
    named = control(b'{"command": "erase", "request_id": "r1", "customer_id": "a", "customer_id": "b"}')
    assert isinstance(named, DeadLetter)
    assert named.message == "control message has 'customer_id' more than once (a duplicated key is ambiguous JSON)"
    unnamed = control(b'{"command": "erase", "request_id": "r1", "customer_id": "a", "x@y.z": 1, "x@y.z": 2}')
    assert isinstance(unnamed, DeadLetter)
    assert unnamed.message == "control message has a key more than once (a duplicated key is ambiguous JSON)"


def test_a_savepoint_command_is_carried_out_only_while_wanted(tmp_path: Path) -> None:
    def request(**extra: object) -> SavepointRequest:
        item = parse_control(b"k", orjson.dumps({"command": "savepoint", "request_id": "r1", "name": "sp1", **extra}),
                             None, SRC, secret=SECRET, savepoint_dir=tmp_path)
        assert isinstance(item, SavepointRequest)
        return item

    assert savepoint_not_wanted(request(), NOW) is None  # a hand-written command with no expiry
    assert savepoint_not_wanted(request(expires_at=NOW), NOW) is None
    late = savepoint_not_wanted(request(expires_at=NOW - 90_000), NOW)
    assert late is not None and "stopped waiting 90s ago" in late
    # Read again after a restore of an older savepoint: it would copy parts into a finished savepoint.
    (tmp_path / "sp1").mkdir()
    (tmp_path / "sp1" / "savepoint.json").write_bytes(b"{}")
    done = savepoint_not_wanted(request(expires_at=NOW + 60_000), NOW)
    assert done is not None and "already holds a complete savepoint" in done


def test_an_erase_with_a_bad_key_or_id_type_says_which_and_never_echoes_it() -> None:
    bad_key = control({"command": "erase", "request_id": "r1", "customer_key": "NOTHEX-someone@example.com"})
    assert isinstance(bad_key, DeadLetter) and "'customer_key' must be 32 lowercase hexadecimal" in bad_key.message
    bad_type = control({"command": "erase", "request_id": "r1", "id_type": "fax", "id": "someone@example.com"})
    assert isinstance(bad_type, DeadLetter) and "'id_type' must be one of [" in bad_type.message
    assert "someone@example.com" not in bad_key.message + bad_type.message and "fax" not in bad_type.message


_SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=9)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(command=st.sampled_from(["erase", "savepoint"]) | _JSON,
       fields=st.dictionaries(st.sampled_from(["request_id", "customer_key", "customer_id", "id_type", "id", "name",
                                               "expires_at", "requested_at"]), _JSON))
def test_any_json_in_a_command_is_a_command_or_a_dead_letter_never_a_stop(command: object,
                                                                          fields: dict[str, object]) -> None:
    """Whoever can write the control topic must not stop the flow: every restart would read it again."""
    result = parse_control(b"k", orjson.dumps({"command": command, **fields}), None, SRC, secret=SECRET,
                           now_ms=NOW)
    assert result is None or isinstance(result, (EraseRequest, SavepointRequest, DeadLetter))


def test_a_bug_in_reading_a_command_dead_letters_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr("nextclick.operators.io.control.pseudonymize", broken)
    result = control({"command": "erase", "request_id": "r1", "customer_id": "C-1"})
    assert isinstance(result, DeadLetter) and result.reason == "internal_error"
    assert result.message == "internal error while reading the control message (RuntimeError)"


def test_control_reasons_cover_the_control_only_reason() -> None:
    assert REASONS["unknown_command"] == "nextclick.control.UnknownCommand"


def _event_customer(payload: dict[str, object], key: bytes | None) -> str:
    body = {"event_id": "e1", "type": "page_view", "ts": NOW, **payload}
    event = parse_message(key, orjson.dumps(body), None, SRC, secret=SECRET, now_ms=NOW, config=ParseConfig())
    assert not isinstance(event, DeadLetter), event
    return event.customer


def test_an_erasure_dated_ahead_of_the_clock_is_refused_as_an_events_ts_would_be() -> None:
    body = {"command": "erase", "request_id": "r1", "customer_id": "CUST-9"}
    value = orjson.dumps({**body, "requested_at": NOW * 1000})  # microseconds
    refused = parse_control(b"k", value, [], SRC, secret=SECRET, now_ms=NOW, max_future_skew_ms=300_000)
    assert isinstance(refused, DeadLetter) and refused.reason == "ts_in_future"
    assert "micro" in refused.message and "CUST-9" not in refused.message
    assert refused.measured == (("nextclick.errors.ts_skew_ms", str(NOW * 1000 - NOW)),)
    for ahead in (0, 300_000, -86_400_000):  # within the limit, or in the past: carried out as dated
        value = orjson.dumps({**body, "requested_at": NOW + ahead})
        request = parse_control(b"k", value, [], SRC, secret=SECRET, now_ms=NOW, max_future_skew_ms=300_000)
        assert isinstance(request, EraseRequest) and request.requested_at == NOW + ahead


def test_the_three_identifier_forms_hash_like_events() -> None:
    by_id = control({"command": "erase", "request_id": "r1", "customer_id": "CUST-9"})
    assert isinstance(by_id, EraseRequest) and by_id.request_id == "r1" and by_id.source == SRC
    assert by_id.customer == _event_customer({"customer_id": "CUST-9"}, b"cookie-1")
    key = pseudonymize("customer", "CUST-9", SECRET)
    by_key = control({"command": "erase", "request_id": "r2", "customer_key": key})
    assert isinstance(by_key, EraseRequest) and by_key.customer == key
    by_email = control({"command": "erase", "request_id": "r3", "id_type": "email", "id": "a@example.com"})
    assert isinstance(by_email, EraseRequest)
    assert by_email.customer == _event_customer({"id_type": "email"}, b"a@example.com")
    by_cookie = control({"command": "erase", "request_id": "r4", "id_type": "cookie", "id": "ck-1"})
    assert isinstance(by_cookie, EraseRequest)
    assert by_cookie.customer == _event_customer({}, b"ck-1")  # web's default id type is cookie
    # The identifier is never echoed in the request.
    assert "CUST-9" not in repr(by_id) and "a@example.com" not in repr(by_email)


@pytest.mark.parametrize("names", [
    {"customer_id": "C-NOBODY", "id_type": "email", "id": "erin3@example.net"},
    {"customer_key": "a" * 32, "customer_id": "C-1"},
    {"customer_key": "ZZ" * 16, "customer_id": "C-1"},  # a bad key did not fall back to the id
    {"customer_key": "a" * 32, "id": "erin3@example.net"},
])
def test_an_erase_naming_two_identifiers_is_refused_not_half_done(names: dict[str, str]) -> None:
    """An outside probe: a customer_id beside the id_type/id of the person to erase erased only the
    customer id (nobody's), kept her profile, and counted an erasure: the request read as done."""
    refused = control({"command": "erase", "request_id": "r1", **names})
    assert isinstance(refused, DeadLetter) and refused.reason == "schema_violation"
    assert "names one identifier" in refused.message and "send one command for each" in refused.message
    assert "erin3" not in refused.message and "C-" not in refused.message


@pytest.mark.parametrize("names", [{"customer_id": "   "}, {"customer_id": "\u200b"}, {"customer_id": 42},
                                   {"id_type": "email", "id": "\u2060 "}, {"id_type": "email"}])
def test_an_erase_of_an_identifier_no_event_can_have_is_refused(names: dict[str, object]) -> None:
    refused = control({"command": "erase", "request_id": "r1", **names})
    assert isinstance(refused, DeadLetter) and refused.reason == "missing_identifier", refused


# --- end to end through the broker --------------------------------------------------------------

CHANNELS = ("web", "email", "mobile", "store", "call_center")
MIN = 60_000


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, flow: FlowThread) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert not flow.failures, flow.failures
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.broker
def test_online_erase_removes_one_customer(kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    topics = {ch: f"{topic_prefix}.{ch}" for ch in CHANNELS}
    decisions, dlq, ctl = f"{topic_prefix}.decisions", f"{topic_prefix}.dead_letter", f"{topic_prefix}.control"
    ensure_topics(kafka, {**{t: 1 for t in topics.values()}, decisions: 1, dlq: 1, ctl: 1})
    shards = 2
    state = tmp_path / "state"
    config = Config().replace(
        kafka=kafka,
        topics={"inputs": tuple(topics.values()), "decisions": decisions, "dead_letter": dlq, "control": ctl},
        state={"dir": str(state), "shards": shards},
        privacy={"secret": SECRET.decode()},
    )
    gone, kept = "erase-me-0001", "keep-me-0002"
    gone_key, kept_key = (pseudonymize("customer", c, SECRET) for c in (gone, kept))
    producer = Producer(kafka)
    for i, who in enumerate([gone, kept] * 5):
        producer.produce(topics["web"], orjson.dumps({
            "event_id": f"{who}-{i}", "type": "page_view", "ts": NOW - 10 * MIN + i * 1000, "customer_id": who,
            "page_type": "product", "category": "shoes"}), who.encode())
    assert producer.flush(10) == 0

    clock = ManualClock(NOW)
    gone_shard = shard_path(state, shard_of(gone_key, shards))
    with FlowThread(config, clock, tmp_path / "recovery") as flow:
        _wait(lambda: all((read_profile(state, shards, k) or {}).get("facts", {}).get("version") == 5
                          for k in (gone_key, kept_key)), 30, "every event applied and committed", flow)
        before = store_seq(gone_shard)
        # A careless sender's microseconds: taken as an erasure dated 55,000 years ahead it would erase
        # `kept` and drop every later event of theirs as from before it. Refused, as an event's `ts` is.
        producer.produce(ctl, orjson.dumps({"command": "erase", "request_id": "r0", "customer_id": kept,
                                            "requested_at": NOW * 1000}), b"r0")
        # A hostile or broken sender's id_type (an outside probe: it stopped the flow, and every restart).
        producer.produce(ctl, orjson.dumps({"command": "erase", "request_id": "rx", "id_type": ["email"],
                                            "id": "x@example.com"}), b"rx")
        producer.produce(ctl, orjson.dumps({"command": "erase", "request_id": "r1", "customer_id": gone}),
                         b"r1")
        assert producer.flush(10) == 0
        _wait(lambda: read_profile(state, shards, gone_key) is None, 30, "the erasure", flow)
        assert read_profile(state, shards, kept_key) is not None
        # The checkpoint of the erasure's epoch (and its purge) comes after the erasure itself.
        _wait(lambda: store_seq(gone_shard) > before, 30, "the shard's checkpoint after the erasure", flow)
    assert read_profile(state, shards, gone_key) is None
    kept_profile = read_profile(state, shards, kept_key)
    assert kept_profile is not None and kept_profile["customer"] == kept_key
    refused, unread = consume_all(kafka, [dlq])
    assert dict(refused.headers())["nextclick.errors.reason"] == b"ts_in_future"
    assert dict(unread.headers())["nextclick.errors.reason"] == b"missing_identifier"

    # Logically gone everywhere in the shard's RocksDB: live data, timers and undo records (decoded,
    # since SST data blocks are compressed and a raw byte scan would not see a value in them).
    shard_dir = shard_path(state, shard_of(gone_key, shards))
    db = Rdict(str(shard_dir), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        entries = list(db.items())
    finally:
        db.close()
    assert any(kept_key.encode() in k + v for k, v in entries) or \
        shard_of(kept_key, shards) != shard_of(gone_key, shards)
    assert [k for k, v in entries if gone_key.encode() in k + v] == []

    # Physically: after the final checkpoint, no file of the shard holds the erased customer's key.
    # Observed: it does, in an SST flushed before the erasure and in the MANIFEST (which records each
    # SST's smallest and largest key) until RocksDB compacts that SST away. See the report.
    with_key = sorted(p.name for p in shard_dir.iterdir() if p.is_file() and gone_key.encode() in p.read_bytes())
    assert with_key == [], f"{shard_dir}: the erased customer's key is still in the bytes of {with_key}"


@pytest.mark.broker
def test_erasing_one_identifier_erases_the_linked_profile_and_every_link(kafka: dict[str, str], topic_prefix: str,
                                                                         tmp_path: Path) -> None:
    """A visitor browses anonymously, signs in (cookie, customer id, email), clicks an email: one profile.
    Erasing the cookie alone takes all of it: the linked profile, every identifier in the identity graph,
    and the profiles moved out of their shards at the link, from live state, undo records and files."""
    from nextclick.operators.identity.graph import resolve_offline
    from nextclick.operators.state.layout import families, family_of_anchor

    web, email_topic = f"{topic_prefix}.web", f"{topic_prefix}.email"
    decisions, dlq, ctl = f"{topic_prefix}.decisions", f"{topic_prefix}.dead_letter", f"{topic_prefix}.control"
    ensure_topics(kafka, {web: 1, email_topic: 1, decisions: 1, dlq: 1, ctl: 1})
    shards = 2
    state = tmp_path / "state"
    config = Config().replace(
        kafka=kafka, topics={"inputs": (web, email_topic), "decisions": decisions, "dead_letter": dlq, "control": ctl},
        state={"dir": str(state), "shards": shards}, privacy={"secret": SECRET.decode()})
    cookie, customer, address = "ck-gone-1", "GONE-1", "gone.person@example.com"
    gone = {pseudonymize("cookie", cookie, SECRET), pseudonymize("customer", customer, SECRET),
            pseudonymize("email", address, SECRET)}
    cookie_key = pseudonymize("cookie", cookie, SECRET)
    kept_key = pseudonymize("customer", "KEPT-2", SECRET)
    producer = Producer(kafka)

    def send(topic: str, key: str, body: dict[str, object]) -> None:
        producer.produce(topic, orjson.dumps(body), key.encode())

    send(web, cookie, {"event_id": "g1", "type": "page_view", "ts": NOW - 10 * MIN, "page_type": "product"})
    send(web, cookie, {"event_id": "g2", "type": "add_to_cart", "ts": NOW - 9 * MIN, "sku": "s", "amount": 30.0})
    send(web, "ck-kept", {"event_id": "k1", "type": "login", "ts": NOW - 9 * MIN, "customer_id": "KEPT-2"})
    send(web, "ck-last", {"event_id": "l1", "type": "login", "ts": NOW - 9 * MIN, "customer_id": "LAST-3"})
    last_key = pseudonymize("customer", "LAST-3", SECRET)
    assert producer.flush(10) == 0
    with FlowThread(config, ManualClock(NOW), tmp_path / "recovery") as flow:
        # Both anonymous events committed: the move below leaves the profile's bytes in an undo record.
        _wait(lambda: (read_profile(state, shards, cookie_key) or {}).get("facts", {}).get("version") == 2, 30,
              "the anonymous profile", flow)
        send(web, cookie, {"event_id": "g3", "type": "login", "ts": NOW - 8 * MIN, "customer_id": customer,
                           "email": address})
        send(email_topic, address, {"event_id": "g4", "type": "email_click", "ts": NOW - 7 * MIN,
                                    "customer_id": customer, "campaign_id": "c"})
        assert producer.flush(10) == 0
        _wait(lambda: (read_profile(state, shards, cookie_key) or {}).get("facts", {}).get("version") == 4, 30,
              "the linked profile", flow)
        customer_key = pseudonymize("customer", customer, SECRET)
        _wait(lambda: resolve_offline(state, pseudonymize("email", address, SECRET))[0] == customer_key, 30,
              "the email linked in the committed identity graph", flow)
        # The stores the erasure reaches for certain: the identity graph and the linked profile's shard.
        erasing = [state / "identity" / "shard-0000",
                   family_of_anchor("customer", shards).path(state, shard_of(customer_key, shards))]
        before = {path: store_seq(path) for path in erasing}
        erased_before = metrics.counter_values(metrics.ERASURES).get((), 0.0)
        # The same erasure again and one of an identifier no event named erase nothing, and are not counted
        # as people erased (an outside probe: both were); the last one shows all were read (one partition).
        for request_id, body in (("dsr-9", {"id_type": "cookie", "id": cookie}),
                                 ("dsr-9", {"id_type": "cookie", "id": cookie}),
                                 ("dsr-10", {"customer_id": "NOBODY-0"}), ("dsr-11", {"customer_id": "LAST-3"})):
            producer.produce(ctl, orjson.dumps({"command": "erase", "request_id": request_id, **body}),
                             request_id.encode())
        assert producer.flush(10) == 0
        _wait(lambda: all(read_profile(state, shards, k) is None for k in gone | {last_key}), 30, "the erasures",
              flow)
        # One for the linked profile, however many identifiers and families its erasure reached, one for LAST-3.
        assert metrics.counter_values(metrics.ERASURES)[()] - erased_before == 2
        # The checkpoints of the erasure's epoch (and their purges) come after the erasure itself.
        _wait(lambda: all(store_seq(path) > seq for path, seq in before.items()), 30,
              "the checkpoints after the erasure", flow)
    for k in gone:
        assert read_profile(state, shards, k) is None
        assert resolve_offline(state, k) == (k, None)  # no identifier is linked any more
    kept = read_profile(state, shards, kept_key)
    assert kept is not None and kept["ids"]["cookie"] == [pseudonymize("cookie", "ck-kept", SECRET)]
    assert consume_all(kafka, [dlq]) == []

    stores = [p for f in families(shards, ("device", "phone", "email", "customer"))
              for n in range(f.shards) if (p := f.path(state, n)).exists()]
    assert (state / "identity" / "shard-0000") in stores and (state / "linked-customer") in [p.parent for p in stores]
    for store_dir in stores:
        # Logically gone: live data, timers, undo records (decoded: SST blocks may be compressed).
        db = Rdict(str(store_dir), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            entries = list(db.items())
        finally:
            db.close()
        assert [k for k, v in entries if any(g.encode() in k + v for g in gone)] == [], store_dir
        # Physically: no file of any store holds any of the keys.
        for path in store_dir.iterdir():
            if path.is_file():
                blob = path.read_bytes()
                assert not any(g.encode() in blob for g in gone), f"{path} still holds an erased key"


def test_follow_ups_the_broker_does_not_take_stop_the_erasure_before_anything_is_erased() -> None:
    """The identity stage erases the graph only after the follow-ups are acknowledged: a broker that does not
    take them is a one-line failure, and the restart does the erasure again."""
    from nextclick.operators.io.control import ErasureRecorder

    class Unanswered:
        produced: list[bytes] = []

        def produce(self, topic: str, value: bytes, key: bytes, on_delivery: object) -> None:
            self.produced.append(value)

        def flush(self, timeout: float) -> int:
            return len(self.produced)

    recorder = ErasureRecorder({"bootstrap.servers": "127.0.0.1:9"}, "ctl", timeout_s=0.1)
    recorder._producer = Unanswered()  # type: ignore[assignment]
    with pytest.raises(ConnectionError, match=r"^could not record an erasure's follow-ups \(could not deliver the "
                                              r"erase command to ctl within 0.1 s\); nothing was erased"):
        recorder(["a" * 32], "dsr-1", 5)
    sent = orjson.loads(Unanswered.produced[0])
    assert sent == {"command": "erase", "request_id": "dsr-1", "customer_key": "a" * 32, "requested_at": 5,
                    "follow_up": True}
    assert isinstance(control(sent), EraseRequest)  # what the flow writes, it reads back as a follow-up
