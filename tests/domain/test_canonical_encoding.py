"""One canonical encoding: two profiles equal as values store the same bytes (issue 22, item 4).

The five-topic and one-topic runs of the same events must store the same profiles, so nothing that
depends only on the order in which parts were built may reach the bytes: dicts are stored sorted,
a distinct signal's members by value, a channel's sent history by time, and ties that the
arrival order used to break (groups at the cap, `.top`, a `last` or an absence start at the same
time) are broken by value. The one order kept is the dedupe window's: it is its arrival order, which
says which id goes first at the cap (operators/profile/dedupe.py), so where the same events arrive in
another order the properties below give both profiles the same window order before comparing bytes.

Proved with hypothesis:

1. The same events applied in two orders: where the profiles are equal as values, their bytes and
   what `nextclick profile get` prints are equal.
2. A distinct signal's members inserted in any order, with or without the cap, store the same bytes.
3. Merges: either profile absorbing the other stores the same bytes.
4. The same profile with every dict built in another order stores the same bytes.
5. decode(encode(p)) re-encodes to the same bytes.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.engine.merge import merge_into
from nextclick.operators.engine.steps import on_event, prune
from nextclick.operators.profile import history
from nextclick.operators.profile.codec import decode_profile, encode_profile, profile_as_dict, stored_as_dict
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.records import Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.signals.buckets import BucketPart
from nextclick.operators.signals.distinct import Distinct
from nextclick.operators.signals.groups import Grouped
from nextclick.operators.signals.window import Window
from tests.helpers import DAY, HOUR, MIN, T0, default_rules, make_event, write_rules

# Order-independent signals of every kind that has a set-like or tie-broken part. Late events still
# apply (policy "apply"), the absence never fires within a story (after 30d), so the same events in
# any order usually give equal profiles; where they do not (a cancel before its start, a reset, a
# group dropped at the cap and seen again), property 1 compares nothing.
SIGNALS = """
[late]
allowed_lateness = "5m"
policy = "apply"

[signals.views_30m]
kind = "count"
events = ["page_view", "app_open"]
window = "30m"

[signals.cart_value_1h]
kind = "sum"
events = ["add_to_cart"]
field = "amount"
window = "1h"

[signals.categories_1h]
kind = "distinct"
events = ["page_view", "add_to_cart"]
field = "category"
window = "1h"

[signals.skus_by_category]
kind = "distinct"
events = ["add_to_cart"]
field = "sku"
by = "category"
window = "1h"

[signals.views_by_category]
kind = "count"
events = ["page_view"]
by = "category"
window = "30m"
max_groups = 3

[signals.last_sku]
kind = "last"
events = ["add_to_cart"]
field = "sku"
window = "45m"

[signals.cart]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "30d"
carry = ["sku", "category"]
sum = { cart_value = "amount" }
count = "items"

