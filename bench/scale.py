"""Scaling out: the same backlog on 1, 2 and 4 processes of a Bytewax cluster (issue #27, item 1).

    python -m bench.scale --events 100000 --customers 20000 --processes 1,2,4

One embedded broker and one workload, produced once before anything is timed (bench.run's
`start_broker` and `produce_workload`); then, per process count, the full flow
(`bench.flow_entry:flow`) in `bench.run.FlowRun`'s subprocesses, one worker each, a fresh state and
recovery dir each, stop_at_end. What it reports for each count, and how:

* CPU per event without start-up. The harness samples the user+system CPU of every process of
  the cluster (psutil) together with the cluster's read counts. The window starts at the first
  sample where every process that reads input has read something (decided after the run from the
  sample history), and ends when the last process exits: its CPU then is exact, from `os.wait4`'s
  rusage. CPU per event = (CPU at exit - CPU at the window start) / (events - messages already read
  at the window start). Start-up (interpreter, imports, building the flow, forming the cluster,
  assigning partitions) falls before the window and is reported alone; the final epoch's
  checkpoint and the shutdown fall inside it.
* Bytes exchanged between processes per event. Timely's exchange between processes runs over one
  TCP connection per pair of processes, between the cluster's addresses (`-a`). `ss -tin` reports
  bytes_sent for every socket of the host; the sum over sockets whose local or peer port is one of
  the cluster's ports counts each direction of each pair once. Kafka (the broker's port) and the
  metrics scrapes (their own ports) are not cluster ports, so they are excluded. Sampled every
  0.1 s and kept per connection, since the sockets close when the processes exit: the last
  < 0.1 s before a socket closes can be missed (shutdown traffic).
* The share of events the busiest worker handles, per stage that carries events. The input's:
  Bytewax's count of the items entering `parse` on each worker (one per message read, plus the
  input's progress reports), served on Bytewax's own metrics endpoint when
  `BYTEWAX_DATAFLOW_API_ENABLED` is set (`/metrics` on BYTEWAX_DATAFLOW_API_PORT, one port per
  process, set by a tiny launcher in front of each command), from the last scrape before exit
  (every 0.25 s for the first 3 s of reading, then every second; each scrape costs a few ms). The
  identity stage's and the shards': events, from each process's own counters at exit
  (`stage_events`; one worker per process). Bytewax's item counts cannot say those: the identity
  stage receives and sends one list per batch and shard (operators/exchange.py), so there its
  items are lists. The worker's share of the events is at least the largest of the three.
* Projected capacity with a core per process. A process's CPU per cluster event c_p over the
  window; c = sum of c_p. With a core each the cluster goes as fast as its busiest process:
  T(N) = 1 / max c_p. Writing max c_p = (c - s) / N + s, the serial part s = max c_p - mean of
  the others' c_p is the work only the busiest worker does (today: the identity stage, the
  `routed` step, and receiving and sending every event across the exchange). Projection to M
  processes from the largest measured N: T(M) = 1 / ((c - s) / M + s), which assumes c and s stay
  as measured (c grows a little further, as the share of items crossing a process boundary,
  (M - 1) / M, does).
* Idle CPU (`--idle-seconds`, default 5): after each backlog run, the same cluster tails an empty
  topic; the cores it uses for that long, 2 s after every process's metrics endpoint answers
  (epochs still close every `--epoch-seconds`, workers and Kafka clients still wake). Times the
  backlog window, per event, it bounds how much of the CPU per event is the cluster being alive
  rather than the events.

Raw figures go to `--out` (JSON, git-ignored); the markdown table is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import run as bench_run
from bench.run import FlowRun, Settings, machine_info, produce_workload, source_revision, start_broker
from bench.workload import ZIPF_S
from nextclick.flows.local_broker import LocalBroker, free_port
from nextclick.operators.io.topics import ensure_topics

# Sets Bytewax's metrics endpoint for the process `-i I` (0 without -i) and execs the command: one
# port per process, as FlowRun gives every process the same environment; the endpoint's copy of the
# dataflow (dataflow.json, in the working directory by default) goes to the run's directory. No site.
LAUNCHER = ("import os,sys\n"
            "ports=sys.argv[1].split(',');cmd=sys.argv[3:]\n"
            "os.environ['BYTEWAX_DATAFLOW_API_CACHE_PATH']=sys.argv[2]\n"
            "i=int(cmd[cmd.index('-i')+1]) if '-i' in cmd else 0\n"
            "os.environ['BYTEWAX_DATAFLOW_API_ENABLED']='true'\n"
            "os.environ['BYTEWAX_DATAFLOW_API_PORT']=ports[i]\n"
            "os.execv(cmd[0],cmd)\n")

SAMPLE_EVERY_S = 0.1  # CPU and socket bytes
SCRAPE_FAST_S, SCRAPE_SLOW_S, FAST_FOR_S = 0.25, 1.0, 3.0  # Bytewax metrics
INPUT_STEP = "nextclick.parse"
IDENTITY_STEP = "nextclick.identity"
SERIAL_STEPS = (IDENTITY_STEP, "nextclick.routed.flat_map_batch")
# The shard families' steps: nextclick.profiles and nextclick.linked_<type> (flows/targeting.py).
_SHARD_STEP = re.compile(r"^nextclick\.(profiles|linked_[a-z_]+)$")
_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')

Metrics = dict[tuple[str, str, int], float]  # (metric, step_id, worker_index) -> value


def parse_metrics(text: str) -> Metrics:
    """Bytewax's per-step, per-worker samples from a Prometheus text page."""
    out: Metrics = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or not m.group(1).startswith("bytewax_"):
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if "step_id" in labels and "worker_index" in labels:
            out[(m.group(1), labels["step_id"], int(labels["worker_index"]))] = float(m.group(3))
    return out


