"""Merging profiles (identity stitching): the merged profile does not depend on the order in which the
events, the link and the moved profiles arrived.

What is proved here, with hypothesis, on profiles the engine built from random stories:

1. Which profile absorbs which does not matter: `merge_into` is commutative for every part
   (facts, every signal kind, history, the dedupe window, expiry bounds).
2. Merging three profiles does not depend on the grouping either (associative), for every part but
   sessions: a session is one slot, so three sessions that chain only through the middle one merge
   differently by grouping. The shard therefore merges the profiles that arrive for one link in the
   order of their keys, never in their order of arrival (`merge_all`; checked too).
3. Where the link falls in the stories does not matter: for any position of the link, and any moment
   after it at which the moved profile arrives (events of the moved identifier applied to the other
   profile first), the result equals the profile one identifier would have built from all events, for
   the durable facts, windowed counts and sums, distinct values, last values, a pending absence (a
   cart on the cookie, a purchase under the customer id after it, then the sign-in: each profile keeps
   its newest cancel, so the merge cancels the cart) and the dedupe window. One thing is left out
   because the separate profiles never held the information a merge would need: a session split by
   the link (the anonymous profile already closed it).
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators.engine.merge import merge_all, merge_into
from nextclick.operators.engine.steps import on_event, on_timers, prune
from nextclick.operators.profile.codec import decode_profile, encode_profile, profile_as_dict
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.rules.model import RuleSet
from tests.helpers import MIN, T0, default_rules, make_event, write_rules

CATEGORIES = ("shoes", "bags", "watches")
TYPES = ("page_view", "add_to_cart", "purchase", "app_purchase", "consent", "complaint", "email_open",
         "call_center_contact", "app_open")


def attrs_for(draw: st.DrawFn, event_type: str) -> dict[str, Any]:
    # Amounts are exact binary fractions: floating-point addition is exact and so associative on them,
    # as it is not in the last bit on arbitrary decimals (true of the engine's own sums too).
    amount = draw(st.integers(1, 800)) / 4
    if event_type == "page_view":
        return {"page_type": "product", "category": draw(st.sampled_from(CATEGORIES))}
    if event_type == "add_to_cart":
        return {"sku": f"sku-{draw(st.integers(1, 5))}", "amount": amount,
                "category": draw(st.sampled_from(CATEGORIES))}
    if event_type in ("purchase", "app_purchase"):
        return {"order_id": "o", "amount": amount, "category": draw(st.sampled_from(CATEGORIES))}
    if event_type == "consent":
        return {"channel": draw(st.sampled_from(("email", "all", "push"))), "purpose": "marketing",
                "granted": draw(st.booleans())}
    if event_type == "call_center_contact":
        return {"topic": "billing", "outcome": draw(st.sampled_from(("resolved", "unresolved")))}
    return {}


@st.composite
def stories(draw: st.DrawFn, who: str = "AC", types: tuple[str, ...] = TYPES, max_size: int = 30,
            max_gap_min: int = 40) -> list[tuple[str, Any]]:
    """Events in event-time order, each by one of the identifiers in `who`, with unique ids."""
    ts = T0
    out = []
    for n in range(draw(st.integers(1, max_size))):
        ts += draw(st.integers(1, max_gap_min * MIN))
        event_type = draw(st.sampled_from(types))
        owner = draw(st.sampled_from(who))
        out.append((owner, make_event(event_type, ts, customer=owner, event_id=f"{owner}-{n}",
                                      **attrs_for(draw, event_type))))
    return out


def built(events: list[tuple[str, Any]], who: str, ruleset: RuleSet) -> Profile:
    profile = new_profile(who)
    for owner, event in events:
        if owner == who:
            on_event(profile, event, ruleset)
    return profile


def clone(profile: Profile) -> Profile:
    return decode_profile(encode_profile(profile))


def view(profile: Profile, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile as plain data, whoever it is keyed by."""
    data = profile_as_dict(profile)
    data["customer"] = "-"
    for name in without:
        data["signals"].pop(name, None)
    return data


def merged(target: Profile, *others: Profile, ruleset: RuleSet) -> Profile:
    result = clone(target)
    for other in others:
        merge_into(result, clone(other), ruleset)
    return result


