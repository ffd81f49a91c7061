"""The runbook's failures on a real broker: a drain with the broker gone, a missing output topic,
peer names that resolve late (issue 23, item 3).

Each test runs `nextclick run` as a subprocess, as an operator would, and checks what they would see:
the exit status, how long it took, and the log.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from nextclick.flows.cluster import ClusterError, wait_for_names
from nextclick.flows.local_broker import LocalBroker, free_port
from nextclick.operators.infra.logs import RepeatThrottle, configure_logging
from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import REPO, FlowSetup, produce, start, workload
from tests.helpers import consume_all

# The drain budget this test holds the flow to: well inside the manifest's 120 s grace period, and
# far below the 46 s a synchronous final group commit took with the broker down.
DRAIN_BOUND_S = 15.0


def log_lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def delivered(kafka: dict[str, str], setup: FlowSetup, log: Path) -> bool:
    """The flow has read all its input and Kafka holds every decision it made."""
    progress = [line for line in log_lines(log) if line["msg"] == "progress"]
    if not progress or progress[-1]["lag"] != 0 or not progress[-1]["decisions"]:
        return False
    return len(consume_all(kafka, [setup.decisions], idle_s=0.3)) == progress[-1]["decisions"]


@pytest.mark.broker
def test_a_drain_with_the_broker_down_exits_0_within_the_bound(tmp_path: Path, topic_prefix: str) -> None:
    with LocalBroker() as own:  # its own broker: this test stops it
        kafka = {"bootstrap.servers": own.bootstrap}
        topic = f"{topic_prefix}.in"
        ensure_topics(kafka, {topic: 2})
        produce(kafka, topic, workload(20, seed=5), 2)
        setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[topic], shards=2, extra_env={
            "NEXTCLICK_LOG_LEVEL": "INFO", "NEXTCLICK_FLOW__PROGRESS_SECONDS": "0.5"})
        log = tmp_path / "run.log"
        proc = start(setup, stop_at_end=False, log=log)
        try:
            # Everything read and every decision delivered: what is left for the drain is the epoch
            # end and the final group commit. (A decision still unacknowledged when the broker goes
            # makes the drain wait for it, up to delivery.timeout.ms: that is not a lost decision.)
            deadline = time.monotonic() + 30
            while not delivered(kafka, setup, log):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            own.kill()  # as a crashed broker: no goodbye on its connections
            time.sleep(1)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, log.read_text()[-3000:]
    assert took < DRAIN_BOUND_S, took
    lines = log_lines(log)
    stopped = [line for line in lines if line["msg"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == "drained"
    # The clients' reconnect failures are throttled: a few lines of each kind, not hundreds.
    refused = [line for line in lines if line["logger"] == "librdkafka" and "Connection refused" in str(line["msg"])]
    assert 0 < len(refused) <= 12, len(refused)


def flow_env(kafka: dict[str, str], prefix: str, root: Path) -> dict[str, str]:
    """`nextclick run`'s settings for topics named after `prefix` and state under `root` (neither created)."""
    env = FlowSetup(kafka=dict(kafka), inputs=(f"{prefix}.in",), decisions=f"{prefix}.decisions",
                    dead_letter=f"{prefix}.dead_letter", control=f"{prefix}.control", state_dir=root / "state",
                    recovery_dir=root / "recovery", shards=2).env(stop_at_end=True)
    env["NEXTCLICK_LOG_LEVEL"] = "INFO"
    return env


