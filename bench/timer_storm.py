"""After downtime, every customer's timers are due at once: how long the shards take to drain them.

    python -m bench.timer_storm --customers 1000000

1. Build: one `email_click` per customer through the production step (bench/state_resume.build), as a
   production run leaves its state. Each profile then holds a dedupe id (1 day) and a session (30
   minutes) that must expire.
2. Resume a week later: every shard is opened as the flow opens it after a restart (`ShardState.open`
   at the seq Bytewax committed, through the start-up checks), with the clock set a week after the
   build. Every customer is due.
3. Drain the way the flow does: timer turns (`fire_timers`, a bounded number of customers per turn)
   alternating with small batches of live events, so the longest turn is the longest time input
   waits. Until no shard has a timer due, then an epoch end (`checkpoint`) per shard.

Prints the drain time (the "first resume" cost of a timer storm), the turns, the longest turn, the
live events applied meanwhile, and the checkpoint time after the drain.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.state_resume import T0, build
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, Config, PrivacyConfig
from nextclick.operators.infra.runtime import tune_gc
from nextclick.operators.records import Event, SourcePosition
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.shard_state import ShardContext, ShardState
from nextclick.operators.state.keys import shard_of
from nextclick.operators.tools.startup import check_start

WEEK_MS = 7 * 86_400_000


def drain(state: Path, recovery: Path, shards: int, live_per_turn: int) -> dict[str, Any]:
    config = Config().replace(state={"dir": str(state), "recovery_dir": str(recovery), "shards": shards},
                              privacy=PrivacyConfig(demo=True))
    plan = check_start(config)
    committed = plan.committed or {}
    now = T0 + WEEK_MS
    clock = ManualClock(now)
    ctx = ShardContext(state_dir=state, shards=shards, ruleset=load_rules(DEFAULT_RULES_FILE), clock=clock,
                       sync=True, plan=plan)
    opened = time.perf_counter()
    states = [ShardState.open(ctx, n, committed.get(n)) for n in range(shards)]
    open_s = time.perf_counter() - opened
    tune_gc()
    turns = live = 0
    longest = 0.0
    started = time.perf_counter()
    while True:
        due = [s for s in states if (d := s.next_due()) is not None and d <= now]
        if not due:
            break
        for shard in due:
            turn = time.perf_counter()
            shard.fire_timers(now)
            longest = max(longest, time.perf_counter() - turn)
            turns += 1
            # Live input between timer turns, as Bytewax interleaves the shard's activations.
            batch = [Event(f"live-{live + i}", "page_view", now - 1000, f"live-customer-{live + i}", "web",
                           {"page_type": "home"}, SourcePosition("bench", 0, live + i)) for i in range(live_per_turn)]
            for event in batch:
                states[shard_of(event.customer, shards)].apply([event])
            live += live_per_turn
    drain_s = time.perf_counter() - started
    started = time.perf_counter()
    for shard in states:
        shard.checkpoint()
    checkpoint_s = time.perf_counter() - started
    for shard in states:
        shard.close()
    return {"open_seconds": round(open_s, 2), "drain_seconds": round(drain_s, 2), "timer_turns": turns,
            "longest_turn_ms": round(longest * 1000, 1), "live_events_meanwhile": live,
            "checkpoint_after_drain_seconds": round(checkpoint_s, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--batch", type=int, default=5000, help="build batch size")
    ap.add_argument("--live-per-turn", type=int, default=20, help="live events applied between timer turns")
    ap.add_argument("--work-dir", help="keep everything here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nextclick-storm-"))
    try:
        build_s = build(work / "state", work / "recovery", args.customers, args.shards, args.batch)
        result = {"customers": args.customers, "shards": args.shards, "build_seconds": round(build_s, 1),
                  **drain(work / "state", work / "recovery", args.shards, args.live_per_turn)}
        result["customers_per_second"] = round(args.customers / result["drain_seconds"])
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
