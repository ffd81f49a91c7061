"""Prometheus metrics, one registry per process, served by `operators/infra/health.py` on `flow.metrics_address`.

The registry is private (tests and the demo read it directly) but carries the standard process,
platform and GC collectors, so RSS, CPU, open files and garbage collection are exported next to the
flow's own families. Every family is listed, with what to alert on, in docs/operations.md.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Any, Callable

import confluent_kafka
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# The default registry's standard collectors, registered on ours as well (a collector may sit in
# several registries): process_* (RSS, CPU, fds, start time), python_info, python_gc_*.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# -- build --------------------------------------------------------------------------------------
# Which release runs where: a rollout that left one pod on the old image shows as two series.
BUILD_INFO = Info("nextclick_build", "The running release and the versions of what it is built on (value 1).",
                  registry=REGISTRY)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _client_version() -> str:
    """confluent-kafka's version: a string in 2.x (its first character was all the metric showed), a
    (string, int) pair in older releases."""
    found: Any = confluent_kafka.version()
    return found if isinstance(found, str) else str(found[0])


BUILD_INFO.info({"version": _version("nextclick"), "bytewax": _version("bytewax"),
                 "confluent_kafka": _client_version(), "librdkafka": confluent_kafka.libversion()[0],
                 "python": platform.python_version()})

# -- input --------------------------------------------------------------------------------------
INPUT_MESSAGES = Counter("nextclick_input_messages_total",
                         "Messages read from Kafka, by topic and partition (counted at the source, before parsing).",
                         ["topic", "partition"], registry=REGISTRY)
CONSUMER_LAG = Gauge("nextclick_consumer_lag_messages",
                     "Messages in the partition after the flow's position: high watermark minus the next offset "
                     "to read (from the consumer's last fetch response, at every batch and every second).",
                     ["topic", "partition"], registry=REGISTRY)
INPUT_EVENT_TIME = Gauge("nextclick_input_event_timestamp_seconds",
                         "Event time (epoch seconds) of the next message an aligned input partition will "
                         "deliver, or of the latest it delivered: the spread across partitions is what "
                         "flow.alignment_bound bounds; the lowest is the partition the others wait for.",
                         ["topic", "partition"], registry=REGISTRY)
INPUT_HELD_SECONDS = Counter("nextclick_input_held_seconds_total",
                             "Seconds an input partition had messages but held them back, waiting for slower "
                             "partitions to catch up in event time (flow.alignment_bound).",
                             ["topic", "partition"], registry=REGISTRY)
EPOCH_SECONDS = Histogram("nextclick_epoch_duration_seconds",
                          "Wall time between two epoch-end snapshots of an input partition (one observation per "
                          "partition and epoch): flow.epoch_seconds plus any time the epoch waited to close.",
                          buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120), registry=REGISTRY)

FRONTIER = Gauge("nextclick_event_time_frontier_timestamp_seconds",
                 "The input's event-time frontier (epoch seconds) as last sent to the shards: absences, "
                 "session ends and pruning fire by it. The slowest input partition with data, or the "
                 "clock once every partition is caught up (then nextclick_event_time_frontier_caught_up "
                 "is 1). The clock minus it is how far behind the timers are judged.", registry=REGISTRY)
FRONTIER_CAUGHT_UP = Gauge("nextclick_event_time_frontier_caught_up",
                           "1 when every input partition is caught up and the frontier follows the clock "
                           "(live), 0 while some partition has a backlog.", registry=REGISTRY)
EPOCH_CLOSED = Gauge("nextclick_epoch_closed_timestamp_seconds",
                     "Wall time (epoch seconds) an input partition of this process last closed an epoch. A "
                     "partition closes epoch k+1 only once epoch k is committed, so the last committed epoch "
                     "is at most one epoch older: its age is what a crash would replay.", registry=REGISTRY)

# -- profiles -----------------------------------------------------------------------------------
EVENTS = Counter("nextclick_events_total", "Events applied to profiles, by type.", ["type"], registry=REGISTRY)
IDENTITY_ITEMS = Counter("nextclick_identity_items_total",
                         "Items (events, commands, progress reports) this process's identity stage routed.",
                         registry=REGISTRY)
DUPLICATES = Counter("nextclick_duplicate_events_total", "Events dropped as duplicates of a seen event_id.",
                     registry=REGISTRY)
LATE = Counter("nextclick_late_events_total", "Events beyond the allowed lateness (handled by the late policy).",
               registry=REGISTRY)
DEAD_LETTERS = Counter("nextclick_dead_letters_total", "Messages sent to the dead-letter topic, by reason.",
                       ["reason"], registry=REGISTRY)
PROCESSING_ERRORS = Counter("nextclick_processing_errors_total",
                            "Events dead-lettered because applying them raised (processing_error), by step and "
                            "exception class; each leaves the customer's profile as it was before the event.",
                            ["step", "exception"], registry=REGISTRY)
QUARANTINED = Counter("nextclick_quarantined_profiles_total",
                      "Stored profiles set aside for inspection (undecodable, unencodable, or a timer that "
                      "failed), by step.", ["step"], registry=REGISTRY)
ABSENCES = Counter("nextclick_absences_fired_total", "Absence signals that completed.", registry=REGISTRY)
ERASURES = Counter("nextclick_erasures_total", "Customers erased.", registry=REGISTRY)
STALE_SIGNAL_STATE = Counter("nextclick_stale_signal_state_total",
                             "Profiles whose state of a signal the rules no longer have was dropped, by signal.",
                             ["signal"], registry=REGISTRY)
EVENTS_OF_ERASED = Counter("nextclick_events_of_erased_total",
                           "Events not applied: they name an identifier erased after their time (a replay "
                           "after a crash or a restore, or a late event of the erased person).", registry=REGISTRY)

# -- identity -----------------------------------------------------------------------------------
LINKS = Counter("nextclick_identity_links_total",
                "Links that joined profiles (identity stitching), by the id type keying the merged profile.",
                ["id_type"], registry=REGISTRY)
LINKS_REFUSED = Counter("nextclick_identity_links_refused_total",
                        "Links refused by a guard (they change nothing), by reason (blocked_value, "
                        "two_customer_ids, same_key_type, limit, shared_identifier) and the id type it concerns.",
                        ["reason", "id_type"], registry=REGISTRY)
PROFILES_MOVED = Counter("nextclick_identity_profiles_moved_total",
                         "Profiles taken out of their shard to be merged into a linked profile.", registry=REGISTRY)
MERGES = Counter("nextclick_identity_merges_total",
                 "Merges of moved profiles into a linked profile (one per link, whatever it joined).",
                 registry=REGISTRY)

# -- decisions ----------------------------------------------------------------------------------
DECISIONS = Counter("nextclick_decisions_total", "Decisions emitted, by rule and channel.", ["rule", "channel"],
                    registry=REGISTRY)
BLOCKED = Counter("nextclick_decisions_blocked_total", "Candidate decisions blocked, by rule and reason.",
                  ["rule", "reason"], registry=REGISTRY)
EXPIRED = Counter("nextclick_decisions_expired_total",
                  "Decisions not sent because their expiry (event time) had passed on the wall clock when they "
                  "were made: a backfill or a long backlog, by rule and channel.", ["rule", "channel"],
                  registry=REGISTRY)
EVENT_TO_DECISION = Histogram(
    "nextclick_event_to_decision_duration_seconds",
    "Wall clock when a decision is handed to the sink minus its trigger's time (the triggering event's "
    "event time, or the due time of an absence), by decision channel.",
    ["channel"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600), registry=REGISTRY)

DELIVERY_ERRORS = Counter("nextclick_producer_delivery_errors_total",
                          "Messages (decisions, dead letters) Kafka did not acknowledge, by topic and librdkafka "
                          "error name. Any is followed by an exit (70) at the epoch end and a replay of the epoch.",
                          ["topic", "error"], registry=REGISTRY)

# -- state --------------------------------------------------------------------------------------
CHECKPOINT_SECONDS = Histogram("nextclick_checkpoint_duration_seconds", "Time to checkpoint one shard at an epoch end.",
                               buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5), registry=REGISTRY)
SHARD_CACHED = Gauge("nextclick_shard_cached_profiles",
                     "Decoded profiles a shard holds in memory, at its last epoch end.", ["shard"], registry=REGISTRY)
SHARD_DIRTY = Gauge("nextclick_shard_dirty_profiles",
                    "Changed profiles a shard had to write at its last epoch end.", ["shard"], registry=REGISTRY)
SHARD_STATE_BYTES = Gauge("nextclick_shard_state_bytes",
                          "Bytes on disk of a shard's RocksDB directory (measured every "
                          "30 s at most, at an epoch end).", ["shard"], registry=REGISTRY)
READY = Gauge("nextclick_ready", "1 when /readyz answers 200 (inputs assigned and consuming), else 0.",
              registry=REGISTRY)

# How often a shard's directory is walked to measure its bytes (it lists every file).
STATE_BYTES_EVERY_S = 30.0
_state_bytes_at: dict[int | str, float] = {}


def observe_shard(shard: int | str, cached: int, dirty: int, disk_bytes: Callable[[], int],
                  now: Callable[[], float] = time.monotonic) -> None:
    """A shard's figures at an epoch end; its bytes on disk at most every STATE_BYTES_EVERY_S."""
    label = str(shard)
    SHARD_CACHED.labels(label).set(cached)
    SHARD_DIRTY.labels(label).set(dirty)
    at = now()
    last = _state_bytes_at.get(shard)
    if last is None or at - last >= STATE_BYTES_EVERY_S:
        _state_bytes_at[shard] = at
        SHARD_STATE_BYTES.labels(label).set(disk_bytes())


_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def labelled(family: Counter | Gauge | Histogram, *values: str) -> Any:
    """`family.labels(*values)`, kept: the client looks a child up with validation and a lock on every
    call (a few µs), and the hot path asks for the same few children per batch, live once per event.
    As many entries as the family has series."""
    key = (family, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = family.labels(*values)
    return child


def observe_decision(rule: str, channel: str, trigger_ms: int, now_ms: int) -> None:
    labelled(DECISIONS, rule, channel).inc()
    labelled(EVENT_TO_DECISION, channel).observe(max(0.0, (now_ms - trigger_ms) / 1000))


def counter_values(counter: Counter) -> dict[tuple[str, ...], float]:
    """Current values of a labelled counter, by label values (for summaries and tests)."""
    out: dict[tuple[str, ...], float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out


def gauge_values(gauge: Gauge) -> dict[tuple[str, ...], float]:
    """Current values of a labelled gauge, by label values."""
    return {tuple(s.labels.values()): s.value for m in gauge.collect() for s in m.samples}