[[rule]]
id = "never"
on = ["page_view"]
when = ["views_30m < 0"]
action = "none"
channel = "web"
"""

CATEGORIES = ("shoes", "bags", "watches", "hats")
SKUS = ("sku-1", "sku-2", "sku-3", "sku-4", "sku-5")
TYPES = ("page_view", "page_view", "add_to_cart", "add_to_cart", "app_open", "purchase", "consent")

_RULES: list[RuleSet] = []


def signals_rules(tmp_path_factory: Any) -> RuleSet:
    if not _RULES:
        _RULES.append(load_rules(write_rules(tmp_path_factory.mktemp("rules"), SIGNALS)))
    return _RULES[0]


@st.composite
def events(draw: st.DrawFn, max_size: int = 25) -> list[Event]:
    """Events on few distinct times (ties are what arrival order used to break), with unique ids.
    Amounts are binary fractions, so sums are exact in any order."""
    out = []
    for n in range(draw(st.integers(1, max_size))):
        event_type = draw(st.sampled_from(TYPES))
        ts = T0 + draw(st.integers(0, 12)) * 5 * MIN
        attrs: dict[str, Any] = {}
        if event_type in ("page_view", "add_to_cart"):
            attrs["category"] = draw(st.sampled_from(CATEGORIES))
        if event_type == "page_view":
            attrs["page_type"] = "product"
        if event_type == "add_to_cart":
            attrs.update(sku=draw(st.sampled_from(SKUS)), amount=draw(st.integers(1, 400)) / 4)
        if event_type == "purchase":
            attrs.update(order_id="o", amount=draw(st.integers(1, 400)) / 4)
        if event_type == "consent":
            attrs.update(channel=draw(st.sampled_from(("email", "all"))), purpose="marketing",
                         granted=draw(st.booleans()))
        out.append(make_event(event_type, ts, customer="c", event_id=f"e{n}", **attrs))
    return out


def built(story: list[Event], ruleset: RuleSet) -> Profile:
    """The profile of these events in this order, with everything that expired by its newest event
    pruned (pruning runs when a bound is due, which depends on the order; the state at rest does not)."""
    profile = new_profile("c")
    for event in story:
        on_event(profile, event, ruleset)
    if profile.facts.last_seen is not None:
        profile.prune_at = -1  # a full pass, whatever the bounds say
        prune(profile, ruleset, profile.facts.last_seen - ruleset.late.allowed_lateness_ms)
    return profile


def as_value(profile: Profile) -> Any:
    """The profile as a value: dicts compare as dicts, set-like lists as sets (by their items' text),
    the dedupe window as a dict. What the bytes must not depend on is left out, nothing else."""
    data = profile_as_dict(profile)

    def unordered(state: Any) -> Any:
        if isinstance(state, dict):
            return {k: unordered(v) for k, v in state.items()}
        return sorted(state, key=repr)

    for name in ("categories_1h", "skus_by_category"):
        if name in data["signals"]:
            data["signals"][name] = unordered(data["signals"][name])
    data["history"]["sent"] = {c: sorted(v) for c, v in data["history"]["sent"].items()}
    return data


def same_window_order(profile: Profile, like: Profile) -> Profile:
    """`profile` with its dedupe window in `like`'s order: that order is arrival order, and meant."""
    out = copy.deepcopy(profile)
    out.seen = {event_id: profile.seen[event_id] for event_id in like.seen}
    return out


def printed(blob: bytes) -> bytes:
    """What `nextclick profile get` prints of a stored profile (flows/cli.py prints it with orjson)."""
    return orjson.dumps(stored_as_dict(blob))


# -- 1. the same events in two orders ------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_same_events_in_another_order_store_the_same_bytes(data: st.DataObject, tmp_path_factory: Any) -> None:
    ruleset = signals_rules(tmp_path_factory)
    story = data.draw(events())
    other = data.draw(st.permutations(story))
    p, q = built(story, ruleset), built(list(other), ruleset)
    if as_value(p) != as_value(q):
        return  # an order-dependent part differs (see SIGNALS): not equal profiles, nothing to compare
    q = same_window_order(q, p)
    assert encode_profile(q) == encode_profile(p)
    assert printed(encode_profile(q)) == printed(encode_profile(p))
    assert orjson.dumps(profile_as_dict(q)) == orjson.dumps(profile_as_dict(p))


def test_a_story_in_two_orders_fills_every_part_and_stores_the_same_bytes(tmp_path_factory: Any) -> None:
    """Property 1 is not vacuous: a fixed story whose two orders differ in every order-carrying part."""
    ruleset = signals_rules(tmp_path_factory)
    story = [
        make_event("add_to_cart", T0, customer="c", event_id="a", sku="sku-2", category="shoes", amount=2.5),
        make_event("add_to_cart", T0, customer="c", event_id="b", sku="sku-1", category="bags", amount=1.25),
        make_event("page_view", T0 + MIN, customer="c", event_id="c", category="hats", page_type="product"),
        make_event("page_view", T0 + MIN, customer="c", event_id="d", category="watches", page_type="product"),
        make_event("consent", T0 + 2 * MIN, customer="c", event_id="e", channel="email", purpose="marketing",
                   granted=True),
        make_event("app_open", T0 + 2 * MIN, customer="c", event_id="f"),
    ]
    p, q = built(story, ruleset), built(story[::-1], ruleset)
    assert as_value(p) == as_value(q)
    assert len(p.signals["categories_1h"]) == 4 and p.signals["last_sku"] == [T0, "sku-2"]
    assert set(p.signals["skus_by_category"]) == {"shoes", "bags"} and p.signals["cart"][3]["items"] == 2
    assert list(p.seen) != list(q.seen)  # the window's order is arrival order...
    assert encode_profile(same_window_order(q, p)) == encode_profile(p)  # ...and the only one kept


# -- 2. a distinct signal's members -------------------------------------------------------------

MEMBERS = st.lists(st.tuples(st.sampled_from(("a", "b", "c", "d", "e", 7, 8)), st.integers(0, 6)), max_size=30)


def distinct_bytes(signal: Distinct, pairs: list[tuple[Any, int]]) -> bytes:
    profile = new_profile("c")
    for n, (value, ts) in enumerate(pairs):
        signal.apply(profile, make_event("page_view", T0 + ts * MIN, customer="c", event_id=f"e{n}", v=value))
    profile.seen = {}
    return encode_profile(profile)


@settings(max_examples=300, deadline=None)
@given(pairs=MEMBERS, data=st.data(), cap=st.integers(1, 8))
def test_a_distinct_signals_members_in_any_order_store_the_same_bytes(pairs: list[tuple[Any, int]],
                                                                      data: st.DataObject, cap: int) -> None:
    window = Window(HOUR, True, MIN)
    other = data.draw(st.permutations(pairs))
    for signal in (Distinct("d", frozenset({"page_view"}), window, "v"),
                   Distinct("d", frozenset({"page_view"}), window, "v", max_distinct=cap)):
        assert distinct_bytes(signal, list(other)) == distinct_bytes(signal, pairs)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from((1, 1.0, True, 0.0, -0.0, 0, "1")), st.integers(0, 3)),
                      max_size=12), data=st.data())
