"""Time to resume the production flow with 1M customers in state (must be < 10 s, the first one included).

    python -m bench.state_resume --customers 1000000

1. Build: a Bytewax flow named like the production one ("nextclick") whose stateful step is the
   production step ("profiles": `ShardLogic` keyed by shard, same `ShardContext` as
   `flows/targeting.py`) is fed one `email_click` per customer from a `TestingSource` and run with
   `bytewax.testing.run_main` and a real recovery dir (1 s epochs). This leaves exactly what a
   production run leaves: every shard's RocksDB plus Bytewax's recovery partitions holding
   `{"shard", "seq"}` per shard. (No Kafka on the build side: 1M events through the broker would
   only make the build slower; the state is the same.)
2. Resume: `python -m bytewax.run nextclick.flows.main:flow -r REC -s 1 -b 0` against those dirs, with
   empty input topics and stop_at_end, on the embedded broker; wall time from launch to exit, for
   `--repeat` runs. The same command on empty state and recovery dirs is the baseline (interpreter,
   imports, broker round trips), so `resume - baseline` is what the state costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from nextclick.flows.local_broker import LocalBroker
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import Event
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import shard_of
from nextclick.operators.state.store import dir_bytes

REPO = Path(__file__).resolve().parent.parent
T0 = 1_795_428_000_000


def customer_key(i: int) -> str:
    return f"{i * 2654435761 % (1 << 64):016x}{i:016x}"


def build(state_dir: Path, recovery_dir: Path, customers: int, shards: int, batch: int) -> float:
    ctx = ShardContext(state_dir=state_dir, shards=shards, ruleset=load_rules(DEFAULT_RULES_FILE),
                       clock=ManualClock(T0 + 60_000), sync=True)

    def events() -> Any:
        for i in range(customers):
            yield Event(event_id=f"e{i}", type="email_click", ts=T0 + i % 60_000, customer=customer_key(i),
                        channel="email", attrs={"campaign_id": "weekly", "link_category": "sale"})

    flow = Dataflow("nextclick")
    src = op.input("build_in", flow, TestingSource(events(), batch_size=batch))
    keyed = op.key_on("by_shard", src, lambda e: str(shard_of(e.customer, shards)))
    decisions = op.stateful_batch("profiles", keyed, lambda resume: ShardLogic(ctx, resume))
    op.output("build_out", decisions, TestingSink([]))
    recovery_dir.mkdir(parents=True)
    init_db_dir(recovery_dir, 1)
    started = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=RecoveryConfig(str(recovery_dir)))
    return time.perf_counter() - started


def resume_once(bootstrap: str, topics: dict[str, str], state_dir: Path, recovery_dir: Path, shards: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTCLICK_", "BYTEWAX_"))}
    env.update({
        "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "NEXTCLICK_TOPICS__INPUTS": topics["input"],
        "NEXTCLICK_TOPICS__DECISIONS": topics["decisions"],
        "NEXTCLICK_TOPICS__DEAD_LETTER": topics["dead_letter"],
        "NEXTCLICK_TOPICS__CONTROL": topics["control"],
        "NEXTCLICK_STATE__DIR": str(state_dir),
        "NEXTCLICK_STATE__SHARDS": str(shards),
        "NEXTCLICK_FLOW__STOP_AT_END": "true",
        "NEXTCLICK_PRIVACY__SECRET": "bench-secret",
        "NEXTCLICK_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    })
    cmd = [sys.executable, "-m", "bytewax.run", "nextclick.flows.main:flow", "-r", str(recovery_dir),
           "-s", "1", "-b", "0"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"resume failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work-dir", help="default: a temporary directory, removed at the end")
    args = ap.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nextclick-resume-"))
    state_dir, recovery_dir = work / "state", work / "recovery"
    build_s = build(state_dir, recovery_dir, args.customers, args.shards, args.batch)
    print(f"built {args.customers:,} customers in {build_s:.1f}s", file=sys.stderr, flush=True)

    with LocalBroker() as broker:
        kafka = {"bootstrap.servers": broker.bootstrap}
        topics = {"input": "resume.in", "decisions": "resume.decisions", "dead_letter": "resume.dlq",
                  "control": "resume.control"}
        ensure_topics(kafka, {t: 1 for t in topics.values()})
        # Baseline: same command, empty state and recovery.
        base_state, base_recovery = work / "base-state", work / "base-recovery"
        base_recovery.mkdir()
        init_db_dir(base_recovery, 1)
        baseline = [resume_once(broker.bootstrap, topics, base_state, base_recovery, args.shards)
                    for _ in range(args.repeat)]
        opened_before = {d.name: (d / "LOG").stat().st_mtime_ns for d in state_dir.glob("shard-*")}
        resumes = [resume_once(broker.bootstrap, topics, state_dir, recovery_dir, args.shards)
                   for _ in range(args.repeat)]
        # RocksDB appends to a shard's LOG whenever it is opened: proof the resume opened every shard.
        reopened = sum((state_dir / name / "LOG").stat().st_mtime_ns != mtime for name, mtime in opened_before.items())

    report = {
        "benchmark": "state_resume", "customers": args.customers, "shards": args.shards,
        "build_seconds": round(build_s, 1),
        "shards_reopened_by_resume": reopened,
        "state_dir_mib": round(dir_bytes(state_dir) / 2**20, 1),
        "recovery_dir_mib": round(dir_bytes(recovery_dir) / 2**20, 2),
        "resume_seconds": [round(s, 2) for s in resumes],
        # The one a real restart sees. With the build's clock a week back every customer's timers
        # are due, but a stop-at-end run ends with its input: it runs the timer turns it reaches
        # before that (bounded per turn) and leaves the rest, durable in the timer index, to the
        # next start. The drain of a running flow is bench.timer_storm.
        "first_resume_seconds": round(resumes[0], 2),
        "resume_seconds_median": round(statistics.median(resumes), 2),
        "baseline_empty_seconds": [round(s, 2) for s in baseline],
        "baseline_median": round(statistics.median(baseline), 2),
        "state_cost_seconds": round(statistics.median(resumes) - statistics.median(baseline), 2),
        "under_10s": max(resumes) < 10 and reopened == len(opened_before),
        "command": "python -m bench.state_resume " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    print()
    print("| customers | first resume to EOF | resume to EOF (median) | empty-state baseline | state cost "
          "| state dir | recovery dir |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.customers:,} | {report['first_resume_seconds']} s | {report['resume_seconds_median']} s | "
          f"{report['baseline_median']} s | "
          f"{report['state_cost_seconds']} s | {report['state_dir_mib']} MiB | {report['recovery_dir_mib']} MiB |")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["under_10s"] else 1


if __name__ == "__main__":
    sys.exit(main())
