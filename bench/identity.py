"""The identity stage alone: how many events per second its one key routes (no Kafka, no Bytewax).

    python -m bench.identity --events 300000 --customers 100000

The reference workload (bench/workload.py) is parsed once, then the identity stage
(operators/identity/stage.IdentityState, its graph in a fresh RocksDB, fsync off) routes it in
batches of 500 with a checkpoint every 20 batches, as the flow would. Reported per workload: the
default one (every event carries one identifier: the common case) and the identity one (a quarter
anonymous, 1% sign-ins, half the events a cookie next to a customer id). The identity stage is one
sequencer for the whole flow, so its rate is a ceiling on the flow's, whatever the process count:
compare it with the flow's rate (bench.run, bench.ab).

Each workload runs twice: as one reader delivers it, and as several do (`hold`): the events come from
4 partitions, each batch followed by the partitions' progress reports, and the stage holds them for
event-time order across readers (operators/event_order.py) with the default one-minute bound. The
difference is what that hold costs an event.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench import workload
from nextclick.operators.identity.guards import default_identity_rules
from nextclick.operators.identity.stage import IdentityContext, IdentityState
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import Event, Progress, SourcePosition

END_MS = 1_800_000_000_000
BATCH = 500


PARTITIONS = 4
BOUND_MS = 60_000


def measure(events: int, customers: int, identity: bool, shards: int = 16, hold: bool = False) -> dict[str, float]:
    records = workload.serialise(events, customers, seed=42, end_ms=END_MS, identity=identity)
    parsed = []
    for n, (key, value) in enumerate(records):
        event = parse_message(key, value, None, SourcePosition("bench", n % PARTITIONS, n), secret=b"bench",
                              now_ms=END_MS, config=ParseConfig())
        assert isinstance(event, Event), event
        parsed.append(event)
    root = Path(tempfile.mkdtemp(prefix="nextclick-bench-identity-"))
    try:
        # The workload's clock (END_MS, ahead of the wall clock): the frontier is never ahead of it.
        state = IdentityState.open(IdentityContext(root, shards, default_identity_rules(), sync=False,
                                                   clock=ManualClock(END_MS),
                                                   order_bound_ms=BOUND_MS if hold else None), None)
        batches: list[list[Event | Progress]] = []
        for start in range(0, len(parsed), BATCH):
            batch: list[Event | Progress] = list(parsed[start:start + BATCH])
            if hold:  # each partition's floor: its next message's time (the next batch's first)
                after = parsed[start + BATCH:start + BATCH + PARTITIONS]
                floor = min((e.ts for e in after), default=None)
                batch += [Progress(f"bench#{p}", floor, PARTITIONS) for p in range(PARTITIONS)]
            batches.append(batch)
        routed = 0
        started = time.perf_counter()
        for n, batch in enumerate(batches):
            routed += len(state.apply(batch))  # type: ignore[arg-type]
            if n % 20 == 19:
                state.checkpoint()
        state.checkpoint()
        seconds = time.perf_counter() - started
        state.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"events": len(parsed), "routed_items": routed, "seconds": seconds,
            "events_per_s": len(parsed) / seconds, "us_per_event": seconds / len(parsed) * 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.identity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args(argv)
    for identity in (False, True):
        name = "identity" if identity else "default"
        for hold in (False, True):
            r = measure(args.events, args.customers, identity, hold=hold)
            how = "several readers (held)" if hold else "one reader"
            print(f"{name} workload, {how}: {r['events']:,} events, {r['routed_items']:,} items routed in "
                  f"{r['seconds']:.2f}s: {r['events_per_s']:,.0f} events/s ({r['us_per_event']:.2f} us/event)",
                  flush=True)


if __name__ == "__main__":
    main()
