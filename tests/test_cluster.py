"""A process's place in the cluster (pod ordinal, address template) and its recovery partitions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nextclick.flows.cli import main
from nextclick.flows.cluster import (
    Cluster,
    ClusterError,
    expand_addresses,
    ordinal,
    partitions_in,
    prepare_recovery,
    recovery_partitions,
    resolve,
)

TEMPLATE = "nextclick-{i}.nextclick.prod.svc:2101"


def test_the_pod_ordinal_is_the_process_id() -> None:
    assert ordinal("nextclick-0") == 0
    assert ordinal("nextclick-green-12") == 12
    for bad in ("nextclick", "nextclick-", "nextclick-a1", "7"):
        with pytest.raises(ClusterError, match="does not end in -<ordinal>"):
            ordinal(bad)


def test_a_template_expands_over_the_process_count() -> None:
    assert expand_addresses(TEMPLATE, 3) == tuple(f"nextclick-{i}.nextclick.prod.svc:2101" for i in range(3))
    assert expand_addresses("a:1; b:2;", None) == ("a:1", "b:2")
    assert expand_addresses("a:1;b:2", 2) == ("a:1", "b:2")
    with pytest.raises(ClusterError, match="give --processes"):
        expand_addresses(TEMPLATE, None)
    with pytest.raises(ClusterError, match="--processes 3 but --addresses lists 2"):
        expand_addresses("a:1;b:2", 3)
    with pytest.raises(ClusterError, match="is not host:port"):
        expand_addresses("a:1;b", None)
    with pytest.raises(ClusterError, match="appears twice"):
        expand_addresses("a:1;a:1", None)
    with pytest.raises(ClusterError, match="--addresses ' ;; ' lists no address"):
        expand_addresses(" ;; ", None)


def test_resolve_takes_the_id_from_the_pod_name_unless_given() -> None:
    assert resolve(None, None, None, "nextclick-1") == Cluster()  # no addresses: one process, pod name unused
    place = resolve(None, TEMPLATE, 3, "nextclick-2")
    assert place.process_id == 2 and place.processes == 3
    assert place.addresses[2] == "nextclick-2.nextclick.prod.svc:2101"
    assert resolve(0, "a:1;b:2", None, "nextclick-1").process_id == 0  # the flag wins
    with pytest.raises(ClusterError, match="process id 3 is outside the 3 processes"):
        resolve(None, TEMPLATE, 3, "nextclick-3")  # scaled up without changing --processes
    with pytest.raises(ClusterError, match="needs --process-id"):
        resolve(None, "a:1;b:2", None, None)
    with pytest.raises(ClusterError, match="need --addresses"):
        resolve(1, None, None, None)


def test_per_process_recovery_keeps_only_this_process_partition() -> None:
    assert recovery_partitions(Cluster(), 1, per_process=True) == ((0,), 1)
    assert recovery_partitions(Cluster(1, ("a:1", "b:2", "c:3")), 1, per_process=True) == ((1,), 3)
    assert recovery_partitions(Cluster(1, ("a:1", "b:2")), 4, per_process=False) == ((0, 1, 2, 3), 4)


def test_prepare_recovery_creates_one_partition_that_bytewax_can_read(tmp_path: Path) -> None:
    pod1 = tmp_path / "pod-1" / "recovery"
    (pod1 / "lost+found").mkdir(parents=True)  # a fresh volume's root is not empty
    assert "created recovery partition(s) [1] of 3" in prepare_recovery(pod1, (1,), 3, check=True)
    assert sorted(p.name for p in pod1.iterdir()) == ["lost+found", "part-1.sqlite3"]
    assert partitions_in(pod1) == {1: 3}
    # A restart finds it and keeps it.
    assert prepare_recovery(pod1, (1,), 3, check=True).startswith("resuming")
    assert partitions_in(pod1) == {1: 3}


def test_per_process_recovery_refuses_another_process_volume_or_count(tmp_path: Path) -> None:
    pod0 = tmp_path / "pod-0"
    prepare_recovery(pod0, (0,), 2, check=True)
    with pytest.raises(ClusterError, match=r"holds recovery partition\(s\) 0 of 2, but this process keeps 1 of 2"):
        prepare_recovery(pod0, (1,), 2, check=True)
    with pytest.raises(ClusterError, match="0 of 2, but this process keeps 0 of 3.*savepoint"):
        prepare_recovery(pod0, (0,), 3, check=True)
    shared = tmp_path / "shared"
    prepare_recovery(shared, (0, 1), 2, check=False)
    assert partitions_in(shared) == {0: 2, 1: 2}
    with pytest.raises(ClusterError, match="0 of 2, 1 of 2, but this process keeps 0 of 2"):
        prepare_recovery(shared, (0,), 2, check=True)
    # Without the check (one shared directory) whatever is there is Bytewax's to judge.
    assert prepare_recovery(shared, (0,), 2, check=False).startswith("resuming")
    (tmp_path / "junk").mkdir()
    sqlite3.connect(tmp_path / "junk" / "x.sqlite3").close()
    with pytest.raises(ClusterError, match="not a Bytewax recovery partition"):
        prepare_recovery(tmp_path / "junk", (0,), 1, check=True)


def test_nextclick_run_names_a_misplaced_pod_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEXTCLICK_PRIVACY__SECRET", "test-secret")
    monkeypatch.setenv("NEXTCLICK_STATE__RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setenv("NEXTCLICK_POD_NAME", "nextclick-4")
    assert main(["run", "--processes", "2", "--addresses", TEMPLATE, "--broker-timeout", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("nextclick: error: process id 4 is outside the 2 processes of --addresses; "
                       "the process count changes through a savepoint, not by adding processes")
    assert not (tmp_path / "recovery").exists()  # refused before touching anything


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_nextclick_run_refuses_fewer_than_one_worker_in_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str) -> None:
    monkeypatch.setenv("NEXTCLICK_PRIVACY__SECRET", "test-secret")
    monkeypatch.setenv("NEXTCLICK_STATE__RECOVERY_DIR", str(tmp_path / "recovery"))
    assert main(["run", "--workers", workers, "--broker-timeout", "1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"nextclick: error: --workers must be at least 1, not {workers}")
    assert not (tmp_path / "recovery").exists()
