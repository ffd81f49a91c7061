"""Savepoints of a 2-process cluster on per-pod volumes, at 1M customers: create, size, restore, lost volume.

    python -m bench.savepoint_cluster --customers 1000000 --dest /dev/shm/nextclick-bench

1. Build: the production step over one `email_click` per customer (bench/state_resume.build), then the
   shards split over two "pods" as Bytewax routes them (`Placement`), each pod with its own state dir.
2. Online savepoint, as each process writes it: per pod, every shard's RocksDB checkpoint on the pod's
   own volume (what the epoch end waits for), then the background copies into the destination (on
   another file system than the state, e.g. tmpfs, so the bytes are really copied, as onto a shared
   volume), then the CLI's assembly (`finish_online`). The pods run one after the other here; on a
   cluster they run at once, so the wall time of a savepoint is the slower pod's.
3. Restore into three empty pods (`restore` with `Placement`): each fetches only its shards.
4. A lost volume (`--lost-volume`, on by default): two real `nextclick run` processes on the embedded
   broker (per-pod state and recovery directories, `state.on_lost_volume = "restore"`,
   `--from-savepoint` kept in the arguments as a manifest would) start from that savepoint and run
   until both answer /readyz; then process 1 is SIGKILLed and its volume deleted, process 0 exits on
   its lost peer (or is killed when it does not within 30 s), and both start again: the time until
   both answer /readyz again is the recovery (generation raised, process 0's state cleared, each
   process fetching its own shards of the latest savepoint, Bytewax up and consuming).

Prints one JSON object: seconds per phase and pod, bytes of the savepoint and per restored pod.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from bytewax.recovery import init_db_dir

from bench.state_resume import build
from nextclick.operators.infra.config import Config, PrivacyConfig
from nextclick.operators.state.savepoint_parts import copy_db, write_shard_part
from nextclick.operators.state.store import ShardStore, dir_bytes
from nextclick.operators.tools.savepoint import Placement, finish_online, restore
from nextclick.operators.tools.startup import state_families


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
                    copy_db(source, target)
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


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def lost_volume(config: Config, savepoint: Path, work: Path) -> dict[str, Any]:
    """Two `nextclick run` processes from `savepoint`; one SIGKILLed and its volume deleted; the seconds
    until both serve /readyz again."""
    from nextclick.flows.local_broker import LocalBroker, free_port
    from nextclick.operators.infra.config import TopicsConfig, progress_topic
    from nextclick.operators.io.topics import ensure_topics

    out: dict[str, Any] = {}
    log = work / "lost-volume.log"
    pods = [work / f"lv-{i}" for i in range(2)]
    with LocalBroker() as broker:
        kafka = {"bootstrap.servers": broker.bootstrap}
        names = {"inputs": "bench.in", "control": "bench.control", "decisions": "bench.decisions",
                 "dead_letter": "bench.dead_letter"}
        ensure_topics(kafka, {"bench.in": 2, "bench.control": 1, "bench.decisions": 2, "bench.dead_letter": 1,
                              progress_topic(TopicsConfig(control="bench.control")): 1})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTCLICK_", "BYTEWAX_"))}
        env.update({"NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "NEXTCLICK_PRIVACY__DEMO": "true",
                    **{f"NEXTCLICK_TOPICS__{k.upper()}": v for k, v in names.items()},
                    "NEXTCLICK_STATE__SHARDS": str(config.state.shards),
                    "NEXTCLICK_STATE__SAVEPOINT_DIR": str(savepoint.parent),
                    "NEXTCLICK_STATE__ON_LOST_VOLUME": "restore", "NEXTCLICK_STATE__SAVEPOINT_INTERVAL": "1h",
                    "NEXTCLICK_LOG_LEVEL": "WARNING", "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in pods)
        ports = [free_port() for _ in pods]

        def launch() -> list[subprocess.Popen[bytes]]:
            procs = []
            for i, pod in enumerate(pods):
                pod_env = {**env, "NEXTCLICK_STATE__DIR": str(pod / "state"),
                           "NEXTCLICK_STATE__RECOVERY_DIR": str(pod / "recovery")}
                with open(log, "ab") as fh:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "nextclick", "run", "--process-id", str(i), "--addresses", addresses,
                         "--recovery-per-process", "--from-savepoint", str(savepoint),
                         "--metrics-port", str(ports[i])], env=pod_env, stdout=fh, stderr=fh,
                        stdin=subprocess.DEVNULL))
            return procs

        def until_ready(procs: list[subprocess.Popen[bytes]], began: float) -> float:
            while not all(_ready(p) for p in ports):
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a process exited; see {log}:\n{log.read_text()[-3000:]}")
                if time.monotonic() - began > 900:
                    raise RuntimeError(f"not ready within 900 s; see {log}")
                time.sleep(0.1)
            return time.monotonic() - began

        began = time.monotonic()
        procs = launch()
        try:
            out["first_start_from_savepoint_s"] = round(until_ready(procs, began), 2)
            procs[1].send_signal(signal.SIGKILL)
            procs[1].wait()
            killed = time.monotonic()
            shutil.rmtree(pods[1])  # its volume: state and recovery partition
            try:
                out["process_0_exit_code"] = procs[0].wait(30)
            except subprocess.TimeoutExpired:
                procs[0].send_signal(signal.SIGKILL)
                out["process_0_exit_code"] = procs[0].wait()
            out["process_0_exited_after_s"] = round(time.monotonic() - killed, 2)
            restarted = time.monotonic()
            procs = launch()
            out["recovery_from_restart_s"] = round(until_ready(procs, restarted), 2)
            out["recovery_from_kill_s"] = round(time.monotonic() - killed, 2)
            generations = sorted(p.name for p in (savepoint.parent / ".cluster").glob("generation-*.json"))
            out["generations"] = generations
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    out["bytes_per_pod_after"] = [dir_bytes(pod / "state") for pod in pods]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--batch", type=int, default=5000, help="build batch size")
    ap.add_argument("--dest", help="the savepoint directory (default: under the work dir, same file system)")
    ap.add_argument("--work-dir", help="keep everything here (default: a temporary directory, removed)")
    ap.add_argument("--no-lost-volume", dest="lost_volume", action="store_false",
                    help="skip the lost-volume recovery (real processes on the embedded broker)")
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
        if args.lost_volume:
            result["lost_volume"] = lost_volume(config, dest, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
            if args.dest:
                shutil.rmtree(dest, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    os.environ.setdefault("NEXTCLICK_LOG_LEVEL", "WARNING")
    main()
