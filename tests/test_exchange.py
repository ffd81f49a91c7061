"""What crosses an exchange (operators/exchange.py): a list per key and batch, same order per key."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextclick.operators import exchange
from nextclick.operators.exchange import Batch, ReleaseMismatch, SettingsMismatch, flatten, grouped
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, Config
from nextclick.operators.records import Event, Frontier, MoveOut, Progress, SourcePosition
from nextclick.operators.tools.startup import cluster_settings

pairs = st.lists(st.tuples(st.sampled_from(["0", "1", "customer/3", "email/0"]), st.integers()), max_size=60)


@given(pairs)
def test_each_key_receives_its_items_in_the_order_they_were_routed(routed: list[tuple[str, int]]) -> None:
    out = grouped(routed)
    assert len({key for key, _ in out}) == len(out)  # one list per key
    for key, items in out:
        assert items == [item for k, item in routed if k == key]
    assert sorted(item for _, items in out for item in items) == sorted(item for _, item in routed)


@given(st.lists(st.one_of(st.integers(), st.lists(st.integers(), min_size=1)), max_size=30))
def test_a_step_reads_lists_and_lone_items_in_arrival_order(received: list[int | list[int]]) -> None:
    expected: list[int] = []
    for value in received:
        expected += value if isinstance(value, list) else [value]
    assert flatten(received) == expected


# -- between processes: a Batch's events as msgpack, everything else pickled, each in its place --------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
keys = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)
events = st.builds(
    Event,
    event_id=st.text(max_size=12), type=st.sampled_from(["page_view", "purchase", "login"]),
    ts=st.integers(min_value=0, max_value=2**53), customer=keys, channel=st.sampled_from(["web", "email"]),
    attrs=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    source=st.none() | st.builds(SourcePosition, st.text(min_size=1, max_size=10), st.integers(0, 64),
                                 st.integers(0, 2**62)),
    raw=st.none() | st.tuples(st.none() | st.binary(max_size=12), st.none() | st.binary(max_size=40),
                              st.lists(st.tuples(st.text(max_size=6), st.none() | st.binary(max_size=6)),
                                       max_size=3).map(tuple)),
    id_type=st.none() | st.sampled_from(["cookie", "email", "customer"]),
    links=st.lists(st.tuples(st.sampled_from(["email", "customer"]), keys), max_size=2).map(tuple),
    blocked=st.lists(st.sampled_from(["email", "phone"]), max_size=2).map(tuple))
others = st.one_of(
    st.builds(Progress, st.text(min_size=1, max_size=8), st.none() | st.integers(0, 2**50), st.integers(1, 8)),
    st.builds(Frontier, st.integers(0, 16), st.none() | st.integers(0, 2**50)),
    st.builds(MoveOut, keys, keys, st.text(max_size=10)))


@settings(max_examples=150)
@given(st.lists(st.one_of(events, others), max_size=20))
def test_a_batch_crosses_a_process_boundary_unchanged(items: list[Any]) -> None:
    batch = Batch(items)
    back = pickle.loads(pickle.dumps(("shard", batch)))[1]
    assert back == items
    assert [type(x) for x in back] == [type(x) for x in items]
    for got, sent in zip(back, items, strict=True):
        if type(sent) is Event:  # the tuples stay tuples, field by field
            assert [type(getattr(got, f)) for f in sent.__struct_fields__] == \
                [type(getattr(sent, f)) for f in sent.__struct_fields__]
            if sent.raw is not None:
                assert type(got.raw[2]) is tuple and all(type(h) is tuple for h in got.raw[2])
    assert flatten([back]) == flatten([batch]) == items


def test_a_value_msgpack_cannot_hold_still_crosses_pickled() -> None:
    huge = Event("e1", "purchase", 1, "c1", "web", attrs={"amount": 2**70})
    batch = Batch([huge, Progress("t#0", None, 1)])
    assert pickle.loads(pickle.dumps(batch)) == [huge, Progress("t#0", None, 1)]


def test_grouped_lists_are_batches() -> None:
    assert all(type(items) is Batch for _, items in grouped([("0", 1), ("1", 2), ("0", 3)]))
    assert all(type(items) is Batch for _, items in grouped([("0", 1)]))


def test_a_batch_from_another_release_stops_with_one_line_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster that mixes releases: the receiving process says which, instead of misreading events."""
    monkeypatch.setattr(exchange, "FORMAT", exchange.FORMAT + 1)
    monkeypatch.setattr(exchange, "_release", "9.9.9")
    sent = pickle.dumps(Batch([Event("e1", "page_view", 1, "c1", "web")]))
    monkeypatch.undo()
    monkeypatch.setattr(exchange, "_mismatches", [])
    with pytest.raises(ReleaseMismatch) as refused:
        pickle.loads(sent)
    reason = str(refused.value)
    assert exchange.cluster_mismatch() == reason  # what the runner reports instead of a lost peer
    assert "\n" not in reason
    assert "nextclick 9.9.9" in reason and f"format {exchange.FORMAT + 1}" in reason
    assert f"format {exchange.FORMAT})" in reason and "one release in every process" in reason