def test_equal_values_written_differently_are_one_member_written_one_way(pairs: list[tuple[Any, int]],
                                                                         data: st.DataObject) -> None:
    signal = Distinct("d", frozenset({"page_view"}), Window(HOUR, True, MIN), "v")
    other = data.draw(st.permutations(pairs))
    assert distinct_bytes(signal, list(other)) == distinct_bytes(signal, pairs)


# -- ties and time order that arrival order used to decide ---------------------------------------

@settings(max_examples=200, deadline=None)
@given(decisions=st.lists(st.tuples(st.sampled_from(("r1", "r2")), st.sampled_from(("email", "sms")),
                                    st.integers(0, 20)), max_size=12), data=st.data())
def test_decisions_recorded_out_of_time_order_store_the_same_bytes(decisions: list[tuple[str, str, int]],
                                                                   data: st.DataObject) -> None:
    """An absence fired by a timer turn is decided after later events' decisions: the sent lists stay
    in time order and a cooldown keeps its later end, whatever order the decisions came in."""
    def recorded(order: list[tuple[str, str, int]]) -> bytes:
        profile = new_profile("c")
        for rule_id, channel, minute in order:
            history.record(profile, rule_id, channel, T0 + minute * MIN, HOUR if rule_id == "r1" else 0, DAY)
        return encode_profile(profile)

    assert recorded(list(data.draw(st.permutations(decisions)))) == recorded(decisions)


