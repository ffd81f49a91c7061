"""Scheduled savepoints, and the start-up checks that a lost volume can be recovered from them.

`state.savepoint_interval` (e.g. "1h") makes process 0 of a cluster (the only one: one schedule per
cluster) run `SavepointScheduler`, a daemon thread that every interval asks the running flow for an
online savepoint exactly as `nextclick savepoint create --online` does (`create_online`: the command on
the control topic, then the parts assembled into `<state.savepoint_dir>/scheduled-<UTC time>`), then
prunes the directory to the newest `state.savepoint_keep`. A failed or timed-out attempt logs one line
and counts `nextclick_savepoint_failures_total`; the flow goes on and the next attempt comes one
interval later. The thread stops when the flow drains (an attempt in flight is abandoned).

`state.on_lost_volume = "restore"` recovers a lost volume from the latest savepoint plus a replay of the
input from its positions (docs/state.md, "A lost volume"): `check_recovery_plan` refuses to start
without an interval (nothing recent to restore), and when Kafka's retention of an input topic or the
control topic is shorter than the interval (the replay would miss events).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram

from nextclick.operators.infra.config import Config, ConfigError
from nextclick.operators.infra.metrics import REGISTRY
from nextclick.operators.io.topics import topic_retention_ms
from nextclick.operators.state.savepoint_parts import Destination, SavepointError
from nextclick.operators.tools.savepoint import catalogue, create_online, prune

log = logging.getLogger("nextclick.savepoint")

SCHEDULED_PREFIX = "scheduled-"

LAST_SUCCESS = Gauge("nextclick_savepoint_last_success_timestamp_seconds",
                     "When (epoch seconds) the newest complete savepoint in state.savepoint_dir was created, as "
                     "process 0's scheduler saw it (at its start, the newest found there, else its start time); "
                     "0 in processes that run no schedule.", registry=REGISTRY)
DURATION = Histogram("nextclick_savepoint_duration_seconds",
                     "Wall time of a scheduled savepoint that completed: the command sent, every shard's part "
                     "copied, the manifest written.", buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
                     registry=REGISTRY)
BYTES = Gauge("nextclick_savepoint_bytes", "Bytes of the newest scheduled savepoint that completed.",
              registry=REGISTRY)
FAILURES = Counter("nextclick_savepoint_failures_total",
                   "Scheduled savepoints that failed or timed out (the flow goes on; the next attempt comes one "
                   "interval later).", registry=REGISTRY)


def scheduled_name(at: float) -> str:
    """`scheduled-20261206T120000Z`: sorts by time, and a valid savepoint name for the control topic."""
    return SCHEDULED_PREFIX + datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%SZ")


class SavepointScheduler:
    """Every `state.savepoint_interval`, one online savepoint into state.savepoint_dir, then retention.
    Started by `nextclick run` in process 0 only; never stops the flow."""

    def __init__(self, config: Config, *, stop: threading.Event,
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.stop, self.clock = config, stop, clock
        self.interval_s = config.state.savepoint_interval_ms / 1000
        self.timeout_s = config.state.savepoint_timeout_ms / 1000
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="savepoint-schedule", daemon=True)
        self.attempts = self.successes = 0

    def start(self) -> None:
        try:  # the alert's clock starts at the newest savepoint already there (a restart is not a fresh start)
            complete, _ = catalogue(self.config.state.savepoint_dir)
            newest = datetime.fromisoformat(complete[0].created_at).timestamp() if complete else 0.0
        except (SavepointError, OSError, ValueError):
            newest = 0.0
        LAST_SUCCESS.set(newest or self.clock())
        log.info("scheduled savepoints", extra={"every_s": self.interval_s, "keep": self.config.state.savepoint_keep,
                                                "savepoint_dir": self.config.state.savepoint_dir})
        self._thread.start()

    def close(self, wait_s: float = 5.0) -> None:
        """Stop: no new attempt, the one in flight abandoned."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(wait_s)

    def _stopping(self) -> bool:
        return self._closed.is_set() or self.stop.is_set()

    def _loop(self) -> None:
        while not self._closed.wait(self.interval_s):
            if self.stop.is_set():
                return
            self.run_once()

    def run_once(self) -> bool:
        """One attempt; True when the savepoint completed. Never raises."""
        self.attempts += 1
        root = Destination(self.config.state.savepoint_dir)
        name = scheduled_name(self.clock())
        ours = root.child(name).is_empty()  # a failure removes what this attempt left, never what was there
        began = time.monotonic()
        try:
            create_online(self.config, root.describe(name), timeout_s=self.timeout_s,
                          request_id=f"scheduled-{time.time_ns()}", cancelled=self._stopping)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the flow goes on; the next attempt still comes
            FAILURES.inc()
            if not self._stopping():
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.error("scheduled savepoint failed; the next attempt comes in one interval",
                          extra={"savepoint": name, "error": reason, "seconds": round(time.monotonic() - began, 2)})
            if ours:
                self._discard(root, name)
            return False
        seconds = time.monotonic() - began
        where = root.child(name)
        size = where.size()
        DURATION.observe(seconds)
        BYTES.set(size)
        LAST_SUCCESS.set(self.clock())
        self.successes += 1
        try:
            deleted = prune(root.location, self.config.state.savepoint_keep, prefix=SCHEDULED_PREFIX)
            self._clear_abandoned(root, keep=name)
        except (SavepointError, OSError) as exc:
            log.warning("scheduled savepoint taken, but pruning failed", extra={"error": str(exc)})
            deleted = []
        log.info("scheduled savepoint taken", extra={"savepoint": str(where), "seconds": round(seconds, 2),
                                                     "bytes": size, "pruned": deleted})
        return True

    @staticmethod
    def _discard(root: Destination, name: str) -> None:
        """What a failed attempt left (incomplete: never listed as a savepoint, but it holds space)."""
        try:
            root.remove(name)
        except (SavepointError, OSError):
            pass

    @staticmethod
    def _clear_abandoned(root: Destination, *, keep: str) -> None:
        """Incomplete scheduled savepoints older than the one just taken: parts a slow process copied in
        after its attempt was given up."""
        _, incomplete = catalogue(root.location)
        for name in incomplete:
            if name.startswith(SCHEDULED_PREFIX) and name < keep:
                root.remove(name)


