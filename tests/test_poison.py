"""One customer's bad data is that customer's dead letter, never the flow's stop.

Unit tests drive a shard (real RocksDB) directly; the broker test runs the whole flow with one
customer's processing made to fail and compares everyone else with a clean run.
"""

from __future__ import annotations

import base64
import copy
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.deadletter import CLASS_HEADER, REASON_HEADER, STEP_HEADER, dead_letter_headers
from nextclick.operators.io.parse import parse_message
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.profile.codec import encode_profile, profile_as_dict, stored_as_dict
from nextclick.operators.profile.facts import ProfileEncodeError, apply_facts
from nextclick.operators.profile.model import new_profile
from nextclick.operators.records import DeadLetter, Detach, Event, MergeExpect, SourcePosition
from nextclick.operators.shard import shard_state as shard_module
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import QUARANTINED, TIMER_PREFIX, profile_key
from nextclick.operators.tools.profiles import read_profile
from tests.flowrun import SECRET, FlowSetup, produce, read_profiles, run_to_end, workload
from tests.helpers import HOUR, MIN, T0, consent, consume_all, default_rules, make_event

SRC = SourcePosition("shop.web", 0, 7)


def shard(tmp_path: Path, clock: ManualClock | None = None) -> ShardLogic:
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock or ManualClock(T0))
    return ShardLogic(ctx, None)


def with_raw(event: Event, value: bytes = b'{"original": "bytes"}') -> Event:
    return Event(event.event_id, event.type, event.ts, event.customer, event.channel, event.attrs,
                 SourcePosition("shop.web", 0, int(event.event_id.rsplit("-", 1)[-1])),
                 raw=(event.customer.encode(), value, (("origin", b"sdk"),)))


def stored(logic: ShardLogic, customer: str) -> dict[str, Any] | None:
    raw = logic.store.get(profile_key(customer))
    return None if raw is None else stored_as_dict(raw)


def dead_letters(out: list[Any]) -> list[DeadLetter]:
    return [o for o in out if isinstance(o, DeadLetter)]


