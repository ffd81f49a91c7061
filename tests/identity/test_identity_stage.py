"""Identity stitching piece by piece, without the broker: the rules file, the parser's links and blocked
values, the graph's decisions and guards, the shard's moves and merges (and what it holds back while a
merge is under way), addresses, and the offline tools (`profile erase`, `keys`, `profile get`)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.channels import ID_TYPES
from nextclick.operators.identity.graph import (
    Component,
    IdentityGraph,
    Merge,
    Refusal,
    link_ids_key,
    resolve_offline,
)
from nextclick.operators.identity.guards import IdentityRulesError, default_identity_rules, load_identity_rules
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.identity.stage import IdentityContext, IdentityLogic
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config, ParseConfig
from nextclick.operators.io.parse import _parse_fast, parse_message, parse_message_slow
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import Decision, EraseRequest, Event, MergeExpect, MoveIn, MoveOut, SourcePosition
from nextclick.operators.rules.addressing import CHANNEL_ADDRESS_TYPES, address_for, reachable
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import TIMER_PREFIX, profile_key
from nextclick.operators.state.layout import profile_families
from nextclick.operators.state.placement import BALANCED
from nextclick.operators.state.store import ShardStore, StateError
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import HOUR, MIN, T0, consume_all, default_rules, make_event, write_rules

SECRET = b"identity-stage-secret"
SRC = SourcePosition("web", 0, 1)
NOW = T0 + HOUR
REPO = Path(__file__).resolve().parents[2]


def key(id_type: str, raw: str) -> str:
    return pseudonymize(id_type, raw, SECRET)


# -- the rules file ---------------------------------------------------------------------------------

def test_the_shipped_rules() -> None:
    rules = default_identity_rules()
    assert rules.priority == ("customer", "email", "phone", "device", "cookie")
    assert rules.anchors == ("device", "phone", "email", "customer")  # the order profiles move in
    assert (rules.limit("customer"), rules.limit("cookie")) == (1, 5)
    for id_type, raw in [("customer", "0"), ("customer", " NULL "), ("cookie", "anonymous"), ("device", "0000-0000"),
                         ("customer", "00000000-0000-0000-0000-000000000000"), ("cookie", "undefined"),
                         ("email", "test@whatever.org"), ("email", "a@mailinator.com"), ("email", "x@y.invalid"),
                         ("phone", "+1234567890"), ("phone", "000 000"), ("cookie", "xxxxxxxxxx")]:
        assert rules.blocked(id_type, raw), (id_type, raw)
    for id_type, raw in [("customer", "C-100"), ("cookie", "ck-anon-7f31"), ("email", "ann.smith@example.com"),
                         ("phone", "+49 170 5550199"), ("device", "a1b2c3"), ("customer", "10")]:
        assert not rules.blocked(id_type, raw), (id_type, raw)


@pytest.mark.parametrize(("text", "message"), [
    ('priority = ["customer", "email"]', "priority: must list every identifier type once"),
    ('priority = ["customer", "email", "phone", "device", "cookie", "cookie"]', "priority: must list"),
    ("[limits]\ncustomer = 2", "limits.customer: must be 1: two different customer ids never merge"),
    ("[limits]\ncookie = 0", "limits.cookie: must be an integer >= 1"),
    ("[limits]\npassport = 1", "limits.passport: unknown identifier type"),
    ("[blocked]\npatterns = ['(']", "blocked.patterns: '(' is not a regular expression"),
    ("[blocked.fax]\nvalues = []", "blocked.fax: unknown key"),
    ("merge_everything = true", "merge_everything: unknown key"),
])
def test_a_bad_rules_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write_rules(tmp_path, text, "identity.toml")
    with pytest.raises(IdentityRulesError) as error:
        load_identity_rules(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_rules_file_overrides_what_it_names(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "[limits]\ncookie = 2\n[blocked]\nvalues = ['guest-user']", "identity.toml")
    rules = load_identity_rules(path)
    assert (rules.limit("cookie"), rules.limit("email")) == (2, 3)
    assert rules.blocked("cookie", "Guest-User") and not rules.blocked("cookie", "anonymous")


# -- the parser -------------------------------------------------------------------------------------

def parse(body: dict[str, Any], kafka_key: bytes | None, **kw: Any) -> Event:
    event = parse_message(kafka_key, orjson.dumps({"event_id": "e1", "ts": T0, **body}), None, SRC, secret=SECRET,
                          now_ms=NOW, config=ParseConfig(), **kw)
    assert isinstance(event, Event), event
    return event


def test_what_an_event_links() -> None:
    # The key next to a customer id is the channel's identifier (a cookie on the web).
    e = parse({"type": "page_view", "customer_id": "C1"}, b"ck-1")
    assert (e.customer, e.id_type, e.links, e.blocked) == (key("customer", "C1"), "customer",
                                                           (("cookie", key("cookie", "ck-1")),), ())
    # A key that is the customer id itself names nobody new.
    assert parse({"type": "page_view", "customer_id": "C1"}, b"C1").links == ()
    # The payload's id_type types the key; a login's email field is an identifier too.
    e = parse({"type": "login", "customer_id": "C1", "id_type": "device", "email": "a@b.example"}, b"dev-1")
    assert e.links == (("device", key("device", "dev-1")), ("email", key("email", "a@b.example")))
    # An identify names identifiers in fields; without a customer id the key is what the event is about.
    e = parse({"type": "identify", "email": "a@b.example", "device_id": "d9"}, b"ck-2")
    assert (e.customer, e.links) == (key("cookie", "ck-2"), (("email", key("email", "a@b.example")),
                                                             ("device", key("device", "d9"))))
    # No other identifier: nothing to link, whatever the event.
    assert parse({"type": "purchase", "amount": 3}, b"ck-3").links == ()
    # The email field of other event types stays PII that is dropped: never a link.
    assert parse({"type": "consent", "channel": "email", "granted": True, "email": "a@b.example"}, b"ck-4").links == ()


def test_blocked_values_are_refused_before_hashing_and_never_passed_on() -> None:
    e = parse({"type": "page_view", "customer_id": "anonymous"}, b"ck-1")  # names nobody: the key is the identifier
    assert (e.customer, e.links, e.blocked) == (key("cookie", "ck-1"), (), ("customer",))
    e = parse({"type": "login", "customer_id": "C1", "email": "TEST@test.com"}, b"ck-1")
    assert (e.links, e.blocked) == ((("cookie", key("cookie", "ck-1")),), ("email",))
    e = parse({"type": "login", "customer_id": "C1", "email": " x@mailinator.com "}, b"ck-1")  # spaces too
    assert e.blocked == ("email",)
    assert "test.com" not in repr(e) and "TEST" not in repr(e)
    # The guards come from the configured rules file.
    rules = load_identity_rules(write_rules(Path(__import__("tempfile").mkdtemp()), "[blocked]\nvalues = ['ck-1']",
                                            "identity.toml"))
    e = parse({"type": "page_view", "customer_id": "C1"}, b"ck-1", guards=rules)
    assert (e.links, e.blocked) == ((), ("cookie",))


RAW = st.sampled_from(["C1", "C2", "ck-1", "anonymous", "null", "0000", "a@b.example", "test@test.com", " ", "",
                       "+49 170 5550199", "dev-9"])


@settings(max_examples=300, deadline=None)
@given(event_type=st.sampled_from(["page_view", "login", "identify", "email_click", "store_purchase"]),
       customer_id=st.none() | RAW, id_type=st.none() | st.sampled_from(sorted(ID_TYPES)),
       kafka_key=st.none() | RAW, email=st.none() | RAW, device_id=st.none() | RAW)
def test_both_parser_paths_make_the_same_links(event_type: str, customer_id: str | None, id_type: str | None,
                                               kafka_key: str | None, email: str | None,
                                               device_id: str | None) -> None:
    body: dict[str, Any] = {"event_id": "e1", "type": event_type, "ts": T0}
    for name, value in (("customer_id", customer_id), ("id_type", id_type), ("email", email)):
        if value is not None:
            body[name] = value
    if device_id is not None and event_type == "identify":
        body["device_id"] = device_id
    value = orjson.dumps(body)
    raw_key = None if kafka_key is None else kafka_key.encode()
    slow = parse_message_slow(raw_key, value, None, SRC, secret=SECRET, now_ms=NOW, config=ParseConfig())
    fast = _parse_fast(raw_key, value, None, SRC, SECRET, NOW, ParseConfig())
    if fast is not None:
        assert fast == slow and (fast.id_type, fast.links, fast.blocked) == (slow.id_type, slow.links, slow.blocked)
    assert parse_message(raw_key, value, None, SRC, secret=SECRET, now_ms=NOW, config=ParseConfig()) == slow


# -- the graph --------------------------------------------------------------------------------------

@pytest.fixture()
def graph(tmp_path: Path) -> Any:
    store = ShardStore(tmp_path / "g", sync=False)
    yield IdentityGraph(store, default_identity_rules(), cache_size=4)
    store.close()


def test_a_first_link_merges_two_lone_identifiers_into_the_higher_type(graph: IdentityGraph) -> None:
    ck, c = key("cookie", "ck"), key("customer", "C")
    merge = graph.decide([("cookie", ck), ("customer", c)])
    assert merge == Merge(c, "customer", ((None, ck), (None, c)), {"customer": [c], "cookie": [ck]})
    graph.apply(merge)
    assert graph.find(ck) == graph.find(c) == (c, "customer")
    assert graph.decide([("customer", c), ("cookie", ck)]) == Component(c, "customer", True, {})
    assert graph.component("cookie", ck) == Component(c, "customer", True, {"customer": [c], "cookie": [ck]})


def test_a_linked_profile_moves_up_into_a_higher_one(graph: IdentityGraph) -> None:
    ck, em, c, ck2 = key("cookie", "ck"), key("email", "e"), key("customer", "C"), key("cookie", "ck2")
    graph.apply(graph.decide([("cookie", ck), ("email", em)]))  # a newsletter sign-up: keyed by the email
    graph.apply(graph.decide([("customer", c), ("cookie", ck2)]))
    merge = graph.decide([("email", em), ("customer", c)])
    assert isinstance(merge, Merge)
    assert (merge.into, merge.anchor, merge.sources) == (c, "customer", (("email", em),))
    assert merge.ids == {"customer": [c], "email": [em], "cookie": [ck2, ck]}
    graph.apply(merge)
    assert all(graph.find(k) == (c, "customer") for k in (ck, em, c, ck2))
    assert graph.group(em) == {}  # the email no longer keys a profile


def test_the_guards(graph: IdentityGraph) -> None:
    c1, c2 = key("customer", "C1"), key("customer", "C2")
    cookies = [key("cookie", f"ck{n}") for n in range(6)]
    for ck in cookies[:5]:
        graph.apply(graph.decide([("customer", c1), ("cookie", ck)]))  # type: ignore[arg-type]
    assert graph.decide([("customer", c1), ("cookie", cookies[5])]) == Refusal("limit", "cookie")
    assert graph.decide([("customer", c2), ("cookie", cookies[0])]) == Refusal("two_customer_ids", "customer")
    assert graph.decide([("customer", c2), ("customer", c1)]) == Refusal("two_customer_ids", "customer")
    e1, e2 = key("email", "e1"), key("email", "e2")
    graph.apply(graph.decide([("email", e1), ("device", key("device", "d1"))]))  # type: ignore[arg-type]
    graph.apply(graph.decide([("email", e2), ("device", key("device", "d2"))]))  # type: ignore[arg-type]
    # Two profiles keyed by emails, linked by a device: neither can move into the other's family.
    assert graph.decide([("device", key("device", "d1")), ("email", e2)]) == Refusal("same_key_type", "email")
    # A refused link changed nothing.
    assert graph.find(cookies[5]) is None and graph.group(c1)["cookie"] == cookies[:5]


# -- the stage and the shards, driven directly ------------------------------------------------------

class Stitched:
    """The identity stage and every family's shards in one process, delivering in Bytewax's order:
    each step's output to the next steps, per key in order, moved profiles to later families."""

    def __init__(self, root: Path, shards: int = 2, clock: ManualClock | None = None) -> None:
        rules = default_identity_rules()
        self.root, self.shards, self.clock = root, shards, clock or ManualClock(NOW)
        self.identity = IdentityLogic(IdentityContext(root, shards, rules, sync=False), None)
        self.families = profile_families(shards, rules.anchors)
        self.logics: dict[str, ShardLogic] = {}
        self.decisions: list[Decision] = []
        self.dead: list[Any] = []

    def logic(self, route: str) -> ShardLogic:
        if route not in self.logics:
            family = next(f for f in self.families if (f.anchor is None) == ("/" not in route)
                          and (f.anchor is None or route.startswith(f"{f.anchor}/")))
            ctx = ShardContext(state_dir=family.root(self.root), shards=self.shards, ruleset=default_rules(),
                               clock=self.clock, sync=False, family=family.name)
            self.logics[route] = ShardLogic(ctx, None)
        return self.logics[route]

    def deliver(self, routed: list[tuple[str, Any]]) -> None:
        queues: dict[str, list[Any]] = defaultdict(list)
        for route, item in routed:
            queues[route].append(item)
        moved: list[tuple[str, Any]] = []
        for route, items in queues.items():
            for out in self.logic(route).on_batch(items)[0]:
                if isinstance(out, MoveIn):
                    moved.append((out.route, out))
                elif isinstance(out, Decision):
                    self.decisions.append(out)
                else:
                    self.dead.append(out)
        if moved:
            self.deliver(moved)

    def send(self, events: list[Event]) -> None:
        self.deliver(self.identity.on_batch(events)[0])  # type: ignore[arg-type]

    def epoch_end(self) -> None:
        self.identity.snapshot()
        for logic in self.logics.values():
            logic.snapshot()

    def close(self) -> None:
        self.identity.state.close()
        for logic in self.logics.values():
            logic.store.close()


