"""Operations through the real broker: lag and group offsets, graceful SIGTERM, topics, fatal errors.

The flow runs as `nextclick run` subprocesses (tests/flowrun.py). Tansu's ListOffsets answers
undercount high watermarks, so "the end of the input" is what a test produced, checked by
consuming, never a watermark the broker reports.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from bytewax.recovery import init_db_dir
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from nextclick import release
from nextclick.flows.cli import main as cli_main
from nextclick.flows.local_broker import free_port
from nextclick.operators.exchange import FORMAT
from nextclick.operators.infra import metrics
from nextclick.operators.io import cluster_hello
from nextclick.operators.io.kafka_source import KafkaInput
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.state.manifest import read_manifest, secret_fingerprint
from tests.flowrun import (
    REPO,
    SECRET,
    FlowSetup,
    Message,
    partition_of,
    produce,
    read_decisions,
    read_profiles,
    run_to_end,
    start,
    workload,
)
from tests.helpers import consume_all

pytestmark = pytest.mark.broker

PARTITIONS = 2
SHARDS = 4
BASE = workload(150, seed=41)
FIRST = BASE[: len(BASE) * 2 // 3]
REST = BASE[len(FIRST):]
# New customers' unresolved calls: one call-back decision each, so every epoch of a stream of them
# emits decisions, and a stop that does not finish its epoch re-emits some after a restart.
CALLS: list[Message] = [
    (f"caller-{i}", f"caller-{i}".encode(), orjson.dumps({
        "event_id": f"call-{i}", "type": "call_center_contact", "ts": int(time.time() * 1000) - 60_000 + i,
        "customer_id": f"caller-{i}", "topic": "billing", "outcome": "unresolved"}))
    for i in range(240)]
MESSAGES = BASE + CALLS


def committed(kafka: dict[str, str], group: str, topic: str, partitions: int) -> dict[int, int]:
    """The consumer group's committed offsets for `topic`, as the broker reports them to lag tools."""
    admin = AdminClient(kafka)  # kept alive until the future resolves
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    result = admin.list_consumer_group_offsets([request])[group].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def end_offsets(kafka: dict[str, str], topic: str) -> dict[int, int]:
    """The end of each partition, counted by consuming (Tansu's watermarks undercount)."""
    ends: Counter[int] = Counter()
    for msg in consume_all(kafka, [topic], idle_s=0.5):
        ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)
    return dict(ends)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def sample(page: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in page.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def clean_profiles(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Profiles of one uninterrupted run over MESSAGES: what every interrupted run must end with."""
    kafka = {"bootstrap.servers": broker.bootstrap}
    root = tmp_path_factory.mktemp("clean")
    topic = f"ops-clean-{time.time_ns()}"
    ensure_topics(kafka, {topic: PARTITIONS})
    produce(kafka, topic, MESSAGES, PARTITIONS)
    setup = FlowSetup.create(kafka, root, topic, inputs=[topic], shards=SHARDS)
    run_to_end(setup, log=root / "clean.log")
    profiles = read_profiles(setup.state_dir, SHARDS)
    assert len(profiles) == 150 + len(CALLS)
    return profiles


class Paced(threading.Thread):
    """Produce `messages` in `chunks` over about `seconds` with one producer (a new idempotent producer per
    chunk costs a broker round trip of its own)."""

    def __init__(self, kafka: dict[str, str], topic: str, messages: list[Message], seconds: float,
                 chunks: int) -> None:
        super().__init__(daemon=True)
        self.kafka, self.topic, self.messages, self.seconds, self.chunks = kafka, topic, messages, seconds, chunks
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer({**self.kafka, "linger.ms": 5, "enable.idempotence": True})
            size = -(-len(self.messages) // self.chunks)
            for start in range(0, len(self.messages), size):
                for who, key, value in self.messages[start:start + size]:
                    producer.produce(self.topic, value, key, partition=partition_of(who, PARTITIONS))
                assert producer.flush(10) == 0
                time.sleep(self.seconds / self.chunks)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def assert_no_decision_twice(kafka: dict[str, str], setup: FlowSetup) -> int:
    copies = Counter(d.ce_id for d in read_decisions(kafka, setup.decisions))
    assert copies, "no decisions at all"
    twice = {ce_id: n for ce_id, n in copies.items() if n > 1}
    assert not twice, f"{len(twice)} decisions re-emitted after the restart, e.g. {next(iter(twice.items()))}"
    return len(copies)


# -- group offsets and lag ----------------------------------------------------------------------------


def test_lag_and_group_offsets_of_a_partition_with_a_backlog(kafka: dict[str, str], topic_prefix: str) -> None:
    """The lag metric is high watermark minus the next offset; the group gets the previous epoch's."""
    topic, group = f"{topic_prefix}.in", f"{topic_prefix}-group"
    ensure_topics(kafka, {topic: 1})
    produce(kafka, topic, [(f"c{i}", b"k", b"{}") for i in range(50)], 1)
    assert end_offsets(kafka, topic) == {0: 50}
    part = KafkaInput(kafka, [topic], group_id=group, batch_size=5).build_part("in", f"{topic}#0", None)
    try:
        def read_until(target: int, so_far: int) -> int:
            deadline = time.monotonic() + 10
            while so_far < target:
                assert time.monotonic() < deadline
                so_far += len(part.next_batch())
            return so_far

        first = read_until(20, 0)
        part.snapshot()  # epoch 1 ends: nothing earlier to commit
        second = read_until(first + 10, first)
        part.snapshot()  # epoch 2 ends: epoch 1 has committed, its offset goes to the group
        wait_for(lambda: committed(kafka, group, topic, 1) == {0: first}, 10, "the group commit")
        lag = metrics.gauge_values(metrics.CONSUMER_LAG)[(topic, "0")]
        assert lag == 50 - second
        broker_view = 50 - committed(kafka, group, topic, 1)[0]
        assert broker_view - lag == second - first  # exactly one epoch behind, never ahead
        assert metrics.counter_values(metrics.INPUT_MESSAGES)[(topic, "0")] == second
    finally:
        part.close()


# -- graceful SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_drains_and_a_restart_re_emits_nothing(kafka: dict[str, str], topic_prefix: str, tmp_path: Path,
                                                       clean_profiles: dict[str, dict[str, Any]]) -> None:
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: PARTITIONS})
    port = free_port()
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=SHARDS, extra_env={
        "NEXTCLICK_LOG_LEVEL": "INFO", "NEXTCLICK_FLOW__PROGRESS_SECONDS": "0.5",
        "NEXTCLICK_FLOW__METRICS_ADDRESS": f"127.0.0.1:{port}"})
    log = tmp_path / "run1.log"
    proc = start(setup, stop_at_end=False, log=log)
    try:
        producer = Paced(kafka, topic, FIRST, seconds=1.5, chunks=6)
        producer.start()
        wait_for(lambda: scrape(port, "/readyz")[0] == 200, 20, "/readyz to answer 200")
        producer.join(30)
        assert producer.error is None

        # Everything produced is read: the lag metric says 0, and so does the broker's view of the
        # group (end - committed) one epoch later.
        ends = end_offsets(kafka, topic)
        assert sum(ends.values()) == len(FIRST)

        def caught_up() -> bool:
            page = scrape(port)[1]
            return all(sample(page, "nextclick_input_messages_total", topic=topic, partition=str(p)) == ends[p]
                       and sample(page, "nextclick_consumer_lag_messages", topic=topic, partition=str(p)) == 0
                       for p in ends)

        wait_for(caught_up, 20, "the flow to read everything")
        wait_for(lambda: committed(kafka, "nextclick", topic, PARTITIONS) == ends, 10, "group offsets at the end")
        page = scrape(port)[1]
        assert sample(page, "process_resident_memory_bytes") and sample(page, "nextclick_ready") == 1
        assert "nextclick_shard_state_bytes{" in page and "nextclick_epoch_duration_seconds_count" in page
        assert scrape(port, "/healthz")[0] == 200
        assert read_decisions(kafka, setup.decisions)

        # SIGTERM while input is flowing: the epoch in progress has decisions out already.
        producer = Paced(kafka, topic, CALLS, seconds=2, chunks=20)
        producer.start()

        def reading_calls() -> bool:  # the flow has read some of them, however loaded the machine is
            page = scrape(port)[1]
            read = sum(sample(page, "nextclick_input_messages_total", topic=topic, partition=str(p)) or 0
                       for p in ends)
            return read > len(FIRST)

        wait_for(reading_calls, 20, "the flow to read the second wave")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        drain_s = time.monotonic() - sent
        producer.join(30)
        assert producer.error is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert drain_s < 2 * setup.epoch_seconds + 5, drain_s
    group_at_stop = sum(committed(kafka, "nextclick", topic, PARTITIONS).values())

    # What the drain is for, checked first: the epoch in progress at SIGTERM was finished and committed
    # with its decisions, so the restart replays nothing and re-emits none of them. A stop that does not
    # drain (an immediate exit) fails here.
    produce(kafka, topic, REST, PARTITIONS)
    run_to_end(setup, log=tmp_path / "run2.log")
    assert_no_decision_twice(kafka, setup)
    assert read_profiles(setup.state_dir, SHARDS) == clean_profiles
    resumed = [line for line in log_lines(tmp_path / "run2.log") if line["msg"] == "shard opened"]
    assert resumed and all(line["resumed"] and line["seq"] > 0 for line in resumed)

    # How the stop went, from its log.
    lines = log_lines(log)
    msgs = [line["msg"] for line in lines]
    assert msgs.count("ready") == 1 and "progress" in msgs
    assert {line["shard"] for line in lines if line["msg"] == "shard opened"} == set(range(SHARDS))
    assert msgs.index("draining: input stopped, finishing the current epoch") < msgs.index("stopped")
    stopped = next(line for line in lines if line["msg"] == "stopped")
    assert stopped["reason"] == "drained"
    assert len(FIRST) < stopped["input_messages"] < len(FIRST) + len(CALLS)  # it stopped mid-stream
    progress = [line for line in lines if line["msg"] == "progress"]
    assert {"input_messages", "events", "decisions", "dead_letters", "lag"} <= set(progress[-1])
    # The group had the final positions at the stop, not the epoch before them.
    assert group_at_stop == stopped["input_messages"]


