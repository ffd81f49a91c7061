"""`python -m bytewax.run bench.flow_entry:flow`: the production flow plus benchmark instruments.

The flow is exactly `nextclick.flows.main`'s (`build_flow(load_config())`, configured by `NEXTCLICK_*`), with:

* a `stop` event set when the file named by `BENCH_STOP_FILE` appears (polled every 50 ms), so a
  tailing run ends through `build_flow`'s own stop path rather than a kill;
* `ShardLogic.snapshot` timed (start, duration) per shard, per call - the same span the per-process
  `nextclick_checkpoint_duration_seconds` histogram observes;
* at exit, a JSON file `BENCH_STATS_FILE` (`{pid}` is replaced) with the import and exit times, the
  snapshot timings and the histogram's sum/count;
* with `BENCH_PROBES=1`, the flow's own share of each probe's latency: the wall time its input
  partition handed the event to Bytewax and the time its decision was handed to the Kafka producer
  (`probes` in the stats file, as `[seq, received_ns, handed_ns]`). Probe events are keyed
  `probe-<seq>` and their decisions carry `trigger.id` `L<seq>-<send ns>` (bench/workload.py).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

import orjson

from bench import workload
from nextclick.flows.targeting import build_flow
from nextclick.operators.infra import metrics
from nextclick.operators.infra.config import load_config
from nextclick.operators.infra.logs import configure_logging
from nextclick.operators.infra.runtime import bytewax_run_readers, tune_gc
from nextclick.operators.io import kafka_sink, kafka_source, sinks
from nextclick.operators.records import Progress
from nextclick.operators.shard.logic import ResumeState, ShardLogic
from nextclick.operators.tools.startup import check_start, runner_recovery_dir

STARTED = time.time()
_timings: list[tuple[float, float, int | None]] = []
_original_snapshot = ShardLogic.snapshot


def _timed_snapshot(self: ShardLogic) -> ResumeState:
    started = time.time()
    t0 = time.perf_counter()
    state = _original_snapshot(self)
    if state is not None:  # None: a shard with no state (it only heard the frontier)
        _timings.append((started, time.perf_counter() - t0, state["shard"]))
    return state


ShardLogic.snapshot = _timed_snapshot  # type: ignore[method-assign]


_probe_received: dict[int, int] = {}
_probes: list[tuple[int, int, int]] = []
_original_next_batch = kafka_source._KafkaPartition.next_batch
_original_write_batch = kafka_sink._SinkPartition.write_batch


def _probe_next_batch(self: kafka_source._KafkaPartition) -> list[kafka_source.RawMessage | Progress]:
    batch = _original_next_batch(self)
    now = time.time_ns()
    for msg in batch:
        if isinstance(msg, kafka_source.RawMessage) and msg.key is not None and msg.key.startswith(b"probe-"):
            _probe_received[int(msg.key[6:])] = now
    return batch


def _probe_write_batch(self: kafka_sink._SinkPartition, values: list[sinks.OutMessage]) -> None:
    now = time.time_ns()
    for m in values:
        trigger = orjson.loads(m.value or b"{}").get("trigger") or {}
        parsed = workload.parse_live_id(str(trigger.get("id", "")))
        if parsed is not None and parsed[0] in _probe_received:
            _probes.append((parsed[0], _probe_received.pop(parsed[0]), now))
    _original_write_batch(self, values)


if os.environ.get("BENCH_PROBES"):
    kafka_source._KafkaPartition.next_batch = _probe_next_batch  # type: ignore[method-assign]
    kafka_sink._SinkPartition.write_batch = _probe_write_batch  # type: ignore[method-assign]


def _histogram() -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in metrics.CHECKPOINT_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                out["sum"] = sample.value
            elif sample.name.endswith("_count"):
                out["count"] = sample.value
    return out


def _dump() -> None:
    path = os.environ.get("BENCH_STATS_FILE")
    if not path:
        return
    stats: dict[str, Any] = {"pid": os.getpid(), "started": STARTED, "ended": time.time(),
                             "snapshots": _timings, "checkpoint_histogram": _histogram(),
                             "events": sum(metrics.counter_values(metrics.EVENTS).values()),
                             "identity_items": sum(metrics.counter_values(metrics.IDENTITY_ITEMS).values()),
                             "decisions": sum(metrics.counter_values(metrics.DECISIONS).values()),
                             "probes": _probes}
    with open(path.replace("{pid}", str(os.getpid())), "wb") as fh:
        fh.write(orjson.dumps(stats))


atexit.register(_dump)

stop = threading.Event()


def _watch_stop_file(path: str) -> None:
    while not stop.is_set():
        if os.path.exists(path):
            stop.set()
            return
        time.sleep(0.05)


if os.environ.get("BENCH_STOP_FILE"):
    threading.Thread(target=_watch_stop_file, args=(os.environ["BENCH_STOP_FILE"],), daemon=True).start()

configure_logging(os.environ.get("NEXTCLICK_LOG_LEVEL", "WARNING"))
_config = load_config(os.environ.get("NEXTCLICK_CONFIG") or None)
flow = build_flow(_config, stop=stop, plan=check_start(_config, recovery_dir=runner_recovery_dir(_config)),
                  readers=bytewax_run_readers(sys.argv))
tune_gc()