def web(eid: str, etype: str, ts: int, who: tuple[str, str], *links: tuple[str, str], **attrs: Any) -> Event:
    """An event as the parser makes it: about `who` (type, raw), naming `links` (type, raw)."""
    event = make_event(etype, ts, customer=key(*who), event_id=eid, **attrs)
    return Event(event.event_id, event.type, event.ts, event.customer, event.channel, event.attrs, SRC, None,
                 who[0], tuple((t, key(t, raw)) for t, raw in links))


def test_what_comes_after_a_link_waits_for_the_moved_profiles(tmp_path: Path) -> None:
    """A MergeExpect holds the customer's items until every moved profile is in, whichever arrives first;
    a copy of an event the moved profile had already applied is then a duplicate, not counted twice."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(NOW), sync=False,
                       family="linked_customer")
    shard = ShardLogic(ctx, None)
    anonymous = ShardLogic(ShardContext(state_dir=tmp_path / "p", shards=1, ruleset=default_rules(),
                                        clock=ManualClock(NOW), sync=False), None)
    cookie, customer = key("cookie", "ck"), key("customer", "C")
    cart = make_event("add_to_cart", T0, customer=cookie, event_id="cart-1", amount=30.0, sku="s")
    anonymous.on_batch([cart])
    moved, _ = anonymous.on_batch([MoveOut(cookie, customer, "customer/0")])
    assert isinstance(moved[0], MoveIn) and moved[0].blob is not None
    assert anonymous.store.get(profile_key(cookie)) is None
    assert [k for k, _ in anonymous.store.scan(TIMER_PREFIX) if k.endswith(cookie.encode())] == []
    ids = {"customer": [customer], "cookie": [cookie]}
    again = make_event("add_to_cart", T0, customer=customer, event_id="cart-1", amount=30.0, sku="s")
    later = make_event("purchase", T0 + MIN, customer=customer, event_id="buy-1", amount=30.0)
    out, _ = shard.on_batch([MergeExpect(customer, (cookie, customer), ids), again, later])
    assert out == [] and shard.state is not None and customer in shard.state._waiting
    with pytest.raises(StateError, match="moved profiles still expected"):
        shard.snapshot()  # an epoch cannot end half way through a merge
    shard.on_batch([MoveIn(customer, customer, None, "customer/0"), moved[0]])
    profile = read_profile_live(shard, customer)
    assert profile.facts.version == 2 and profile.facts.orders == 1  # the copy of the cart was a duplicate
    assert "cart_abandoned" not in profile.signals  # the purchase came after the merged cart
    assert profile.ids == ids
    shard.snapshot()


def read_profile_live(shard: ShardLogic, customer: str) -> Any:
    assert shard.state is not None
    profiles, _, _ = shard.state._profiles([customer])
    return profiles[customer]


def test_a_moved_profile_that_arrives_before_its_merge_expectation_waits_for_it(tmp_path: Path) -> None:
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(NOW), sync=False)
    shard = ShardLogic(ctx, None)
    a, w = key("cookie", "a"), key("customer", "w")
    other = new_blob("A", a)
    shard.on_batch([MoveIn(w, a, other, "0"), MoveIn(w, "later-merge", None, "0")])
    shard.on_batch([MergeExpect(w, (a,), {"customer": [w], "cookie": [a]})])
    assert read_profile_live(shard, w).facts.version == 1
    assert shard.state is not None and shard.state._early == {w: {"later-merge": None}}
    shard.on_batch([MergeExpect(w, ("later-merge",), {"customer": [w], "cookie": [a]})])
    shard.snapshot()


def new_blob(name: str, customer: str) -> bytes:
    from nextclick.operators.engine.steps import on_event
    from nextclick.operators.profile.codec import encode_profile
    from nextclick.operators.profile.model import new_profile

    profile = new_profile(customer)
    on_event(profile, make_event("page_view", T0, customer=customer, event_id=f"{name}-1"), default_rules())
    return encode_profile(profile)


@pytest.mark.broker
def test_stitching_end_to_end_in_process_and_the_offline_tools(tmp_path: Path, kafka: dict[str, str],
                                                               topic_prefix: str) -> None:
    root = tmp_path / "state"
    flow = Stitched(root)
    ck, c, em = ("cookie", "ck-9"), ("customer", "C-9"), ("email", "nine@example.com")
    flow.send([web("1", "page_view", T0, ck, page_type="home"),
               web("2", "add_to_cart", T0 + MIN, ck, amount=25.0, sku="s")])
    flow.epoch_end()
    flow.send([web("3", "login", T0 + 2 * MIN, c, ck, em),
               web("4", "consent", T0 + 3 * MIN, c, channel="email", granted=True, purpose="marketing"),
               web("5", "page_view", T0 + 4 * MIN, ck, page_type="home")])
    flow.epoch_end()
    flow.clock.set(T0 + MIN + HOUR + 6 * MIN)
    for logic in list(flow.logics.values()):
        flow.decisions += [d for d in logic.on_notify()[0] if isinstance(d, Decision)]
    flow.epoch_end()
    flow.close()
    assert [(d.rule_id, d.customer, d.address) for d in flow.decisions] == \
        [("cart_abandonment_email", key(*c), ("email", key(*em)))]
    profile = read_profile(root, 2, key(*ck))
    assert profile is not None and profile["customer"] == key(*c) and profile["facts"]["version"] == 5

    control = f"{topic_prefix}.control"  # where the offline erasure records itself
    ensure_topics(kafka, {control: 1})
    env = {"NEXTCLICK_STATE__DIR": str(root), "NEXTCLICK_STATE__SHARDS": "2",
           "NEXTCLICK_PRIVACY__SECRET": SECRET.decode(), "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "rec"),
           "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": kafka["bootstrap.servers"], "NEXTCLICK_TOPICS__CONTROL": control}
    got = cli(env, "profile", "get", "ck-9", "--id-type", "cookie")
    assert got.returncode == 0, got.stderr
    shown = orjson.loads(got.stdout)
    assert shown["identity"] == {"profile_key": key(*c), "linked": True,
                                 "identifiers": {"customer": 1, "email": 1, "cookie": 1}}
    for raw in ("ck-9", "C-9", "nine@example.com"):
        assert raw not in got.stdout

    # Erasing the email address (offline) takes the profile, every link, and the moved-out profile.
    erased = cli(env, "profile", "erase", "nine@example.com", "--id-type", "email")
    assert erased.returncode == 0, erased.stderr
    assert orjson.loads(erased.stdout)["identifiers"] == 3 and orjson.loads(erased.stdout)["erased"] is True
    # One erase command per identifier erased, for a restore from an earlier savepoint and the next start.
    recorded = [orjson.loads(m.value()) for m in consume_all(kafka, [control])]
    assert sorted(r["customer_key"] for r in recorded) == sorted(key(*i) for i in (ck, c, em))
    assert {r["command"] for r in recorded} == {"erase"} and all(r["requested_at"] > T0 for r in recorded)
    for k in (key(*ck), key(*c), key(*em)):
        assert read_profile(root, 2, k) is None and resolve_offline(root, k) == (k, None)
    for shard_dir in root.rglob("shard-*"):
        store = ShardStore.open_read_only(shard_dir)
        try:
            assert not [k for k, _ in store.scan(b"") if key(*ck).encode() in k], shard_dir
        finally:
            store.close()


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "nextclick", *args], cwd=REPO, capture_output=True, text=True,
                          input=stdin, env={**{k: v for k, v in os.environ.items() if not k.startswith("NEXTCLICK_")},
                                            **env}, timeout=60)


def test_nextclick_keys_builds_a_contact_table_with_the_deployments_secret() -> None:
    addresses = ["ann.smith@example.com", "bob@example.com", "", "Ann.Smith@example.com ", "x,y@example.com"]
    done = cli({"NEXTCLICK_PRIVACY__SECRET": SECRET.decode()}, "keys", "--id-type", "email",
               stdin="\n".join(addresses) + "\n")
    assert done.returncode == 0, done.stderr
    import csv
    import io

    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows == [[a, key("email", a)] for a in addresses if a]  # as written: not trimmed, not folded
    assert "4 email identifiers" in done.stderr
    refused = cli({}, "keys", "--id-type", "email", stdin="a@b.example\n")
    assert refused.returncode != 0 and refused.stderr.startswith("nextclick: error: privacy.secret")
    assert cli({"NEXTCLICK_PRIVACY__SECRET": "s"}, "keys", "--id-type", "passport").returncode != 0


# -- addresses -------------------------------------------------------------------------------------

def test_every_decision_channel_has_its_address_types() -> None:
    from nextclick.operators.channels import DECISION_CHANNELS

    assert set(CHANNEL_ADDRESS_TYPES) == set(DECISION_CHANNELS)
    assert all(set(types) <= ID_TYPES for types in CHANNEL_ADDRESS_TYPES.values())
    ids = {"customer": ["c"], "email": ["e1", "e2"], "cookie": ["k"]}
    assert reachable(ids) == ("email", "ads", "web", "call_center")
    assert address_for(ids, "email") == ("email", "e2")  # the most recently linked
    assert address_for(ids, "call_center") == ("customer", "c")
    assert address_for(ids, "sms") is None and reachable({}) == ()


def test_an_unlinked_profile_knows_the_type_it_is_keyed_by(tmp_path: Path) -> None:
    flow = Stitched(tmp_path)
    flow.send([web("1", "call_center_contact", T0, ("customer", "K"), topic="x", outcome="unresolved")])
    assert [(d.rule_id, d.reachable, d.address) for d in flow.decisions] == \
        [("call_center_follow_up", ("call_center",), ("customer", key("customer", "K")))]
    flow.close()


def test_a_repeated_link_event_links_nothing_it_did_not_link_the_first_time(tmp_path: Path) -> None:
    """A producer that sends an event_id again with other identifiers: the repeat is dropped as a
    duplicate by the shard, so the link it names must not be made either (found by a probe: the
    second email ended up in the customer's profile). An erasure forgets the remembered ids too."""
    flow = Stitched(tmp_path, shards=1)
    flow.send([web("L1", "login", T0, ("cookie", "ck-1"), ("customer", "C-1"), ("email", "first@example.org"))])
    flow.send([web("L1", "login", T0 + MIN, ("cookie", "ck-1"), ("customer", "C-1"), ("email", "second@example.org"))])
    graph = flow.identity.state.graph
    customer = key("customer", "C-1")
    assert graph.find(key("email", "second@example.org")) is None
    assert graph.group(customer)["email"] == [key("email", "first@example.org")]
    profile = read_profile_live(flow.logic(next(iter(r for r in flow.logics if r.startswith("customer/")))), customer)
    assert profile.facts.version == 1 and profile.ids["email"] == [key("email", "first@example.org")]
    # Another event id of the same cookie links as before, and so does the same id past the dedupe
    # horizon (a day by default), where the shard no longer drops it either.
    flow.send([web("L2", "login", T0 + 2 * MIN, ("cookie", "ck-1"), ("customer", "C-1"),
                   ("email", "second@example.org"))])
    assert graph.find(key("email", "second@example.org")) == (customer, "customer")
    flow.send([web("L1", "login", T0 + 25 * HOUR, ("cookie", "ck-1"), ("customer", "C-1"),
                   ("email", "third@example.org"))])
    assert graph.find(key("email", "third@example.org")) == (customer, "customer")
    flow.identity.on_batch([EraseRequest(key("cookie", "ck-1"), "r1", SRC)])
    assert flow.identity.state.store.get(link_ids_key(key("cookie", "ck-1"))) is None  # forgotten with it
    flow.close()


def test_an_erase_request_reaches_every_family_for_every_identifier(tmp_path: Path) -> None:
    flow = Stitched(tmp_path, shards=1)
    flow.send([web("1", "login", T0, ("customer", "E"), ("cookie", "ck"))])
    grouped, _ = flow.identity.on_batch([EraseRequest(key("cookie", "ck"), "r1", SRC)])
    assert len({route for route, _ in grouped}) == len(grouped)  # one list per shard (operators/exchange.py)
    routed = [(route, item) for route, items in grouped for item in items]
    parts = sorted((route, item.customer) for route, item in routed)
    keys = sorted([key("customer", "E"), key("cookie", "ck")])
    assert parts == sorted((f.route(0, BALANCED), k) for f in flow.families for k in keys)
    # The shard that holds the linked profile counts it, once; the other parts erase nothing and count nothing,
    # and neither does the same erasure again.
    erased = metrics.counter_values(metrics.ERASURES).get((), 0.0)
    flow.deliver(routed)
    assert metrics.counter_values(metrics.ERASURES)[()] - erased == 1
    flow.send([EraseRequest(key("cookie", "ck"), "r1", SRC)])  # type: ignore[list-item]
    assert metrics.counter_values(metrics.ERASURES)[()] - erased == 1
    flow.close()


def test_an_erasure_by_a_linked_identifier_holds_when_the_process_dies_before_the_checkpoint(
        tmp_path: Path) -> None:
    """The graph's erasure is committed at once and its marks with it: a crash before the checkpoint replays
    the customer's purchase from before the erasure, which must not start a new profile (an outside probe:
    the marks were staged for the checkpoint; the replayed erasure by the cookie found the cookie alone, so
    the customer id and email were not marked and the purchase came back)."""
    ctx = IdentityContext(tmp_path, 1, default_identity_rules(), sync=False)
    identity = IdentityLogic(ctx, None)
    identity.on_batch([web("1", "login", T0, ("cookie", "ck"), ("customer", "E"), ("email", "e@example.com"))])
    resume = identity.snapshot()
    purchase = web("2", "purchase", T0 + MIN, ("customer", "E"), amount=40.0)
    identity.on_batch([purchase, EraseRequest(key("cookie", "ck"), "r1", SRC, requested_at=T0 + 10 * MIN)])
    identity.state.close()  # SIGKILL: no checkpoint of this epoch

    again = IdentityLogic(ctx, resume)  # the epoch is read again: the purchase, then the erasure
    grouped, _ = again.on_batch([purchase, EraseRequest(key("cookie", "ck"), "r1", SRC, requested_at=T0 + 10 * MIN)])
    routed = [item for _, items in grouped for item in items]
    assert [item for item in routed if isinstance(item, Event)] == []
    again.state.close()


def follow_up_parts(identity: IdentityLogic, customer: str, requested_at: int) -> list[Any]:
    """What the identity stage sends on for a follow-up erasure of `customer` read back from the control topic."""
    grouped, _ = identity.on_batch([EraseRequest(customer, "r1", SRC, requested_at=requested_at, follow_up=True)])
    return [item for _, items in grouped for item in items]


def signed_in(tmp_path: Path, record: Any) -> IdentityLogic:
    """A cookie, a customer id and an email signed in together at T0 (`ERASE_BY_EMAIL` erases them)."""
    identity = IdentityLogic(IdentityContext(tmp_path, 1, default_identity_rules(), sync=False,
                                             record_erasure=record), None)
    identity.on_batch([web("1", "login", T0, ("cookie", "ck"), ("customer", "E"), ("email", "e@example.com"))])
    return identity


ERASE_BY_EMAIL = EraseRequest(key("email", "e@example.com"), "r1", SRC, requested_at=T0 + MIN)


def test_an_erasures_other_identifiers_are_recorded_before_the_graph_forgets_them(tmp_path: Path) -> None:
    """What a crash between the graph's erasure and the shards' would lose is on the control topic first;
    a follow-up read back goes to that key's shards alone, whatever the graph links it to by then."""
    recorded: list[tuple[list[str], str, int]] = []
    identity: IdentityLogic

    def record(keys: list[str], request_id: str, at: int) -> None:
        assert identity.state.graph.find(key("email", "e@example.com")) is not None, "recorded before the erase"
        recorded.append((sorted(keys), request_id, at))

    identity = signed_in(tmp_path, record)
    identity.on_batch([ERASE_BY_EMAIL])
    assert recorded == [(sorted([key("cookie", "ck"), key("customer", "E")]), "r1", T0 + MIN)]
    assert identity.state.graph.find(key("cookie", "ck")) is None

    # Someone signs in on the cookie since: the cookie's follow-up, read back, leaves it and its profile alone
    # (that link and what it keys are someone else's).
    identity.on_batch([web("2", "login", T0 + 2 * MIN, ("cookie", "ck"), ("customer", "F"))])
    assert follow_up_parts(identity, key("cookie", "ck"), T0 + MIN) == []
    assert identity.state.graph.find(key("customer", "F")) is not None
    # The customer id is linked to nobody since: its follow-up goes to its shards alone, not through the graph.
    parts = follow_up_parts(identity, key("customer", "E"), T0 + MIN)
    assert parts and all(isinstance(p, EraseRequest) and p.customer == key("customer", "E") and p.follow_up
                         for p in parts)
    assert len(recorded) == 1
    identity.state.close()


def test_a_follow_up_goes_on_when_the_erased_person_signed_in_again_with_their_own_identifiers(
        tmp_path: Path) -> None:
    """They came back (the same cookie and customer id, after the erasure) before a crash's replay read the
    follow-ups: the profile a crash left under the customer id holds their data from before the erasure,
    so the follow-up goes to its shards (a probe: it was skipped as a link made since, and the old profile
    stayed for good)."""
    identity = signed_in(tmp_path, lambda _keys, _rid, _at: None)
    identity.on_batch([ERASE_BY_EMAIL])
    identity.on_batch([web("2", "login", T0 + 2 * MIN, ("cookie", "ck"), ("customer", "E"))])
    assert identity.state.graph.find(key("customer", "E")) is not None
    parts = follow_up_parts(identity, key("customer", "E"), T0 + MIN)
    assert parts and all(isinstance(p, EraseRequest) and p.customer == key("customer", "E") and p.follow_up
                         for p in parts)
    identity.state.close()


def test_an_erasure_a_late_sign_in_carries_records_its_own_key_too(tmp_path: Path) -> None:
    """The customer id was erased before the graph knew the cookie; the sign-in read after it erases the
    cookie, whose key is on no control command: a replay finds it marked and would carry nothing (an outside
    probe: a kill there left the cookie's profile for good). So it is recorded as a follow-up as well."""
    recorded: list[list[str]] = []
    ctx = IdentityContext(tmp_path, 1, default_identity_rules(), sync=False,
                          record_erasure=lambda keys, _rid, _at: recorded.append(keys))
    identity = IdentityLogic(ctx, None)
    identity.on_batch([web("1", "page_view", T0, ("cookie", "ck"))])
    identity.on_batch([EraseRequest(key("customer", "C"), "r1", SRC, requested_at=T0 + 10 * MIN)])
    assert recorded == []  # the graph knew nothing else of C
    identity.on_batch([web("2", "login", T0 + MIN, ("cookie", "ck"), ("customer", "C"))])
    assert recorded == [[key("cookie", "ck")]]
    identity.state.close()


def test_a_follow_up_leaves_a_profile_its_shard_made_after_carrying_out_the_erasure(tmp_path: Path) -> None:
    """A family tablet: the device's erasure reached its shard; a second later the device is linked to another
    person's older cookie, whose profile moves in under the device's key. A follow-up read after that finds
    this shard's own mark of the erasure and leaves the profile (its first event is older than the erasure)."""
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(NOW), sync=False,
                       family="linked_device")
    shard = ShardLogic(ctx, None)
    device, cookie = key("device", "dv-fam"), key("cookie", "ck-b")
    shard.on_batch([EraseRequest(device, "r1", SRC, requested_at=T0 + 10 * MIN)])
    shard.on_batch([MoveIn(device, cookie, new_blob("B", cookie), "device/0"),
                    MergeExpect(device, (cookie,), {"device": [device], "cookie": [cookie]})])
    assert read_profile_live(shard, device).facts.first_seen == T0
    shard.on_batch([EraseRequest(device, "r1", SRC, requested_at=T0 + 10 * MIN, follow_up=True)])
    assert read_profile_live(shard, device).facts.first_seen == T0
    shard.snapshot()
    shard.store.close()


