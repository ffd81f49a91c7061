"""One customer's bad data never stops the flow: a shard's quarantine and poison replay.

An event whose processing raises is dead-lettered by the shard, and the customer's profile is rebuilt
as it was before that event (`rebuild`): the stored copy plus the events, timer turns and merges
applied since it was written (the cache's replay log), replayed through the deterministic engine. A
profile that cannot be read, written, turned or rebuilt is set aside (`record`): a quarantine record
keeps its stored bytes for inspection, and the customer's events are dead-lettered until it is erased.

The cache (operators/shard/cache.py) is the way in (`ProfileCache.set_aside`, `ProfileCache.restore`):
it forgets the customer first. This part holds no reference back to it, so a shard is freed (and its
RocksDB closed) as soon as it is dropped, with no reference cycle left for the collector.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import orjson

from nextclick.operators.engine.merge import merge_all
from nextclick.operators.infra import metrics
from nextclick.operators.profile.codec import decode_profile
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.records import Event
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.common import Applied, EngineSteps, Merge, log, note_ids
from nextclick.operators.state.keys import (
    QUARANTINED,
    TIMER_PREFIX,
    is_timer_of,
    profile_key,
    quarantine_key,
    timer_key,
)
from nextclick.operators.state.store import KeyValueStore


class Quarantine:
    """Sets customers aside, and undoes a failed event by replaying what succeeded before it."""

    def __init__(self, store: KeyValueStore, ruleset: RuleSet, shard: int, steps: EngineSteps) -> None:
        self.store, self.ruleset, self.shard, self.steps = store, ruleset, shard, steps

    def record(self, customer: str, step: str, exc: BaseException, blob: bytes | None,
               indexed: set[int | None]) -> None:
        """Set a customer's stored profile aside for inspection (the cache has forgotten them).

        The quarantine record keeps the stored bytes (pseudonymous state only) and why; the profile
        key points at it; the customer's timer keys go, so nothing fires for them. `blob`: the stored
        bytes, if already read; `indexed`: due times a timer key of theirs may be under (None: none).
        """
        store = self.store
        indexed = indexed - {None}
        key = profile_key(customer)
        stored = blob if blob is not None else store.get(key)
        if stored == QUARANTINED:
            return
        record = {"customer": customer, "step": step, "exception": type(exc).__name__,
                  "stored_base64": None if stored is None else base64.b64encode(stored).decode()}
        store.put(quarantine_key(customer), orjson.dumps(record))
        store.put(key, QUARANTINED)
        for due in indexed:
            assert due is not None
            store.delete(timer_key(due, customer))
        me = customer.encode()
        for tkey in [k for k, _ in store.scan(TIMER_PREFIX) if is_timer_of(k, me)]:
            store.delete(tkey)
        metrics.QUARANTINED.labels(step).inc()
        log.error("customer profile quarantined", extra={"shard": self.shard, "customer": customer, "step": step,
                                                         "exception": type(exc).__name__})

    def rebuild(self, customer: str, applied: Iterable[Applied]) -> Profile:
        """The customer's profile as it was after the last step that succeeded: the stored copy with
        everything applied since it was written (`applied`, its replay log) replayed onto it (the
        engine is deterministic)."""
        blob = self.store.get(profile_key(customer))
        profile = new_profile(customer) if blob is None else decode_profile(blob)
        ruleset, steps = self.ruleset, self.steps
        for step in applied:
            if isinstance(step, Event):
                note_ids(profile, step)
                steps.on_event(profile, step, ruleset)
            elif isinstance(step, Merge):
                merge_all(profile, [decode_profile(b) for b in step.blobs], ruleset)
                profile.ids = {t: list(keys) for t, keys in step.ids.items()}
            else:
                steps.on_timers(profile, ruleset, step)
        return profile
