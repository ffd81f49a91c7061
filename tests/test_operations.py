"""Operations without a broker: probes, the HTTP server, error lines, topic plans, drain requests."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client import generate_latest

from nextclick.flows.local_broker import free_port
from nextclick.operators.channels import DECISION_CHANNELS
from nextclick.operators.infra import health, metrics
from nextclick.operators.infra.config import Config, load_config
from nextclick.operators.infra.failures import LostPeer, _parse_proc_addr, lost_peer_message, one_line, root_cause
from nextclick.operators.io.control import parse_control
from nextclick.operators.io.drain import drain_request, parse_drain
from nextclick.operators.io.topics import plan_topics
from nextclick.operators.records import SourcePosition


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ready(status: health.FlowStatus) -> health.Verdict:
    return status.readiness(stale_s=10, epoch_s=2)


# -- metrics ----------------------------------------------------------------------------------------


def test_registry_exports_the_standard_process_and_gc_collectors() -> None:
    page = generate_latest(metrics.REGISTRY).decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "python_gc_collections_total", "python_info", "nextclick_checkpoint_duration_seconds_bucket"):
        assert f"\n{name}" in page, name


def test_state_bytes_are_measured_at_most_every_30_seconds() -> None:
    clock, walks = FakeClock(), []

    def disk_bytes() -> int:
        walks.append(clock.now)
        return 100 * len(walks)

    metrics.observe_shard(9901, 5, 2, disk_bytes, now=clock)
    clock.now += 29
    metrics.observe_shard(9901, 6, 1, disk_bytes, now=clock)
    assert len(walks) == 1
    assert metrics.gauge_values(metrics.SHARD_CACHED)[("9901",)] == 6
    assert metrics.gauge_values(metrics.SHARD_DIRTY)[("9901",)] == 1
    assert metrics.gauge_values(metrics.SHARD_STATE_BYTES)[("9901",)] == 100
    clock.now += 1
    metrics.observe_shard(9901, 6, 1, disk_bytes, now=clock)
    assert len(walks) == 2 and metrics.gauge_values(metrics.SHARD_STATE_BYTES)[("9901",)] == 200


def test_decisions_are_counted_by_rule_and_channel_with_their_delay() -> None:
    before = metrics.counter_values(metrics.DECISIONS).get(("r-ops", "sms"), 0)
    metrics.observe_decision("r-ops", "sms", trigger_ms=10_000, now_ms=13_500)
    assert metrics.counter_values(metrics.DECISIONS)[("r-ops", "sms")] == before + 1
    page = generate_latest(metrics.REGISTRY).decode()
    assert 'nextclick_event_to_decision_duration_seconds_bucket{channel="sms",le="2.5"}' in page
    sms = [line for line in page.splitlines()
           if line.startswith('nextclick_event_to_decision_duration_seconds_sum{channel="sms"')]
    assert sms and float(sms[0].split()[-1]) >= 3.5


def test_a_kept_label_child_counts_into_the_same_series_as_the_client() -> None:
    before = metrics.counter_values(metrics.EVENTS).get(("ops-kept",), 0)
    metrics.labelled(metrics.EVENTS, "ops-kept").inc(2)
    metrics.EVENTS.labels("ops-kept").inc()
    metrics.labelled(metrics.EVENTS, "ops-kept").inc()
    assert metrics.counter_values(metrics.EVENTS)[("ops-kept",)] == before + 4
    assert metrics.labelled(metrics.EVENTS, "ops-kept") is metrics.EVENTS.labels("ops-kept")


def test_a_message_kafka_refused_is_counted_by_topic_and_error() -> None:
    from confluent_kafka import KafkaError

    from nextclick.operators.io.kafka_sink import _SinkPartition

    class Refused:
        def topic(self) -> str:
            return "ops.decisions"

    failures: list[str] = []
    part = _SinkPartition(producer=None, on_fatal=failures.append)  # type: ignore[arg-type]
    key = ("ops.decisions", "UNKNOWN_TOPIC_OR_PART")
    before = metrics.counter_values(metrics.DELIVERY_ERRORS).get(key, 0)
    for _ in range(2):
        part._on_delivery(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), Refused())
    assert metrics.counter_values(metrics.DELIVERY_ERRORS)[key] == before + 2


def test_each_closed_epoch_is_exported_with_its_wall_time() -> None:
    import time

    status = health.FlowStatus().partition("ops.in", 0)
    metrics.EPOCH_CLOSED.set(0)
    before = time.time()
    status.snapshots += 1
    closed = metrics.gauge_values(metrics.EPOCH_CLOSED)[()]
    assert status.snapshots == 1 and before <= closed <= time.time()


def test_the_build_is_exported_once_with_its_versions() -> None:
    page = generate_latest(metrics.REGISTRY).decode()
    info = [line for line in page.splitlines() if line.startswith("nextclick_build_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0") and 'version="' in info[0] and 'librdkafka="' in info[0]
    import confluent_kafka

    found = confluent_kafka.version()
    client = found if isinstance(found, str) else found[0]
    assert f'confluent_kafka="{client}"' in info[0] and len(client) > 1  # the whole version, not its first character


# -- readiness and liveness ---------------------------------------------------------------------------


def test_readiness_needs_assigned_polled_partitions_and_a_closed_epoch() -> None:
    clock = FakeClock()
    status = health.FlowStatus(clock)
    assert not ready(status).ok and "not assigned" in ready(status).reason
    status.listed()
    part = status.partition("shop.web", 3)
    assert not ready(status).ok and "first epoch" in ready(status).reason
    part.snapshots = 1
    assert ready(status).ok
    clock.now += 11  # not polled for longer than stale_s
    verdict = ready(status)
    assert not verdict.ok and "shop.web#3" in verdict.reason and "not polled" in verdict.reason
    assert orjson.loads(verdict.body()) == {"status": "fail", "reason": verdict.reason, "input_partitions": 1}
    part.last_poll = clock.now
    assert ready(status).ok
    status.draining = True
    assert not ready(status).ok and "draining" in ready(status).reason


def test_a_process_without_input_partitions_is_ready_after_one_epoch() -> None:
    clock = FakeClock()
    status = health.FlowStatus(clock)
    status.listed()
    assert not ready(status).ok
    clock.now += 2
    assert ready(status).ok and "no input partition" in ready(status).reason


def test_finished_input_is_not_ready() -> None:
    status = health.FlowStatus(FakeClock())
    status.listed()
    part = status.partition("t", 0)
    part.snapshots, part.ended = 1, True
    assert not ready(status).ok and ready(status).reason == "input finished"


def test_liveness_fails_on_a_stalled_partition_or_a_missing_worker_thread() -> None:
    clock = FakeClock()
    status = health.FlowStatus(clock)
    status.reset(workers=2)
    assert status.liveness(stall_s=60, worker_threads=lambda: 0).ok  # starting: workers not up yet
    status.listed()
    status.partition("t", 0)
    assert status.liveness(stall_s=60, worker_threads=lambda: 2).ok
    verdict = status.liveness(stall_s=60, worker_threads=lambda: 1)
    assert not verdict.ok and verdict.reason == "1 of 2 worker threads running"
    clock.now += 61
    verdict = status.liveness(stall_s=60, worker_threads=lambda: 2)
    assert not verdict.ok and "t#0" in verdict.reason and "stuck" in verdict.reason
    status.draining = True
    assert status.liveness(stall_s=60, worker_threads=lambda: 2).ok


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::]:9464", ("::", 9464)),
    ("metrics.local:80", ("metrics.local", 80))])
def test_metrics_addresses(text: str, expected: tuple[str, int]) -> None:
    assert health.parse_address(text) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "0.0.0.0:", "0.0.0.0:http", "0.0.0.0:0", "0.0.0.0:70000", ""])
def test_bad_metrics_addresses_name_the_setting(text: str) -> None:
    with pytest.raises(health.AddressError, match=r"^flow.metrics_address must be HOST:PORT"):
        health.parse_address(text)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_one_server_serves_metrics_health_and_readiness() -> None:
    clock = FakeClock()
    status = health.FlowStatus(clock)
    port = free_port()
    server = health.serve(f"127.0.0.1:{port}", epoch_s=1, stall_s=60, status=status)
    try:
        base = f"http://127.0.0.1:{port}"
        code, kind, body = _get(base + "/readyz")
        assert (code, kind) == (503, "application/json") and orjson.loads(body)["status"] == "fail"
        status.listed()
        status.partition("t", 0).snapshots = 1
        code, _, body = _get(base + "/readyz")
        assert code == 200 and orjson.loads(body)["reason"] == "ready: inputs assigned and consuming"
        code, _, body = _get(base + "/healthz")
        assert code == 200 and orjson.loads(body)["status"] == "ok"
        code, kind, body = _get(base + "/metrics")
        assert code == 200 and kind.startswith("text/plain") and b"process_cpu_seconds_total" in body
        assert b"nextclick_ready 1.0" in body
        assert _get(base + "/nope")[0] == 404
        # A second server cannot take the same address: one line naming the setting.
        with pytest.raises(health.AddressError, match=rf"^flow.metrics_address 127.0.0.1:{port}: cannot listen"):
            health.serve(f"127.0.0.1:{port}", epoch_s=1, stall_s=60, status=status)
    finally:
        server.shutdown()
        server.server_close()
        metrics.READY.set_function(lambda: 0.0)


def test_server_binds_the_configured_interface_only() -> None:
    port = free_port()
    server = health.serve(f"127.0.0.1:{port}", epoch_s=1, stall_s=60, status=health.FlowStatus())
    try:
        assert server.server_address[:2] == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        server.shutdown()
        server.server_close()
        metrics.READY.set_function(lambda: 0.0)


# -- fatal errors ---------------------------------------------------------------------------------------


def _chained() -> BaseException:
    try:
        try:
            try:
                raise RuntimeError("input topic 'x.control' does not exist or has no partitions")
            except RuntimeError as exc:
                raise ValueError("(src/inputs.rs:170:24): error listing partitions") from exc
        except ValueError as exc:
            raise RuntimeError("(src/worker.rs:149:10): error building production dataflow") from exc
    except RuntimeError as exc:
        return exc


def test_the_one_line_is_the_root_cause_of_the_chain() -> None:
    exc = _chained()
    assert str(root_cause(exc)).startswith("input topic")
    assert one_line(exc) == "input topic 'x.control' does not exist or has no partitions"


def test_bytewax_locations_and_folded_tracebacks_are_stripped() -> None:
    folded = RuntimeError("(src/recovery.rs:12:3) error opening\nCaused by => sqlite: attempt to write a readonly "
                          "database\nTraceback (most recent call last):\n  File ...")
    assert one_line(folded) == "sqlite: attempt to write a readonly database"
    assert one_line(RuntimeError("(src/worker.rs:1:2): boom")) == "boom"
    assert one_line(KeyError("shard")) == "KeyError: 'shard'"


def test_a_rust_panic_says_what_it_panicked_with_and_a_full_recovery_volume_is_named() -> None:
    """An outside probe filled state.recovery_dir (a tmpfs): the one line was "panicked at
    src/recovery.rs:626:22:", the cause on the panic's next line."""
    full = RuntimeError("(src/run.rs:292:17) panicked at src/recovery.rs:626:22:\ncalled `Result::unwrap()` on an "
                        "`Err` value: SqliteFailure(Error { code: DiskFull, extended_code: 13 }, Some(\"database or "
                        "disk is full\"))")
    line = one_line(full)
    assert line.startswith("state.recovery_dir: the device is full (Bytewax could not write its recovery partitions: "
                           "called `Result::unwrap()`") and line.endswith("the last committed epoch is intact")
    other = RuntimeError("(src/run.rs:292:17) panicked at src/worker.rs:7:9:\nindex out of bounds")
    assert one_line(other) == "RuntimeError: panicked at src/worker.rs:7:9: index out of bounds"