def test_sigterm_to_one_process_drains_the_whole_cluster(kafka: dict[str, str], topic_prefix: str, tmp_path: Path,
                                                         clean_profiles: dict[str, dict[str, Any]]) -> None:
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: PARTITIONS})
    produce(kafka, topic, FIRST, PARTITIONS)
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=SHARDS,
                             extra_env={"NEXTCLICK_LOG_LEVEL": "INFO"})
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [start(setup, stop_at_end=False, process_id=i, addresses=addresses, log=logs[i]) for i in range(2)]
    try:
        wait_for(lambda: all(any(line["msg"] == "ready" for line in log_lines(p)) for p in logs), 30, "both ready")
        wait_for(lambda: len(read_decisions(kafka, setup.decisions)) > 0, 20, "decisions")
        sent = time.monotonic()
        procs[1].send_signal(signal.SIGTERM)
        assert [p.wait(20) for p in procs] == [0, 0]
        assert time.monotonic() - sent < 2 * setup.epoch_seconds + 5
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    drained = [next(line for line in log_lines(p) if line["msg"].startswith("draining")) for p in logs]
    assert drained[1]["reason"] == "signal SIGTERM"
    assert drained[0]["reason"] == "drain requested by process 1"

    produce(kafka, topic, REST + CALLS, PARTITIONS)
    run_to_end(setup, processes=2, log=tmp_path / "run2.log")
    assert_no_decision_twice(kafka, setup)
    assert read_profiles(setup.state_dir, SHARDS) == clean_profiles
    # The drain request on the control topic is not a command the dataflow dead-letters.
    assert consume_all(kafka, [setup.dead_letter], idle_s=0.5) == []


