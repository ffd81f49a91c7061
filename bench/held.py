"""What holding events for event-time order costs a shard without identity stitching (no Kafka, no Bytewax).

    python -m bench.held --events 60000 --customers 20000 --repeat 3

The reference workload (bench/workload.py) is parsed once, as read from 4 partitions, and one shard
(operators/shard/logic.py: ShardLogic, its RocksDB, fsync off) applies it in batches of 500, each
followed by every partition's progress report, with a checkpoint every 20 batches, as the flow would:
once as one reader delivers it (nothing held) and once as several do (`identity.stitching = false`,
the one-minute hold of operators/shard/held.py). Runs alternate; the medians are reported.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench import workload
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, ParseConfig
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import Event, ShardProgress, SourcePosition
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext

END_MS = 1_800_000_000_000
PARTITIONS = 4
BATCH = 500
BOUND_MS = 60_000


def batches(events: int, customers: int) -> list[list[Event | ShardProgress]]:
    out: list[list[Event | ShardProgress]] = []
    parsed = []
    for n, (key, value) in enumerate(workload.serialise(events, customers, seed=42, end_ms=END_MS)):
        event = parse_message(key, value, None, SourcePosition("bench", n % PARTITIONS, n), secret=b"bench",
                              now_ms=END_MS, config=ParseConfig())
        assert isinstance(event, Event), event
        parsed.append(event)
    for start in range(0, len(parsed), BATCH):
        after = parsed[start + BATCH:start + BATCH + PARTITIONS]  # each partition's floor: its next message
        floor = min((e.ts for e in after), default=None)
        out.append([*parsed[start:start + BATCH],
                    *(ShardProgress(0, f"bench#{p}", floor, PARTITIONS) for p in range(PARTITIONS))])
    return out


def measure(work: list[list[Event | ShardProgress]], hold: bool) -> float:
    """µs per event for one shard through the whole workload."""
    root = Path(tempfile.mkdtemp(prefix="nextclick-bench-held-"))
    try:
        ctx = ShardContext(state_dir=root, shards=1, ruleset=load_rules(DEFAULT_RULES_FILE),
                           clock=ManualClock(END_MS), sync=False, await_frontier=True, direct=True,
                           order_bound_ms=BOUND_MS if hold else None)
        logic = ShardLogic(ctx, None)
        events = sum(1 for batch in work for item in batch if type(item) is Event)
        started = time.perf_counter()
        for n, batch in enumerate(work):
            logic.on_batch(batch)  # type: ignore[arg-type]
            if n % 20 == 19:
                logic.snapshot()
        logic.snapshot()
        seconds = time.perf_counter() - started
        logic.store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return seconds / events * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.held", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = batches(args.events, args.customers)
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for hold in (False, True):
            runs[hold].append(measure(work, hold))
    plain, held = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"one shard, {args.events:,} events: one reader {plain:.2f} us/event, several readers (held) "
          f"{held:.2f} us/event: {held / plain:.2f}x (medians of {args.repeat})", flush=True)


if __name__ == "__main__":
    main()