def step_items(metrics: Metrics, metric: str = "bytewax_item_inp_count_total") -> dict[str, dict[int, float]]:
    """step -> worker -> value of one metric."""
    out: dict[str, dict[int, float]] = {}
    for (name, step, worker), value in metrics.items():
        if name == metric:
            out.setdefault(step, {})[worker] = value
    return out


def parse_ss(text: str, ports: set[int]) -> dict[tuple[str, str], int]:
    """bytes_sent per (local, peer) TCP connection with an endpoint on one of `ports`, from `ss -tinH`."""
    out: dict[tuple[str, str], int] = {}
    current: tuple[str, str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            # Recv-Q Send-Q Local Peer [users] (no State column when filtered by state)
            local, peer = (fields[2], fields[3]) if fields[0].isdigit() else (fields[3], fields[4])
            endpoints = {_port(local), _port(peer)}
            current = (local, peer) if endpoints & ports else None
            continue
        if current is not None:
            m = re.search(r"\bbytes_sent:(\d+)", line)
            if m:
                out[current] = int(m.group(1))
            current = None
    return out


def _port(address: str) -> int:
    tail = address.rpartition(":")[2]
    return int(tail) if tail.isdigit() else -1


def stage_events(stats: dict[int, dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Per worker, the events (and progress reports) its identity stage routed and its shards applied,
    from each process's own counters (`stats-*.json`, one worker per process). Bytewax's item counts
    cannot say it: the identity stage receives and sends a list per batch and shard
    (operators/exchange.py), so its items are lists."""
    return {"identity": {w: float(st.get("identity_items", 0)) for w, st in stats.items()},
            "shards": {w: float(st.get("events", 0)) for w, st in stats.items()}}


def busiest_shares(items: dict[str, dict[int, float]],
                   events: dict[str, dict[int, float]] | None = None) -> dict[str, dict[str, Any]]:
    """Per event-carrying stage: total items, the busiest worker and its share. `events` (stage_events)
    replaces a stage's Bytewax item counts with its event counts."""
    stages = {"input": [INPUT_STEP], "identity": [IDENTITY_STEP],
              "shards": sorted(s for s in items if _SHARD_STEP.match(s))}
    out: dict[str, dict[str, Any]] = {}
    for stage, steps in stages.items():
        per_worker: dict[int, float] = {}
        for step in steps:
            for worker, n in items.get(step, {}).items():
                per_worker[worker] = per_worker.get(worker, 0.0) + n
        if events and stage in events:
            per_worker = {w: n for w, n in events[stage].items() if n}
        total = sum(per_worker.values())
        if not total:
            continue
        worker = max(per_worker, key=lambda w: per_worker[w])
        out[stage] = {"items": int(total), "busiest_worker": worker, "share": per_worker[worker] / total,
                      "per_worker": {str(w): int(n) for w, n in sorted(per_worker.items())}}
    return out


def model(per_process_cpu: list[float]) -> dict[str, float | None]:
    """c (CPU per event, all processes), s (the busiest's excess over the mean of the others) and
    T = 1 / max c_p, the capacity with a core per process. Inputs are CPU seconds per event."""
    c = sum(per_process_cpu)
    busiest = max(per_process_cpu)
    n = len(per_process_cpu)
    s = busiest - (c - busiest) / (n - 1) if n > 1 else None
    return {"c": c, "s": s, "busiest": busiest, "capacity": 1 / busiest if busiest else None}


def project(c: float, s: float, processes: int) -> float:
    """T(M) = 1 / ((c - s) / M + s)."""
    return 1 / ((c - s) / processes + s)


# -- a cluster run, sampled -------------------------------------------------------------------------

@dataclass
class Sample:
    t: float
    cpu: list[float]  # per process, user+sys seconds
    read: dict[int, float]  # worker -> items out of the input step so far
    bytes_sent: int  # between the cluster's processes so far
    broker_cpu: float | None


@dataclass
class Sampler:
    """CPU and socket bytes every SAMPLE_EVERY_S; Bytewax's metrics of every process every scrape."""

    procs: list[psutil.Process]
    api_ports: list[int]
    cluster_ports: set[int]
    broker: psutil.Process | None = None
    samples: list[Sample] = field(default_factory=list)
    connections: dict[tuple[str, str], int] = field(default_factory=dict)
    last_metrics: dict[int, Metrics] = field(default_factory=dict)
    scrape_seconds: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def cpu(self) -> list[float]:
        out = []
        for p in self.procs:
            try:
                t = p.cpu_times()
                out.append(t.user + t.system)
            except psutil.Error:
                out.append(float("nan"))  # exited: its CPU at exit comes from wait4
        return out

    def _bytes(self) -> int:
        if len(self.cluster_ports) > 1:
            done = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True)
            for conn, sent in parse_ss(done.stdout, self.cluster_ports).items():
                self.connections[conn] = max(sent, self.connections.get(conn, 0))
        return sum(self.connections.values())

    def _scrape(self) -> None:
        started = time.perf_counter()
        for i, port in enumerate(self.api_ports):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                    self.last_metrics[i] = parse_metrics(page.read().decode())
            except OSError:
                continue  # not listening yet, or gone
        self.scrape_seconds.append(time.perf_counter() - started)

    def _run(self) -> None:
        next_scrape = 0.0
        first_read: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            cpu = self.cpu()
            sent = self._bytes()
            if now >= next_scrape:
                self._scrape()
                read: dict[int, float] = {}
                for metrics in self.last_metrics.values():
                    read.update(step_items(metrics, "bytewax_item_out_count_total").get("nextclick.kafka_in", {}))
                if first_read is None and sum(read.values()) > 0:
                    first_read = now
                fast = first_read is None or now - first_read < FAST_FOR_S
                next_scrape = now + (SCRAPE_FAST_S if fast else SCRAPE_SLOW_S)
                self.samples.append(Sample(time.time(), cpu, read, sent, _proc_cpu(self.broker)))
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _reap(run: FlowRun, timeout: float) -> tuple[list[float], list[float]]:
    """Wait for every process; their exact CPU at exit (wait4's rusage) and their exit times."""
    cpu: dict[int, float] = {}
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(cpu) < len(run.procs):
        for i, p in enumerate(run.procs):
            if i in cpu:
                continue
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                cpu[i] = usage.ru_utime + usage.ru_stime
                ended[i] = time.time()
        if time.monotonic() > deadline:
            for p in run.procs:
                p.kill()
            raise RuntimeError(f"run {run.dir.name} did not finish within {timeout:.0f}s")
        bench_run._check_broker()
        time.sleep(0.02)
    run.wait(60)  # every returncode is set: stops the RSS sampler and raises, with the logs, on a failure
    return [cpu[i] for i in range(len(run.procs))], [ended[i] for i in range(len(run.procs))]


def run_cluster(s: Settings, bootstrap: str, broker: LocalBroker | None, work: Path, processes: int,
                out_topic: str) -> dict[str, Any]:
    api_ports = [free_port() for _ in range(processes)]
    wrap = [sys.executable, "-I", "-S", "-c", LAUNCHER, ",".join(map(str, api_ports)), str(work / f"scale{processes}")]
    run = FlowRun(s, bootstrap, work, f"scale{processes}", processes, input_topic=s.input_topic,
                  decisions_topic=out_topic, stop_at_end=True, wrap=wrap)
    cluster_ports: set[int] = set()
    for command in run.commands:
        if "-a" in command:
            cluster_ports = {_port(a) for a in command[command.index("-a") + 1].split(";")}
    broker_popen = getattr(broker, "_proc", None)
    broker_proc = psutil.Process(broker_popen.pid) if broker_popen is not None else None
    sampler = Sampler([psutil.Process(p.pid) for p in run.procs], api_ports, cluster_ports, broker_proc)
    try:
        cpu_exit, ended = _reap(run, 3600)
    finally:
        sampler.stop()
    broker_cpu_end = _proc_cpu(broker_proc)
    stats = run.stats()
    events = int(sum(p["events"] for p in stats))
    if events != s.events:
        raise RuntimeError(f"{processes} process(es) applied {events} events, expected {s.events}")

    final_items: dict[str, dict[int, float]] = {}
    for metrics in sampler.last_metrics.values():
        for step, workers in step_items(metrics).items():
            final_items.setdefault(step, {}).update(workers)
    readers = {w for w, n in final_items.get(INPUT_STEP, {}).items() if n > 0}
    start = next((x for x in sampler.samples
                  if readers and all(x.read.get(w, 0) > 0 for w in readers) and all(c == c for c in x.cpu)), None)
    if start is None:
        raise RuntimeError(f"{processes} process(es): no sample caught every reading process at work; "
                           "the run was too short for the sampling interval")
    read_at_start = sum(start.read.values())
    window_events = s.events - read_at_start
    window_s = max(ended) - start.t
    per_process = [(end - begin) / window_events for end, begin in zip(cpu_exit, start.cpu)]
    m = model(per_process)
    worker_of = {p.pid: n for n, p in enumerate(run.procs)}  # the launcher execs the flow: same pid
    busiest = busiest_shares(final_items, stage_events({worker_of[st["pid"]]: st for st in stats}))
    merged = _merged(sampler.last_metrics)
    durations = {step: sum(w.values())
                 for metric in ("bytewax_stateful_batch_on_batch_duration_seconds_sum",
                                "bytewax_flat_map_batch_duration_seconds_sum")
                 for step, w in step_items(merged, metric).items()}
    result = {
        "processes": processes,
        "events": events,
        "wall_s": max(ended) - run.started,
        "events_per_s": s.events / (max(ended) - run.started),
        "window_s": window_s,
        "window_events": window_events,
        "window_events_per_s": window_events / window_s,
        "startup_cpu_s": sum(start.cpu),
        "cpu_total_s": sum(cpu_exit),
        "cpu_per_event_us": 1e6 * m["c"],  # type: ignore[operator]
        "cpu_per_event_per_process_us": [round(1e6 * c, 2) for c in per_process],
        "serial_us": None if m["s"] is None else 1e6 * m["s"],
        "capacity_events_per_s": m["capacity"],
        "exchange_bytes": sum(sampler.connections.values()) - start.bytes_sent,
        "exchange_bytes_per_event": (sum(sampler.connections.values()) - start.bytes_sent) / window_events,
        "exchange_connections": len(sampler.connections),
        "busiest": busiest,
        "busiest_share": max((b["share"] for b in busiest.values()), default=None),
        "serial_steps_us_per_event": {step: 1e6 * durations.get(step, 0.0) / events for step in SERIAL_STEPS},
        "broker_cpu_per_event_us": (None if start.broker_cpu is None or broker_cpu_end is None
                                    else 1e6 * (broker_cpu_end - start.broker_cpu) / window_events),
        "scrape_mean_ms": 1000 * statistics.fmean(sampler.scrape_seconds) if sampler.scrape_seconds else None,
        "samples": len(sampler.samples),
        "dir": str(run.dir),
        "command": run.commands,
    }
    return result


def idle_cores(s: Settings, bootstrap: str, work: Path, processes: int, seconds: float) -> float:
    """Cores an idle cluster uses: tailing an empty topic, `seconds` after every process answers plus 2 s."""
    topic = f"bench.scale.idle{processes}.{s.run_id}"
    ensure_topics({"bootstrap.servers": bootstrap}, {topic: s.partitions, f"{topic}.out": s.partitions})
    api_ports = [free_port() for _ in range(processes)]
    wrap = [sys.executable, "-I", "-S", "-c", LAUNCHER, ",".join(map(str, api_ports)), str(work / f"idle{processes}")]
    run = FlowRun(s, bootstrap, work, f"idle{processes}", processes, input_topic=topic,
                  decisions_topic=f"{topic}.out", stop_at_end=False, wrap=wrap)
    try:
        procs = [psutil.Process(p.pid) for p in run.procs]
        deadline = time.monotonic() + 120
        pending = set(api_ports)
        while pending and time.monotonic() < deadline:
            for port in list(pending):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                        pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"idle cluster of {processes}: no metrics endpoint on {sorted(pending)}")
        time.sleep(2.0)
        before, t0 = sum(_proc_cpu(p) or 0.0 for p in procs), time.monotonic()
        time.sleep(seconds)
        return (sum(_proc_cpu(p) or 0.0 for p in procs) - before) / (time.monotonic() - t0)
    finally:
        run.request_stop()
        run.wait(120)


def _merged(per_process: dict[int, Metrics]) -> Metrics:
    out: Metrics = {}
    for metrics in per_process.values():
        out.update(metrics)
    return out


def _proc_cpu(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


# -- report ---------------------------------------------------------------------------------------

def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(result: dict[str, Any]) -> str:
    st = result["settings"]
    rows = result["runs"]
    one = rows[0]["cpu_per_event_us"] if rows and rows[0]["processes"] == 1 else None
    lines = [f"bench.scale: {st['events']:,} events, {st['customers']:,} customers "
             f"(Zipf s={st.get('zipf_s', ZIPF_S)}), {'' if st.get('stitching', True) else 'no identity stitching, '}"
             f"{st['partitions']} partitions, "
             f"{st['shards']} shards, {result['machine']['cpu_count']} CPUs, bytewax "
             f"{result['machine']['versions']['bytewax']}, revision {result.get('revision') or 'unknown'}", "",
             "| processes | ev/s after start-up | ev/s incl. start-up | start-up CPU s | CPU/event µs | × 1 process "
             "| exchanged bytes/event | busiest worker's share: input / identity / shards (≤ 1.5/N) "
             "| serial part µs | capacity, a core each, ev/s | broker CPU/event µs | idle cluster: cores "
             "(µs/event over the window) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["busiest"]
        shares = " / ".join(f"{100 * b[k]['share']:.0f}%" if k in b else "n/a" for k in ("input", "identity", "shards"))
        ratio = f"{r['cpu_per_event_us'] / one:.2f}" if one else "n/a"
        lines.append(f"| {r['processes']} | {r['window_events_per_s']:,.0f} | {r['events_per_s']:,.0f} "
                     f"| {r['startup_cpu_s']:.1f} | {r['cpu_per_event_us']:.1f} | {ratio} "
                     f"| {r['exchange_bytes_per_event']:,.0f} | {shares} (≤ {150 / r['processes']:.0f}%) "
                     f"| {_f(r['serial_us'], '.1f')} | {_f(r['capacity_events_per_s'], ',.0f')} "
                     f"| {_f(r['broker_cpu_per_event_us'], '.1f')} "
                     f"| {_f(r.get('idle_cores'), '.2f')} ({_f(r.get('idle_us_per_event'), '.1f')}) |")
    lines += ["", "CPU per event of each process (µs, process 0 first): "
              + "; ".join(f"{r['processes']}: {', '.join(f'{c:.1f}' for c in r['cpu_per_event_per_process_us'])}"
                          for r in rows),
              "", "The identity stage's own steps, µs per event (Bytewax's on_batch / flat_map_batch time): "
              + "; ".join(f"{r['processes']}: " + ", ".join(f"{k.removeprefix('nextclick.')} {v:.1f}"
                                                           for k, v in r["serial_steps_us_per_event"].items())
                          for r in rows)]
    proj = result.get("projection")
    if proj:
        lines += ["", f"Projected with a core per process, T(M) = 1 / ((c - s) / M + s), from {proj['from']} processes "
                  f"(c = {proj['c_us']:.1f} µs, s = {proj['s_us']:.1f} µs): "
                  + "; ".join(f"M = {m}: {v:,.0f} ev/s" for m, v in proj["events_per_s"].items())
                  + f"; ceiling 1 / s = {proj['ceiling']:,.0f} ev/s"]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------

def run(s: Settings, idle_seconds: float = 5.0) -> dict[str, Any]:
    if shutil.which("ss") is None:
        raise SystemExit("bench.scale needs `ss` (iproute2) to count the bytes between processes")
    s.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="nextclick-scale-"))
    broker: LocalBroker | None = None
    try:
        broker = start_broker(work) if s.bootstrap is None else None
        bootstrap = s.bootstrap or (broker.bootstrap if broker else "")
        outs = {p: f"bench.out.scale{p}.{s.run_id}" for p in s.processes}
        ensure_topics({"bootstrap.servers": bootstrap},
                      {s.input_topic: s.partitions, **{t: s.partitions for t in outs.values()}})
        produced = produce_workload(s, bootstrap)
        runs = []
        for p in s.processes:
            r = run_cluster(s, bootstrap, broker, work, p, outs[p])
            if idle_seconds > 0:
                r["idle_cores"] = idle_cores(s, bootstrap, work, p, idle_seconds)
                r["idle_us_per_event"] = 1e6 * r["idle_cores"] * r["window_s"] / r["window_events"]
            runs.append(r)
            print(f"{p} process(es): {r['window_events_per_s']:,.0f} ev/s after start-up, "
                  f"{r['cpu_per_event_us']:.1f} µs CPU/event, {r['exchange_bytes_per_event']:,.0f} B/event "
                  f"exchanged, busiest worker {100 * (r['busiest_share'] or 0):.0f}% of the items", flush=True)
        result: dict[str, Any] = {
            "timestamp": stamp, "machine": machine_info(), "revision": source_revision(),
            "settings": {"events": s.events, "customers": s.customers, "processes": list(s.processes),
                         "partitions": s.partitions, "shards": s.shards, "epoch_seconds": s.epoch_seconds,
                         "sync": s.sync, "seed": s.seed, "workload": s.workload, "zipf_s": s.zipf_s,
                         "stitching": s.stitching},
            "workload": produced, "runs": runs}
        largest = max((r for r in runs if r["serial_us"] is not None), key=lambda r: r["processes"], default=None)
        if largest is not None:
            c, sp = largest["cpu_per_event_us"] / 1e6, largest["serial_us"] / 1e6
            result["projection"] = {
                "from": largest["processes"], "c_us": 1e6 * c, "s_us": 1e6 * sp,
                "events_per_s": {str(m): project(c, sp, m) for m in (1, 2, 4, 8, 16, 32)},
                "ceiling": 1 / sp if sp > 0 else float("inf")}
        path = s.out / f"{stamp}-scale.json"
        path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print(markdown(result), flush=True)
        print(f"raw figures: {path}")
        return result
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--epoch-seconds", type=int, default=2)
    parser.add_argument("--no-sync", action="store_true", help="state.sync=false (no fsync per checkpoint)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workload", choices=("default", "identity"), default="default")
    parser.add_argument("--no-stitching", action="store_true",
                        help="identity.stitching = false: events straight from their reader to their shard")
    parser.add_argument("--zipf", type=float, default=ZIPF_S,
                        help="customers' skew (at 1.1 the busiest of 50,000 sends 14%% of the events)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="raw JSON (git-ignored)")
    parser.add_argument("--bootstrap", help="use this broker instead of starting an embedded one")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="measure each cluster idle (tailing an empty topic) this long; 0: skip")
    args = parser.parse_args(argv)
    return Settings(events=args.events, customers=args.customers,
                    processes=tuple(int(p) for p in args.processes.split(",") if p.strip()),
                    partitions=args.partitions, shards=args.shards, epoch_seconds=args.epoch_seconds,
                    sync=not args.no_sync, seed=args.seed, workload=args.workload, out=args.out,
                    bootstrap=args.bootstrap, zipf_s=args.zipf, stitching=not args.no_stitching), args.idle_seconds


def main(argv: list[str] | None = None) -> None:
    settings, idle_seconds = parse_args(argv)
    run(settings, idle_seconds)


if __name__ == "__main__":
    main()