def test_a_start_with_another_priority_is_refused(tmp_path: Path) -> None:
    from nextclick.operators.state.manifest import StateMismatch
    from nextclick.operators.tools.startup import check_start

    config = Config().replace(state={"dir": str(tmp_path / "s"), "recovery_dir": str(tmp_path / "r")},
                              privacy={"secret": "x"})
    (tmp_path / "r").mkdir()
    from bytewax.recovery import init_db_dir

    init_db_dir(tmp_path / "r", 1)
    check_start(config)
    from nextclick.operators.identity.graph import graph_path
    from nextclick.operators.state.store import ShardStore

    store = ShardStore(graph_path(tmp_path / "s"), sync=False)  # the identity stage has written its store
    store.put(b"n-someone", b"linked")
    store.checkpoint()
    store.close()
    other = write_rules(tmp_path, 'priority = ["email", "customer", "phone", "device", "cookie"]', "id.toml")
    with pytest.raises(StateMismatch, match="identity.priority: .* was written with identifier priority"):
        check_start(config.replace(identity={"file": str(other)}))


def test_a_store_a_crash_left_half_created_is_no_store(tmp_path: Path) -> None:
    """A process killed while RocksDB created a shard's directory (a linked family's shard opens on its
    first use, at any time) leaves a directory without CURRENT: the start-up checks and the read-only
    tools pass over it, and the flow's shard creates the store there when it needs it."""
    from bytewax.recovery import init_db_dir

    from nextclick.operators.state.manifest import family_dirs
    from nextclick.operators.tools.startup import check_start, state_families

    config = Config().replace(state={"dir": str(tmp_path / "s"), "recovery_dir": str(tmp_path / "r"), "shards": 2},
                              privacy={"secret": "x"})
    (tmp_path / "r").mkdir()
    init_db_dir(tmp_path / "r", 1)
    check_start(config)
    half = tmp_path / "s" / "linked-email" / "shard-0001"
    half.mkdir(parents=True)
    (half / "LOCK").write_bytes(b"")
    (half / "LOG").write_bytes(b"creating")
    check_start(config)
    assert all(family_dirs(tmp_path / "s", f) == {} for f in state_families(config))
    assert read_profile(tmp_path / "s", 2, key("email", "e")) is None
    ShardStore(half, sync=False).close()  # a writer creates it where it is
    assert list(family_dirs(tmp_path / "s", state_families(config)[3])) == [1]


