"""Identity stitching through the real broker: one view of the customer, guards, addressable decisions.

The flow runs in a thread on a manual clock (tests/helpers.FlowThread), reading one web topic with one
partition, so every event arrives in the order it was produced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.operators.identity.graph import resolve_offline
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.state.keys import PROFILE_PREFIX, profile_key, shard_of, shard_path
from nextclick.operators.state.layout import profile_families
from nextclick.operators.state.store import ShardStore
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import FlowThread, consume_all

pytestmark = pytest.mark.broker

SECRET = b"identity-flow-secret"
T0 = 1_795_428_000_000
MIN = 60_000
SHARDS = 2
ANCHORS = ("device", "phone", "email", "customer")


def key(id_type: str, raw: str) -> str:
    return pseudonymize(id_type, raw, SECRET)


def setup(kafka: dict[str, str], prefix: str, tmp_path: Path) -> tuple[Config, dict[str, str]]:
    topics = {"web": f"{prefix}.web", "decisions": f"{prefix}.decisions", "dead_letter": f"{prefix}.dlq",
              "control": f"{prefix}.control"}
    ensure_topics(kafka, {t: 1 for t in topics.values()})
    config = Config().replace(
        kafka=kafka,
        topics={"inputs": (topics["web"],), "decisions": topics["decisions"], "dead_letter": topics["dead_letter"],
                "control": topics["control"]},
        state={"dir": str(tmp_path / "state"), "shards": SHARDS},
        privacy={"secret": SECRET.decode()},
    )
    return config, topics


def send(kafka: dict[str, str], topic: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    producer = Producer(kafka)
    for kafka_key, body in events:
        producer.produce(topic, orjson.dumps(body), kafka_key.encode())
    assert producer.flush(10) == 0


def wait(cond: Callable[[], bool], what: str, flow: FlowThread, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert not flow.failures, flow.failures
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def stored_profiles(state: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every committed profile in every family: key -> (family, profile)."""
    from nextclick.operators.profile.codec import stored_as_dict

    out = {}
    for family in profile_families(SHARDS, ANCHORS):
        for shard in range(SHARDS):
            path = family.path(state, shard)
            if not path.exists():
                continue
            store = ShardStore.open_read_only(path)
            try:
                for k, v in store.scan(PROFILE_PREFIX):
                    out[k[1:].decode()] = (family.name, stored_as_dict(v))
            finally:
                store.close()
    return out


def in_first_family(state: Path, who: str) -> bytes | None:
    """The committed profile `who` has in the first family's shard (profiles of unlinked identifiers)."""
    store = ShardStore.open_read_only(shard_path(state, shard_of(who, SHARDS)))
    try:
        return store.get(profile_key(who))
    finally:
        store.close()