# -- topics create ------------------------------------------------------------------------------------------


def test_topics_create_is_idempotent_and_reports_what_it_found(
        kafka: dict[str, str], topic_prefix: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    p = topic_prefix
    env = {"NEXTCLICK_TOPICS__INPUTS": f"{p}.web,{p}.email", "NEXTCLICK_TOPICS__DECISIONS": f"{p}.dec.{{channel}}",
           "NEXTCLICK_TOPICS__DEAD_LETTER": f"{p}.dlq", "NEXTCLICK_TOPICS__CONTROL": f"{p}.control",
           "NEXTCLICK_TOPICS__PARTITIONS": "3", "NEXTCLICK_TOPICS__RETENTION_MS": "86400000"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ensure_topics(kafka, {f"{p}.email": 1})  # exists already, with fewer partitions than configured

    def run(*extra: str) -> dict[str, dict[str, Any]]:
        assert cli_main(["topics", "create", "--bootstrap", kafka["bootstrap.servers"], *extra]) == 0
        return {t["topic"]: t for t in orjson.loads(capsys.readouterr().out)["topics"]}

    planned = run("--dry-run")
    assert {t["status"] for n, t in planned.items() if n != f"{p}.email"} == {"would_create"}
    assert f"{p}.web" not in AdminClient(kafka).list_topics(timeout=10).topics

    first = run()
    decisions = {f"{p}.dec.{c}" for c in ("email", "ads", "sms", "push", "web", "call_center")}
    assert set(first) == {f"{p}.web", f"{p}.email", f"{p}.dlq", f"{p}.control", f"{p}.control.progress", *decisions}
    assert first[f"{p}.email"]["status"] == "exists_with_fewer_partitions" and "1 partitions" in \
        first[f"{p}.email"]["note"]
    assert all(first[n]["status"] == "created" for n in first if n != f"{p}.email")
    admin = AdminClient(kafka)
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[f"{p}.web"].partitions) == 3 and len(meta[f"{p}.control"].partitions) == 1
    assert all(len(meta[n].partitions) == 3 for n in decisions)
    resources = [ConfigResource("topic", n) for n in (f"{p}.web", f"{p}.dlq", f"{p}.control.progress")]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    assert configs[f"{p}.control.progress"]["cleanup.policy"].value == "compact"
    assert configs[f"{p}.web"]["retention.ms"].value == "86400000"
    assert configs[f"{p}.dlq"]["retention.ms"].value == str(7 * 24 * 3600 * 1000)

    again = run()
    assert {t["status"] for n, t in again.items() if n != f"{p}.email"} == {"exists"}
    assert again[f"{p}.email"]["status"] == "exists_with_fewer_partitions"


def test_topics_create_help() -> None:
    done = subprocess.run([sys.executable, "-m", "nextclick", "topics", "create", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--dry-run" in done.stdout and "replication factor" in done.stdout


# -- fatal errors: one JSON line, one `nextclick: error:` line, no backtrace ----------------------------------


def run_failing(setup: FlowSetup, *prefix: str, extra: tuple[str, ...] = (), timeout: float = 60,
                run_args: tuple[str, ...] = ()) -> str:
    """Run `nextclick [extra] run [run_args]` to its failure; check the stderr contract; return the error line."""
    env = setup.env(stop_at_end=True)
    env["RUST_BACKTRACE"] = "1"  # Rust would print a backtrace with this, if it printed anything
    done = subprocess.run([*prefix, sys.executable, "-m", "nextclick", *extra, "run", "--broker-timeout", "20",
                           *run_args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 1, done.stderr[-3000:]
    return check_stderr(done.stderr)


def check_stderr(stderr: str, *, debug: bool = False) -> str:
    lines = stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith("nextclick: error: "), stderr[-3000:]
    message = last[len("nextclick: error: "):]
    fatal = [orjson.loads(line) for line in lines if line.startswith("{") and '"level":"critical"' in line]
    assert [f["error"] for f in fatal] == [message]
    if not debug:
        assert [line for line in lines if not line.startswith("{")] == [last], stderr[-3000:]
        for noise in ("Traceback", "panicked", "stack backtrace", "PanicException"):
            assert noise not in stderr
    return message


def read_only_prefix(path: Path) -> list[str]:
    """A command prefix under which `path` is read-only for the child (root ignores permissions)."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return []
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    assert probe.returncode == 0, "as root, the test needs `unshare -m` (CAP_SYS_ADMIN) for a read-only mount"
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(path)]


@pytest.fixture()
def setup(kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> FlowSetup:
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 1})
    return FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=2)


def test_a_missing_control_topic_is_named(setup: FlowSetup) -> None:
    missing = setup.with_(control=f"{setup.control}-missing")
    assert run_failing(missing) == (f"input topic '{missing.control}' does not exist (topics.control); "
                                    "create it with `nextclick topics create`")
    env = missing.env(stop_at_end=True)
    done = subprocess.run([sys.executable, "-m", "nextclick", "--debug", "run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" in done.stderr and "PreflightError" in done.stderr
    check_stderr(done.stderr, debug=True)


def test_an_input_topic_created_again_with_fewer_partitions_is_named_and_nothing_is_changed(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """An outside probe: a topic deleted and created again with 2 partitions instead of 4 stopped one process
    with Bytewax's "Key StateKey(..#2) is not in this worker's routing map" (after rewriting its recovery
    partition), and a cluster with each process blaming the other as a lost peer, on every restart."""
    topic = f"{topic_prefix}.in"
    ensure_topics(kafka, {topic: 3})
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=2)
    produce(kafka, topic, workload(12, seed=5), 3)
    run_to_end(setup)
    admin = AdminClient(kafka)
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "the topic was not deleted"
        time.sleep(0.2)
    ensure_topics(kafka, {topic: 1})
    before = {p: p.read_bytes() for p in sorted(setup.recovery_dir.rglob("*")) if p.is_file()}
    assert run_failing(setup) == (
        f"input topic '{topic}' has 1 partition, but state.recovery_dir holds read positions of partitions it no "
        f"longer has ({topic}#1, {topic}#2): was it deleted and created again? Nothing was started or changed; "
        "docs/operations.md, \"An input topic with fewer partitions\", says what to do")
    assert {p: p.read_bytes() for p in sorted(setup.recovery_dir.rglob("*")) if p.is_file()} == before


def test_an_input_topic_taken_out_of_the_configuration_is_named_and_a_savepoint_retires_it(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """Taking a channel's topic out of [topics].inputs stopped the start with Bytewax's "Key StateKey(...#0)
    is not in this worker's routing map": its read positions are in the recovery directory. Refused in one
    line before anything is touched; a savepoint restored with the new inputs keeps every profile."""
    web, store = f"{topic_prefix}.web", f"{topic_prefix}.store"
    ensure_topics(kafka, {web: 1, store: 1})
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[web, store], shards=2)
    produce(kafka, web, workload(8, seed=5), 1)
    produce(kafka, store, workload(8, seed=6), 1)
    run_to_end(setup)
    profiles = read_profiles(setup.state_dir, setup.shards)
    web_only = setup.with_(inputs=[web])
    before = {p: p.read_bytes() for p in sorted(setup.recovery_dir.rglob("*")) if p.is_file()}
    assert run_failing(web_only) == (
        f"'{store}' is no longer an input (topics.inputs, topics.control), but state.recovery_dir holds its read "
        f"positions ({store}#0), and the flow cannot resume without them: name it again to go on reading it; to "
        "stop reading it, go through a savepoint (docs/operations.md, \"Removing an input topic\"). Nothing was "
        "started or changed")
    assert {p: p.read_bytes() for p in sorted(setup.recovery_dir.rglob("*")) if p.is_file()} == before
    # What operations.md says: a savepoint, empty volumes, a restore with the new inputs.
    env = web_only.env(stop_at_end=True)
    for args in (["savepoint", "create", str(tmp_path / "sp")], ["run", "--from-savepoint", str(tmp_path / "sp")]):
        done = subprocess.run([sys.executable, "-m", "nextclick", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        if args[0] == "savepoint":
            shutil.rmtree(setup.state_dir)
            shutil.rmtree(setup.recovery_dir)
            # Not what a restore may do without a word: read a renamed (or mirrored) copy of a topic the
            # savepoint has positions in from its beginning (an outside probe: every order applied twice).
            mirror = f"{topic_prefix}.mirror.store"
            ensure_topics(kafka, {mirror: 1})
            renamed = setup.with_(inputs=[web, mirror], state_dir=tmp_path / "renamed" / "state",
                                  recovery_dir=tmp_path / "renamed" / "recovery")
            refused = subprocess.run([sys.executable, "-m", "nextclick", "run", "--from-savepoint",
                                      str(tmp_path / "sp")], cwd=REPO, env=renamed.env(stop_at_end=True),
                                     capture_output=True, text=True, timeout=120)
            assert refused.returncode == 1 and (
                f"read ['{store}'], which this configuration does not, and this configuration reads ['{mirror}'], "
                "of which it has no position") in refused.stderr, refused.stderr[-3000:]
            assert not (tmp_path / "renamed" / "state" / "nextclick-state.json").exists()
    assert read_profiles(setup.state_dir, setup.shards) == profiles


def test_a_read_only_state_dir_is_named_with_its_setting(setup: FlowSetup) -> None:
    setup.state_dir.mkdir()
    message = run_failing(setup, *read_only_prefix(setup.state_dir))
    assert message.startswith(f"state.dir: cannot write to {setup.state_dir}: ")
    assert message.endswith(("Read-only file system", "Permission denied"))


def test_a_read_only_recovery_dir_is_named_with_its_setting(setup: FlowSetup) -> None:
    message = run_failing(setup, *read_only_prefix(setup.recovery_dir))
    assert message.startswith(f"state.recovery_dir: cannot write to {setup.recovery_dir}")
    assert message.endswith(("Read-only file system", "Permission denied"))


def test_a_failure_inside_the_dataflow_is_its_root_cause_without_a_rust_backtrace(
        kafka: dict[str, str], setup: FlowSetup) -> None:
    """Past the preflight checks (here a shard's lock file is read-only), Bytewax panics in a worker."""
    produce(kafka, setup.inputs[0], MESSAGES[:40], 1)
    run_to_end(setup)
    lock = setup.state_dir / "shard-0001" / "LOCK"
    message = run_failing(setup, *read_only_prefix(lock))
    # The store's own error (a NextclickError) is the line, with RocksDB's cause and the setting to check.
    assert message.startswith("cannot open shard store ") and "IO error: " in message
    assert str(lock) in message and message.endswith("(state.dir)")


def test_a_process_refused_at_start_tells_the_peers_waiting_for_it(setup: FlowSetup,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Process 1 of a cluster will not start (here: an input topic that does not exist). Process 0, waiting
    for it to connect, logs that line rather than only "process 1 is not running"; once process 1 says
    a newer hello (started again, put right), the line goes."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    missing = setup.with_(inputs=(f"{setup.control}-no-such-input",))
    line = run_failing(missing, run_args=("--process-id", "1", "--addresses", ";".join(addresses)))
    assert "does not exist" in line
    now = int(time.time() * 1000)
    mine = cluster_hello.hello("nextclick", 0, 2, 1, 2, release(), {}, now, addresses)
    watch = cluster_hello.HelloWatch(setup.kafka, setup.control, mine, lambda: False, lambda _line: None,
                                     lambda: int(time.time() * 1000))
    with caplog.at_level(logging.WARNING, logger="nextclick"):
        watch._log_waiting(10.0, watch.live_peers())
    assert [reason for reason, _ in watch.refused.values()] == [line] and list(watch.refused) == [1]
    told = next(r for r in caplog.records if getattr(r, "reason", None))
    assert (told.refused_process, told.address, told.reason) == (1, addresses[1], line)
    # Started again and refused otherwise: the new line, not the old one (an outside probe saw the old one
    # for ten minutes when the next start failed earlier, before it could say anything).
    other = setup.with_(extra_env={"NEXTCLICK_PRIVACY__SECRET_FILE": "/nonexistent/hmac"})
    second = run_failing(other, run_args=("--process-id", "1", "--addresses", ";".join(addresses)))
    assert second != line
    watch.live_peers()
    assert [reason for reason, _ in watch.refused.values()] == [second]
    # Started again and running (said a start, then its hello): no refusal holds.
    cluster_hello.publish_hello(setup.kafka, setup.control,
                                cluster_hello.starting("nextclick", 1, int(time.time() * 1000)))
    watch.live_peers()
    assert watch.refused == {}


def test_a_volume_of_another_cluster_is_named_before_any_epoch(setup: FlowSetup) -> None:
    """A cluster records, once formed, which states ran together. A pod of another deployment started as
    one of its processes (a wrong volume claim) used to run, mixing both deployments' state, and the
    owner could not start again; now it stops before the cluster forms, with one line naming both."""
    produce(setup.kafka, setup.inputs[0], workload(5), 1)
    run_to_end(setup, processes=2)
    manifest = read_manifest(setup.state_dir)
    assert manifest is not None
    recorded = orjson.loads((setup.state_dir / cluster_hello.RAN_WITH_FILE).read_bytes())
    assert recorded == {"ran_with": [manifest.lineage]}  # one state directory, shared by both processes
    env = {**setup.env(stop_at_end=True), "RUST_BACKTRACE": "1"}
    started = subprocess.Popen([sys.executable, "-m", "nextclick", "run", "--broker-timeout", "20", "--process-id",
                                "0", "--addresses", f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"],
                               cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    # Process 1, running on a volume of deployment B, says its hello again and again, as a live one does.
    other = cluster_hello.hello("nextclick", 1, 2, 1, 2, release(), {}, int(time.time() * 1000), [], True,
                                "b-pod-1", ["b-pod-0", "b-pod-1"])
    until = time.monotonic() + 30
    while started.poll() is None and time.monotonic() < until:
        cluster_hello.publish_hello(setup.kafka, setup.control, {**other, "said_at": int(time.time() * 1000)})
        time.sleep(0.5)
    try:
        _, stderr = started.communicate(timeout=60)
    finally:
        if started.poll() is None:
            started.kill()
            started.communicate()
    assert started.returncode == 1, stderr[-3000:]
    line = check_stderr(stderr)
    assert line.startswith("the state volumes of this cluster never ran together: process 1's (state b-pod-1) "
                           f"and this one's (process 0, state {manifest.lineage})"), line
    assert read_manifest(setup.state_dir) == manifest


def test_a_lost_peer_is_named_and_the_cluster_restart_announced(setup: FlowSetup, tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    env = setup.env(stop_at_end=False)
    env.update({"NEXTCLICK_LOG_LEVEL": "INFO", "RUST_BACKTRACE": "1"})
    peer_log = tmp_path / "p1.log"
    with open(peer_log, "wb") as peer_err:  # process 1's log goes to a file, read while it runs
        procs = [subprocess.Popen([sys.executable, "-m", "nextclick", "run", "--process-id", str(i), "--addresses",
                                   ";".join(addresses)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE if i == 0 else peer_err, text=True) for i in range(2)]
    try:
        seen: list[str] = []
        assert procs[0].stderr is not None
        deadline = time.monotonic() + 30
        while not any('"msg":"ready"' in line for line in seen):
            assert time.monotonic() < deadline and procs[0].poll() is None, "".join(seen)
            seen.append(procs[0].stderr.readline())
        # Both processes run the dataflow before one of them is lost.
        wait_for(lambda: '"msg":"ready"' in peer_log.read_text(), 30, "process 1 to be ready")
        procs[1].kill()
        killed = time.monotonic()
        _, rest = procs[0].communicate(timeout=20)
        assert time.monotonic() - killed < 10
        assert procs[0].returncode == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    message = check_stderr("".join(seen) + rest)
    assert message == (f"lost cluster peer: process 1 ({addresses[1]}); process 0 stops too, and the cluster "
                       "restarts from its last committed epoch once every process is running again")


# Another release in the same cluster: this one with its exchange format moved on by one.
# Through `entry`, as the installed script: its os._exit skips a teardown that can abort a failed run.
OTHER_RELEASE = ("import nextclick.operators.exchange as x; x.FORMAT += 1; x._release = '9.9.9'; "
                 "from nextclick.flows.cli import entry; entry()")


def run_pair(setup: FlowSetup, tmp_path: Path, second: list[str], second_env: dict[str, str],
             *, fails: bool = True, second_args: tuple[str, ...] = (), second_per_process: bool = True,
             second_cluster: int = 2) -> list[str]:
    """Two processes of one cluster to the end of the input, each with its own state and recovery
    directories (per-pod volumes), the second started as `second` with `second_env` over the shared
    environment, and given `second_cluster` addresses: their one-line errors, if they must fail.
    Events cross between them at once (one partition, the identity stage on one of them)."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(max(2, second_cluster))]
    procs = []
    for i, (command, extra, more) in enumerate([(["-m", "nextclick"], {}, ()), (second, second_env, second_args)]):
        given = addresses[:2] if i == 0 else addresses[:second_cluster]
        args = ["run", "--broker-timeout", "20", "--addresses", ";".join(given), "--process-id"]
        if i == 0 or second_per_process:
            args.insert(1, "--recovery-per-process")
        env = {**setup.env(stop_at_end=True), "RUST_BACKTRACE": "1", **extra,
               "NEXTCLICK_STATE__DIR": str(tmp_path / f"pod-{i}" / "state"),
               "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / f"pod-{i}" / "recovery")}
        procs.append(subprocess.Popen([sys.executable, *command, *args, str(i), *more], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    errors = [p.communicate()[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == ([1, 1] if fails else [0, 0]), errors
    return [check_stderr(e) for e in errors] if fails else []


def test_a_cluster_of_two_releases_stops_with_one_line_naming_them(setup: FlowSetup, tmp_path: Path) -> None:
    """The process that cannot read its peer's batches says why, rather than calling the peer lost."""
    produce(setup.kafka, setup.inputs[0], MESSAGES[:40], 1)
    messages = run_pair(setup, tmp_path, ["-c", OTHER_RELEASE], {})
    this = f"nextclick {release()}"
    refused = [m for m in messages if m.startswith("a process of this cluster runs nextclick ")]
    assert refused, messages
    for m in refused:  # whichever received first names the other's release and format, then its own
        assert m in (f"a process of this cluster runs nextclick 9.9.9, whose batches (exchange format {FORMAT + 1}) "
                     f"this process ({this}, format {FORMAT}) cannot read: run one release in every process "
                     '(deploy/README.md, "Upgrades")',
                     f"a process of this cluster runs {this}, whose batches (exchange format {FORMAT}) "
                     f"this process (nextclick 9.9.9, format {FORMAT + 1}) cannot read: run one release in every "
                     'process (deploy/README.md, "Upgrades")')


def test_a_pod_configured_with_other_shards_and_secret_stops_the_cluster_naming_them(
        setup: FlowSetup, tmp_path: Path) -> None:
    """A pod whose configuration differs (a ConfigMap or Secret rolled out under one pod only) would send
    customers' events to other shards, under other keys: the first batch between them is refused,
    with the settings that differ. Nothing of theirs is committed: with the pod's configuration put
    right, the cluster starts and applies every event once."""
    produce(setup.kafka, setup.inputs[0], MESSAGES[:40], 1)
    n = setup.shards
    messages = run_pair(setup, tmp_path, ["-m", "nextclick"],
                        {"NEXTCLICK_STATE__SHARDS": str(2 * n), "NEXTCLICK_PRIVACY__SECRET": "another-secret"})
    refused = [m for m in messages if m.startswith("a process of this cluster runs with other settings")]
    assert refused, messages
    ours, theirs = f"fingerprint {secret_fingerprint(SECRET.encode())}", \
        f"fingerprint {secret_fingerprint(b'another-secret')}"
    for m in refused:  # whichever received first names the other's values, then its own
        assert m in (f"a process of this cluster runs with other settings than this one: privacy.secret = {a} there, "
                     f"{b} here; state.shards = {x} there, {y} here: give every process the same configuration "
                     '(docs/operations.md, "One configuration for every process")'
                     for a, b, x, y in ((theirs, ours, 2 * n, n), (ours, theirs, n, 2 * n)))
    run_pair(setup, tmp_path, ["-m", "nextclick"], {}, fails=False)
    profiles = {**read_profiles(tmp_path / "pod-0" / "state", n), **read_profiles(tmp_path / "pod-1" / "state", n)}
    assert sum(p["facts"]["version"] for p in profiles.values()) == 40


@pytest.mark.parametrize(("second", "what", "values"), [
    ({"second_args": ("--workers", "2")}, "--workers", (1, 2)),
    # Here the interpreter's teardown used to kill one process (SIGSEGV, SIGABRT) after it said its line,
    # 3 runs in 13; a process that ran a flow now ends with os._exit (flows/cli.py, `entry`): 0 in 13.
    ({"second_per_process": False}, "recovery partitions (--recovery-per-process or -partitions)", (2, 1)),
], ids=["workers", "recovery"])
def test_a_pod_started_otherwise_names_the_difference_rather_than_a_lost_peer(
        setup: FlowSetup, tmp_path: Path, second: dict[str, Any], what: str, values: tuple[int, int]) -> None:
    """Bytewax's processes need the same --workers and recovery partitions; otherwise they fail with only
    "Send thread panic", and each restart the same. Each process names the difference from its peer's
    hello instead."""
    produce(setup.kafka, setup.inputs[0], MESSAGES[:40], 1)
    messages = run_pair(setup, tmp_path, ["-m", "nextclick"], {}, **second)
    first, other = values
    expected = [
        f"the processes of this cluster were started differently (process {peer} runs with {what} {theirs} there, "
        f"{ours} here; this is process {me}): start every process with the same --workers, --addresses, recovery "
        'flags, release and configuration (docs/operations.md, "One configuration for every process")'
        for me, peer, ours, theirs in ((0, 1, first, other), (1, 0, other, first))]
    assert messages and all(m in expected for m in messages), messages
    assert len(messages) == 2, messages


def test_a_process_given_more_addresses_than_its_peer_says_so_rather_than_waiting_for_ever(
        setup: FlowSetup, tmp_path: Path) -> None:
    """Process 1 told of three processes waits in Timely's connection set-up for a process 2 that never
    comes, and process 0 waits on it; without the hellos said while waiting, both would hang, silent."""
    produce(setup.kafka, setup.inputs[0], MESSAGES[:40], 1)
    messages = run_pair(setup, tmp_path, ["-m", "nextclick"], {}, second_cluster=3)
    expected = [
        f"the processes of this cluster were started differently (process {peer} runs with processes in --addresses "
        f"{theirs} there, {ours} here; recovery partitions (--recovery-per-process or -partitions) {theirs} there, "
        f"{ours} here; this is process {me}): start every process with the same --workers, --addresses, recovery "
        'flags, release and configuration (docs/operations.md, "One configuration for every process")'
        for me, peer, ours, theirs in ((0, 1, 2, 3), (1, 0, 3, 2))]
    assert sorted(messages) == sorted(expected), messages


def test_only_a_live_peers_hello_stops_a_process_waiting_for_its_cluster(
        setup: FlowSetup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A hello left by an earlier, larger cluster (before a rescale), said just before this process
    started, must not stop a process that waits for a slow pod; the same hello said again by a running
    process must. The waiting process says whom it waits for, and says its own hello again."""
    monkeypatch.setattr(cluster_hello, "FORM_WAIT_S", 0.0)
    monkeypatch.setattr(cluster_hello, "CHECK_S", 0.2)
    monkeypatch.setattr(cluster_hello, "REFRESH_S", 0.5)
    topic, now = setup.control, int(time.time() * 1000)
    addresses = ["127.0.0.1:1", "127.0.0.1:2"]
    earlier = cluster_hello.hello("g", 1, 3, 1, 3, release(), {}, now - 5 * 60_000, [*addresses, "127.0.0.1:3"])
    cluster_hello.publish_hello(setup.kafka, topic, {**earlier, "said_at": now - 2000})  # its last, as it stopped
    mine = cluster_hello.hello("g", 0, 2, 1, 2, release(), {}, now, addresses)
    cluster_hello.publish_hello(setup.kafka, topic, mine)  # as the runner does before the watch starts
    refused: list[str] = []
    watch = cluster_hello.HelloWatch(setup.kafka, topic, mine, lambda: False, refused.append,
                                     lambda: int(time.time() * 1000))
    with caplog.at_level(logging.WARNING, logger="nextclick"):
        watch.start()
        try:
            wait_for(lambda: any(getattr(r, "not_running", None) for r in caplog.records), 20, "the waiting line")
            time.sleep(2)  # several checks, each of which reads the earlier cluster's hello
            assert refused == []
            waiting = next(r for r in caplog.records if getattr(r, "not_running", None))
            assert (waiting.not_running, waiting.other_addresses) == (["process 1 (127.0.0.1:2)"], [])
            cluster_hello.publish_hello(setup.kafka, topic, {**earlier, "said_at": int(time.time() * 1000)})
            wait_for(lambda: bool(refused), 20, "the refusal")
        finally:
            watch.stopped.set()
            watch.join(10)
    assert refused == [cluster_hello.differences(mine, {1: earlier})]
    assert "processes in --addresses 3 there, 2 here" in refused[0]
    said = cluster_hello.peer_hellos(setup.kafka, topic, "g", now, 2, timeout_s=5)
    assert said[0]["started_at"] == now < said[0]["said_at"]  # said again since its start
    # A cluster that failed is judged by the hellos of the starts that formed it, not by one a peer
    # restarted since said (its state may read otherwise: it committed epochs in between).
    failed_at = int(time.time() * 1000)
    restarted = cluster_hello.hello("g", 1, 2, 1, 2, release(), {}, failed_at + 1, addresses, resumes=True)
    cluster_hello.publish_hello(setup.kafka, topic, {**mine, "process": 1, "said_at": failed_at - 1})
    cluster_hello.publish_hello(setup.kafka, topic, restarted)
    judged = cluster_hello.peer_hellos(setup.kafka, topic, "g", now, 2, timeout_s=5, started_before_ms=failed_at)
    assert judged[1]["started_at"] == now and judged[1]["resumes"] is None
    assert cluster_hello.peer_hellos(setup.kafka, topic, "g", now, 2, timeout_s=5)[1] == restarted


def test_a_second_flow_on_a_running_flows_state_is_refused_and_changes_nothing(
        setup: FlowSetup, tmp_path: Path) -> None:
    """An operator starts `nextclick run` again on the directories of a flow that runs. The second
    start used to reach Bytewax, which wrote its own execution into the first's recovery: once the
    first was drained, no start could resume ("committed seq 1 but the recovery has no record of
    it"). Now it stops at once, naming the holder; `state reset` refuses too; the first drains and
    restarts as if nothing happened."""
    produce(setup.kafka, setup.inputs[0], MESSAGES[:40], 1)
    first = start(setup, stop_at_end=False, log=tmp_path / "first.log")
    try:
        wait_for(lambda: (tmp_path / "first.log").exists() and '"msg":"ready"' in (tmp_path / "first.log").read_text()
                 or bool(read_profiles(setup.state_dir, setup.shards)), 30, "the first flow to run")
        line = run_failing(setup)
        assert line == (f"state.dir {setup.state_dir} is in use: another nextclick process runs the flow there as "
                        "process 0; stop it first (one flow per state directory and process id), or give this one "
                        "its own state.dir and state.recovery_dir")
        done = subprocess.run([sys.executable, "-m", "nextclick", "state", "reset", "--yes"], cwd=REPO,
                              env=setup.env(stop_at_end=True), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and done.stderr.strip().endswith(
            f"state.dir {setup.state_dir} is in use: a nextclick flow runs there as process 0; stop it before "
            "resetting its state"), done.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
    run_to_end(setup)  # resumes: the refused start left nothing behind
    assert sum(p["facts"]["version"] for p in read_profiles(setup.state_dir, setup.shards).values()) == 40


def test_a_process_whose_cluster_port_is_taken_says_so(setup: FlowSetup) -> None:
    """Two processes started as the same --process-id on one host, or another program on the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        line = run_failing(setup, run_args=("--addresses", f"{address};127.0.0.1:{free_port()}", "--process-id", "0"))
    assert line == (f"cannot listen on {address}, process 0's address in --addresses: Address already in use "
                    "(os error 98); is another process running as process 0, or is the port taken?")


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path: Path) -> Iterator[None]:
    """chmod'ed paths (non-root runs) must be writable again for pytest to clean up."""
    yield
    if os.geteuid() != 0:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_second_deployment_on_the_same_topics_stops_and_the_first_goes_on(setup: FlowSetup, tmp_path: Path) -> None:
    """An outside probe restored a savepoint on new volumes while the old deployment still ran: both read
    every partition and sent decisions, and two decisions came with one ce_id and different bodies. Now
    the one started later stops within seconds, naming the partition and the group; the first logs it
    and keeps running."""
    fast = {"NEXTCLICK_FLOW__ALIGNMENT_IDLE_TIMEOUT": "3s"}  # heartbeats every second
    first_setup = setup.with_(extra_env={**fast, "NEXTCLICK_LOG_LEVEL": "INFO"})  # its "ready" line
    second_root = tmp_path / "second"
    second_root.mkdir()
    second_setup = setup.with_(extra_env=fast, state_dir=second_root / "state", recovery_dir=second_root / "recovery")
    second_setup.recovery_dir.mkdir()
    init_db_dir(second_setup.recovery_dir, 1)
    ensure_topics(setup.kafka, {f"{setup.control}.progress": 1})  # as `nextclick topics create` makes it
    produce(setup.kafka, setup.inputs[0], MESSAGES[:40], 1)
    first_log = tmp_path / "first.log"
    first = start(first_setup, stop_at_end=False, log=first_log)
    try:
        wait_for(lambda: first_log.exists() and '"msg":"ready"' in first_log.read_text(), 30, "the first flow to run")
        second = subprocess.run([sys.executable, "-m", "nextclick", "run", "--broker-timeout", "30"], cwd=REPO,
                                env=second_setup.env(stop_at_end=False), capture_output=True, text=True, timeout=90)
        assert second.returncode == 1
        line = check_stderr(second.stderr)
        assert line.startswith(f"two deployments read {setup.inputs[0]}#0 as consumer group ") and line.endswith(
            "both would send decisions and commit offsets; stop one; this one started later and stops"), line
        wait_for(lambda: "the other started later and stops" in first_log.read_text(), 10, "the first to log it")
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