@settings(max_examples=150, deadline=None)
@given(story=stories(who="PQ"))
def test_which_profile_absorbs_which_does_not_matter(story: list[tuple[str, Any]]) -> None:
    rules = default_rules()
    p, q = built(story, "P", rules), built(story, "Q", rules)
    before = (view(p), view(q))
    assert view(merged(p, q, ruleset=rules)) == view(merged(q, p, ruleset=rules))
    assert (view(p), view(q)) == before  # neither input is changed
    assert view(merged(p, new_profile("E"), ruleset=rules)) == view(p)  # nothing merges as nothing


@settings(max_examples=150, deadline=None)
@given(story=stories(who="PQR"))
def test_three_profiles_merge_the_same_in_any_grouping_and_the_shard_never_depends_on_arrival(
        story: list[tuple[str, Any]]) -> None:
    rules = default_rules()
    p, q, r = (built(story, who, rules) for who in "PQR")
    left = merged(merged(p, q, ruleset=rules), r, ruleset=rules)
    right = merged(p, merged(q, r, ruleset=rules), ruleset=rules)
    assert view(left, without=("session",)) == view(right, without=("session",))
    # What the shard does with the profiles one link moves: the same whatever order they arrived in.
    results = []
    for arrival in ([p, q, r], [r, q, p], [q, r, p]):
        target = new_profile("W")
        merge_all(target, [clone(x) for x in arrival], rules)
        results.append(view(target))
    assert results[0] == results[1] == results[2]


# -- where the link falls ----------------------------------------------------------------------------

SIGNALS_ONLY = """
[signals.views_30m]
kind = "count"
events = ["page_view", "app_open"]
window = "30m"

[signals.cart_value_1h]
kind = "sum"
events = ["add_to_cart"]
field = "amount"
window = "1h"

[signals.spend_2h]
kind = "sum"
events = ["purchase", "app_purchase"]
field = "amount"
window = "2h"
type = "tumbling"

[signals.categories_1h]
kind = "distinct"
events = ["page_view", "add_to_cart"]
field = "category"
window = "1h"

[signals.last_category]
kind = "last"
events = ["page_view", "add_to_cart"]
field = "category"
window = "45m"

[signals.cart_open]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase", "app_purchase"]
after = "60m"
carry = ["sku"]

# A rules file needs a rule; this one never decides. Decisions two separate profiles made before a link
# stay made (their history merges as a union, above), so they are not what this property is about.
[[rule]]
id = "never"
on = ["page_view"]
when = ["views_30m < 0"]
action = "none"
channel = "web"
"""


def settled(profile: Profile, ruleset: RuleSet) -> dict[str, Any]:
    """The profile as the next turn sees it: everything that expired by its newest event is pruned."""
    profile = clone(profile)
    if profile.facts.last_seen is not None:
        profile.prune_at = -1  # a full pass, whatever the bounds say
        prune(profile, ruleset, profile.facts.last_seen - ruleset.late.allowed_lateness_ms)
    data = view(profile)
    data.pop("prune_at"), data.pop("expire_at")  # bounds: conservative either way, exact after a pass
    data["signals"] = {k: sorted(v, key=repr) if k == "categories_1h" else v for k, v in data["signals"].items()}
    return data


def linked_at(story: list[tuple[str, Any]], link: int, moved_at: int, ruleset: RuleSet) -> Profile:
    """A's and C's events before `link` go to their own profiles; after it, to C's; A's profile is
    merged into C's when the `moved_at`-th event has been applied (>= link: it may come late)."""
    a, c = new_profile("A"), new_profile("C")
    merged_yet = False
    for n, (owner, event) in enumerate(story):
        if n == moved_at and not merged_yet:
            merge_into(c, a, ruleset)
            merged_yet = True
        target = a if (owner == "A" and n < link) else c
        on_event(target, event, ruleset)
    if not merged_yet:
        merge_into(c, a, ruleset)
    return c


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_merged_profile_does_not_depend_on_when_the_link_or_the_moved_profile_arrived(
        data: st.DataObject, tmp_path_factory: Any) -> None:
    ruleset = _signals_only(tmp_path_factory)
    story = data.draw(stories(max_gap_min=25))
    reference = settled(linked_at(story, 0, 0, ruleset), ruleset)  # one profile from the start
    link = data.draw(st.integers(0, len(story)))
    moved_at = data.draw(st.integers(link, len(story)))
    assert settled(linked_at(story, link, moved_at, ruleset), ruleset) == reference


