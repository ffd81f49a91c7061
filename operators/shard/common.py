"""What the parts of a shard (operators/shard/shard_state.py) share: the items and outputs, the engine
steps they call, the replay log's entries, and how a batch's outcome becomes outputs and metrics.

Kept apart so the cache, the timer runner, the merge barrier and quarantine need nothing of each
other's modules but the classes they are handed.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from nextclick.operators.infra import metrics
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import (
    DeadLetter,
    Decision,
    Detach,
    EraseRequest,
    Event,
    Frontier,
    MergeExpect,
    MoveIn,
    MoveOut,
    Outcome,
    SavepointRequest,
)
from nextclick.operators.rules.addressing import address
from nextclick.operators.rules.model import RuleSet

ShardItem = Event | EraseRequest | SavepointRequest | MoveOut | MergeExpect | MoveIn | Frontier | Detach
ShardOutput = Decision | DeadLetter | MoveIn

# Every part logs as the shard always has: operators filter the shard's records by this one name.
log = logging.getLogger("nextclick.operators.shard.shard_state")


class EngineSteps(Protocol):
    """The engine's two steps (operators/engine/steps.py satisfies this): handed to the parts so that one
    place (ShardState) decides which functions they call, e.g. a test's faulty replacement."""

    def on_event(self, profile: Profile, event: Event, ruleset: RuleSet,
                 out: Outcome | None = None) -> Outcome: ...

    def on_timers(self, profile: Profile, ruleset: RuleSet, now_ms: int,
                  out: Outcome | None = None) -> Outcome: ...


@dataclass(frozen=True)
class Merge:
    """A merge applied to a profile (kept with the events applied since it was written, so that a
    failed event can be undone exactly): the moved profiles' bytes and the identifiers recorded."""

    blobs: tuple[bytes, ...]
    ids: dict[str, list[str]]


# One entry of a profile's replay log: an event, the frontier of a timer turn, or a merge.
Applied = Event | int | Merge


def note_ids(profile: Profile, event: Event) -> None:
    """A profile of one identifier learns which type it is keyed by, from its first event that says."""
    if not profile.ids and event.id_type is not None:
        profile.ids = {event.id_type: [profile.customer]}


def account(outcome: Outcome, out: list[ShardOutput], profiles: dict[str, Profile]) -> None:
    """A batch's or a turn's outcome: its decisions (addressed) into `out`, the rest into metrics."""
    for decision in outcome.decisions:
        profile = profiles.get(decision.customer)
        out.append(address(decision, profile.ids if profile is not None else None))
    if outcome.blocked:
        blocked: Counter[tuple[str, str]] = Counter((b.rule_id, b.reason) for b in outcome.blocked)
        for (rule, reason), n in blocked.items():
            metrics.labelled(metrics.BLOCKED, rule, reason).inc(n)
    if outcome.duplicates:
        metrics.DUPLICATES.inc(outcome.duplicates)
    if outcome.lates:
        metrics.LATE.inc(outcome.lates)
    if outcome.absences:
        metrics.ABSENCES.inc(outcome.absences)
    if outcome.stale_signals:
        for name in outcome.stale_signals:
            metrics.labelled(metrics.STALE_SIGNAL_STATE, name).inc()
            if name not in _STALE_LOGGED:
                _STALE_LOGGED.add(name)
                log.warning("profile state of a signal the rules no longer have is dropped as each profile is next "
                            "pruned (a renamed or removed signal: a pending absence under that name will not fire)",
                            extra={"signal": name})


_STALE_LOGGED: set[str] = set()  # signals whose dropped state was logged, once a process each


def undo_outcome(outcome: Outcome, decisions: int, blocked: int, absences: int) -> None:
    """Forget what a failed turn added to the batch's outcome (it is as if it never ran)."""
    del outcome.decisions[decisions:]
    del outcome.blocked[blocked:]
    outcome.absences = absences
