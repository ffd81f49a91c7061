"""The Python ceiling's state: what a hand-written loop keeps to do the flow's job, and nothing more.

A dict of decoded profiles and a heap of due times. It calls the same operator functions the shards
call (`engine.on_event`, `engine.due_at`, `engine.on_timers`), so it makes the same decisions, fires
absences and expires transient state by the same clock; it has no RocksDB, no checkpoints, no
Bytewax and no bound on memory.
"""

from __future__ import annotations

import heapq

from nextclick.operators.engine.steps import due_at, on_event, on_timers
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.records import Decision, Event
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.common import note_ids


class CeilingState:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.profiles: dict[str, Profile] = {}
        # (due ms, customer); an entry whose due no longer matches `_due` is stale and skipped.
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def _reschedule(self, customer: str, profile: Profile) -> None:
        due = due_at(profile, self.ruleset)
        if due is None:
            self._due.pop(customer, None)
        elif self._due.get(customer) != due:
            self._due[customer] = due
            heapq.heappush(self._heap, (due, customer))

    def on_event(self, event: Event) -> list[Decision]:
        profile = self.profiles.get(event.customer)
        if profile is None:
            profile = self.profiles[event.customer] = new_profile(event.customer)
        note_ids(profile, event)  # as the shard does: its type decides whether a decision is addressed
        decisions = on_event(profile, event, self.ruleset).decisions
        self._reschedule(event.customer, profile)
        return decisions

    def on_timers(self, now_ms: int) -> list[Decision]:
        """Every customer due by `now_ms`, as the shards' `on_notify` does it."""
        heap, due_of = self._heap, self._due
        decisions: list[Decision] = []
        while heap and heap[0][0] <= now_ms:
            due, customer = heapq.heappop(heap)
            if due_of.get(customer) != due:
                continue
            del due_of[customer]
            profile = self.profiles[customer]
            decisions.extend(on_timers(profile, self.ruleset, now_ms).decisions)
            self._reschedule(customer, profile)
        return decisions