def test_a_repeated_link_event_is_known_by_its_source_and_id_and_by_its_bare_id_from_before(graph: Any) -> None:
    """Link events' ids are kept per source, as the shards' dedupe keys are (operators/profile/dedupe.py):
    another source's link event with the same id is a new one; an id remembered bare by an earlier
    release still counts within the horizon."""
    horizon, T0 = 86_400_000, 1_795_000_000_000
    earlier = ("web/e1", "e1")
    assert graph.seen_link("k1", "web/login/e1", T0, horizon, earlier) is False
    assert graph.seen_link("k1", "web/login/e1", T0 + 1, horizon, earlier) is True
    assert graph.seen_link("k1", "mobile/app_open/e1", T0 + 2, horizon, ("mobile/e1", "e1")) is False
    graph.store.put(link_ids_key("k2"), msgspec.msgpack.encode([["e2", T0], ["web/e3", T0]]))  # earlier releases
    assert graph.seen_link("k2", "web/login/e2", T0 + 3, horizon, ("web/e2", "e2")) is True
    assert graph.seen_link("k2", "web/login/e3", T0 + 3, horizon, ("web/e3", "e3")) is True


def test_an_erased_persons_events_from_before_the_erasure_are_not_applied_again(tmp_path: Path) -> None:
    """A replay after a crash, or after a restore of a savepoint taken before the erasure, reads the
    erasure (the control topic is not aligned) before the events that preceded it: those must not bring
    the person back, links included. Events dated after the erasure start afresh."""
    flow = Stitched(tmp_path, shards=1)
    story = [web("c1", "add_to_cart", T0, ("cookie", "ck"), sku="s", amount=10.0),
             web("l1", "login", T0 + 5 * MIN, ("cookie", "ck"), ("customer", "ANN"), ("email", "ann@example.com")),
             web("p1", "purchase", T0 + 6 * MIN, ("customer", "ANN"), amount=50.0, order_id="o1")]
    flow.send(story)
    assert flow.identity.state.graph.find(key("cookie", "ck")) is not None
    erase = EraseRequest(key("email", "ann@example.com"), "r1", SRC, requested_at=T0 + 10 * MIN)
    flow.deliver(flow.identity.on_batch([erase])[0])  # type: ignore[arg-type]
    replayed, _ = flow.identity.on_batch(story)
    assert [item for _, items in replayed for item in items if isinstance(item, Event)] == []
    assert all(flow.identity.state.graph.find(key(t, raw)) is None
               for t, raw in (("cookie", "ck"), ("customer", "ANN"), ("email", "ann@example.com")))
    later = web("v2", "page_view", T0 + 20 * MIN, ("cookie", "ck"), page_type="home")
    routed, _ = flow.identity.on_batch([later])
    assert [item.event_id for _, items in routed for item in items if isinstance(item, Event)] == ["v2"]
    flow.close()