@pytest.mark.broker
def test_a_missing_output_topic_refuses_to_start_with_one_line_and_touches_no_state(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    ensure_topics(kafka, {f"{topic_prefix}.in": 1, f"{topic_prefix}.control": 1, f"{topic_prefix}.decisions": 1})
    done = subprocess.run([sys.executable, "-m", "nextclick", "run", "--broker-timeout", "20"], cwd=REPO,
                          env=flow_env(kafka, topic_prefix, tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-3000:]
    others = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert others == [f"nextclick: error: output topic '{topic_prefix}.dead_letter' (topics.dead_letter) does not "
                      "exist; create it with `nextclick topics create` (a broker that creates topics on first "
                      "write uses its default partitions and retention)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no state.dir, no recovery dir


@pytest.mark.broker
def test_a_peer_name_that_resolves_only_after_a_few_tries_still_starts(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """The process sees its own /etc/hosts (a private mount namespace), which gains the pod's name only
    after the process has looked for it: the headless Service publishing a new pod's record late."""
    ensure_topics(kafka, {f"{topic_prefix}.{t}": 1 for t in ("in", "control", "decisions", "dead_letter")})
    produce(kafka, f"{topic_prefix}.in", workload(5, seed=3), 1)
    name = f"nextclick-0.{topic_prefix}.test"
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    in_own_mounts = ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    proc = subprocess.Popen([*in_own_mounts, sys.executable, "-m", "nextclick", "run", "--broker-timeout", "20",
                             "--process-id", "0", "--addresses", f"{name}:{free_port()}"], cwd=REPO,
                            env=flow_env(kafka, topic_prefix, tmp_path / "flow"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        while not any("do not resolve yet" in line for line in seen):
            line = proc.stderr.readline()
            assert line, "".join(seen)[-3000:]  # the process ended before it looked the name up
            seen.append(line)
        with hosts.open("a") as file:  # in place: the bind mount shows the same file
            file.write(f"127.0.0.1 {name}\n")
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, ("".join(seen) + rest)[-3000:]
    lines = [orjson.loads(line) for line in ("".join(seen) + rest).splitlines() if line.startswith("{")]
    retries = [line for line in lines if line["msg"] == "cluster address(es) do not resolve yet, retrying"]
    assert retries and retries[0]["hosts"] == [name]
    assert lines[-1]["msg"] == "stopped"


def test_peer_names_are_retried_within_the_bound_then_named() -> None:
    now = [0.0]
    looked: list[str] = []

    def never(host: str, port: None) -> None:
        looked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ClusterError, match=r"did not resolve within 20s: nextclick-1\.nextclick\.prod\.svc"):
        wait_for_names(("nextclick-1.nextclick.prod.svc:2101",), 20, lookup=never, sleep=sleep, clock=lambda: now[0])
    assert 5 < len(looked) < 15 and now[0] <= 20  # backoff up to 5 s, never past the bound


@pytest.fixture()
def _logging_restored() -> Iterator[None]:
    root, client = logging.getLogger(), logging.getLogger("librdkafka")
    saved = root.handlers[:], root.level, client.filters[:]
    yield
    root.handlers[:], client.filters[:] = saved[0], saved[2]
    root.setLevel(saved[1])


@pytest.mark.usefixtures("_logging_restored")
def test_repeated_client_errors_are_throttled_with_a_count() -> None:
    out = io.StringIO()
    configure_logging("INFO", out)
    client = logging.getLogger("librdkafka")
    assert sum(isinstance(f, RepeatThrottle) for f in client.filters) == 1
    for i in range(873):
        client.error("FAIL [rdkafka#consumer-%d] [thrd:b:9092/1]: b:9092/1: Connect to ipv4#10.0.0.1:9092 failed: "
                     "Connection refused (after %dms in state CONNECT)", i % 7, i % 3)
    client.error("FAIL [rdkafka#producer-1] [thrd:c:9092/2]: c:9092/2: Connect to ipv4#10.0.0.2:9092 failed")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["msg"][:25] for line in lines] == ["FAIL [rdkafka#consumer-0]", "FAIL [rdkafka#producer-1]"]
    now = [0.0]
    throttle = RepeatThrottle(every_s=60, clock=lambda: now[0])
    record = logging.LogRecord("librdkafka", logging.ERROR, "", 0, "refused (after %dms)", (1,), None)
    assert throttle.filter(record) and not throttle.filter(record) and not throttle.filter(record)
    now[0] = 61
    assert throttle.filter(record) and vars(record)["repeated"] == 2  # the next line: how many were dropped


@pytest.mark.broker
def test_run_local_resumes_where_it_stopped_on_the_same_broker(tmp_path: Path) -> None:
    """deploy/run-local.sh: the second run, on the broker the script keeps, reads only the new events."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTCLICK_")}
    env.update({"PORT": str(free_port()), "LOCAL_DIR": str(tmp_path / "local"), "GENERATE_SECONDS": "1",
                "MORE_SECONDS": "1", "NEXTCLICK_LOG_LEVEL": "INFO", "PYTHONPATH": str(REPO)})
    done = subprocess.run(["bash", str(REPO / "deploy" / "run-local.sh")], cwd=tmp_path, env=env, input="\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    sent = [orjson.loads(line)["sent"] for line in done.stdout.splitlines() if line.startswith('{"sent"')]
    lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    stopped = [line for line in lines if line["msg"] == "stopped"]
    assert len(sent) == len(stopped) == 2 and all(sent)
    assert [line["input_messages"] for line in stopped] == sent  # the second run read the new events only
    opened = [line for line in lines if line["msg"] == "shard opened"]
    assert opened and opened[-1]["resumed"] is True
    assert (tmp_path / "local" / "state").is_dir()
