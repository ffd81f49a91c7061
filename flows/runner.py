"""`nextclick run` around the dataflow: checks, probes, progress, graceful stop, group offsets.

    FlowRunner()              blocks SIGTERM/SIGINT in every thread, starts the signal thread
    preflight(config)         topics exist, directories writable (before the start-up checks)
    .run(config, flow...)     metrics server, reporter, drain and peer watchers
                              -> Bytewax (cluster_main) -> final group offsets -> "stopped"

Bytewax runs through `cluster_main` even for one worker: its panic hook turns Rust panics into
exceptions for us (run_main's default hook prints a panic message and backtrace to stderr), and
its main thread only waits, so our own threads (signals, probes) keep running.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

from bytewax.dataflow import Dataflow

from nextclick import release
from nextclick.operators.exchange import cluster_mismatch, declared_settings
from nextclick.operators.infra import health
from nextclick.operators.infra.config import Config
from nextclick.operators.infra.failures import (
    Explained,
    LostPeer,
    PeerWatch,
    announce_fatal,
    is_comms_failure,
    lost_peer_message,
    one_line,
    root_cause,
    storage_failure,
)
from nextclick.operators.io import alignment, cluster_hello, drain
from nextclick.operators.io.kafka_source import commit_final_offsets
from nextclick.operators.io.preflight import check_directories, check_topics
from nextclick.operators.io.sink_registry import decision_sink
from nextclick.operators.state.recovery_db import (
    cluster_resume_epoch,
    drop_snapshots_from,
    progress_report,
    read_recovery,
)

log = logging.getLogger("nextclick")

FLOW_PROCESS = threading.Event()
"""Set by FlowRunner: this process runs a flow, and ends without the interpreter's teardown
(cli.entry)."""


def _quiet_late_panics() -> None:
    """Bytewax hands the first panic of a run to `cluster_main`'s caller; one that comes after it (another
    thread of a failing cluster, its channel closed) it prints through sys.excepthook. Those go to the
    debug log, so stderr keeps to the one-line contract (docs/operations.md, "Fatal errors")."""
    fallback = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if type(value).__name__ == "PanicException" or "panicked at" in str(value):
            log.debug("a further failure inside Bytewax after the first", extra={"error": one_line(value)})
        else:
            fallback(kind, value, tb)

    sys.excepthook = hook


def _refuse_to_wait(line: str) -> None:
    """A live peer was started otherwise and this process still waits for its peers to connect: Timely
    would wait for ever. Nothing has run, so nothing is lost by stopping here."""
    announce_fatal(line, "Explained")
    logging.shutdown()
    os._exit(1)


def _second_deployment(line: str) -> None:
    """This process started after another deployment that reads the same partitions (operators/io/
    alignment.Senders): it stops at once, as a crash would, so the other keeps the topics to itself. Its
    state resumes exactly from its last checkpoint; nothing of the other's is touched."""
    announce_fatal(line, "Explained")
    logging.shutdown()
    os._exit(1)


# Free space under which a volume counts as full when a cluster fails: RocksDB and Bytewax's recovery
# partitions write megabytes at a time (a write-ahead log file, a SQLite journal).
FULL_BELOW_BYTES = 16 << 20


def full_volume(config: Config) -> str | None:
    """"<path> (<setting>) has N bytes free" for the state or recovery volume that is full, else None.
    Bytewax's own failure to write its recovery partitions reaches a cluster's process as a broken
    channel to a peer (an outside probe: every pod said "lost cluster peer", the cause in no log); a
    first start on a full volume said only "[Errno 28] No space left on device". A directory not made
    yet is judged by its nearest existing parent."""
    for setting, path in (("state.dir", config.state.dir), ("state.recovery_dir", config.state.recovery_dir)):
        where = Path(path).absolute()
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            continue
        if free < FULL_BELOW_BYTES:
            return f"{path} ({setting}) has {free} bytes free"
    return None