def test_a_replay_that_reads_the_erasure_before_the_sign_in_still_erases_what_the_sign_in_joined(
        tmp_path: Path) -> None:
    """Replayed from an epoch before the sign-in, the graph does not hold the link when the erasure of the
    customer id comes: the cookie's cart starts a profile of its own. The sign-in, from before the
    erasure, is not applied, and what it joined to the erased person is erased as it was the first time."""
    flow = Stitched(tmp_path, shards=2)
    ck, ann, email = ("cookie", "ck"), ("customer", "ANN"), ("email", "ann@example.com")
    flow.deliver(flow.identity.on_batch([EraseRequest(key(*ann), "r1", SRC, requested_at=T0 + 10 * MIN)])[0])  # type: ignore[arg-type]
    flow.send([web("c1", "add_to_cart", T0, ck, sku="s", amount=10.0)])
    flow.send([web("l1", "login", T0 + 5 * MIN, ck, ann, email),
               web("p1", "purchase", T0 + 6 * MIN, ann, amount=50.0, order_id="o1")])
    flow.epoch_end()
    erased = flow.identity.state.graph.erased  # the cookie's events up to the erasure are the erased person's
    assert erased.before_erasure(key(*ck), T0 + 10 * MIN) and not erased.before_erasure(key(*ck), T0 + 11 * MIN)
    flow.close()
    for identifier in (ck, ann, email):
        assert read_profile(tmp_path, 2, key(*identifier)) is None, identifier