def start_scheduler(config: Config, process_id: int | None, stop: threading.Event) -> SavepointScheduler | None:
    """The scheduler for this process: process 0 of a cluster, with an interval configured; else None."""
    if not config.state.savepoint_interval_ms or (process_id or 0) != 0:
        return None
    scheduler = SavepointScheduler(config, stop=stop)
    scheduler.start()
    return scheduler


# -- start-up checks --------------------------------------------------------------------------------


def check_recovery_plan(config: Config, retention: Callable[[list[str]], dict[str, int | None]] | None = None) -> None:
    """With state.on_lost_volume = "restore", refuse to start (one line) when a lost volume could not be
    recovered: no savepoint interval, or an input or control topic whose retention is shorter than it.
    A retention neither the broker nor [topics] retention_ms tells is logged as a warning."""
    if config.state.on_lost_volume != "restore":
        return
    interval_ms = config.state.savepoint_interval_ms
    if not interval_ms:
        raise ConfigError("state.on_lost_volume = \"restore\" needs state.savepoint_interval (e.g. \"1h\"): a lost "
                          "volume takes the cluster back to the latest savepoint, and without scheduled savepoints "
                          "there is nothing recent to restore")
    topics = [*config.topics.inputs, config.topics.control]
    reported = (retention or (lambda names: topic_retention_ms(config.kafka, names)))(topics)
    configured = config.topics.retention_ms
    unknown = []
    for topic in topics:
        ms = reported.get(topic)
        source = "the broker's retention.ms"
        if ms is None and configured:
            ms, source = configured, "[topics] retention_ms"
        if ms is None:
            unknown.append(topic)
            continue
        if 0 <= ms < interval_ms:
            raise ConfigError(f"state.on_lost_volume = \"restore\": {topic} keeps {ms / 3_600_000:g}h ({source}), "
                              f"less than state.savepoint_interval {config.state.savepoint_interval}: a replay from "
                              f"the latest savepoint would miss events; raise the topic's retention.ms (several "
                              f"intervals) or shorten the interval")
    if unknown:
        log.warning("cannot tell whether Kafka's retention covers state.savepoint_interval for these topics: neither "
                    "the broker nor [topics] retention_ms says; keep retention.ms well above the interval",
                    extra={"topics": unknown, "savepoint_interval": config.state.savepoint_interval})
