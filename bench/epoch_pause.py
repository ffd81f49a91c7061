"""How long an epoch end pauses the worker, in-process: the shards' share of the latency spikes.

    python -m bench.epoch_pause --rate 4000 --epochs 10

Bytewax calls every touched shard's `snapshot()` at an epoch end, on the worker thread, while the
input waits. This drives the real `ShardLogic` + `ShardStore` (RocksDB, fsync on) without Kafka or
Bytewax: live reference events (bench/workload.LiveEvents, Zipf over `--customers`, one probe in
ten) parsed with `parse_message`, grouped by shard in batches of `--rate`/100 events (10 ms of
input), and every `--epoch-seconds` of events, `snapshot()` on every shard in turn, timed.

It runs as fast as it can, so an "epoch" of events is applied in less than its wall time; the
background WAL sync (operators/state/store.py) therefore has less time to work than in a live flow, and
the figures are an upper bound. Prints one line per epoch and a JSON summary (the first
`--warmup` epochs are excluded from it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from bench import workload
from nextclick.operators.infra.clock import SystemClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, ParseConfig, PrivacyConfig
from nextclick.operators.infra.runtime import tune_gc
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import Event, SourcePosition
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import shard_of


def run(rate: int, epoch_seconds: float, epochs: int, customers: int, shards: int, sync: bool,
        warmup: int) -> dict[str, Any]:
    ruleset = load_rules(DEFAULT_RULES_FILE)
    secret = PrivacyConfig(demo=True).resolve_secret()
    parse_config = ParseConfig()
    state_dir = Path(tempfile.mkdtemp(prefix="nextclick-epoch-pause-"))
    ctx = ShardContext(state_dir=state_dir, shards=shards, ruleset=ruleset, clock=SystemClock(), sync=sync)
    logics = [ShardLogic(ctx, None) for _ in range(shards)]
    live = workload.LiveEvents(customers, seed=1)
    per_batch = max(1, rate // 100)
    per_epoch = int(rate * epoch_seconds)
    pauses: list[float] = []
    busy: list[float] = []
    offset = 0
    try:
        for epoch in range(epochs):
            applied = 0
            work = 0.0
            while applied < per_epoch:
                batch: dict[int, list[Event]] = defaultdict(list)
                now_ms = time.time_ns() // 1_000_000
                for _ in range(per_batch):
                    key, value = live.next()
                    item = parse_message(key, value, (), SourcePosition("bench", 0, offset), secret=secret,
                                         now_ms=now_ms, config=parse_config)
                    offset += 1
                    assert isinstance(item, Event), item
                    batch[shard_of(item.customer, shards)].append(item)
                applied += per_batch
                started = time.perf_counter()
                for shard, events in batch.items():
                    logics[shard].on_batch(list(events))
                work += time.perf_counter() - started
            started = time.perf_counter()
            for logic in logics:
                if logic.state is not None:
                    logic.snapshot()
            pause = time.perf_counter() - started
            pauses.append(pause)
            busy.append(work)
            print(f"epoch {epoch}: {applied:,} events applied in {work * 1000:,.0f} ms, "
                  f"epoch-end pause {pause * 1000:.1f} ms", flush=True)
    finally:
        for logic in logics:
            if logic.state is not None:
                logic.state.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    kept = sorted(pauses[warmup:]) or sorted(pauses)
    return {"rate": rate, "epoch_seconds": epoch_seconds, "epochs": epochs, "customers": customers,
            "shards": shards, "sync": sync, "warmup_excluded": warmup,
            "pause_ms": {"mean": round(1000 * statistics.fmean(kept), 1), "max": round(1000 * kept[-1], 1),
                         "min": round(1000 * kept[0], 1)},
            "apply_us_per_event": round(1e6 * statistics.fmean(busy[warmup:] or busy) / per_epoch, 1),
            "pauses_ms": [round(1000 * p, 1) for p in pauses]}


def main(argv: list[str] | None = None) -> None:
    tune_gc()  # as the flow's entry points do
    parser = argparse.ArgumentParser(prog="python -m bench.epoch_pause", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=4000, help="events per second of event time")
    parser.add_argument("--epoch-seconds", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="first epochs left out of the summary")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--no-sync", action="store_true", help="state.sync=false")
    args = parser.parse_args(argv)
    result = run(args.rate, args.epoch_seconds, args.epochs, args.customers, args.shards, not args.no_sync,
                 args.warmup)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