_RULESET: list[RuleSet] = []


def _signals_only(tmp_path_factory: Any) -> RuleSet:
    if not _RULESET:
        from nextclick.operators.rules.loader import load_rules

        _RULESET.append(load_rules(write_rules(tmp_path_factory.mktemp("rules"), SIGNALS_ONLY)))
    return _RULESET[0]


def test_a_reference_story_really_exercises_every_part(tmp_path_factory: Any) -> None:
    """The property above is not vacuous: a story where both identifiers touch every part."""
    ruleset = _signals_only(tmp_path_factory)
    story = []
    for n, (who, event_type, attrs) in enumerate([
            ("A", "page_view", {"category": "shoes"}), ("C", "consent", {"channel": "email", "granted": True}),
            ("A", "add_to_cart", {"amount": 20.0, "category": "bags"}), ("C", "page_view", {"category": "shoes"}),
            ("C", "purchase", {"amount": 30.0}), ("A", "app_purchase", {"amount": 12.5}),
            ("A", "add_to_cart", {"amount": 5.0, "category": "watches"}), ("C", "app_open", {})]):
        story.append((who, make_event(event_type, T0 + n * MIN, customer=who, event_id=f"{who}{n}", **attrs)))
    reference = settled(linked_at(story, 0, 0, ruleset), ruleset)
    assert reference["signals"]["views_30m"] and reference["signals"]["cart_value_1h"]
    assert reference["facts"]["orders"] == 2 and reference["facts"]["revenue"] == 42.5
    assert reference["signals"]["cart_open"][:2] == [T0 + 6 * MIN, T0 + 66 * MIN]
    assert sorted(reference["signals"]["categories_1h"]) == [["bags", T0 + 2 * MIN], ["shoes", T0 + 3 * MIN],
                                                              ["watches", T0 + 6 * MIN]]
    for link in range(len(story) + 1):
        for moved_at in range(link, len(story) + 1):
            assert settled(linked_at(story, link, moved_at, ruleset), ruleset) == reference, (link, moved_at)


# -- the rules of the parts that carry over ---------------------------------------------------------

def test_a_pending_absence_carries_over_and_of_two_the_later_start_wins() -> None:
    rules = default_rules()
    anonymous, known = new_profile("A"), new_profile("C")
    on_event(anonymous, make_event("add_to_cart", T0, customer="A", amount=40.0, sku="s1"), rules)
    merged_profile = merged(known, anonymous, ruleset=rules)
    assert merged_profile.signals["cart_abandoned"] == [T0, T0 + 60 * MIN, {"sku": "s1", "amount": 40.0}]
    on_event(known, make_event("add_to_cart", T0 + 5 * MIN, customer="C", amount=15.0, sku="s2"), rules)
    assert merged(known, anonymous, ruleset=rules).signals["cart_abandoned"][0] == T0 + 5 * MIN
    assert merged(anonymous, known, ruleset=rules).signals["cart_abandoned"][0] == T0 + 5 * MIN


def test_a_purchase_under_the_other_identifier_after_the_cart_cancels_it_at_the_sign_in() -> None:
    """A cart on the cookie, a store purchase under the customer id 5 minutes later, the sign-in that
    links them 5 minutes after that: no cart reminder, as if the customer had been signed in all along,
    whichever profile absorbs the other; a cart added after the purchase still waits."""
    rules = default_rules()
    cookie, customer = new_profile("A"), new_profile("C")
    on_event(cookie, make_event("add_to_cart", T0, customer="A", amount=40.0, sku="s1"), rules)
    on_event(customer, make_event("store_purchase", T0 + 5 * MIN, customer="C", amount=40.0), rules)
    for one in (merged(customer, cookie, ruleset=rules), merged(cookie, customer, ruleset=rules)):
        assert "cart_abandoned" not in one.signals
        out = on_timers(one, rules, T0 + 3 * 60 * MIN)
        assert [d.rule_id for d in out.decisions] == []
    on_event(cookie, make_event("add_to_cart", T0 + 7 * MIN, customer="A", amount=15.0, sku="s2"), rules)
    assert merged(customer, cookie, ruleset=rules).signals["cart_abandoned"][0] == T0 + 7 * MIN


