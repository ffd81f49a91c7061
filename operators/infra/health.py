"""Is this process alive, is it ready, how is it doing: `/healthz`, `/readyz`, `/metrics` and progress logs.

Every input partition a worker of this process builds reports here when it is polled, when it
snapshots an epoch and when it ends (operators/io/kafka_source.py). From that:

- **ready** (`/readyz`): the inputs were listed, every input partition of this process was polled
  (fetched, or found nothing new) within `ready_stale_s`, and one of them has closed an epoch;
- **alive** (`/healthz`): the dataflow's worker threads are all running, and no input partition
  has gone `stall_s` without being polled (a worker stuck in a callback).

One small HTTP server (stdlib `http.server`, daemon threads) serves both and the Prometheus page on
the configured address. The reporter thread logs the ready line once and a progress line every
`progress_s` seconds, reading the metrics registry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import orjson
from prometheus_client.exposition import choose_encoder

from nextclick.operators.errors import NextclickError
from nextclick.operators.infra import metrics

log = logging.getLogger("nextclick")


class PartitionStatus:
    """One input partition built by this process; written by its worker thread, read by the server."""

    __slots__ = ("topic", "partition", "last_poll", "_snapshots", "offset", "ended")

    def __init__(self, topic: str, partition: int, now: float) -> None:
        self.topic, self.partition = topic, partition
        self.last_poll = now
        self._snapshots = 0
        self.offset: int | None = None  # the next offset to read, as of the last epoch snapshot
        self.ended = False

    @property
    def snapshots(self) -> int:
        """Epochs this partition closed."""
        return self._snapshots

    @snapshots.setter
    def snapshots(self, count: int) -> None:
        # Each close is exported with its wall time: the age of the last committed epoch is alerted on.
        self._snapshots = count
        metrics.EPOCH_CLOSED.set(time.time())

    @property
    def name(self) -> str:
        return f"{self.topic}#{self.partition}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    detail: dict[str, Any]

    def body(self) -> bytes:
        return orjson.dumps({"status": "ok" if self.ok else "fail", "reason": self.reason, **self.detail})


class FlowStatus:
    """What this process's flow is doing, as far as probes and progress logs need to know."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self, *, workers: int = 0) -> None:
        """A new run in this process: forget the last one's partitions (tests run several)."""
        with self._lock:
            self.partitions: dict[tuple[str, int], PartitionStatus] = {}
            self.started_at = self.clock()
            self.listed_at: float | None = None
            self.workers = workers
            self.draining = False
            self.finished = False

    def listed(self) -> None:
        with self._lock:
            if self.listed_at is None:
                self.listed_at = self.clock()

    def partition(self, topic: str, partition: int) -> PartitionStatus:
        status = PartitionStatus(topic, partition, self.clock())
        with self._lock:
            self.partitions[(topic, partition)] = status
        return status

    def _snapshot(self) -> list[PartitionStatus]:
        with self._lock:
            return list(self.partitions.values())

    def readiness(self, *, stale_s: float, epoch_s: float) -> Verdict:
        now = self.clock()
        parts = self._snapshot()
        active = [p for p in parts if not p.ended]
        detail: dict[str, Any] = {"input_partitions": len(active)}
        if self.draining:
            return Verdict(False, "draining: stopping after the current epoch", detail)
        if self.listed_at is None:
            return Verdict(False, "starting: input partitions not assigned yet", detail)
        if parts and not active:
            return Verdict(False, "input finished", detail)
        if not parts:
            # A process may own no input partition (more workers than partitions): it still runs shards.
            if now - self.listed_at < epoch_s:
                return Verdict(False, "starting: waiting for the first epoch", detail)
            return Verdict(True, "ready: this process owns no input partition", detail)
        stale = sorted(p.name for p in active if now - p.last_poll > stale_s)
        if stale:
            return Verdict(False, f"{len(stale)} input partition(s) not polled for {stale_s:.0f}s: "
                                  f"{', '.join(stale[:5])}", detail)
        if not any(p.snapshots for p in parts):
            return Verdict(False, "starting: first epoch not closed yet", detail)
        return Verdict(True, "ready: inputs assigned and consuming", detail)

    def liveness(self, *, stall_s: float, worker_threads: Callable[[], int | None]) -> Verdict:
        now = self.clock()
        active = [p for p in self._snapshot() if not p.ended]
        detail: dict[str, Any] = {"input_partitions": len(active)}
        if self.draining or self.finished:
            return Verdict(True, "stopping", detail)
        stalled = sorted(p.name for p in active if now - p.last_poll > stall_s)
        if stalled:
            return Verdict(False, f"input partition(s) {', '.join(stalled[:5])} not polled for {stall_s:.0f}s: "
                                  "a worker is stuck", detail)
        if self.listed_at is not None and self.workers:
            running = worker_threads()
            if running is not None:
                detail["worker_threads"] = running
                if running < self.workers:
                    return Verdict(False, f"{running} of {self.workers} worker threads running", detail)
        return Verdict(True, "alive", detail)

    def finished_partitions(self) -> list[PartitionStatus]:
        return [p for p in self._snapshot() if p.ended]