def test_what_a_sign_in_from_before_an_erasure_joined_is_erased_at_the_sign_ins_time(tmp_path: Path) -> None:
    """The erasure of the cookie a replayed (or backlogged) sign-in joined to an erased person carries the
    sign-in's time, so its shard fires the cookie's absences due by then first (an outside probe: whether
    the cart's email went out depended on the frontier's timer turn)."""
    flow = Stitched(tmp_path, shards=2)
    ck, ann = ("cookie", "ck"), ("customer", "ANN")
    flow.deliver(flow.identity.on_batch([EraseRequest(key(*ann), "r1", SRC, requested_at=T0 + 10 * MIN)])[0])  # type: ignore[arg-type]
    flow.send([web("c1", "add_to_cart", T0, ck, sku="s", amount=10.0)])
    routed, _ = flow.identity.on_batch([web("l1", "login", T0 + 5 * MIN, ck, ann)])
    parts = [item for _, items in routed for item in items if isinstance(item, EraseRequest)]
    assert {(p.customer, p.fire_before) for p in parts if p.customer == key(*ck)} == {(key(*ck), T0 + 5 * MIN)}
    flow.close()


def test_a_shared_cookie_no_longer_addresses_the_first_customers_decisions(tmp_path: Path) -> None:
    """Alice signs in at home, then on a kiosk: the kiosk is her newest cookie, so her ads went to it.
    Once Bob signs in there too, her profile stops naming the kiosk: her ads follow her home cookie,
    not whoever uses the kiosk next; a later link of Alice's does not bring it back."""
    flow = Stitched(tmp_path, shards=2)
    home, kiosk, alice, bob = ("cookie", "home-1"), ("cookie", "kiosk-1"), ("customer", "ALICE"), ("customer", "BOB")
    flow.send([web("a1", "login", T0, home, alice)])
    flow.send([web("a2", "login", T0 + MIN, kiosk, alice)])
    flow.epoch_end()
    before = read_profile(tmp_path, 2, key(*alice))
    assert before is not None and address_for(before["ids"], "ads") == ("cookie", key(*kiosk))
    flow.send([web("b1", "login", T0 + 2 * MIN, kiosk, bob)])
    flow.epoch_end()
    after = read_profile(tmp_path, 2, key(*alice))
    assert after is not None and after["ids"] == {"customer": [key(*alice)], "cookie": [key(*home)]}
    assert address_for(after["ids"], "ads") == ("cookie", key(*home))
    flow.send([web("a3", "login", T0 + 3 * MIN, ("email", "alice@example.com"), alice)])
    flow.epoch_end()
    merged = read_profile(tmp_path, 2, key(*alice))
    assert merged is not None and key(*kiosk) not in merged["ids"].get("cookie", [])
    assert flow.identity.state.graph.find(key(*kiosk)) == (key(*alice), "customer")  # kept for erasure
    flow.close()