@settings(max_examples=100, deadline=None)
@given(minutes=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)), data=st.data())
def test_groups_at_the_cap_and_the_busiest_group_do_not_depend_on_arrival(minutes: tuple[int, int, int],
                                                                          data: st.DataObject) -> None:
    """Three groups, one event each, at most two kept: of groups last seen at the same time, the one
    dropped and the `.top` one go by name, not by which came first."""
    window = Window(HOUR, True, MIN)
    signal = Grouped("g", "count", frozenset({"page_view"}), window, "category", 2,
                     BucketPart("g", window, lambda _event: 1.0, int))
    views = [make_event("page_view", T0 + m * MIN, "c", f"e{n}", category=CATEGORIES[n]) for n, m in enumerate(minutes)]

    def grouped(order: list[Event]) -> Profile:
        profile = new_profile("c")
        for event in order:
            signal.apply(profile, event)
        return profile

    p, q = grouped(views), grouped(list(data.draw(st.permutations(views))))
    assert encode_profile(p) == encode_profile(q)
    at = T0 + 3 * MIN
    top = signal.value("g.top", p.signals["g"], at)
    assert top == signal.value("g.top", q.signals["g"], at)
    assert top == signal.value("g.top", dict(reversed(p.signals["g"].items())), at)
    assert top == signal.value("g.top", decode_profile(encode_profile(p)).signals["g"], at)


# -- 3. merges ----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_either_profile_absorbing_the_other_stores_the_same_bytes(data: st.DataObject) -> None:
    rules = default_rules()
    p, q = new_profile("k"), new_profile("k")  # the shard keeps one key; which profile it was is moot
    for n, event in enumerate(data.draw(events(max_size=30))):
        on_event(p if data.draw(st.booleans()) else q, make_event(event.type, event.ts, "k", f"m{n}", **event.attrs),
                 rules)
    pq, qp = decode_profile(encode_profile(p)), decode_profile(encode_profile(q))
    merge_into(pq, q, rules)
    merge_into(qp, p, rules)
    assert encode_profile(pq) == encode_profile(qp)
    assert printed(encode_profile(pq)) == printed(encode_profile(qp))


# -- 4. the same value, built in another order --------------------------------------------------

def rebuilt(value: Any, *, keep: bool = False) -> Any:
    """The same value with every dict's insertion order reversed (but where `keep`), lists as they are."""
    if isinstance(value, dict):
        items = [(k, rebuilt(v)) for k, v in value.items()]
        return dict(items if keep else items[::-1])
    if isinstance(value, list):
        return [rebuilt(v) for v in value]
    return value


def reversed_dicts(profile: Profile) -> Profile:
    out = copy.deepcopy(profile)
    for part in (out, out.facts, out.history):
        for field in part.__struct_fields__:
            setattr(part, field, rebuilt(getattr(part, field), keep=field == "seen"))
    return out


@settings(max_examples=150, deadline=None)
@given(story=events(max_size=30))
def test_every_dict_built_in_another_order_stores_the_same_bytes(story: list[Event], tmp_path_factory: Any) -> None:
    for ruleset in (default_rules(), signals_rules(tmp_path_factory)):
        profile = new_profile("c")
        for event in story:
            on_event(profile, event, ruleset)
        profile.ids = {"email": ["k1", "k2"], "customer": ["c"]}
        other = reversed_dicts(profile)
        assert other == profile
        assert encode_profile(other) == encode_profile(profile)
        assert printed(encode_profile(other)) == printed(encode_profile(profile))


# -- 5. the round trip --------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(story=events(max_size=40))
def test_a_decoded_profile_re_encodes_to_the_same_bytes(story: list[Event], tmp_path_factory: Any) -> None:
    for ruleset in (default_rules(), signals_rules(tmp_path_factory)):
        profile = new_profile("c")
        for event in story:
            on_event(profile, event, ruleset)
        blob = encode_profile(profile)
        again = decode_profile(blob)
        assert again == profile and list(again.seen) == list(profile.seen)  # the window keeps its order
        assert encode_profile(again) == blob