STATUS = FlowStatus()


def timely_worker_threads() -> int | None:
    """Bytewax's worker threads in this process, by their names (`timely:work-N`); None without /proc.

    Threads a worker starts inherit its name (RocksDB's, the WAL syncer), so names are counted, not threads.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    names = set()
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue  # the thread ended while we looked
        if name.startswith("timely:work-"):
            names.add(name)
    return len(names)


# -- the HTTP server ----------------------------------------------------------------------------------


class AddressError(NextclickError, ValueError):
    pass


def parse_address(text: str, setting: str = "flow.metrics_address") -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` for IPv6) into a bindable pair; one-line error naming the setting."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{setting} must be HOST:PORT (e.g. 0.0.0.0:9464 or [::]:9464); got {text!r}")
    return host, int(port)


def _handler(status: FlowStatus, registry: Any, ready_stale_s: float, epoch_s: float,
             stall_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nextclick"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(registry))
            elif path == "/readyz":
                verdict = status.readiness(stale_s=ready_stale_s, epoch_s=epoch_s)
                self._send(200 if verdict.ok else 503, "application/json", verdict.body())
            elif path == "/healthz":
                verdict = status.liveness(stall_s=stall_s, worker_threads=timely_worker_threads)
                self._send(200 if verdict.ok else 503, "application/json", verdict.body())
            elif path == "/":
                self._send(200, "text/plain; charset=utf-8", b"nextclick: /metrics /healthz /readyz\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not logged
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(address: str, *, epoch_s: float, stall_s: float, status: FlowStatus = STATUS,
          registry: Any = metrics.REGISTRY, setting: str = "flow.metrics_address") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on `address` from a daemon thread; errors name the setting."""
    host, port = parse_address(address, setting)
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    ready_stale_s = max(10.0, 5 * epoch_s)
    try:
        server = server_class((host, port), _handler(status, registry, ready_stale_s, epoch_s, stall_s))
    except OSError as exc:
        raise AddressError(f"{setting} {address}: cannot listen ({exc.strerror or exc})") from None
    metrics.READY.set_function(lambda: float(status.readiness(stale_s=ready_stale_s, epoch_s=epoch_s).ok))
    threading.Thread(target=server.serve_forever, name="nextclick-http", daemon=True).start()
    log.info("serving metrics and probes", extra={"address": f"{host}:{server.server_address[1]}",
                                                  "paths": ["/metrics", "/healthz", "/readyz"]})
    return server


# -- progress logs -------------------------------------------------------------------------------------


def _total(counter: Any) -> float:
    return sum(metrics.counter_values(counter).values())


def progress_figures() -> dict[str, Any]:
    """Totals since start, read from the registry: what the progress line reports."""
    lag = metrics.gauge_values(metrics.CONSUMER_LAG)
    worst = max(lag.items(), key=lambda kv: kv[1], default=None)
    return {
        "input_messages": int(_total(metrics.INPUT_MESSAGES)),
        "events": int(_total(metrics.EVENTS)),
        "decisions": int(_total(metrics.DECISIONS)),
        "dead_letters": int(_total(metrics.DEAD_LETTERS)),
        "lag": int(sum(lag.values())),
        "max_lag_partition": f"{worst[0][0]}#{worst[0][1]}" if worst and worst[1] > 0 else None,
    }


class Reporter(threading.Thread):
    """Logs `ready` once, when readiness first holds, then `progress` every `every_s` seconds."""

    def __init__(self, status: FlowStatus, *, every_s: float, epoch_s: float) -> None:
        super().__init__(name="nextclick-progress", daemon=True)
        self.status, self.every_s, self.epoch_s = status, every_s, epoch_s
        self.stop = threading.Event()

    def run(self) -> None:
        ready_stale_s = max(10.0, 5 * self.epoch_s)
        logged_ready = False
        last, last_at = progress_figures(), time.monotonic()
        while not self.stop.wait(0.2):
            if not logged_ready:
                verdict = self.status.readiness(stale_s=ready_stale_s, epoch_s=self.epoch_s)
                if verdict.ok:
                    logged_ready = True
                    log.info("ready", extra={**verdict.detail, "reason": verdict.reason, "seconds_since_start":
                                             round(self.status.clock() - self.status.started_at, 2)})
            now = time.monotonic()
            if self.every_s <= 0 or now - last_at < self.every_s:
                continue
            figures = progress_figures()
            log.info("progress", extra={
                **figures,
                "input_per_s": round((figures["input_messages"] - last["input_messages"]) / (now - last_at), 1),
                "decisions_per_s": round((figures["decisions"] - last["decisions"]) / (now - last_at), 2)})
            last, last_at = figures, now
