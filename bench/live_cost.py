"""Live against backlog: the same events read as a backlog and offered live, CPU per event (#27, item 3).

    python -m bench.live_cost --events 200000 --customers 50000 --rate 8000 --seconds 20

Why not bench.run's latency phase: its live events are a different stream (one in ten is a probe,
a never-seen customer whose call-center contact always yields a decision), so its cores per event
cannot be set against a backlog's. Here both halves use the reference events of bench/workload.py
(`generate`, the same seed, keyed by customer), one flow process, fresh state each:

* backlog: the events as generated (two hours of event time ending now), produced before the flow
  starts and read to the end (`bench.scale.run_cluster`): CPU per event without start-up;
* live: the flow tails an empty topic; once it idles after start-up the same events are produced at
  `--rate` ev/s with `ts` set to the send time, for `--warmup` seconds and then `--seconds` measured
  ones. CPU per event = the flow process's user+system CPU over the measured window / events sent
  in it (the flow keeps up: the run fails if it applied fewer events than were sent). The epoch-end
  pause is the shards' snapshot time per epoch (bench/flow_entry.py), mean and max over the live
  run.

With several rates (`--rate 2000,8000,12000`), each is a fresh live flow, and the table ends with the
least-squares line through (rate, cores): live cores = fixed + rate x marginal. The marginal cost of
a live event against the backlog's says whether an event costs more live, or the flow costs more
per second when traffic trickles in (small batches: every poll tick runs the dataflow for a few
events).

Prints one markdown table; raw figures go to `--out` (JSON, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Producer

from bench import scale, workload
from bench.run import (
    FlowRun,
    Settings,
    checkpoint_summary,
    machine_info,
    produce_one,
    produce_workload,
    send_paced,
    source_revision,
    start_broker,
)
from bench.run import parse_args as run_settings
from nextclick.operators.io.topics import ensure_topics

TICK_S = 0.01  # the live producer sends what the rate owes every 10 ms


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _wait_idle(proc: psutil.Process, *, timeout: float = 120.0, below: float = 0.25) -> None:
    """Until the process uses less than `below` of a core over half a second: start-up is over."""
    deadline = time.monotonic() + timeout
    time.sleep(1.0)
    while time.monotonic() < deadline:
        before = _cpu(proc)
        time.sleep(0.5)
        if (_cpu(proc) - before) / 0.5 < below:
            return
    raise RuntimeError("the live flow did not settle after start-up")


def _offer(bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float, seconds: float,
           sent: list[int], stop: threading.Event) -> None:
    """Produce `events` in order at `rate` ev/s for `seconds` (or until `stop`), each with ts = now."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "compression.type": "lz4"})
    end = time.monotonic() + seconds

    def send() -> bool:
        n = sent[0]
        if n >= len(events):
            return False
        event = events[n]
        event["ts"] = time.time_ns() // 1_000_000
        produce_one(producer, topic, orjson.dumps(event), event["customer_id"].encode())
        sent[0] = n + 1
        return True

    send_paced(producer, rate, TICK_S, send, lambda: not stop.is_set() and time.monotonic() < end)


def run_live(s: Settings, bootstrap: str, work: Path, rate: float, seconds: float,
             warmup: float) -> dict[str, Any]:
    tag = f"bench.live.{s.run_id}"
    in_topic, out_topic = f"{tag}.events", f"{tag}.decisions"
    ensure_topics({"bootstrap.servers": bootstrap}, {in_topic: s.partitions, out_topic: s.partitions})
    needed = int(rate * (seconds + warmup)) + 1
    if needed > s.events:
        raise SystemExit(f"bench.live_cost: --rate x (--seconds + --warmup) = {needed:,} events, more than "
                         f"--events {s.events:,}: the live run must offer the backlog's events, not more")
    events = list(workload.generate(s.events, s.customers, seed=s.seed))
    run = FlowRun(s, bootstrap, work, "live", 1, input_topic=in_topic, decisions_topic=out_topic,
                  stop_at_end=False)
    proc = psutil.Process(run.procs[0].pid)
    try:
        _wait_idle(proc)
        sent = [0]
        stop = threading.Event()
        sender = threading.Thread(target=_offer, args=(bootstrap, in_topic, events, rate, seconds + warmup, sent,
                                                       stop), daemon=True)
        sender.start()
        time.sleep(warmup)
        cpu0, sent0, t0 = _cpu(proc), sent[0], time.perf_counter()
        time.sleep(seconds)
        cpu1, sent1, t1 = _cpu(proc), sent[0], time.perf_counter()
        sender.join()
        time.sleep(3.0)  # the flow takes in the tail before it is asked to stop
    finally:
        run.request_stop()
        run.wait(120)
    stats = run.stats()
    applied = int(sum(p["events"] for p in stats))
    if applied < sent[0]:
        raise RuntimeError(f"live: the flow applied {applied:,} of {sent[0]:,} events sent: it did not keep up")
    window_events = sent1 - sent0
    return {"rate": rate, "sent": sent[0], "window_s": t1 - t0, "window_events": window_events,
            "cores": (cpu1 - cpu0) / (t1 - t0), "cpu_per_event_us": 1e6 * (cpu1 - cpu0) / window_events,
            "checkpoint": checkpoint_summary(stats, s.epoch_seconds)}


