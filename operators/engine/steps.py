"""One customer's turn of the event loop: pure functions over a typed profile.

`on_event` and `on_timers` are all the domain logic a shard runs. Each part of the profile is
changed by its own module (facts, signals by kind, history, dedupe); this module only orders their
steps and collects what comes out. Storing the profile and sending decisions is the caller's job.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from nextclick.operators.profile import dedupe, history
from nextclick.operators.profile.facts import apply_facts
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event, Outcome, Trigger
from nextclick.operators.rules.arbitration import decide
from nextclick.operators.rules.model import RuleSet


def fire_absences(profile: Profile, ruleset: RuleSet, until_ms: int, out: Outcome) -> None:
    """Absences whose deadline has passed by `until_ms` fire (once) and leave state, in deadline order:
    each deadline's absences leave state together, then each is decided (in declaration order), then the
    next deadline's. So how far the frontier jumped between two turns (one turn past both deadlines, or
    one turn each) never changes which is decided first, and so which a cap or a cooldown blocks."""
    signals = profile.signals
    due: list[tuple[int, int, Any]] | None = None
    for n, signal in enumerate(ruleset.firing):
        state = signals.get(signal.name)
        if state is not None:
            deadline = signal.deadline(state)
            if deadline is not None and deadline <= until_ms:
                if due is None:
                    due = []
                due.append((deadline, n, signal))
    if due is None:
        return
    out.absences += len(due)
    if len(due) > 1:
        due.sort(key=lambda entry: (entry[0], entry[1]))
    for _, same_deadline in groupby(due, key=lambda entry: entry[0]):
        # All of them leave state first: no fired absence still reads as pending to another's rules.
        fired = [signal.fire(signals.pop(signal.name)) for _, _, signal in same_deadline]
        for trigger in fired:
            decide(profile, ruleset, trigger, out)


def prune(profile: Profile, ruleset: RuleSet, ref_ms: int, out: Outcome | None = None) -> None:
    """Drop every transient entry whose lifetime has ended by event time `ref_ms`.

    Free until the earliest entry expires (`prune_at`); then one pass over every part, which also
    recomputes `prune_at` and `expire_at` (the time everything will be gone). The state of a signal the
    rules no longer have (renamed or removed between runs) goes too, named in `out.stale_signals`: nothing
    reads, fires or expires it any more (an outside probe: a renamed absence's pending carts stayed in
    every profile for good, without a word).
    """
    prune_at = profile.prune_at
    if prune_at is None or ref_ms < prune_at:
        return
    signals = profile.signals
    if signals:
        known = ruleset.signal_names
        stale = [name for name in signals if name not in known]
        for name in stale:
            del signals[name]
        if stale and out is not None:
            out.stale_signals += stale
    low = high = None
    for signal in ruleset.expiring:
        state = signals.get(signal.name)
        if state is None:
            continue
        state = signal.prune(state, ref_ms)
        if state is None:
            del signals[signal.name]
            continue
        signals[signal.name] = state
        first, last = signal.expiry_bounds(state)
        if low is None or first < low:
            low = first
        if high is None or last > high:
            high = last
    for bounds in (history.prune(profile.history, ref_ms, ruleset.cooldowns_ms, ruleset.cap_horizon_ms),
                   dedupe.prune(profile.seen, ref_ms)):
        if bounds is not None:
            if low is None or bounds[0] < low:
                low = bounds[0]
            if high is None or bounds[1] > high:
                high = bounds[1]
    profile.prune_at, profile.expire_at = low, high


def on_event(profile: Profile, event: Event, ruleset: RuleSet, out: Outcome | None = None) -> Outcome:
    """Apply one event: absences it completes are decided first, then the event itself.

    A duplicate `event_id` (within the dedupe horizon) changes nothing. A late event (older than the
    customer's newest event minus the allowed lateness) still counts in the durable facts but, under
    the "drop" policy, neither enters transient signals nor triggers rules: its moment has passed.
    What comes out is added to `out` (a new Outcome when none is given).
    """
    if out is None:
        out = Outcome()
    key = dedupe.event_key(event)
    if dedupe.seen(profile, event, key):
        out.duplicates += 1
        return out
    late = ruleset.late
    lateness = late.allowed_lateness_ms
    ts = event.ts
    newest = profile.facts.last_seen
    is_late = newest is not None and ts < newest - lateness
    if is_late:
        out.lates += 1
    if not is_late:
        if ruleset.firing:
            fire_absences(profile, ruleset, ts - lateness, out)
        for apply in ruleset.appliers_for_event[event.type]:
            apply(profile, event)
    elif late.policy == "apply":
        for apply in ruleset.appliers_for_event[event.type]:
            apply(profile, event)
    facts = profile.facts
    apply_facts(facts, event)
    # A late event's id is kept from the customer's frontier, not its own time: it must outlive its arrival.
    dedupe.remember(profile, key, (newest if is_late else ts) + ruleset.dedupe_horizon_ms)  # type: ignore[operator]
    if not is_late and event.type in ruleset.by_trigger:
        decide(profile, ruleset, Trigger(event.type, event.event_id, ts, event.attrs, True), out)
    ref = facts.last_seen - lateness  # type: ignore[operator]  # set by apply_facts
    prune_at = profile.prune_at
    if prune_at is not None and ref >= prune_at:
        prune(profile, ruleset, ref, out)
    return out


def on_timers(profile: Profile, ruleset: RuleSet, now_ms: int, out: Outcome | None = None) -> Outcome:
    """Timer turn at frontier `now_ms` (event time: the input's frontier, or the clock once it is
    caught up): fire absences and drop expired state once the allowed lateness has passed."""
    if out is None:
        out = Outcome()
    until = now_ms - ruleset.late.allowed_lateness_ms
    fire_absences(profile, ruleset, until, out)
    prune(profile, ruleset, until, out)
    return out


# Expired transient state leaves a profile at most this long (plus the allowed lateness) after it expires.
PRUNE_GRANULE_MS = 10 * 60_000


def next_deadline(profile: Profile, ruleset: RuleSet) -> int | None:
    """The earliest time (event time) this profile needs a timer turn: a pending absence's deadline,
    or when its earliest transient entry expires (`prune_at`).

    Each expiry gets its turn, not only the last one: nothing transient stays in state after it
    expires, and a profile's state does not depend on whether some other timer happened to prune it
    (the same events give the same profile whichever turns ran, live, in catch-up or after a restart)."""
    prune_at = profile.prune_at
    # Expiries are pruned on a grid of PRUNE_GRANULE_MS of event time: one turn takes every entry that
    # expired in its granule, instead of one turn per expiring bucket.
    due = None if prune_at is None else -(-prune_at // PRUNE_GRANULE_MS) * PRUNE_GRANULE_MS
    signals = profile.signals
    for signal in ruleset.firing:
        state = signals.get(signal.name)
        if state is not None:
            deadline = signal.deadline(state)
            if deadline is not None and (due is None or deadline < due):
                due = deadline
    return due


def due_at(profile: Profile, ruleset: RuleSet) -> int | None:
    """The frontier (ms) at which this profile next needs `on_timers` (deadline + allowed lateness)."""
    deadline = next_deadline(profile, ruleset)
    return None if deadline is None else deadline + ruleset.late.allowed_lateness_ms