def test_erasing_one_kiosk_user_erases_nobody_else_who_used_the_kiosk(tmp_path: Path) -> None:
    """An outside probe: erasing one customer erased the shared cookie with them (the graph keeps it), and
    then every other customer whose event before the erasure named that cookie, each erasing the next
    (a thousand in one backlog). A shared cookie beside someone's own identifier says nothing of whose
    the event is."""
    flow = Stitched(tmp_path, shards=2)
    kiosk, alice, bob, carol = ("cookie", "kiosk-1"), ("customer", "ALICE"), ("customer", "BOB"), ("customer", "CAROL")
    story = [web("a1", "login", T0, kiosk, alice), web("b1", "login", T0 + MIN, kiosk, bob),
             web("c1", "login", T0 + 2 * MIN, kiosk, carol),
             web("b2", "purchase", T0 + 3 * MIN, bob, kiosk, amount=30.0, order_id="ob")]
    flow.send(story)
    flow.epoch_end()
    assert key(*kiosk) in flow.identity.state.graph.shared
    flow.deliver(flow.identity.on_batch([EraseRequest(key(*alice), "r1", SRC, requested_at=T0 + 10 * MIN)])[0])  # type: ignore[arg-type]
    replayed, _ = flow.identity.on_batch(story)  # a replay reads the erasure first
    routed = [item.event_id for _, items in replayed for item in items if isinstance(item, Event)]
    assert sorted(routed) == ["b1", "b2", "c1"]  # Alice's sign-in is hers; Bob's and Carol's are theirs
    flow.deliver(replayed)
    flow.epoch_end()
    for who in (bob, carol):
        assert flow.identity.state.graph.find(key(*who)) is not None or read_profile(tmp_path, 2, key(*who)), who
    assert flow.identity.state.graph.erased.erased_at(key(*bob)) is None
    assert flow.identity.state.graph.erased.erased_at(key(*carol)) is None
    flow.close()