def fit(lives: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least squares through (ev/s, cores): (fixed cores, marginal µs per event); None under 2 rates."""
    points = [(lv["window_events"] / lv["window_s"], lv["cores"]) for lv in lives]
    if len({round(x) for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, slope * 1e6


def markdown(result: dict[str, Any]) -> str:
    b = result["backlog"]
    lives = result["live"] if isinstance(result["live"], list) else [result["live"]]
    cb = b["checkpoint"]
    lines = [
        f"bench.live_cost: {result['settings']['events']:,} reference events, {result['settings']['customers']:,} "
        f"customers, 1 process, revision {result.get('revision') or 'unknown'}", "",
        "| run | ev/s | CPU/event µs | live / backlog | epoch-end pause mean / max ms |",
        "|---|---|---|---|---|",
        f"| backlog | {b['window_events_per_s']:,.0f} | {b['cpu_per_event_us']:.1f} | 1.00 "
        f"| {_ms(cb.get('per_epoch_mean_s'))} / {_ms(cb.get('per_epoch_max_s'))} |"]
    for lv in lives:
        cl = lv["checkpoint"]
        lines.append(
            f"| live at {lv['rate']:,.0f} ev/s ({lv['cores']:.2f} cores) | {lv['window_events'] / lv['window_s']:,.0f} "
            f"| {lv['cpu_per_event_us']:.1f} | {lv['cpu_per_event_us'] / b['cpu_per_event_us']:.2f} (target ≤ 1.2) "
            f"| {_ms(cl.get('per_epoch_mean_s'))} / {_ms(cl.get('per_epoch_max_s'))} (target max < 100) |")
    line = fit(lives)
    if line is not None:
        fixed, marginal = line
        lines += ["", f"live cores = {fixed:.3f} + rate x {marginal:.1f} µs (least squares over {len(lives)} rates): "
                      f"a live event's marginal cost is {marginal / b['cpu_per_event_us']:.2f}x a backlog event's"]
    return "\n".join([*lines, ""])


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.live_cost", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--rate", default="8000", help="live ev/s offered; comma-separated for several live runs")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured live seconds")
    ap.add_argument("--warmup", type=float, default=3.0, help="live seconds offered before the window")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="raw JSON (git-ignored)")
    args = ap.parse_args(argv)
    try:
        rates = [float(r) for r in args.rate.split(",")]
    except ValueError:
        raise SystemExit(f"bench.live_cost: --rate {args.rate!r}: give ev/s as numbers, comma-separated") from None
    s = run_settings(["--events", str(args.events), "--customers", str(args.customers), "--processes", "1",
                      "--out", str(args.out)])
    work = Path(tempfile.mkdtemp(prefix="nextclick-livecost-"))
    broker = start_broker(work)
    try:
        ensure_topics({"bootstrap.servers": broker.bootstrap}, {s.input_topic: s.partitions})
        produce_workload(s, broker.bootstrap)
        backlog = scale.run_cluster(s, broker.bootstrap, broker, work, 1, f"bench.out.backlog.{s.run_id}")
        backlog["checkpoint"] = checkpoint_summary(
            [orjson.loads(f.read_bytes()) for f in sorted(Path(backlog["dir"]).glob("stats-*.json"))],
            s.epoch_seconds)
        live = [run_live(dataclasses.replace(s, run_id=f"{s.run_id}-{n}"), broker.bootstrap, work / f"live-{n}",
                         rate, args.seconds, args.warmup) for n, rate in enumerate(rates)]
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {"settings": {"events": s.events, "customers": s.customers}, "machine": machine_info(),
              "revision": source_revision(), "backlog": backlog, "live": live if len(live) > 1 else live[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-live-cost.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(markdown(result) + f"\nraw figures: {path}", flush=True)


if __name__ == "__main__":
    main()
