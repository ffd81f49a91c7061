"""Disk use of the state dir and the recovery dir over a long run of many checkpoints: it stays bounded.

    python -m bench.state_disk --epochs 300

A Bytewax flow with the production stateful step ("profiles": `ShardLogic` keyed by shard, the
`ShardContext` of `flows/targeting.py`, fsync on) runs under `bytewax.testing.run_main` with a real
recovery dir (backup interval 0, as `-b 0`) and short epochs (`--epoch-ms`, default 100 ms). The
input is a paced source (a `FixedPartitionedSource` whose offset is part of the recovery state)
that keeps sending page views, email clicks and purchases from a fixed pool of customers, so the
live state soon stops growing and anything that kept growing would be checkpoint garbage: undo
records beyond `keep_checkpoints` or Bytewax's SQLite snapshots beyond the ones recovery needs.

It runs until shard 0 has taken `--epochs` checkpoints and samples the size of both directories
(sum of file sizes) every `--sample-s` seconds. Printed: the samples, the maximum over the second
and the last quarter of the run, and the final sizes. "Bounded" means the last quarter's maximum
is within 25% of the second quarter's (the first quarter is warm-up: the state fills up and the
first `keep_checkpoints` undo records accumulate).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import KeyedStream
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE
from nextclick.operators.records import Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.logic import ResumeState, ShardLogic
from nextclick.operators.shard.shard_state import ShardContext, ShardItem
from nextclick.operators.state.keys import shard_of
from nextclick.operators.state.store import dir_bytes

T0 = 1_795_428_000_000
_checkpoints: dict[int, int] = {}
_stop = threading.Event()
_original_snapshot = ShardLogic.snapshot


def _counting_snapshot(self: ShardLogic) -> ResumeState:
    state = _original_snapshot(self)
    if state is not None:  # None: a shard with no state
        _checkpoints[state["shard"]] = _checkpoints.get(state["shard"], 0) + 1
    return state


ShardLogic.snapshot = _counting_snapshot  # type: ignore[method-assign]


def customer_key(i: int) -> str:
    return f"{i * 2654435761 % (1 << 64):016x}{i:016x}"


def event(n: int, customers: int) -> Event:
    who = customer_key(n % customers)
    # 5 s of event time per event: each customer's dedupe ids and windows expire as they would over
    # days of traffic, so the live state reaches its steady size early in the run.
    ts = T0 + n * 5_000
    kind = n % 10
    if kind < 6:
        return Event(f"e{n}", "page_view", ts, who, "web", {"page_type": "product", "category": "shoes"})
    if kind < 9:
        return Event(f"e{n}", "email_click", ts, who, "email", {"campaign_id": "weekly", "link_category": "sale"})
    return Event(f"e{n}", "purchase", ts, who, "web", {"order_id": f"o{n}", "amount": 42.0, "currency": "EUR"})


class _Part(StatefulSourcePartition[Event, int]):
    def __init__(self, start: int, per_batch: int, customers: int, pause: timedelta) -> None:
        self._n, self._per_batch, self._customers, self._pause = start, per_batch, customers, pause

    def next_batch(self) -> list[Event]:
        if _stop.is_set():
            raise StopIteration()
        batch = [event(n, self._customers) for n in range(self._n, self._n + self._per_batch)]
        self._n += self._per_batch
        return batch

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + self._pause

    def snapshot(self) -> int:
        return self._n


class PacedSource(FixedPartitionedSource[Event, int]):
    def __init__(self, per_batch: int, customers: int, pause: timedelta) -> None:
        self.args = (per_batch, customers, pause)

    def list_parts(self) -> list[str]:
        return ["paced"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(resume_state or 0, *self.args)



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=300, help="checkpoints of shard 0 before stopping")
    ap.add_argument("--epoch-ms", type=int, default=100)
    ap.add_argument("--customers", type=int, default=2_000)
    ap.add_argument("--per-batch", type=int, default=200)
    ap.add_argument("--pause-ms", type=int, default=20, help="between source batches")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--keep-checkpoints", type=int, default=64)
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--work-dir", help="default: a temporary directory, removed at the end")
    args = ap.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nextclick-disk-"))
    state_dir, recovery_dir = work / "state", work / "recovery"
    recovery_dir.mkdir(parents=True)
    init_db_dir(recovery_dir, 1)
    ctx = ShardContext(state_dir=state_dir, shards=args.shards, ruleset=load_rules(DEFAULT_RULES_FILE),
                       clock=ManualClock(T0), keep_checkpoints=args.keep_checkpoints, sync=True)
    flow = Dataflow("nextclick")
    src = op.input("paced_in", flow, PacedSource(args.per_batch, args.customers,
                                                 timedelta(milliseconds=args.pause_ms)))
    keyed = cast(KeyedStream[ShardItem | list[ShardItem]],
                 op.key_on("by_shard", src, lambda e: str(shard_of(e.customer, args.shards))))
    op.output("out", op.stateful_batch("profiles", keyed, lambda resume: ShardLogic(ctx, resume)), TestingSink([]))

    samples: list[dict[str, Any]] = []
    started = time.monotonic()

    def sampler() -> None:
        while not _stop.is_set():
            done = _checkpoints.get(0, 0)
            samples.append({"t_s": round(time.monotonic() - started, 1), "checkpoints": done,
                            "state_bytes": dir_bytes(state_dir), "recovery_bytes": dir_bytes(recovery_dir)})
            if done >= args.epochs:
                _stop.set()
                return
            time.sleep(args.sample_s)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    run_main(flow, epoch_interval=timedelta(milliseconds=args.epoch_ms),
             recovery_config=RecoveryConfig(str(recovery_dir), backup_interval=timedelta(0)))
    _stop.set()
    thread.join()
    final = {"state_bytes": dir_bytes(state_dir), "recovery_bytes": dir_bytes(recovery_dir)}
    quarter = len(samples) // 4
    first = max((s["state_bytes"] + s["recovery_bytes"] for s in samples[quarter:2 * quarter]), default=0)
    second = max((s["state_bytes"] + s["recovery_bytes"] for s in samples[3 * quarter:]), default=0)
    report = {
        "benchmark": "state_disk", "epochs": args.epochs, "epoch_ms": args.epoch_ms, "shards": args.shards,
        "keep_checkpoints": args.keep_checkpoints, "customers": args.customers,
        "seconds": round(time.monotonic() - started, 1), "checkpoints_by_shard0": _checkpoints.get(0, 0),
        "checkpoints_all_shards": sum(_checkpoints.values()),
        "max_second_quarter_mib": round(first / 2**20, 2), "max_last_quarter_mib": round(second / 2**20, 2),
        "final_state_mib": round(final["state_bytes"] / 2**20, 2),
        "final_recovery_mib": round(final["recovery_bytes"] / 2**20, 2),
        "bounded": second <= first * 1.25,
        "samples": samples,
        "command": "python -m bench.state_disk " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    print()
    print("| checkpoints (shard 0) | state MiB (final) | recovery MiB (final) | max 2nd quarter MiB | "
          "max last quarter MiB | bounded |")
    print("|---|---|---|---|---|---|")
    print(f"| {report['checkpoints_by_shard0']} | {report['final_state_mib']} | {report['final_recovery_mib']} | "
          f"{report['max_second_quarter_mib']} | {report['max_last_quarter_mib']} | {report['bounded']} |")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["bounded"] else 1


if __name__ == "__main__":
    sys.exit(main())
