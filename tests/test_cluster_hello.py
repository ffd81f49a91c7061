"""What a process says at start (operators/io/cluster_hello.py), and the line a failed cluster gets from it.

The broker test that starts two processes with different --workers is in test_operations_broker.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nextclick.operators.io.cluster_hello import (
    HelloWatch,
    check_same_cluster,
    differences,
    foreign_states,
    hello,
    lost_volumes,
    parse_hello,
    parse_refusal,
    read_ran_with,
    record_ran_with,
    refusal,
    starting,
)
from nextclick.operators.io.control import parse_control
from nextclick.operators.records import SourcePosition

SETTINGS = {"state.shards": "16", "privacy.secret": "fingerprint aa"}


def said(process: int, *, workers: int = 1, processes: int = 2, recovery: int = 2, release: str = "1.0",
         settings: dict[str, str] | None = None, resumes: bool | None = None) -> dict[str, Any]:
    return hello("g", process, processes, workers, recovery, release, settings or SETTINGS, 1_800_000_000_000,
                 resumes=resumes)


def test_peers_started_alike_explain_nothing() -> None:
    assert differences(said(0), {0: said(0), 1: said(1)}) is None
    assert differences(said(0), {}) is None  # no hello to read: the lost-peer line stands


def test_each_difference_is_named_with_both_values_and_the_peer() -> None:
    peers = {1: said(1, workers=2, release="1.1", settings={**SETTINGS, "state.shards": "8"}), 2: said(2, recovery=1)}
    line = differences(said(0, processes=3), {**peers, 0: said(0, processes=3)})
    assert line == (
        "the processes of this cluster were started differently (process 1 runs with --workers 2 there, 1 here; "
        "processes in --addresses 2 there, 3 here; nextclick 1.1 there, 1.0 here / "
        "process 2 runs with processes in --addresses 2 there, 3 here; recovery partitions (--recovery-per-process or "
        "-partitions) 1 there, 2 here; this is process 0): start every process with the same --workers, --addresses, "
        'recovery flags, release and configuration (docs/operations.md, "One configuration for every process")')


def test_another_release_is_named_without_the_settings_it_declares_differently() -> None:
    """An outside probe: a pod upgraded beside the previous release was told `state.on_lost_volume = (not
    set) there`, a setting the older release does not declare, not that the releases differ."""
    older = said(1, release="0.1.0+aaaaaaaa", settings={k: v for k, v in SETTINGS.items() if k != "state.shards"})
    line = differences(said(0), {1: older})
    assert line is not None and "nextclick 0.1.0+aaaaaaaa there, 1.0 here" in line and "state.shards" not in line
    assert differences(said(0), {1: said(1, settings={**SETTINGS, "state.shards": "8"})}) is not None


def test_the_same_count_of_addresses_in_another_list_is_named() -> None:
    mine = {**said(0), "addresses": ["10.0.0.1:2101", "10.0.0.2:2101"]}
    theirs = {**said(1), "addresses": ["10.0.0.2:2101", "10.0.0.1:2101"]}
    line = differences(mine, {1: theirs})
    assert line is not None and "process 1 runs with --addresses 10.0.0.2:2101;10.0.0.1:2101 there, " \
                                "10.0.0.1:2101;10.0.0.2:2101 here" in line
    assert differences(mine, {1: {**theirs, "addresses": mine["addresses"]}}) is None
    assert differences(mine, {1: {**theirs, "addresses": []}}) is None  # a hello that does not say


def test_a_process_beyond_this_clusters_size_is_an_earlier_clusters_and_ignored() -> None:
    assert differences(said(0), {1: said(1), 2: said(2, processes=3, workers=4)}) is None


def test_while_waiting_a_process_names_the_silent_peers_and_those_given_other_addresses(
        caplog: pytest.LogCaptureFixture) -> None:
    ours, typo = ["a:1", "b:1", "c:1"], ["a:1", "bb:1", "c:1"]
    mine = hello("g", 0, 3, 1, 3, "1.0", SETTINGS, 0, ours)
    watch = HelloWatch({}, "control", mine, lambda: False, lambda line: None, lambda: 0)
    with caplog.at_level("WARNING", logger="nextclick"):
        watch._log_waiting(20.2, {0: mine, 1: hello("g", 1, 3, 1, 3, "1.0", SETTINGS, 0, typo)})
    (record,) = caplog.records
    assert (record.seconds, record.not_running, record.other_addresses) == (
        20, ["process 2 (c:1)"], ["process 1: a:1;bb:1;c:1"])


def test_a_hello_is_read_only_for_its_group() -> None:
    record = said(1)
    assert parse_hello(orjson.dumps(record), "g") == record
    assert parse_hello(orjson.dumps(record), "other") is None
    assert parse_hello(orjson.dumps({**record, "command": "drain"}), "g") is None
    for field, bad in (("process", "1"), ("started_at", "soon"), ("workers", None), ("release", 1),
                       ("settings", {"state.shards": 16}), ("recovery_partitions", True)):
        assert parse_hello(orjson.dumps({**record, field: bad}), "g") is None, field


def test_a_hello_said_once_reads_as_said_at_its_start_and_bad_refresh_fields_are_refused() -> None:
    record = said(1)
    once = {k: v for k, v in record.items() if k not in ("said_at", "addresses", "resumes")}  # as 0.x's runner wrote it
    assert parse_hello(orjson.dumps(once), "g") == {**once, "said_at": record["started_at"], "addresses": [],
                                                    "resumes": None}
    for field, bad in (("said_at", "now"), ("addresses", "a;b"), ("addresses", [1, 2]), ("resumes", 1),
                       ("resumes", "yes")):
        assert parse_hello(orjson.dumps({**record, field: bad}), "g") is None, field


def test_a_process_that_lost_its_volume_is_named_by_every_process() -> None:
    # A new deployment (none resumes), a restart (all do), a cluster-wide restore (none): nothing to say.
    for resumes in (False, True):
        assert lost_volumes(said(0, resumes=resumes), {1: said(1, resumes=resumes)}) is None
    assert lost_volumes(said(0, resumes=True), {1: said(1)}) is None  # a peer of a release that does not say
    assert lost_volumes(said(0, resumes=True, processes=2), {1: said(1, resumes=True), 5: said(5)}) is None
    lost = {0: said(0, resumes=True, processes=3), 1: said(1, resumes=False, processes=3),
            2: said(2, resumes=False, processes=3)}
    line = lost_volumes(lost[0], lost)
    assert line is not None and line.startswith(
        "processes 1, 2 started with no committed state and process 0 with the cluster's (this is process 0): the "
        "state and recovery volumes of processes 1, 2 were lost or replaced")
    assert lost_volumes(lost[2], lost) == line.replace("this is process 0", "this is process 2")


@given(st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=100).map(str.encode)))
def test_any_bytes_on_the_control_topic_are_a_hello_or_not_and_never_raise(value: bytes | None) -> None:
    assert parse_hello(value, "g") is None or isinstance(parse_hello(value, "g"), dict)


def test_the_dataflows_control_reader_passes_over_hellos() -> None:
    value = orjson.dumps(said(1))
    assert parse_control(b"hello/g/1", value, [], SourcePosition("c", 0, 1), secret=b"s") is None


def test_a_refusal_is_read_only_for_its_group_and_the_dataflow_passes_over_it() -> None:
    record = refusal("g", 1, "input topic 'x' does not exist (topics.inputs)", 1_800_000_000_000)
    assert parse_refusal(orjson.dumps(record), "g") == record
    assert parse_refusal(orjson.dumps(record), "other") is None and parse_hello(orjson.dumps(record), "g") is None
    for field, bad in (("process", "1"), ("said_at", None), ("reason", 3)):
        assert parse_refusal(orjson.dumps({**record, field: bad}), "g") is None, field
    assert parse_control(b"refused/g/1", orjson.dumps(record), [], SourcePosition("c", 0, 1), secret=b"s") is None
    again = starting("g", 1, 1_800_000_000_001)
    assert parse_refusal(orjson.dumps(again), "g") == again
    assert parse_control(b"starting/g/1", orjson.dumps(again), [], SourcePosition("c", 0, 2), secret=b"s") is None


def test_states_that_never_ran_together_are_named_and_new_or_shared_ones_say_nothing(tmp_path) -> None:
    """A pod of cluster A started beside a pod of cluster B (a volume of another deployment): each state
    last ran with others, so they are named before any epoch. A state that never ran in a cluster (new,
    or restored) says nothing, nor does one that ran with this one."""
    def at(process: int, lineage: str, ran_with: list[str] | None) -> dict[str, Any]:
        return hello("g", process, 2, 1, 2, "1.0", SETTINGS, 0, ("a:1", "b:1"), True, lineage, ran_with)

    a0, b1 = at(0, "a0", ["a0", "a1"]), at(1, "b1", ["b0", "b1"])
    line = foreign_states(a0, {0: a0, 1: b1})
    assert line is not None and "process 1's (state b1)" in line and "process 0, state a0" in line
    assert foreign_states(a0, {1: at(1, "a1", ["a0", "a1"])}) is None  # its own cluster's
    assert foreign_states(a0, {1: at(1, "n1", None)}) is None  # a new or restored volume: the lost-volume checks
    assert foreign_states(at(0, "n0", None), {1: b1}) is None
    assert foreign_states(a0, {2: b1}) is None  # beyond this cluster's size: an earlier cluster's hello
    # What a formed cluster records, and only about the state it was written for.
    assert record_ran_with(tmp_path, {0: a0, 1: at(1, "a1", None)}, 2)
    assert read_ran_with(tmp_path, "a0") == ["a0", "a1"] and read_ran_with(tmp_path, "restored") is None
    assert not record_ran_with(tmp_path / "x", {0: a0}, 2)  # not every process's hello: nothing written
    assert parse_hello(orjson.dumps(b1), "g") == b1
    for field, bad in (("lineage", 3), ("ran_with", "b0"), ("ran_with", [1])):
        assert parse_hello(orjson.dumps({**b1, field: bad}), "g") is None, field


@pytest.mark.parametrize(("said_again", "refused"), [("live", True), ("stopped", False), ("replaced", False)])
def test_a_foreign_peer_is_refused_only_once_it_says_so_since_this_start(monkeypatch, said_again, refused):
    """A stopped process's last hello stays on the control topic: refusing on it would stop the owner's
    own pods for half a minute (a recheck probe), naming a volume no longer attached. A live peer says
    its hello again within REFRESH_S; a new start of that process replaces it."""
    from nextclick.operators.io import cluster_hello as module

    monkeypatch.setattr(module, "SAY_AGAIN_WAIT_S", 1.0)
    monkeypatch.setattr(module, "SAY_AGAIN_POLL_S", 0.05)
    mine = hello("g", 0, 2, 1, 2, "1.0", SETTINGS, 1_000, ("a:1", "b:1"), True, "a0", ["a0", "a1"])
    before = {**hello("g", 1, 2, 1, 2, "1.0", SETTINGS, 500, ("a:1", "b:1"), True, "b1", ["b0", "b1"]),
              "said_at": 900}
    later = {"live": {**before, "said_at": 1_500}, "stopped": before,
             "replaced": hello("g", 1, 2, 1, 2, "1.0", SETTINGS, 1_200, ("a:1", "b:1"), True, "a1", ["a0", "a1"])}
    reads = iter([{1: before}])
    monkeypatch.setattr(module, "peer_hellos", lambda *a, **k: next(reads, {1: later[said_again]}))
    line = check_same_cluster({}, "control", mine)
    assert (line is not None) is refused
    if refused:
        assert line is not None and "process 1's (state b1)" in line
