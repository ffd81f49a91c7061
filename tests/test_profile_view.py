"""The profile view without a broker: which records a shard's checkpoint gives, their schema, the service's
index whatever order records arrive in, and the topic plan."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import orjson
import pytest

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.io.profile_view import view_record
from nextclick.operators.io.topics import plan_topics
from nextclick.operators.io.view_index import ViewIndex
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from tests.helpers import MIN, SEC, T0, consent, default_rules, make_event

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "profile.v1.json").read_text())


def _shard(tmp_path: Path, published: list[list[tuple[str, Profile | None]]], clock: ManualClock,
           erased: list[set[str]] | None = None) -> ShardLogic:
    def publish(changes: list[tuple[str, Profile | None]], gone: set[str]) -> int:
        published.append(changes)
        if erased is not None:
            erased.append(gone)
        return len(changes)

    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock, view=publish)
    return ShardLogic(ctx, None)


def test_a_checkpoint_publishes_each_profile_changed_in_its_epoch_once_and_a_tombstone_for_an_erased_one(
        tmp_path: Path) -> None:
    published: list[list[tuple[str, Profile | None]]] = []
    erased: list[set[str]] = []
    clock = ManualClock(T0 + 10 * MIN)
    shard = _shard(tmp_path, published, clock, erased)
    shard.on_batch([consent(T0, customer="c1"), make_event("page_view", T0, customer="c2"),
                    make_event("purchase", T0 + SEC, customer="c1", order_id="o1", amount=20.0)])
    shard.snapshot()
    assert [(k, p is not None and p.facts.version) for k, p in published[-1]] == [("profiles/c1", 2),
                                                                                  ("profiles/c2", 1)]
    shard.on_batch([make_event("page_view", T0 + MIN, customer="c1")])
    shard.snapshot()
    assert [k for k, _ in published[-1]] == ["profiles/c1"]  # only what changed
    count = len(published)
    shard.snapshot()
    assert len(published) == count  # an epoch that changed nothing writes nothing
    shard.erase("c2")
    shard.snapshot()
    assert published[-1] == [("profiles/c2", None)]
    assert erased[-1] == {"profiles/c2"} and erased[0] == set()  # its tombstone says it was erased
    shard.store.close()


def test_a_profile_evicted_from_the_cache_is_published_as_stored(tmp_path: Path) -> None:
    published: list[list[tuple[str, Profile | None]]] = []
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + MIN),
                       cache_profiles=1, view=lambda changes, _erased: published.append(changes) or len(changes))
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("page_view", T0, customer=f"c{n}") for n in range(3)])
    shard.snapshot()
    assert sorted(k for k, _ in published[0]) == ["profiles/c0", "profiles/c1", "profiles/c2"]
    assert all(p is not None and p.facts.version == 1 for _, p in published[0])
    shard.store.close()


def test_a_view_record_has_the_schema_and_no_personal_data(tmp_path: Path) -> None:
    published: list[list[tuple[str, Profile | None]]] = []
    clock = ManualClock(T0 + 10 * MIN)
    shard = _shard(tmp_path, published, clock)
    shard.on_batch([consent(T0, customer="c1"),
                    make_event("add_to_cart", T0 + SEC, customer="c1", sku="s1", amount=30.0),
                    make_event("purchase", T0 + 2 * SEC, customer="c1", order_id="o1", amount=20.0, currency="usd"),
                    make_event("add_to_cart", T0 + 3 * SEC, customer="c1", sku="s2", amount=10.0)])
    shard.snapshot()
    ((key, profile),) = published[-1]
    assert profile is not None
    profile.ids = {"customer": ["c1"]}
    rkey, value = view_record(key, profile, default_rules(), T0 + 10 * MIN)
    assert value is not None and rkey == b"profiles/c1"
    body = orjson.loads(value)
    jsonschema.validate(body, SCHEMA)
    assert body["recent_orders"] == [{"ts": T0 + 2 * SEC, "order_id": "o1", "amount": 20.0, "currency": "USD",
                                      "channel": "web", "category": None}]
    assert body["consent"] == {"email:marketing": {"granted": True, "ts": T0}}
    assert body["pending_absences"]["cart_abandoned"]["since"] == T0 + 3 * SEC
    assert body["recent_decisions"]["rules"]  # the purchase's cross-sell
    assert body["attributes"]["last_order_channel"] == "web" and body["id_counts"] == {"customer": 1}
    assert view_record(key, None, default_rules(), T0) == (b"profiles/c1", None)
    shard.store.close()


def _record(key: str, ids: dict[str, list[str]], as_of: int, version: int) -> bytes:
    return orjson.dumps({"profile_key": key, "ids": ids, "as_of": as_of, "version": version})


def test_the_index_answers_the_same_whatever_order_the_partitions_are_read_in(tmp_path: Path) -> None:
    """A merge writes the merged record in one partition and the absorbed profiles' tombstones in others;
    the service reads partitions in no order between them."""
    # Partition 0: the anonymous profile, then its tombstone; partition 1: another's record then the merge.
    p0 = [(0, 0, b"profiles/A", _record("profiles/A", {"cookie": ["A"]}, 1, 1)), (0, 1, b"profiles/A", None)]
    p1 = [(1, 0, b"profiles/B", _record("profiles/B", {"customer": ["B"]}, 1, 1)),
          (1, 1, b"linked_customer/B", _record("linked_customer/B", {"customer": ["B"], "cookie": ["A"]}, 2, 2)),
          (1, 2, b"profiles/B", None)]
    answers = set()
    rng = random.Random(3)
    for n in range(30):
        left, right, merged = list(p0), list(p1), []
        while left or right:  # an interleaving that keeps each partition's order
            source = left if (left and (not right or rng.random() < 0.5)) else right
            merged.append(source.pop(0))
        index = ViewIndex(tmp_path / f"i{n}")
        while merged:  # in batches of one to three records (one atomic write each)
            size = rng.randint(1, 3)
            index.apply(merged[:size])
            del merged[:size]
        answers.add((index.lookup("cookie", "A"), index.lookup("customer", "B"), index.count()))
        index.close()
    assert len(answers) == 1
    ((cookie, customer, count),) = answers
    assert cookie == customer and cookie is not None and orjson.loads(cookie)["profile_key"] == "linked_customer/B"
    assert count == 1


@pytest.mark.parametrize("own_record", [True, False])
def test_a_cookie_a_profile_stops_listing_is_no_longer_answered_with_that_profile(tmp_path: Path,
                                                                                  own_record: bool) -> None:
    """A kiosk cookie becomes shared: Alice's profile stops listing it, and its later events make a profile
    of its own. Asked for the cookie, the service answers with that profile (or with nothing, before it
    has one), never Alice's, in whatever order the partitions are read."""
    # The cookie's own record is older than Alice's last record that still lists it.
    p0 = [(0, 0, b"profiles/K", _record("profiles/K", {"cookie": ["K"]}, 2, 1))] if own_record else []
    p1 = [(1, 0, b"linked_customer/A", _record("linked_customer/A", {"customer": ["A"], "cookie": ["K"]}, 1, 1)),
          (1, 1, b"linked_customer/A", _record("linked_customer/A", {"customer": ["A"], "cookie": ["K"]}, 3, 2)),
          (1, 2, b"linked_customer/A", _record("linked_customer/A", {"customer": ["A"]}, 4, 3))]
    rng = random.Random(5)
    for n in range(12):
        left, right, merged = list(p0), list(p1), []
        while left or right:
            source = left if (left and (not right or rng.random() < 0.5)) else right
            merged.append(source.pop(0))
        index = ViewIndex(tmp_path / f"i{n}")
        for record in merged:
            index.apply([record])
        cookie = index.lookup("cookie", "K")
        if own_record:
            assert cookie is not None and orjson.loads(cookie)["profile_key"] == "profiles/K"
        else:
            assert cookie is None
        alice = index.lookup("customer", "A")
        assert alice is not None and orjson.loads(alice)["profile_key"] == "linked_customer/A"
        index.close()