class FlowRunner:
    """One `nextclick run` process. Create it first thing, before any thread exists."""

    def __init__(self) -> None:
        FLOW_PROCESS.set()
        alignment.on_conflict = _second_deployment
        drain.block_signals()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._cluster: tuple[Config, int] | None = None
        self._peer_watch: PeerWatch | None = None
        self._lock = threading.Lock()
        drain.SignalWaiter(self._on_signal).start()

    # -- stopping ------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if health.STATUS.listed_at is None:
            # No epoch has begun: nothing to finish, nothing to replay. Stop now.
            log.info("stopped before the flow started", extra={"signal": name})
            logging.shutdown()
            os._exit(0 if signum == signal.SIGTERM else 128 + signum)
        self.begin_drain(f"signal {name}", publish=True)

    def begin_drain(self, reason: str, *, publish: bool) -> None:
        """Stop the input; Bytewax then finishes and commits the current epoch, and `run` returns."""
        with self._lock:
            if self.stop.is_set():
                return
            self.stop.set()
        health.STATUS.draining = True
        log.info("draining: input stopped, finishing the current epoch", extra={"reason": reason})
        if publish and self._cluster is not None:
            config, process_id = self._cluster
            request = drain.drain_request(config.flow.group_id, process_id, drain.now_ms(), reason)
            threading.Thread(target=drain.publish_drain, args=(config.kafka, config.topics.control, request),
                             name="nextclick-drain-publish", daemon=True).start()

    # -- running -------------------------------------------------------------------------------------

    def _drop_uncommitted_across(self, config: Config, mine: dict[str, Any]) -> None:
        """Per-pod volumes: delete this process's snapshots of epochs the cluster never committed, by the
        resume epoch every process's partitions give together (recovery_db's module docstring). Left, a
        shard that its cluster's next start did not wake in that epoch kept the dead start's snapshot,
        which then counted as committed: the next resume opened it where the dead start had got to, with
        decisions of that start's last epoch recorded and never sent."""
        reports = cluster_hello.recovery_barrier(config.kafka, config.topics.control, mine,
                                                 lambda: self.stop.is_set())
        if self.stop.is_set():  # stopped while it waited: nothing runs
            return
        epoch = cluster_resume_epoch(reports) if reports is not None else None
        if epoch is None:
            log.warning("the cluster's resume epoch is not known here (a peer said no recovery progress, or "
                        "its partitions do not add up): snapshots of epochs that never committed are left")
            return
        dropped = drop_snapshots_from(config.state.recovery_dir, epoch)
        log.info("dropped snapshots of epochs that never committed", extra={
            "recovery_dir": config.state.recovery_dir, "snapshots": dropped, "resume_epoch": epoch})

    def run(self, config: Config, flow: Dataflow, *, workers: int = 1, process_id: int | None = None,
            addresses: Sequence[str] | None = None, recovery_partitions: int = 1, resumes: bool | None = None,
            lineage: str | None = None) -> int:
        """Run `flow` (built with `stop=self.stop`) to its end; 0 once drained or at the end of input.
        `recovery_partitions`: the cluster's count of recovery partitions, as this process was told it.
        `resumes`: this process's state goes on from a committed epoch (StartPlan.resumes)."""
        from bytewax._bytewax import cluster_main
        from bytewax.recovery import RecoveryConfig

        me = process_id or 0
        cluster = list(addresses or [])
        health.STATUS.reset(workers=workers)
        epoch_s = config.flow.epoch_seconds
        if config.flow.metrics_address:
            health.serve(config.flow.metrics_address, epoch_s=epoch_s, stall_s=config.flow.stall_seconds)
        reporter = health.Reporter(health.STATUS, every_s=config.flow.progress_seconds, epoch_s=epoch_s)
        reporter.start()
        watchers: list[Any] = []
        if len(cluster) > 1:
            self._cluster = (config, me)
            self._peer_watch = PeerWatch(cluster, me)
            watch = drain.DrainWatch(config.kafka, config.topics.control, config.flow.group_id, drain.now_ms(),
                                     lambda req: self.begin_drain(
                                         f"drain requested by process {req.get('from_process')}", publish=False))
            watchers = [self._peer_watch, watch]
            for w in watchers:
                w.start()
            watch.watching.wait(30)

        mine = None
        hellos: cluster_hello.HelloWatch | None = None
        if len(cluster) > 1:  # said before the cluster forms: peers read it if it cannot form
            ran_with = cluster_hello.read_ran_with(config.state.dir, lineage) if lineage else None
            mine = cluster_hello.hello(config.flow.group_id, me, len(cluster), workers, recovery_partitions,
                                       release(), declared_settings(), drain.now_ms(),  # as build_flow declared
                                       cluster, resumes, lineage, ran_with)
            recovery = read_recovery(config.state.recovery_dir)
            if recovery.exists and not recovery.complete:  # per-pod volumes: peers need this one's progress
                mine["recovery"] = progress_report(recovery)
            cluster_hello.publish_hello(config.kafka, config.topics.control, mine)
            if ran_with:  # before the cluster forms: a volume of another cluster mixes nothing in
                foreign = cluster_hello.check_same_cluster(config.kafka, config.topics.control, mine)
                if foreign is not None:
                    cluster_hello.say_refused(config.kafka, config.topics.control, config.flow.group_id, me, foreign)
                    raise Explained(foreign)
            connected = self._peer_watch.connected if self._peer_watch is not None else threading.Event()
            state_dir = config.state.dir
            hellos = cluster_hello.HelloWatch(  # formed once the peers connected or the dataflow was built
                config.kafka, config.topics.control, dict(mine),
                lambda: connected.is_set() or health.STATUS.listed_at is not None, _refuse_to_wait,
                drain.now_ms, on_formed=lambda peers: cluster_hello.record_ran_with(state_dir, peers, len(cluster)))
            hellos.start()
            watchers.append(hellos)
            if "recovery" in mine and recovery.newest_snapshot_epoch:
                self._drop_uncommitted_across(config, mine)
        _quiet_late_panics()
        try:
            cluster_main(flow, cluster or None, me, epoch_interval=timedelta(seconds=epoch_s),
                         recovery_config=RecoveryConfig(config.state.recovery_dir), worker_count_per_proc=workers)
        except BaseException as exc:
            mismatch = cluster_mismatch()
            if mismatch is not None:  # a peer of another release: not a lost peer, whatever Bytewax says
                raise Explained(mismatch) from exc
            line = one_line(exc)
            if len(cluster) > 1 and "failed to initialize networking" in line:
                why = line.rsplit("failed to initialize networking: ", 1)[-1]
                raise Explained(f"cannot listen on {cluster[me]}, process {me}'s address in --addresses: {why}; is "
                                f"another process running as process {me}, or is the port taken?") from exc
            if mine is not None and type(root_cause(exc)).__name__ == "PanicException":  # how a cluster fails
                peers = cluster_hello.peer_hellos(config.kafka, config.topics.control, config.flow.group_id,
                                                  mine["started_at"] - cluster_hello.LOOK_BACK_MS, len(cluster),
                                                  started_before_ms=drain.now_ms())
                started_otherwise = cluster_hello.differences(mine, peers) or cluster_hello.lost_volumes(mine, peers)
                if started_otherwise is not None:  # e.g. other --workers: Bytewax says only "Send thread panic"
                    raise Explained(started_otherwise) from exc
            watch_saw = self._peer_watch.lost if self._peer_watch is not None else []
            if len(cluster) > 1 and type(root_cause(exc)).__name__ == "PanicException" and (
                    watch_saw or is_comms_failure(exc)):
                failed = storage_failure()
                full = full_volume(config)
                if failed is not None or full is not None:  # this process failed first; its peers saw it go
                    what = (f"its state could not be written: {failed}" if failed is not None
                            else f"its volume is full: {full}")
                    raise Explained(f"this process stops because {what}; free or grow that volume: the cluster "
                                    "stops with it, and restarts from its last committed epoch once every process "
                                    "is running again") from exc
                raise LostPeer(lost_peer_message(cluster, me, watch_saw)) from exc
            missing = re.search(r"Missing recovery partitions .* of (\d+)", line)
            if missing:  # Bytewax's words for a volume of one process of a cluster, run on its own
                raise Explained(f"{config.state.recovery_dir} (state.recovery_dir) holds only some of the "
                                f"{missing.group(1)} recovery partitions of a cluster: it is one process's volume "
                                f"of a {missing.group(1)}-process cluster (start every process, with --addresses "
                                "and --recovery-per-process), or partitions were lost; to change the number of "
                                "processes, go through a savepoint (docs/state.md)") from exc
            for setting, path in (("state.dir", config.state.dir), ("state.recovery_dir", config.state.recovery_dir)):
                if str(path) in line:  # e.g. RocksDB's "IO error: ... <state.dir>/shard-0002/LOCK: ..."
                    raise Explained(f"{line} ({setting})") from exc
            raise
        finally:
            health.STATUS.finished = True
            reporter.stop.set()
            for w in watchers:
                w.stopped.set()

        if hellos is not None:  # the run formed and ended: who it ran with, if the watch had no time to say
            hellos.join(5.0)
            hellos.tell_formed()
        committed = commit_final_offsets(config.kafka, config.flow.group_id)
        log.info("stopped", extra={"reason": "drained" if self.stop.is_set() else "end of input",
                                   "seconds": round(time.monotonic() - self.started, 2),
                                   "group_offsets_committed": committed, **health.progress_figures()})
        return 0


def metrics_settings(config: Config, address: str | None, port: int | None) -> Config:
    """`--metrics-address`, or `--metrics-port` (127.0.0.1), over `flow.metrics_address`; validated."""
    given = address or (f"127.0.0.1:{port}" if port else None)
    if given:
        config = config.replace(flow={"metrics_address": given})
    if config.flow.metrics_address:
        health.parse_address(config.flow.metrics_address, "--metrics-address" if given else "flow.metrics_address")
    return config


def preflight(config: Config) -> None:
    """The topics the flow reads exist, the state and recovery directories are writable, the decision
    sink is one the registry knows (writes nothing)."""
    decision_sink(config)  # a wrong flow.decision_sink: one line, before the topics are checked
    check_topics(config.kafka, config)
    check_directories(config)