def test_a_cart_added_before_a_purchase_that_arrives_after_it_starts_nothing() -> None:
    rules = default_rules()
    profile = new_profile("C")
    on_event(profile, make_event("purchase", T0 + 5 * MIN, customer="C", amount=40.0, order_id="o1"), rules)
    on_event(profile, make_event("add_to_cart", T0 + 2 * MIN, customer="C", amount=40.0, sku="s1"), rules)
    assert "cart_abandoned" not in profile.signals
    on_event(profile, make_event("add_to_cart", T0 + 6 * MIN, customer="C", amount=40.0, sku="s2"), rules)
    assert profile.signals["cart_abandoned"][0] == T0 + 6 * MIN


FIRST_ADD = SIGNALS_ONLY + """
[signals.first_add]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase"]
after = "30m"
restart = false
"""


def test_a_cancel_clears_both_sides_before_an_earliest_start_absence_merges(tmp_path: Any) -> None:
    """`restart = false` keeps the earliest start: merged first, the cart the purchase cancelled would
    win over the one added after it, and the cancel would then take both."""
    from nextclick.operators.rules.loader import load_rules

    rules = load_rules(write_rules(tmp_path, FIRST_ADD))
    a, c = new_profile("A"), new_profile("C")
    on_event(a, make_event("add_to_cart", T0, customer="A", amount=10.0, sku="s1"), rules)
    on_event(c, make_event("purchase", T0 + 2 * MIN, customer="C", amount=10.0, order_id="o1"), rules)
    on_event(c, make_event("add_to_cart", T0 + 3 * MIN, customer="C", amount=10.0, sku="s2"), rules)
    for one in (merged(c, a, ruleset=rules), merged(a, c, ruleset=rules)):
        assert one.signals["first_add"][:2] == [T0 + 3 * MIN, T0 + 33 * MIN]


def test_cooldowns_and_caps_become_their_union() -> None:
    rules = default_rules()
    a, c = new_profile("A"), new_profile("C")
    a.history.fired["post_purchase_cross_sell"] = [T0, T0 + 3 * 24 * 60 * MIN]
    c.history.fired["post_purchase_cross_sell"] = [T0 - MIN, T0 + MIN]
    c.history.fired["call_center_follow_up"] = [T0, T0 + 24 * 60 * MIN]
    a.history.sent["email"] = [[T0, T0 + 24 * 60 * MIN]]
    c.history.sent["email"] = [[T0 - MIN, T0 + 24 * 60 * MIN - MIN], [T0 + MIN, T0 + 24 * 60 * MIN + MIN]]
    m = merged(c, a, ruleset=rules)
    assert m.history.fired == {"post_purchase_cross_sell": [T0, T0 + 3 * 24 * 60 * MIN],
                               "call_center_follow_up": [T0, T0 + 24 * 60 * MIN]}
    assert m.history.sent["email"] == sorted(a.history.sent["email"] + c.history.sent["email"])


def test_facts_merge_as_one_profile_would_have_counted_them() -> None:
    rules = default_rules()
    a, c = new_profile("A"), new_profile("C")
    on_event(a, make_event("purchase", T0, customer="A", amount=10.10, order_id="o1"), rules)
    on_event(a, make_event("consent", T0 + MIN, customer="A", channel="email", granted=False, purpose="marketing",
                           event_id="x2"), rules)
    on_event(c, make_event("consent", T0 + MIN, customer="C", channel="email", granted=True, purpose="marketing",
                           event_id="x1"), rules)
    on_event(c, make_event("store_purchase", T0 + 2 * MIN, customer="C", amount=5.25, order_id="o2"), rules)
    m = merged(c, a, ruleset=rules)
    f = m.facts
    assert (f.version, f.orders, f.revenue, f.first_seen, f.last_seen) == (4, 2, 15.35, T0, T0 + 2 * MIN)
    assert (f.first_purchase, f.last_purchase) == (T0, T0 + 2 * MIN)
    assert f.contacts == {"web": 3, "store": 1}
    # The same (ts), so the consent with the greater event id wins, whichever side it came from.
    assert f.consent["email:marketing"][:3] == [False, T0 + MIN, "x2"]
    assert copy.deepcopy(m.facts) == merged(a, c, ruleset=rules).facts


# -- signals with options (operators/signals/options.py, groups.py, absence.Tally) -------------------