def test_the_index_resumes_from_its_offsets_and_a_tombstone_removes_every_identifier(tmp_path: Path) -> None:
    index = ViewIndex(tmp_path / "i")
    index.apply([(0, 4, b"profiles/A", _record("profiles/A", {"cookie": ["A"], "email": ["E"]}, 1, 1))])
    assert index.offsets() == {0: 5} and index.lookup("email", "E") is not None
    index.close()
    index = ViewIndex(tmp_path / "i")
    assert index.offsets() == {0: 5}
    index.apply([(0, 5, b"profiles/A", None)])
    assert index.lookup("email", "E") is None and index.lookup("cookie", "A") is None and index.count() == 0
    index.close()


def test_the_topic_plan_makes_the_view_compacted_and_run_checks_it(tmp_path: Path) -> None:
    config = Config().replace(topics={"profiles": "p.view", "profiles_partitions": 4})
    (spec,) = [s for s in plan_topics(config) if s.role == "profiles"]
    assert (spec.name, spec.partitions, spec.config) == ("p.view", 4, {"cleanup.policy": "compact"})
    assert not [s for s in plan_topics(Config()) if s.role == "profiles"]  # not configured: none


def test_a_view_record_the_broker_does_not_acknowledge_stops_the_process_before_the_epoch_commits(
        tmp_path: Path) -> None:
    """The checkpoint waits for the records: one that cannot be delivered is fatal (the epoch is replayed)."""
    from nextclick.operators.io.profile_view import ProfileViewWriter

    fatal: list[str] = []
    nowhere = {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": "300"}
    writer = ProfileViewWriter(nowhere, "view", default_rules(), ManualClock(T0), on_fatal=fatal.append)
    profile = new_profile("c1")
    assert writer.publish([("profiles/c1", profile)]) == 1
    assert fatal and "could not deliver" in fatal[0] and "replay" in fatal[0]
    assert "c1" not in fatal[0]  # no key in the message