def test_a_batch_from_another_build_of_the_same_version_names_the_builds_not_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside probe upgraded one pod: both said 0.1.0, and the refusal named a setting the older build
    did not know as "not set", sending the operator to a ConfigMap that was fine."""
    monkeypatch.setattr(exchange, "_release", "0.1.0+00000000")
    exchange.declare_settings({"state.shards": "16"})
    sent = pickle.dumps(Batch([Event("e1", "page_view", 1, "c1", "web")]))
    monkeypatch.undo()
    exchange.declare_settings({"state.shards": "16", "state.on_lost_volume": "stop"})
    monkeypatch.setattr(exchange, "_mismatches", [])
    with pytest.raises(ReleaseMismatch) as refused:
        pickle.loads(sent)
    assert str(refused.value) == (f"a process of this cluster runs nextclick 0.1.0+00000000, this one "
                                  f"{exchange._release}: run one release in every process (deploy/README.md, "
                                  '"Upgrades")')


@pytest.fixture(autouse=True)
def _own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """declare_settings sets module state: each test's declarations end with it."""
    for name in ("_settings", "_settings_digest", "_whole_left"):
        monkeypatch.setattr(exchange, name, getattr(exchange, name))


def _sent_with(settings: dict[str, str], monkeypatch: pytest.MonkeyPatch, *, whole: bool = True) -> bytes:
    """A batch as a peer declaring `settings` pickles it (among its first batches, or past them)."""
    exchange.declare_settings(settings)
    if not whole:
        monkeypatch.setattr(exchange, "_whole_left", 0)
    return pickle.dumps(Batch([Event("e1", "page_view", 1, "c1", "web")]))


SHARED = {"state.shards": "16", "privacy.secret": "fingerprint 01", "flow.rules_file": "sha256:aa"}


def test_a_batch_from_a_process_with_other_settings_stops_with_one_line_naming_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pods of one cluster with different shard counts (or secrets, or rules) would put a customer's
    events in different shards, or under different keys: the receiver refuses the first batch."""
    sent = _sent_with({**SHARED, "state.shards": "8", "flow.rules_file": "sha256:bb"}, monkeypatch)
    exchange.declare_settings(SHARED)
    monkeypatch.setattr(exchange, "_mismatches", [])
    with pytest.raises(SettingsMismatch) as refused:
        pickle.loads(sent)
    reason = str(refused.value)
    assert exchange.cluster_mismatch() == reason
    assert reason == ("a process of this cluster runs with other settings than this one: flow.rules_file = sha256:bb "
                      "there, sha256:aa here; state.shards = 8 there, 16 here: give every process the same "
                      'configuration (docs/operations.md, "One configuration for every process")')


def test_past_its_first_batches_a_peer_sends_the_digest_which_still_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _sent_with({**SHARED, "privacy.secret": "fingerprint 02"}, monkeypatch, whole=False)
    theirs = exchange.settings_digest({**SHARED, "privacy.secret": "fingerprint 02"})
    exchange.declare_settings(SHARED)
    monkeypatch.setattr(exchange, "_mismatches", [])
    with pytest.raises(SettingsMismatch, match=f"settings digest {theirs} there, "
                                               f"{exchange.settings_digest(SHARED)} here"):
        pickle.loads(sent)


@pytest.mark.parametrize("whole", [True, False])
def test_a_batch_from_a_process_with_the_same_settings_reads(monkeypatch: pytest.MonkeyPatch, whole: bool) -> None:
    sent = _sent_with(dict(SHARED), monkeypatch, whole=whole)
    exchange.declare_settings(dict(reversed(SHARED.items())))  # the same settings, declared in another order
    assert pickle.loads(sent) == [Event("e1", "page_view", 1, "c1", "web")]


def test_a_process_pickles_its_settings_whole_in_its_first_batches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    exchange.declare_settings(SHARED)
    monkeypatch.setattr(exchange, "_whole_left", 2)
    sizes = [len(pickle.dumps(Batch([Event("e1", "page_view", 1, "c1", "web")]))) for _ in range(4)]
    assert sizes[0] == sizes[1] > sizes[2] == sizes[3]


def test_the_shared_settings_count_files_by_contents_and_leave_per_process_settings_out(tmp_path: Path) -> None:
    """Pods mount the same rules at different paths, and keep their own directories and ports: only
    what decides where an event goes, or what it does there, must agree."""
    rules = (tmp_path / "a.toml", tmp_path / "b.toml")
    for path in rules:
        path.write_bytes(Path(DEFAULT_RULES_FILE).read_bytes())
    base = Config().replace(flow={"rules_file": str(rules[0])})
    pod = base.replace(state={"dir": "/elsewhere/state", "recovery_dir": "/elsewhere/recovery"},
                       flow={"rules_file": str(rules[1]), "metrics_address": "0.0.0.0:9464"},
                       topics={"partitions": 3})  # what `topics create` gives new topics: not read by the flow
    assert cluster_settings(pod, b"secret") == cluster_settings(base, b"secret")
    rules[1].write_bytes(rules[1].read_bytes() + b"\n# edited under one pod\n")
    changed = {name for name, value in cluster_settings(pod, b"secret").items()
               if value != cluster_settings(base, b"secret")[name]}
    assert changed == {"flow.rules_file"}
    others = {"state.shards": base.replace(state={"shards": 8}), "identity.stitching": base.replace(
        identity={"stitching": False}), "parse.redact_fields": base.replace(parse={"redact_fields": ("email",)}),
              "topics.inputs": base.replace(topics={"inputs": ("web",)})}
    for name, config in others.items():
        assert cluster_settings(config, b"secret")[name] != cluster_settings(base, b"secret")[name], name
    assert cluster_settings(base, b"other")["privacy.secret"] != cluster_settings(base, b"secret")["privacy.secret"]
    assert not any("hunter2" in v for v in cluster_settings(base, b"hunter2").values())  # a fingerprint, never it