OPTIONS = """
[signals.views_by_category]
kind = "count"
events = ["page_view", "add_to_cart"]
by = "category"
max_groups = 2
window = "2h"
reset_on = ["purchase"]

[signals.spend_by_category]
kind = "sum"
events = ["purchase", "app_purchase"]
field = "amount"
by = "category"
window = "6h"

[signals.skus_by_category]
kind = "distinct"
events = ["add_to_cart"]
field = "sku"
by = "category"
window = "6h"

[signals.carts_since_purchase]
kind = "count"
events = ["add_to_cart"]
where = ["amount >= 20"]
reset_on = ["purchase", "app_purchase"]
window = "6h"
bucket = "12m"

[signals.cart]
kind = "absence"
start = ["add_to_cart"]
cancel = ["purchase", "app_purchase"]
after = "60m"
carry = ["sku"]
sum = { cart_value = "amount" }
count = "items"

[[rule]]
id = "never"
on = ["page_view"]
when = ["carts_since_purchase < 0"]
action = "none"
channel = "web"
"""


def _options(tmp_path_factory: Any) -> RuleSet:
    from nextclick.operators.rules.loader import load_rules

    return load_rules(write_rules(tmp_path_factory.mktemp("options"), OPTIONS))


@settings(max_examples=150, deadline=None)
@given(story=stories(who="PQR", max_size=40, max_gap_min=20))
def test_signals_with_options_merge_in_any_order_and_grouping(story: list[tuple[str, Any]],
                                                              tmp_path_factory: Any) -> None:
    """Commutative for every part; associative too but for a group set held at `max_groups` (like a
    session, a bounded slot: a group one grouping drops at the cap another keeps) and an absence's
    totals (two pending carts merged first add up before a third profile's purchase, made between
    them, can take the older one's share out), which is why the shard merges in the order of the keys."""
    rules = _options(tmp_path_factory)
    p, q, r = (built(story, who, rules) for who in "PQR")
    assert view(merged(p, q, ruleset=rules)) == view(merged(q, p, ruleset=rules))
    capped = ("views_by_category", "cart")
    assert view(merged(merged(p, q, ruleset=rules), r, ruleset=rules), without=capped) == \
        view(merged(p, merged(q, r, ruleset=rules), ruleset=rules), without=capped)


def test_a_reset_on_either_side_clears_what_the_other_gathered_before_it(tmp_path_factory: Any) -> None:
    rules = _options(tmp_path_factory)
    a, c = new_profile("A"), new_profile("C")
    # Buckets of 12 minutes (set in OPTIONS): the reset at +13m clears the buckets up to the one it falls in.
    on_event(a, make_event("add_to_cart", T0, customer="A", amount=30.0, sku="s1", category="bags"), rules)
    on_event(a, make_event("add_to_cart", T0 + 30 * MIN, customer="A", amount=25.0, sku="s2", category="bags"),
             rules)
    on_event(c, make_event("purchase", T0 + 13 * MIN, customer="C", amount=40.0, category="bags"), rules)
    m = merged(c, a, ruleset=rules)
    # The purchase at +13m reset the count: only the cart at +30m is left, as in one profile.
    one = new_profile("O")
    for event in [make_event("add_to_cart", T0, customer="O", amount=30.0, sku="s1", category="bags"),
                  make_event("purchase", T0 + 13 * MIN, customer="O", amount=40.0, category="bags"),
                  make_event("add_to_cart", T0 + 30 * MIN, customer="O", amount=25.0, sku="s2", category="bags")]:
        on_event(one, event, rules)
    assert one.signals["carts_since_purchase"] == [[T0 + 24 * MIN, 1.0]]
    for name in ("carts_since_purchase", "views_by_category", "carts_since_purchase@reset"):
        assert m.signals.get(name) == one.signals.get(name), name
    # Grouped: group by group; the absence carries its totals over, added up.
    assert m.signals["spend_by_category"] == {"bags": [[T0 + 13 * MIN, 40.0]]}  # 1-minute buckets (6h / 30, at most 1m)
    assert m.signals["skus_by_category"] == {"bags": [["s1", T0], ["s2", T0 + 30 * MIN]]}
    b = new_profile("B")
    on_event(b, make_event("add_to_cart", T0 + MIN, customer="B", amount=10.0, sku="s9", category="shoes"), rules)
    cart = merged(b, a, ruleset=rules).signals["cart"]
    assert cart[0] == T0 + 30 * MIN and cart[3] == {"cart_value": 65.0, "items": 3}