def event(eid: str, etype: str, minute: float, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": etype, "ts": T0 + int(minute * MIN), **fields}


def test_anonymous_cart_then_login_gives_one_profile_and_an_email_decision_to_the_email_key(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    config, topics = setup(kafka, topic_prefix, tmp_path)
    state = tmp_path / "state"
    cookie, customer, email = "ck-anon-7f31", "C-100", "ann.smith@example.com"
    cookie_key, customer_key, email_key = key("cookie", cookie), key("customer", customer), key("email", email)
    send(kafka, topics["web"], [
        # Anonymous: known only by the cookie.
        (cookie, event("a1", "page_view", 0, page_type="product", category="shoes")),
        (cookie, event("a2", "page_view", 1, page_type="product", category="shoes")),
        (cookie, event("a3", "add_to_cart", 2, sku="sku-9", amount=40.0, quantity=1, category="shoes")),
    ])
    clock = ManualClock(T0 + 10 * MIN)
    with FlowThread(config, clock, tmp_path / "recovery") as flow:
        wait(lambda: read_profile(state, SHARDS, cookie_key) is not None, "the anonymous profile", flow)
        anonymous = read_profile(state, SHARDS, cookie_key)
        assert anonymous is not None and anonymous["ids"] == {"cookie": [cookie_key]}
        assert "cart_abandoned" in anonymous["signals"]
        # The visitor logs in (cookie key, customer id, email), then consents to email as the customer.
        send(kafka, topics["web"], [
            (cookie, event("a4", "login", 3, customer_id=customer, email=email, method="password")),
            (customer, event("a5", "consent", 4, customer_id=customer, channel="email", granted=True)),
        ])
        wait(lambda: (read_profile(state, SHARDS, customer_key) or {}).get("facts", {}).get("version") == 5,
             "the login and the consent on the merged profile", flow)
        # The cart's hour passes with no purchase (plus the allowed lateness): the absence fires on the clock.
        clock.set(T0 + 2 * MIN + 60 * MIN + 5 * MIN + 1)
        wait(lambda: len(consume_all(kafka, [topics["decisions"]], idle_s=0.5, timeout_s=5)) >= 1,
             "the cart-abandonment decision", flow)
        # The decision goes out before its epoch commits: wait for the profile that fired it, committed.
        wait(lambda: "cart_abandoned" not in (read_profile(state, SHARDS, customer_key)
                                              or {"signals": {"cart_abandoned": None}})["signals"],
             "the fired absence committed", flow)

    profiles = stored_profiles(state)
    mine = {k: v for k, v in profiles.items() if k in {cookie_key, customer_key, email_key}}
    assert list(mine) == [customer_key], "one profile for the customer, keyed by the customer id"
    family, profile = mine[customer_key]
    assert family == "linked_customer"
    assert profile["ids"] == {"customer": [customer_key], "email": [email_key], "cookie": [cookie_key]}
    facts = profile["facts"]
    assert (facts["version"], facts["first_seen"], facts["contacts"]) == (5, T0, {"web": 5})
    assert facts["consent"]["email:marketing"][0] is True
    assert "cart_abandoned" not in profile["signals"]  # fired, on the merged profile
    # Any identifier reads as the one profile.
    assert read_profile(state, SHARDS, cookie_key) == read_profile(state, SHARDS, email_key) == profile
    assert resolve_offline(state, cookie_key) == (customer_key, "customer")

    decisions = consume_all(kafka, [topics["decisions"]])
    assert len(decisions) == 1
    body = orjson.loads(decisions[0].value())
    assert decisions[0].key() == customer_key.encode()
    assert (body["customer"], body["reasons"]["rule_id"], body["channel"]) == \
        (customer_key, "cart_abandonment_email", "email")
    assert body["trigger"] == {"name": "cart_abandoned", "id": f"cart_abandoned:{T0 + 2 * MIN}", "ts": T0 + 62 * MIN}
    assert body["address"] == {"id_type": "email", "key": email_key}
    assert body["reachable"] == ["email", "ads", "web", "call_center"]
    assert body["profile_version"] == 5
    assert consume_all(kafka, [topics["dead_letter"]]) == []
    # Nothing raw anywhere in what came out.
    for raw in (cookie, customer, email):
        assert raw.encode() not in decisions[0].value()


def _refused() -> dict[tuple[str, ...], float]:
    return dict(metrics.counter_values(metrics.LINKS_REFUSED))


def test_guards_limit_blocked_values_and_two_customer_ids(kafka: dict[str, str], topic_prefix: str,
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, topics = setup(kafka, topic_prefix, tmp_path)
    state = tmp_path / "state"
    caplog.set_level(logging.INFO, logger="nextclick.operators.identity.stage")
    before = _refused()
    events: list[tuple[str, dict[str, Any]]] = []
    # The limit: one customer logs in from six browsers; the default rules allow five cookies.
    for n in range(1, 7):
        events.append((f"ck-lim-{n}", event(f"l{n}", "login", n, customer_id="LIM-1")))
    # Blocked values: a placeholder customer id next to a real cookie, and a test address at login.
    events.append(("ck-blk-1", event("b1", "page_view", 1, customer_id="anonymous", page_type="home")))
    events.append(("ck-blk-2", event("b2", "login", 2, customer_id="BLK-2", email="test@test.com")))
    # Two customer ids: one browser, two customers signing in one after the other.
    events.append(("ck-two", event("t1", "login", 1, customer_id="TWO-1")))
    events.append(("ck-two", event("t2", "login", 2, customer_id="TWO-2")))
    send(kafka, topics["web"], events)
    last = key("customer", "TWO-2")
    with FlowThread(config, ManualClock(T0 + 10 * MIN), tmp_path / "recovery") as flow:
        wait(lambda: read_profile(state, SHARDS, last) is not None, "the last event", flow)

        def committed() -> bool:
            """Every store the events reached has committed them (the shards commit one by one)."""
            profiles = [read_profile(state, SHARDS, key("customer", c)) for c in ("LIM-1", "BLK-2", "TWO-1")]
            return (all(p is not None for p in profiles) and profiles[0] is not None
                    and profiles[0]["facts"]["version"] == 6
                    and profiles[2] is not None and "cookie" not in profiles[2]["ids"]  # shared: detached
                    and resolve_offline(state, key("cookie", "ck-blk-2"))[0] == key("customer", "BLK-2"))

        wait(committed, "every login committed", flow)

    refused = {k: v - before.get(k, 0) for k, v in _refused().items() if v != before.get(k, 0)}
    assert refused == {("limit", "cookie"): 1, ("blocked_value", "customer"): 1, ("blocked_value", "email"): 1,
                       ("two_customer_ids", "customer"): 1}

    limited = read_profile(state, SHARDS, key("customer", "LIM-1"))
    assert limited is not None
    assert limited["ids"]["cookie"] == [key("cookie", f"ck-lim-{n}") for n in range(1, 6)]
    # The sixth login still counts for the customer it names (where it went before identity stitching);
    # its cookie stays linked to nothing.
    assert limited["facts"]["version"] == 6
    assert resolve_offline(state, key("cookie", "ck-lim-6")) == (key("cookie", "ck-lim-6"), None)
    assert read_profile(state, SHARDS, key("cookie", "ck-lim-6")) is None

    # "anonymous" names nobody: it links nothing, and the event counts for the cookie it was keyed by.
    assert resolve_offline(state, key("cookie", "ck-blk-1")) == (key("cookie", "ck-blk-1"), None)
    assert resolve_offline(state, key("customer", "anonymous")) == (key("customer", "anonymous"), None)
    assert read_profile(state, SHARDS, key("customer", "anonymous")) is None
    assert read_profile(state, SHARDS, key("cookie", "ck-blk-1"))["facts"]["version"] == 1
    # The login's cookie links; its test address does not.
    blk = read_profile(state, SHARDS, key("customer", "BLK-2"))
    assert blk is not None and blk["ids"] == {"customer": [key("customer", "BLK-2")],
                                              "cookie": [key("cookie", "ck-blk-2")]}

    # The browser's past stays with the first customer, but it is shared now: neither customer's profile
    # names it, and it resolves to itself. The second customer's login counts for them alone.
    first = read_profile(state, SHARDS, key("customer", "TWO-1"))
    second = read_profile(state, SHARDS, key("customer", "TWO-2"))
    assert first is not None and second is not None
    assert first["ids"] == {"customer": [key("customer", "TWO-1")]}
    assert resolve_offline(state, key("cookie", "ck-two")) == (key("cookie", "ck-two"), None)
    assert first["facts"]["version"] == 1
    assert second["ids"] == {"customer": [key("customer", "TWO-2")]} and second["facts"]["version"] == 1

    # Every refusal is a log line naming the reason, with pseudonymous keys and never a raw value.
    lines = [r for r in caplog.records if r.getMessage() == "link refused"]
    assert sorted(r.reason for r in lines) == ["blocked_value", "blocked_value", "limit",  # type: ignore[attr-defined]
                                                "two_customer_ids"]
    text = " ".join(f"{r.__dict__}" for r in lines)
    for raw in ("ck-lim-6", "LIM-1", "anonymous", "test@test.com", "ck-two", "TWO-1", "TWO-2", "BLK-2"):
        assert raw not in text


def test_stage_zero_profiles_move_out_of_their_shard(kafka: dict[str, str], topic_prefix: str,
                                                     tmp_path: Path) -> None:
    """Both identifiers had profiles before they were linked: both leave the first family's shards."""
    config, topics = setup(kafka, topic_prefix, tmp_path)
    state = tmp_path / "state"
    cookie_key, customer_key = key("cookie", "ck-mv"), key("customer", "MV-1")
    send(kafka, topics["web"], [
        ("ck-mv", event("m1", "page_view", 0, page_type="home")),
        ("MV-1", event("m2", "purchase", 1, customer_id="MV-1", amount=20.0, order_id="o1")),
    ])
    with FlowThread(config, ManualClock(T0 + 10 * MIN), tmp_path / "recovery") as flow:
        wait(lambda: read_profile(state, SHARDS, cookie_key) is not None
             and read_profile(state, SHARDS, customer_key) is not None, "two profiles", flow)
        send(kafka, topics["web"], [("ck-mv", event("m3", "login", 2, customer_id="MV-1"))])
        wait(lambda: (read_profile(state, SHARDS, customer_key) or {}).get("facts", {}).get("version") == 3,
             "the merged profile", flow)
        # The source shards commit the moves out in the same epoch, each at its own epoch end.
        wait(lambda: all(in_first_family(state, who) is None for who in (cookie_key, customer_key)),
             "the moves out committed", flow)
    for who in (cookie_key, customer_key):
        assert in_first_family(state, who) is None
    merged = read_profile(state, SHARDS, cookie_key)
    assert merged is not None and merged["customer"] == customer_key
    assert (merged["facts"]["orders"], merged["facts"]["revenue"], merged["facts"]["contacts"]) == (1, 20.0, {"web": 3})