def test_an_event_that_raises_is_dead_lettered_and_the_profile_is_as_before_it(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    logic = shard(tmp_path)
    logic.on_batch([consent(T0, customer="c1"), make_event("page_view", T0, customer="c2", page_type="home")])
    logic.snapshot()
    # An earlier event of this epoch, not yet written: the failed one must not undo it either.
    logic.on_batch([make_event("page_view", T0 + MIN, customer="c1", event_id="c1-2", page_type="home")])
    before = copy.deepcopy(logic.state._live["c1"])
    real = shard_module.on_event

    def breaks_on_boom(profile: Any, event: Event, ruleset: Any, *outcome: Any) -> Any:
        result = real(profile, event, ruleset, *outcome)
        if event.event_id.startswith("boom"):
            raise KeyError("a-value-that-must-not-leak")  # after the profile was changed
        return result

    monkeypatch.setattr(shard_module, "on_event", breaks_on_boom)
    boom = with_raw(make_event("purchase", T0 + 2 * MIN, customer="c1", event_id="boom-3", amount=40.0))
    after = make_event("page_view", T0 + 3 * MIN, customer="c1", event_id="c1-4", page_type="home")
    other = make_event("page_view", T0 + 3 * MIN, customer="c2", event_id="c2-5", page_type="home")
    out, _ = logic.on_batch([boom, after, other])
    [dl] = dead_letters(out)
    assert (dl.reason, dl.step, dl.exception_class) == ("processing_error", "engine.on_event", "KeyError")
    assert (dl.key, dl.value, dl.headers) == (b"c1", b'{"original": "bytes"}', (("origin", b"sdk"),))
    assert "a-value-that-must-not-leak" not in dl.message
    headers = dict(dead_letter_headers(dl))
    assert headers[REASON_HEADER] == b"processing_error" and headers[CLASS_HEADER] == b"KeyError"
    assert headers[STEP_HEADER] == b"engine.on_event"
    # The failed purchase left no trace; the events before and after it did.
    profile = logic.state._live["c1"]
    assert profile.facts.orders == 0 and not any(key.endswith("/boom-3") for key in profile.seen)
    assert profile.facts.version == before.facts.version + 1 and "web/page_view/c1-4" in profile.seen
    assert logic.state._live["c2"].facts.version == 2
    logic.snapshot()
    assert stored(logic, "c1") == profile_as_dict(profile)
    logic.store.close()


def test_a_new_customer_whose_only_event_fails_leaves_nothing_stored(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_module.failpoints, "FAIL_CUSTOMERS", frozenset({"c9"}))
    logic = shard(tmp_path)
    out, _ = logic.on_batch([with_raw(make_event("page_view", T0, customer="c9", event_id="e-1"))])
    assert [d.step for d in dead_letters(out)] == ["engine.on_event"]
    logic.snapshot()
    assert stored(logic, "c9") is None
    logic.store.close()


def test_undoing_a_failed_event_keeps_a_shared_cookie_detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that fails after a shared cookie left the profile is undone by replaying what was applied
    since the profile was stored: the detachment is part of that, so the kiosk does not come back."""
    logic = shard(tmp_path)
    ids = {"customer": ["c9"], "cookie": ["home", "kiosk"]}
    logic.on_batch([MergeExpect("c9", (), ids), make_event("page_view", T0, customer="c9", event_id="e-1")])
    logic.snapshot()
    logic.on_batch([Detach("c9", "kiosk")])
    monkeypatch.setattr(shard_module.failpoints, "FAIL_CUSTOMERS", frozenset({"c9"}))
    out, _ = logic.on_batch([with_raw(make_event("page_view", T0 + MIN, customer="c9", event_id="e-2"))])
    assert [d.step for d in dead_letters(out)] == ["engine.on_event"]
    assert logic.state is not None and logic.state._live["c9"].ids == {"customer": ["c9"], "cookie": ["home"]}
    logic.snapshot()
    assert (stored(logic, "c9") or {})["ids"] == {"customer": ["c9"], "cookie": ["home"]}
    logic.store.close()


def test_corrupt_stored_state_from_the_old_overflow_bug_fails_per_event_not_per_flow(tmp_path: Path) -> None:
    """Format 1 stored revenue as null (orjson wrote inf as null), which made every later event of that
    customer raise and crash the flow. Such a profile is now set aside; its events are dead letters."""
    logic = shard(tmp_path)
    logic.on_batch([make_event("page_view", T0, customer="good")])
    logic.snapshot()
    broken = {"format": 1, "customer": "bad", "version": 3, "first_seen": T0 - HOUR, "last_seen": T0 - HOUR,
              "orders": 2, "revenue": None, "first_purchase": T0 - HOUR, "last_purchase": T0 - HOUR,
              "last_contact": {"web": T0 - HOUR}, "contacts": {"web": 3}, "consent": {}, "last_complaint": None,
              "signals": {}, "timers": {}, "seen": {}, "sent": {}, "fired": {}}
    logic.store.put(profile_key("bad"), orjson.dumps(broken))
    logic.snapshot()
    logic.store.close()

    logic = ShardLogic(logic.ctx, {"shard": 0, "seq": 2})  # a restart
    batch = [with_raw(make_event("page_view", T0 + MIN, customer="bad", event_id="bad-1")),
             with_raw(make_event("purchase", T0 + MIN, customer="bad", event_id="bad-2", amount=5.0)),
             with_raw(make_event("page_view", T0 + MIN, customer="good", event_id="good-3"))]
    out, _ = logic.on_batch(batch)
    assert sorted((d.value, d.step) for d in dead_letters(out)) == [
        (b'{"original": "bytes"}', "quarantined_profile")] * 2
    logic.snapshot()
    logic.store.close()
    seen = read_profile(tmp_path, 1, "bad")
    assert seen is not None and orjson.loads(base64.b64decode(seen["quarantined"]["stored_base64"])) == broken
    good = read_profile(tmp_path, 1, "good")
    assert good is not None and good["facts"]["version"] == 2


def test_an_undecodable_stored_profile_is_quarantined_and_its_events_dead_lettered(tmp_path: Path) -> None:
    logic = shard(tmp_path)
    logic.on_batch([make_event("page_view", T0, customer="odd")])
    logic.snapshot()
    logic.store.put(profile_key("odd"), b"\x00not json")  # bit rot, or a bug in an old release
    logic.snapshot()
    logic.store.close()
    logic = ShardLogic(logic.ctx, {"shard": 0, "seq": 2})
    out, _ = logic.on_batch([with_raw(make_event("page_view", T0, customer="odd", event_id="odd-1")),
                             make_event("page_view", T0, customer="ok")])
    [dl] = dead_letters(out)
    assert dl.step == "quarantined_profile" and dl.reason == "processing_error"
    out, _ = logic.on_batch([with_raw(make_event("page_view", T0 + MIN, customer="odd", event_id="odd-2"))])
    assert [d.step for d in dead_letters(out)] == ["quarantined_profile"]
    logic.snapshot()
    assert logic.store.get(profile_key("odd")) == QUARANTINED
    logic.store.close()
    seen = read_profile(tmp_path, 1, "odd")
    assert seen is not None and seen["quarantined"]["step"] == "decode_profile"
    assert base64.b64decode(seen["quarantined"]["stored_base64"]).endswith(b"not json")  # kept for inspection
    # Erasing a quarantined customer removes the record too.
    logic = ShardLogic(logic.ctx, {"shard": 0, "seq": logic.store.seq})
    assert logic.erase("odd") is True
    logic.snapshot()
    logic.store.close()
    assert read_profile(tmp_path, 1, "odd") is None


def test_a_timer_that_raises_quarantines_instead_of_spinning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(T0 + MIN)
    logic = shard(tmp_path, clock)
    logic.on_batch([consent(T0, customer="c1"), make_event("add_to_cart", T0, customer="c1", sku="s", amount=20.0)])
    logic.snapshot()

    def broken(*_a: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(shard_module, "on_timers", broken)
    clock.set(T0 + 2 * HOUR)
    out, _ = logic.on_notify()
    assert out == []
    logic.snapshot()
    assert logic.store.get(profile_key("c1")) == QUARANTINED
    assert [k for k, _ in logic.store.scan(TIMER_PREFIX)] == []  # nothing left to fire
    out, _ = logic.on_notify()
    assert out == []
    logic.store.close()


def test_a_timer_that_raises_in_the_batch_that_made_it_due_sets_only_that_customer_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(T0 + 2 * HOUR)  # catch-up: c1's cart reminder is due as soon as it is applied
    logic = shard(tmp_path, clock)

    def broken(*_a: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(shard_module, "on_timers", broken)
    out, _ = logic.on_batch([make_event("add_to_cart", T0, customer="c1", sku="s", amount=20.0),
                             make_event("page_view", T0 + 2 * HOUR, customer="c2", page_type="home")])
    assert out == []
    logic.snapshot()
    assert logic.store.get(profile_key("c1")) == QUARANTINED
    assert [k for k, _ in logic.store.scan(TIMER_PREFIX) if k.endswith(b"c1")] == []  # nothing left to fire
    logic.store.close()
    assert read_profile(tmp_path, 1, "c2") is not None  # the rest of the batch went on


def test_non_finite_values_never_reach_state() -> None:
    profile = new_profile("c1")
    profile.facts.revenue = math.inf
    with pytest.raises(ProfileEncodeError):
        encode_profile(profile)
    # An integer past 64 bits (an outside probe's plan attribute, kept by a `last` signal) stopped the
    # flow at every checkpoint: it is the same customer's error now.
    huge = new_profile("c3")
    huge.signals["hits_last"] = 2**64
    with pytest.raises(ProfileEncodeError, match="profile value cannot be stored"):
        encode_profile(huge)
    # The overflow that produced it raises where it happens, so poison isolation catches it per event.
    customer = new_profile("c2")
    customer.facts.revenue = 1.7e308
    with pytest.raises(ProfileEncodeError):
        apply_facts(customer.facts, make_event("purchase", T0, customer="c2", amount=1.7e308))


def test_huge_amounts_are_refused_at_parse_time_with_a_configurable_bound() -> None:
    body = {"event_id": "e1", "type": "purchase", "ts": T0, "customer_id": "c", "amount": 1.7e308}
    refused = parse_message(b"k", orjson.dumps(body), None, SRC, secret=b"s", now_ms=T0, config=ParseConfig())
    assert isinstance(refused, DeadLetter) and refused.reason == "schema_violation"
    assert "maximum" in refused.message and "1.7e" not in refused.message
    body["amount"] = 5000.0
    tight = ParseConfig(max_amount=1000.0)
    refused = parse_message(b"k", orjson.dumps(body), None, SRC, secret=b"s", now_ms=T0, config=tight)
    assert isinstance(refused, DeadLetter) and "maximum 1000" in refused.message
    assert isinstance(parse_message(b"k", orjson.dumps(body), None, SRC, secret=b"s", now_ms=T0,
                                    config=ParseConfig()), Event)


# --- through the broker ------------------------------------------------------------------------


@pytest.mark.broker
def test_one_poisoned_customer_does_not_stop_the_flow_or_touch_anyone_else(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    messages = workload(80, seed=31)
    poisoned_id = "cust-00007"
    poisoned = pseudonymize("customer", poisoned_id, SECRET.encode())
    # The overflow regression rides along: two schema-valid-looking purchases of 1.7e308.
    huge = [("cust-00011", b"cust-00011", orjson.dumps({"event_id": f"huge-{i}", "type": "purchase",
                                                         "ts": orjson.loads(messages[-1][2])["ts"],
                                                         "customer_id": "cust-00011", "amount": 1.7e308}))
            for i in range(2)]
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 2})
    produce(kafka, topic, messages + huge, 2)
    clean = FlowSetup.create(kafka, tmp_path / "clean", f"{topic_prefix}.clean", inputs=[topic])
    run_to_end(clean, log=tmp_path / "clean.log")
    dirty = FlowSetup.create(kafka, tmp_path / "dirty", f"{topic_prefix}.dirty", inputs=[topic],
                             extra_env={"NEXTCLICK_FAIL_CUSTOMERS": poisoned})
    run_to_end(dirty, log=tmp_path / "dirty.log")  # asserts exit 0

    expected = read_profiles(clean.state_dir, clean.shards)
    got = read_profiles(dirty.state_dir, dirty.shards)
    assert poisoned in expected and poisoned not in got  # it was new: nothing of it was stored
    del expected[poisoned]
    assert got == expected

    letters = consume_all(kafka, [dirty.dead_letter])
    by_reason: dict[str, list[Any]] = {}
    for msg in letters:
        by_reason.setdefault(dict(msg.headers())[REASON_HEADER].decode(), []).append(msg)
    poisoned_events = [m for m in messages if m[0] == poisoned_id]
    failed = by_reason.pop("processing_error")
    assert sorted(m.value() for m in failed) == sorted(v for _, _, v in poisoned_events)  # one each, as sent
    assert {dict(m.headers())[STEP_HEADER] for m in failed} == {b"engine.on_event"}
    assert len(by_reason.pop("schema_violation")) == 2  # the two 1.7e308 purchases
    assert by_reason == {}


def test_a_timer_that_raises_for_a_stored_profile_sets_only_that_customer_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(T0 + MIN)
    logic = shard(tmp_path, clock)
    logic.on_batch([e for c in ("c1", "c2") for e in
                    (consent(T0, customer=c), make_event("add_to_cart", T0, customer=c, sku="s", amount=20.0))])
    seq = logic.snapshot()["seq"]
    logic.store.close()
    logic = ShardLogic(logic.ctx, {"shard": 0, "seq": seq})  # restarted: nothing cached
    real = shard_module.on_timers

    def broken_for_c1(profile: Any, *args: Any) -> Any:
        if profile.customer == "c1":
            raise ZeroDivisionError
        return real(profile, *args)

    monkeypatch.setattr(shard_module, "on_timers", broken_for_c1)
    clock.set(T0 + 2 * HOUR)
    out, _ = logic.on_notify()
    assert [(d.customer, d.rule_id) for d in out] == [("c2", "cart_abandonment_email")]
    logic.snapshot()
    assert logic.store.get(profile_key("c1")) == QUARANTINED
    assert [k for k, _ in logic.store.scan(TIMER_PREFIX) if k.endswith(b"c1")] == []  # nothing left to fire
    assert logic.on_notify()[0] == []
    logic.store.close()
    c2 = read_profile(tmp_path, 1, "c2")
    assert c2 is not None and "cart_abandoned" not in c2["signals"]
