"""Resident memory of the profile state against the customer count: bounded by the cache budget.

    python -m bench.state_memory --customers 10000000 --marks 100000,1000000,10000000

Drives the real `ShardLogic` + `ShardStore` (RocksDB) in-process, without Kafka or Bytewax: one
`ShardLogic` per shard, each batch of events grouped by `shard_of` and handed to `on_batch`, and
every `--snapshot-every` batches `snapshot()` on every touched shard (what Bytewax does at an epoch
end). Kafka and Bytewax add a fixed footprint that does not depend on the customer count, so
leaving them out isolates what this benchmark is about: does memory grow with customers?

Lean event mix: one `email_click` per distinct customer (32-hex keys, like the real HMAC keys), so
every event creates a new profile and the state grows by one profile per event. `email_click` is
the cheapest type for the engine (no windowed signal; ~430-byte profiles); `--event-type page_view`
feeds five signals (~715-byte profiles) and runs about 3x slower.

At each mark it prints RSS (psutil, this process), the cache budget
(shards x cache_profiles_per_shard x (average stored profile bytes + per-entry overhead)) and RSS
minus the budget (the fixed overhead: interpreter, RocksDB block cache and memtables). If the time
budget runs out before the last mark, the remaining marks are extrapolated from the measured rate
and labelled `"extrapolated": true`. Output: one JSON document, then one markdown table row per mark.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE
from nextclick.operators.records import Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import PROFILE_PREFIX, shard_of
from nextclick.operators.state.store import dir_bytes

T0 = 1_795_428_000_000
# Python object overhead per cached entry on top of the value bytes: the key bytes object
# (~33 + 33 B), the value bytes object header (~33 B) and the OrderedDict slot/link (~100 B).
CACHE_ENTRY_OVERHEAD = 200
# (channel, attrs) of the event types a lean run can use.
LEAN_EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "email_click": ("email", {"campaign_id": "weekly", "link_category": "sale"}),
    "page_view": ("web", {"page_type": "product", "category": "shoes"}),
}


def customer_key(i: int) -> str:
    return f"{i * 2654435761 % (1 << 64):016x}{i:016x}"



def average_profile_bytes(logics: dict[int, ShardLogic], sample: int = 2000) -> float:
    sizes: list[int] = []
    for logic in logics.values():
        for _key, value in logic.store.scan(PROFILE_PREFIX):
            sizes.append(len(value))
            if len(sizes) >= sample:
                return sum(sizes) / len(sizes)
    return sum(sizes) / len(sizes) if sizes else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=10_000_000)
    ap.add_argument("--marks", default="100000,1000000,10000000")
    ap.add_argument("--event-type", choices=sorted(LEAN_EVENTS), default="email_click",
                    help="the one event each customer sends (page_view feeds 5 signals: ~3x slower, bigger profile)")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--cache", type=int, default=4096, help="cache_profiles_per_shard")
    ap.add_argument("--batch", type=int, default=5_000, help="events per Bytewax-like batch")
    ap.add_argument("--snapshot-every", type=int, default=2, help="batches per epoch (snapshot)")
    ap.add_argument("--sync", action="store_true", help="fsync each checkpoint (the production default)")
    ap.add_argument("--time-budget", type=float, default=540.0, help="seconds before extrapolating")
    ap.add_argument("--state-dir", help="default: a temporary directory, removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the state dir")
    args = ap.parse_args(argv)

    etype = args.event_type
    channel, attrs = LEAN_EVENTS[etype]
    marks = sorted(int(m) for m in args.marks.split(","))
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="nextclick-mem-"))
    ctx = ShardContext(state_dir=state_dir, shards=args.shards, ruleset=load_rules(DEFAULT_RULES_FILE),
                       clock=ManualClock(T0 + 60_000), cache_profiles=args.cache, sync=args.sync)
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    logics: dict[int, ShardLogic] = {}
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    done = 0
    batches = 0
    touched: set[int] = set()
    mark_iter = iter(marks)
    next_mark = next(mark_iter, None)
    out_of_time = False
    peak_rss = rss_start
    while done < args.customers and next_mark is not None:
        n = min(args.batch, args.customers - done, next_mark - done)
        by_shard: dict[int, list[Event | Any]] = {}
        for i in range(done, done + n):
            key = customer_key(i)
            ev = Event(event_id=f"e{i}", type=etype, ts=T0 + i % 60_000, customer=key, channel=channel,
                       attrs=attrs)
            by_shard.setdefault(shard_of(key, args.shards), []).append(ev)
        for shard, events in by_shard.items():
            logic = logics.get(shard)
            if logic is None:
                logic = logics[shard] = ShardLogic(ctx, None)
            logic.on_batch(events)
            touched.add(shard)
        done += n
        batches += 1
        if batches % args.snapshot_every == 0 or done == next_mark:
            for shard in touched:
                logics[shard].snapshot()
            touched.clear()
            peak_rss = max(peak_rss, proc.memory_info().rss)
        if done == next_mark:
            gc.collect()
            elapsed = time.perf_counter() - started
            rss = proc.memory_info().rss
            avg = average_profile_bytes(logics)
            budget = int(args.shards * args.cache * (avg + CACHE_ENTRY_OVERHEAD))
            row = {"customers": done, "rss_bytes": rss, "rss_mib": round(rss / 2**20, 1),
                   "peak_rss_mib": round(peak_rss / 2**20, 1),
                   "cache_budget_mib": round(budget / 2**20, 1), "avg_profile_bytes": round(avg, 1),
                   "fixed_overhead_mib": round((rss - budget) / 2**20, 1),
                   "state_disk_mib": round(dir_bytes(state_dir) / 2**20, 1),
                   "elapsed_s": round(elapsed, 1), "customers_per_s": round(done / elapsed),
                   "extrapolated": False}
            results.append(row)
            print(orjson.dumps(row).decode(), file=sys.stderr, flush=True)
            next_mark = next(mark_iter, None)
            if next_mark is not None and elapsed / done * next_mark > args.time_budget:
                out_of_time = True
                break
    if out_of_time and results:
        last = results[-1]
        rate = last["customers"] / last["elapsed_s"]
        for mark in [m for m in marks if m > last["customers"]]:
            results.append({"customers": mark, "extrapolated": True,
                            "estimated_elapsed_s": round(mark / rate, 1),
                            "rss_mib_estimate": last["rss_mib"],
                            "note": "RSS is flat in the customer count beyond the cache budget; "
                                    "the estimate repeats the last measured RSS"})
    for logic in logics.values():
        if logic.state is not None:
            logic.store.close()
    report = {"benchmark": "state_memory", "shards": args.shards, "cache_profiles_per_shard": args.cache,
              "event_type": etype, "batch": args.batch, "snapshot_every": args.snapshot_every, "sync": args.sync,
              "rss_at_start_mib": round(rss_start / 2**20, 1), "results": results,
              "command": "python -m bench.state_memory " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    print()
    print("| customers | RSS MiB | peak RSS MiB | cache budget MiB | fixed overhead MiB | disk MiB | customers/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if r["extrapolated"]:
            print(f"| {r['customers']:,} (extrapolated) | ~{r['rss_mib_estimate']} | | | | | |")
        else:
            print(f"| {r['customers']:,} | {r['rss_mib']} | {r['peak_rss_mib']} | {r['cache_budget_mib']} | "
                  f"{r['fixed_overhead_mib']} | {r['state_disk_mib']} | {r['customers_per_s']:,} |")
    if not args.keep and not args.state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
