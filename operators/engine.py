"""One customer's turn of the event loop, as pure functions over a profile dict.

`on_event` and `on_timers` are all the domain logic a shard runs: dedupe, lateness, durable facts,
transient signals, absences and arbitration. They mutate the profile they are given and return what
came out; storing the profile and sending the decisions is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.profile import Profile, apply_durable
from operators.records import Event
from operators.rules import Blocked, Decision, RuleSet, decide
from operators.windows import Trigger, apply_transient, fire_absences, is_late, next_deadline, note_expiry, prune

# Dedupe ids kept per customer (the oldest to arrive goes first); bounds a replay storm's state.
MAX_SEEN_IDS = 256


@dataclass
class Outcome:
    decisions: list[Decision] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    duplicate: bool = False
    late: bool = False
    absences: int = 0


def _decide_all(profile: Profile, ruleset: RuleSet, triggers: list[Trigger], out: Outcome) -> None:
    for trigger in triggers:
        decision, blocked = decide(profile, ruleset, trigger)
        if decision is not None:
            out.decisions.append(decision)
        out.blocked.extend(blocked)


def _remember_id(profile: Profile, event: Event, horizon_ms: int) -> None:
    seen: dict[str, int] = profile["seen"]
    seen[event.event_id] = until = event.ts + horizon_ms
    note_expiry(profile, until)
    if len(seen) > MAX_SEEN_IDS:
        # Oldest first by arrival (dicts keep insertion order, and orjson keeps it across a save).
        del seen[next(iter(seen))]


def on_event(profile: Profile, event: Event, ruleset: RuleSet) -> Outcome:
    """Apply one event: absences it completes are decided first, then the event itself.

    A duplicate `event_id` (within the dedupe horizon) changes nothing. A late event (older than the
    customer's newest event minus the allowed lateness) still counts in the durable facts but, under
    the "drop" policy, neither enters transient signals nor triggers rules: its moment has passed.
    """
    out = Outcome()
    if event.event_id in profile["seen"]:
        out.duplicate = True
        return out
    late = ruleset.late
    out.late = is_late(profile, event, late)
    if not out.late:
        completed = fire_absences(profile, ruleset.signals, event.ts - late.allowed_lateness_ms)
        out.absences = len(completed)
        _decide_all(profile, ruleset, completed, out)
    if not out.late or late.policy == "apply":
        apply_transient(profile, event, ruleset.signals_for_event.get(event.type, ruleset.signals))
    apply_durable(profile, event)
    _remember_id(profile, event, ruleset.dedupe_horizon_ms)
    if not out.late:
        _decide_all(profile, ruleset, [Trigger(event.type, event.event_id, event.ts, event.attrs)], out)
    prune(profile, ruleset.signals, profile["last_seen"] - late.allowed_lateness_ms)
    return out


def on_timers(profile: Profile, ruleset: RuleSet, now_ms: int) -> Outcome:
    """Wall-clock turn: fire absences and drop expired state once the allowed lateness has passed."""
    out = Outcome()
    until = now_ms - ruleset.late.allowed_lateness_ms
    completed = fire_absences(profile, ruleset.signals, until)
    out.absences = len(completed)
    _decide_all(profile, ruleset, completed, out)
    prune(profile, ruleset.signals, until)
    return out


def due_at(profile: Profile, ruleset: RuleSet) -> int | None:
    """Wall-clock ms at which this profile next needs `on_timers` (deadline + allowed lateness)."""
    deadline = next_deadline(profile)
    return None if deadline is None else deadline + ruleset.late.allowed_lateness_ms
