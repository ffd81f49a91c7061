"""Savepoints at scale: create (offline and online), restore and re-shard, with 1M customers.

    python -m bench.savepoint --customers 1000000

1. Build: the production step over one `email_click` per customer (bench/state_resume.build: every
   shard's RocksDB plus Bytewax's recovery, as a production run leaves them).
2. Online savepoint, in-process: every shard resumed as the flow resumes it (`ShardLogic` at the
   seq Bytewax committed), a batch of live events applied, then the epoch end (`snapshot()` of every
   shard, one after the other, as one Bytewax worker runs them) timed for `--epochs` plain epochs
   and for the epoch that carries a savepoint command; then the CLI's assembly (`finish_online`).
   The worker's pause at that epoch end is what a running flow feels.
3. Offline savepoint of the same state (`create_offline`: copy, roll back to the committed seq).
4. Restore into empty directories (`restore`), and re-shard 16 -> 32 (`reshard`).

Sizes: the bytes a savepoint adds on the same file system (files not hard-linked to the state
directory) and its apparent size. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from bytewax.recovery import init_db_dir

from bench import workload
from bench.state_resume import build
from nextclick.operators.infra.clock import SystemClock
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, Config, ParseConfig, PrivacyConfig
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import Event, SavepointRequest, SourcePosition
from nextclick.operators.rules.loader import load_rules
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import shard_of
from nextclick.operators.state.recovery_db import read_recovery
from nextclick.operators.state.store import dir_bytes
from nextclick.operators.tools.savepoint import create_offline, finish_online, reshard, restore
from nextclick.operators.tools.startup import check_start


def _inodes(root: Path) -> set[int]:
    return {p.stat().st_ino for p in root.rglob("*") if p.is_file()}


def added_bytes(savepoint: Path, state_dir: Path) -> int:
    """Bytes of the savepoint's files that are not hard links to files of the state directory."""
    shared = _inodes(state_dir)
    return sum(p.stat().st_size for p in savepoint.rglob("*") if p.is_file() and p.stat().st_ino not in shared)


def epoch_ends(config: Config, shards: int, epochs: int, per_epoch: int, savepoint: Path) -> dict[str, Any]:
    """Resume every shard, apply live events, time each epoch end; the last one takes the savepoint."""
    plan = check_start(config)
    committed = plan.committed or {}
    ctx = ShardContext(state_dir=Path(config.state.dir), shards=shards, ruleset=load_rules(DEFAULT_RULES_FILE),
                       clock=SystemClock(), sync=True, plan=plan)
    logics = [ShardLogic(ctx, {"shard": n, "seq": committed[n]}) for n in range(shards)]
    secret = config.privacy.resolve_secret()
    live = workload.LiveEvents(100_000, seed=3)
    parse_config = ParseConfig()
    plain: list[float] = []
    offset = 0
    with_savepoint = 0.0
    for epoch in range(epochs + 1):
        batch: dict[int, list[Any]] = defaultdict(list)
        now_ms = time.time_ns() // 1_000_000
        for _ in range(per_epoch):
            key, value = live.next()
            offset += 1
            event = parse_message(key, value, None, SourcePosition("bench", 0, offset), secret=secret,
                                  now_ms=now_ms, config=parse_config)
            if isinstance(event, Event):
                batch[shard_of(event.customer, shards)].append(event)
        last = epoch == epochs
        for n, logic in enumerate(logics):
            items: list[Any] = list(batch.get(n, []))
            if last:
                items.append(SavepointRequest(n, "bench", str(savepoint), "bench0"))
            if items:
                logic.on_batch(items)
        started = time.perf_counter()
        for logic in logics:
            logic.snapshot()
        pause = time.perf_counter() - started
        if last:
            with_savepoint = pause
        else:
            plain.append(pause)
    for logic in logics:
        logic.store.close()
    started = time.perf_counter()
    finish_online(config, savepoint, timeout_s=60)
    assemble = time.perf_counter() - started
    return {"epoch_end_ms_plain_median": round(statistics.median(plain) * 1000, 1),
            "epoch_end_ms_plain_max": round(max(plain) * 1000, 1),
            "epoch_end_ms_with_savepoint": round(with_savepoint * 1000, 1),
            "assemble_s": round(assemble, 3), "events_per_epoch": per_epoch}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--reshard-to", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5, help="plain epochs before the savepoint epoch")
    ap.add_argument("--events-per-epoch", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=5000, help="build batch size")
    ap.add_argument("--work-dir", help="keep everything here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nextclick-savepoint-"))
    state, recovery = work / "state", work / "recovery"
    config = Config().replace(state={"dir": str(state), "recovery_dir": str(recovery), "shards": args.shards,
                                     "savepoint_dir": str(work / "savepoints")},
                              privacy=PrivacyConfig(demo=True))
    result: dict[str, Any] = {"customers": args.customers, "shards": args.shards}
    try:
        result["build_s"] = round(build(state, recovery, args.customers, args.shards, args.batch), 1)
        result["state_bytes"] = dir_bytes(state)
        assert read_recovery(recovery).complete

        online = work / "savepoints" / "online"
        result["online"] = epoch_ends(config, args.shards, args.epochs, args.events_per_epoch, online)
        result["online"]["added_bytes"] = added_bytes(online, state)
        result["online"]["apparent_bytes"] = dir_bytes(online)

        offline = work / "offline"
        started = time.perf_counter()
        create_offline(config, offline)
        result["offline"] = {"create_s": round(time.perf_counter() - started, 2),
                             "added_bytes": added_bytes(offline, state), "apparent_bytes": dir_bytes(offline)}

        target = config.replace(state={"dir": str(work / "restored" / "state"),
                                       "recovery_dir": str(work / "restored" / "recovery")})
        started = time.perf_counter()
        restore(target, online, init_recovery=lambda d: init_db_dir(d, 1))
        result["restore_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        reshard(online, work / "resharded", args.reshard_to)
        result["reshard"] = {"to_shards": args.reshard_to, "seconds": round(time.perf_counter() - started, 2),
                             "bytes": dir_bytes(work / "resharded")}
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    os.environ.setdefault("NEXTCLICK_LOG_LEVEL", "WARNING")
    main()