@pytest.mark.parametrize("order", ["live", "backlog"])
def test_erasing_the_second_person_on_a_household_cookie_keeps_the_first_ones_profile(tmp_path: Path,
                                                                                      order: str) -> None:
    """An outside probe: Ann signs in on the family computer, opts out of ads and buys; an hour later Bob
    signs in on the same cookie and is erased. Live, Bob's sign-in finds the cookie Ann's and makes it
    shared, and his erasure takes nothing of hers. In a backlog the erasure is read first (the control
    topic is not aligned): Bob's sign-in then counted as joining the cookie to him, and erasing it erased
    Ann's whole profile, her opt-out and order included (4 of 4 households, every run)."""
    flow = Stitched(tmp_path, shards=2)
    home, ann, bob, email = ("cookie", "home-1"), ("customer", "ANN"), ("customer", "BOB"), ("email", "bob@x.org")
    erase = EraseRequest(key(*bob), "r1", SRC, requested_at=T0 + 90 * MIN)
    story = [web("a1", "login", T0, home, ann),
             web("a2", "consent", T0 + MIN, ann, channel="ads", granted=False, purpose="marketing"),
             web("a3", "purchase", T0 + 2 * MIN, ann, amount=40.0, order_id="o1"),
             web("b1", "page_view", T0 + 60 * MIN, home, page_type="home"),
             web("b2", "login", T0 + 61 * MIN, home, bob, email)]
    later = [web("a4", "page_view", T0 + 120 * MIN, ("cookie", "laptop-2"), ann, page_type="home")]
    if order == "backlog":
        flow.deliver(flow.identity.on_batch([erase])[0])  # type: ignore[arg-type]
        flow.send(story + later)
    else:
        flow.send(story)
        flow.deliver(flow.identity.on_batch([erase])[0])  # type: ignore[arg-type]
        flow.send(later)
    flow.epoch_end()
    graph = flow.identity.state.graph
    assert key(*home) in graph.shared and graph.find(key(*home)) == (key(*ann), "customer")
    assert graph.erased.erased_at(key(*ann)) is None and graph.erased.erased_at(key(*home)) is None
    anns = read_profile(tmp_path, 2, key(*ann))
    assert anns is not None, order
    assert anns["facts"]["orders"] == 1 and anns["facts"]["consent"]["ads:marketing"][0] is False
    assert sorted(anns["ids"]["cookie"]) == [key("cookie", "laptop-2")]  # the shared one no longer addresses her
    assert read_profile(tmp_path, 2, key(*bob)) is None and read_profile(tmp_path, 2, key(*email)) is None
    assert graph.find(key(*email)) is None  # Bob's email, joined by his sign-in, is erased with him
    flow.close()


def test_the_sign_in_that_makes_a_cookie_shared_links_the_rest_as_its_repeat_would(tmp_path: Path) -> None:
    """Bob signs in on Alice's kiosk cookie with his customer id and email. The cookie becomes shared and
    links to nobody, but Bob's email joins Bob's profile, as the same sign-in sent again does; and the
    cookie, looked up offline, is its own profile, no longer Alice's."""
    flow = Stitched(tmp_path, shards=2)
    kiosk, alice, bob, email = ("cookie", "kiosk-1"), ("customer", "ALICE"), ("customer", "BOB"), ("email", "b@x.org")

    def routed(events: list[Event]) -> list[tuple[str, str]]:
        grouped, _ = flow.identity.on_batch(events)  # type: ignore[arg-type]
        flow.deliver(grouped)
        return [(item.event_id, item.customer) for _, items in grouped for item in items if isinstance(item, Event)]

    routed([web("a1", "login", T0, kiosk, alice)])
    assert routed([web("b1", "login", T0 + MIN, kiosk, bob, email)]) == [("b1", key(*bob))]
    graph = flow.identity.state.graph
    assert graph.find(key(*email)) == (key(*bob), "customer") and graph.shared == {key(*kiosk)}
    assert routed([web("b2", "login", T0 + 2 * MIN, kiosk, bob, email)]) == [("b2", key(*bob))]
    assert routed([web("v1", "page_view", T0 + 3 * MIN, kiosk, page_type="home")]) == [("v1", key(*kiosk))]
    flow.epoch_end()
    assert resolve_offline(tmp_path, key(*kiosk)) == (key(*kiosk), None)
    bobs = read_profile(tmp_path, 2, key(*email))
    assert bobs is not None and bobs["ids"] == {"customer": [key(*bob)], "email": [key(*email)]}
    flow.close()


def test_a_cookie_two_customers_signed_in_on_is_nobodys_afterwards(tmp_path: Path) -> None:
    """A kiosk: Alice signs in on the cookie, then Bob (refused: two customer ids). Bob's anonymous cart
    afterwards must not go to Alice's profile (and her email): it goes to the cookie's own profile, and the
    cookie links to nobody from then on. What the cookie did before stays Alice's."""
    flow = Stitched(tmp_path, shards=2)
    kiosk, alice, bob = ("cookie", "kiosk-1"), ("customer", "ALICE"), ("customer", "BOB")

    def routed(events: list[Event]) -> list[tuple[str, str]]:
        grouped, _ = flow.identity.on_batch(events)  # type: ignore[arg-type]
        return [(item.event_id, item.customer) for _, items in grouped for item in items if isinstance(item, Event)]

    assert routed([web("a1", "login", T0, alice, kiosk, ("email", "alice@example.com"))]) == [("a1", key(*alice))]
    assert routed([web("v1", "page_view", T0 + MIN, kiosk, page_type="home")]) == [("v1", key(*alice))]
    assert routed([web("b1", "login", T0 + 2 * MIN, bob, kiosk)]) == [("b1", key(*bob))]  # refused: Bob's own
    assert flow.identity.state.graph.shared == {key(*kiosk)}
    assert routed([web("c1", "add_to_cart", T0 + 3 * MIN, kiosk, sku="s", amount=99.0)]) == [("c1", key(*kiosk))]
    assert routed([web("a2", "login", T0 + 4 * MIN, alice, kiosk)]) == [("a2", key(*alice))]  # links nothing
    assert flow.identity.state.graph.find(key(*kiosk)) == (key(*alice), "customer")  # its past stays Alice's
    # Erasing Alice takes the cookie with her, its mark as shared included (no erased key stays stored).
    flow.deliver(flow.identity.on_batch([EraseRequest(key(*alice), "r1", SRC, requested_at=T0 + 5 * MIN)])[0])  # type: ignore[arg-type]
    assert flow.identity.state.graph.shared == set()
    flow.close()
