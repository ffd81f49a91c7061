"""Savepoints of a 2-process cluster on per-pod volumes, at 1M customers: create, size, restore.

    python -m bench.savepoint_cluster --customers 1000000 --dest /dev/shm/nextclick-bench

1. Build: the production step over one `email_click` per customer (bench/state_resume.build), then the
   shards split over two "pods" as Bytewax routes them (`Placement`), each pod with its own state dir.
2. Online savepoint, as each process writes it: per pod, every shard's RocksDB checkpoint on the pod's
   own volume (what the epoch end waits for), then the background copies into the destination (on
   another file system than the state, e.g. tmpfs, so the bytes are really copied, as onto a shared
   volume), then the CLI's assembly (`finish_online`). The pods run one after the other here; on a
   cluster they run at once, so the wall time of a savepoint is the slower pod's.
3. Restore into three empty pods (`restore` with `Placement`): each fetches only its shards.

Prints one JSON object: seconds per phase and pod, bytes of the savepoint and per restored pod.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from bytewax.recovery import init_db_dir

from bench.state_resume import build
from operators.infra.config import Config, PrivacyConfig
from operators.state.manifest import state_families
from operators.state.savepoint import Placement, _copy_db, finish_online, restore, write_shard_part
from operators.state.store import ShardStore, dir_bytes


def split(built: Path, pods: list[Path], config: Config) -> None:
    """Each pod's state dir gets the shards Bytewax routes to it (hard links), empty stores for the rest."""
    for i, pod in enumerate(pods):
        for family in state_families(config):
            for n in range(family.shards):
                if not Placement(i, len(pods)).owns(family, n):
                    continue
                source, target = family.path(built, n), family.path(pod, n)
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    _copy_db(source, target)
                else:
                    with ShardStore(target, sync=False) as empty:
                        empty.checkpoint()


def online(config: Config, pods: list[Path], dest: str) -> dict[str, Any]:
    out: dict[str, Any] = {"pods": []}
    for i, pod in enumerate(pods):
        pause = 0.0
        futures = []
        started = time.perf_counter()
        for family in state_families(config):
            for n in range(family.shards):
                if not Placement(i, len(pods)).owns(family, n):
                    continue
                with ShardStore(family.path(pod, n), sync=False) as store:
                    began = time.perf_counter()
                    future = write_shard_part(store, dest, n, store.seq, {"bench#0": 1}, "bench", "bench",
                                              family.subdir, scratch=pod)
                    pause += time.perf_counter() - began
                    if future is not None:
                        futures.append(future)
        for future in futures:
            future.result()
        out["pods"].append({"checkpoint_s": round(pause, 3), "copied_s": round(time.perf_counter() - started, 2)})
    started = time.perf_counter()
    finish_online(config, dest, timeout_s=60)
    out["assemble_s"] = round(time.perf_counter() - started, 3)
    out["bytes"] = dir_bytes(Path(dest))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--batch", type=int, default=5000, help="build batch size")
    ap.add_argument("--dest", help="the savepoint directory (default: under the work dir, same file system)")
    ap.add_argument("--work-dir", help="keep everything here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nextclick-savepoint-cluster-"))
    dest = Path(args.dest or work / "savepoints") / "bench"
    config = Config().replace(state={"dir": str(work / "built"), "shards": args.shards,
                                     "savepoint_dir": str(dest.parent)}, privacy=PrivacyConfig(demo=True))
    result: dict[str, Any] = {"customers": args.customers, "shards": args.shards, "destination": str(dest)}
    try:
        result["build_s"] = round(build(work / "built", work / "built-recovery", args.customers, args.shards,
                                        args.batch), 1)
        result["state_bytes"] = dir_bytes(work / "built")
        pods = [work / f"pod-{i}" for i in range(2)]
        split(work / "built", pods, config)
        result["pod_state_bytes"] = [dir_bytes(p) for p in pods]
        result["online"] = online(config, pods, str(dest))
        result["restore_into_3"] = []
        for i in range(3):
            pod = config.replace(state={"dir": str(work / f"new-{i}" / "state"),
                                        "recovery_dir": str(work / f"new-{i}" / "recovery")})
            done = restore(pod, dest, init_recovery=lambda d: init_db_dir(d, 1), placement=Placement(i, 3))
            result["restore_into_3"].append({"shards": len(done.shards), "bytes": done.bytes,
                                             "seconds": round(done.seconds, 2)})
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
            if args.dest:
                shutil.rmtree(dest, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    os.environ.setdefault("NEXTCLICK_LOG_LEVEL", "WARNING")
    main()