def test_an_explained_error_is_not_dug_into() -> None:
    try:
        try:
            raise RuntimeError("Send thread panic: Any { .. }")
        except RuntimeError as exc:
            raise LostPeer("lost cluster peer: process 1 (h:1)") from exc
    except LostPeer as exc:
        assert one_line(exc) == "lost cluster peer: process 1 (h:1)"


def test_lost_peer_names_the_process_or_the_candidates() -> None:
    two = ["a:1", "b:2"]
    assert lost_peer_message(two, 0, []).startswith("lost cluster peer: process 1 (b:2); process 0 stops too")
    assert "cluster restarts from its last committed epoch" in lost_peer_message(two, 0, [])
    three = ["a:1", "b:2", "c:3"]
    assert lost_peer_message(three, 1, [2]).startswith("lost cluster peer: process 2 (c:3);")
    assert lost_peer_message(three, 0, [1, 2]).startswith("lost cluster peer: one of processes 1 (b:2), 2 (c:3);")


def test_proc_net_addresses() -> None:
    assert _parse_proc_addr("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _parse_proc_addr("00000000000000000000000001000000:0050") == ("::1", 80)
    assert _parse_proc_addr("0000000000000000FFFF00000A00010A:24E8") == ("10.1.0.10", 9448)


# -- topics -----------------------------------------------------------------------------------------------


def test_topic_plan_follows_the_configuration() -> None:
    config = load_config(None, {"NEXTCLICK_TOPICS__INPUTS": "a,b", "NEXTCLICK_TOPICS__DECISIONS": "d.{channel}",
                                "NEXTCLICK_TOPICS__PARTITIONS": "12", "NEXTCLICK_TOPICS__REPLICATION_FACTOR": "3",
                                "NEXTCLICK_TOPICS__RETENTION_MS": "86400000",
                                "NEXTCLICK_TOPICS__CLEANUP_POLICY": "delete"})
    plan = {s.name: s for s in plan_topics(config)}
    assert set(plan) == {"a", "b", config.topics.control, f"{config.topics.control}.progress",
                         config.topics.dead_letter, *(f"d.{c}" for c in DECISION_CHANNELS)}
    assert plan["a"].role == "input" and plan["a"].partitions == 12 and plan["a"].replication_factor == 3
    assert plan["a"].config == {"retention.ms": "86400000", "cleanup.policy": "delete"}
    assert plan["d.email"].role == "decisions" and plan["d.email"].partitions == 12
    assert plan[config.topics.control].partitions == 1
    progress = plan[f"{config.topics.control}.progress"]
    assert progress.role == "progress" and progress.partitions == 1
    assert progress.config == {"cleanup.policy": "compact"}  # only the latest record per partition matters
    assert plan[config.topics.dead_letter].config["retention.ms"] == str(7 * 24 * 3600 * 1000)


def test_default_topic_plan_leaves_retention_to_the_broker() -> None:
    plan = {s.name: s for s in plan_topics(Config())}
    assert plan["nextclick.decisions"].config == {} and plan["nextclick.decisions"].replication_factor == -1


# -- drain requests -------------------------------------------------------------------------------------


def test_drain_requests_are_for_one_group_and_newer_than_the_watcher() -> None:
    request = drain_request("g1", 1, 5_000, "signal SIGTERM")
    assert parse_drain(request, "g1", 5_000) == {
        "command": "drain", "request_id": "drain-g1-1-5000", "group_id": "g1", "from_process": 1,
        "requested_at": 5_000, "reason": "signal SIGTERM"}
    assert parse_drain(request, "g2", 0) is None  # another deployment sharing the control topic
    assert parse_drain(request, "g1", 5_001) is None  # a request from before this process started
    for other in (b"", b"[]", b'{"command": "erase"}', orjson.dumps({"command": "drain", "group_id": "g1"})):
        assert parse_drain(other, "g1", 0) is None


def test_the_dataflow_skips_drain_requests_on_the_control_topic() -> None:
    request = drain_request("nextclick", 0, 1, "signal SIGTERM")
    assert parse_control(b"drain", request, [], SourcePosition("c", 0, 0), secret=b"s") is None


def test_a_panic_bytewax_prints_after_the_first_goes_to_the_debug_log_not_stderr(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Bytewax hands a run's first panic to the caller; a later one (another thread of a failing cluster)
    it prints with pyo3's `PyErr::print`: CPython's PyErr_PrintEx, which calls sys.excepthook. Here the
    same C function prints it (PyRun_SimpleString's error path)."""
    import ctypes
    import logging
    import sys

    from nextclick.flows.runner import _quiet_late_panics

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)

    def print_as_bytewax(raise_it: str) -> None:  # PyRun_SimpleString prints what it raises with PyErr_Print
        assert ctypes.pythonapi.PyRun_SimpleString(raise_it.encode()) == -1

    _quiet_late_panics()
    with caplog.at_level(logging.DEBUG, logger="nextclick"):
        print_as_bytewax("raise RuntimeError('(src/run.rs:292:17) panicked at tcp.rs:96:24: index out of bounds')")
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records] == ["a further failure inside Bytewax after the first"]
    print_as_bytewax("raise ValueError(\"not Bytewax's\")")  # anything else is printed as before
    assert "ValueError: not Bytewax's" in capfd.readouterr().err


def test_one_process_started_on_one_volume_of_a_cluster_says_so(tmp_path: Path) -> None:
    """Bytewax says only "Missing recovery partitions {PartitionIndex(0)} of 2; can't resume"."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import init_db_dir
    from bytewax.testing import TestingSource

    from nextclick.flows.runner import FlowRunner
    from nextclick.operators.infra.config import Config
    from nextclick.operators.infra.failures import Explained

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 2)
    (recovery / "part-0.sqlite3").unlink()  # process 1's volume holds partition 1 of 2
    flow = Dataflow("f")
    op.inspect("seen", op.input("in", flow, TestingSource([1])))
    config = Config().replace(state={"recovery_dir": str(recovery), "dir": str(tmp_path / "state")})
    with pytest.raises(Explained, match=r"holds only some of the 2 recovery partitions of a cluster: it is one "
                                        r"process's volume of a 2-process cluster"):
        FlowRunner().run(config, flow)


def test_a_cluster_process_whose_volume_is_full_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside probe filled one pod's state volume: every pod said "lost cluster peer" (Bytewax's own
    failure to write reaches a cluster's process as a broken channel). The process checks its volumes
    when the cluster fails (checked by hand through a 3-pod cluster on a 20 MB tmpfs: the full pod
    named its state.dir, its peers named it)."""
    import shutil
    from collections import namedtuple

    from nextclick.flows import runner
    from nextclick.operators.infra.config import Config

    config = Config().replace(state={"dir": str(tmp_path / "state"), "recovery_dir": str(tmp_path / "recovery")})
    (tmp_path / "state").mkdir()
    (tmp_path / "recovery").mkdir()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 30))
    assert runner.full_volume(config) is None
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(20 << 20, 20 << 20, 8192 if "recovery" in str(path)
                                                                  else 1 << 30))
    assert runner.full_volume(config) == f"{tmp_path / 'recovery'} (state.recovery_dir) has 8192 bytes free"
    # A first start whose directories are not made yet: judged by the nearest parent (an outside probe's full
    # volume read only "[Errno 28] No space left on device").
    new = config.replace(state={"dir": str(tmp_path / "vol" / "state"), "recovery_dir": str(tmp_path / "recovery")})
    (tmp_path / "vol").mkdir()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(20 << 20, 20 << 20, 0 if path.name == "vol"
                                                                  else 1 << 30))
    assert runner.full_volume(new) == f"{tmp_path / 'vol' / 'state'} (state.dir) has 0 bytes free"


def test_the_partitions_recovery_read_from_that_a_topic_no_longer_has() -> None:
    from nextclick.operators.io.preflight import vanished_partitions

    known = ["web#0", "web#10", "web#2", "web#3", "app#0", "other#7", "web#x", "ctl#0"]
    assert vanished_partitions({"web": 2, "app": 1, "ctl": 1}, known) == {"web": ["web#2", "web#3", "web#10"]}
    assert vanished_partitions({"web": 11, "app": 1}, known) == {}
    assert vanished_partitions({"app": 0}, known) == {"app": ["app#0"]}
