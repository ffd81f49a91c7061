"""Prometheus metrics, one registry per process; `nextclick run --metrics-port` serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter("nextclick_events_total", "Events applied to profiles, by type.", ["type"], registry=REGISTRY)
DUPLICATES = Counter("nextclick_duplicate_events_total", "Events dropped as duplicates of a seen event_id.",
                     registry=REGISTRY)
LATE = Counter("nextclick_late_events_total", "Events beyond the allowed lateness (handled by the late policy).",
               registry=REGISTRY)
DEAD_LETTERS = Counter("nextclick_dead_letters_total", "Messages sent to the dead-letter topic, by reason.",
                       ["reason"], registry=REGISTRY)
DECISIONS = Counter("nextclick_decisions_total", "Decisions emitted, by rule.", ["rule"], registry=REGISTRY)
BLOCKED = Counter("nextclick_decisions_blocked_total", "Candidate decisions blocked, by rule and reason.",
                  ["rule", "reason"], registry=REGISTRY)
ABSENCES = Counter("nextclick_absences_fired_total", "Absence signals that completed.", registry=REGISTRY)
ERASURES = Counter("nextclick_erasures_total", "Customers erased.", registry=REGISTRY)
CHECKPOINT_SECONDS = Histogram("nextclick_checkpoint_seconds", "Time to checkpoint one shard at an epoch end.",
                               buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5), registry=REGISTRY)


def counter_values(counter: Counter) -> dict[tuple[str, ...], float]:
    """Current values of a labelled counter, by label values (for summaries and tests)."""
    out: dict[tuple[str, ...], float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out
PROCESSING_ERRORS = Counter("nextclick_processing_errors_total",
                            "Events dead-lettered because applying them raised (processing_error), by step and "
                            "exception class; each leaves the customer's profile as it was before the event.",
                            ["step", "exception"], registry=REGISTRY)
QUARANTINED = Counter("nextclick_quarantined_profiles_total",
                      "Stored profiles set aside for inspection (undecodable, unencodable, or a timer that "
                      "failed), by step.", ["step"], registry=REGISTRY)
