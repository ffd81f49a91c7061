"""Two profiles as one: what identity stitching does when linked identifiers had profiles of their own.

Each part is merged by the module that owns it (operators/profile/model.py lists them):

- durable facts (`facts.merge`): counts and sums add, first is the minimum, last the maximum,
  consent the latest by (ts, event_id), recent orders the union kept within their bounds;
- transient signals, by kind (`Signal.merge`): windowed counts and sums bucket by bucket, distinct
  values as a union, the latest `last`, sessions less than a gap apart as one, a pending absence
  carries over (with the totals of both) unless the other profile saw a cancel at or after its start,
  grouped signals group by group, and a `reset_on` reset either profile saw clears what the other
  gathered before it;
- decision history (`history.merge`): cooldowns and caps become their union;
- the dedupe window (`dedupe.merge`): the union of the ids seen.

Every part's merge is commutative, so the result does not depend on which profile absorbs which;
the shard merges several profiles in the order of their keys, never in their order of arrival
(operators/shard/shard_state.py). `ids` are not merged here: the identity stage says what they are.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from nextclick.operators.profile import dedupe, facts, history
from nextclick.operators.profile.model import Profile
from nextclick.operators.rules.model import RuleSet


def merge_into(profile: Profile, other: Profile, ruleset: RuleSet) -> None:
    """Fold `other` into `profile`, in place; `other` is left as it was. `profile` keeps its key."""
    facts.merge(profile.facts, other.facts)
    kinds = {signal.name: signal for signal in ruleset.signals}
    signals = profile.signals
    # A reset (or an absence's cancel) either profile saw clears what both sides gathered before it, and
    # then they merge: what either gathered after it survives, as it would have had the two been one
    # profile all along (operators/signals/options.py; clearing only the merged state would let an
    # earliest-start absence keep a start the cancel had ended over a later one it had not).
    reset_at: dict[str, tuple[Any, int]] = {}  # target name -> (target, the newer reset's time)
    for signal in ruleset.signals:
        target = getattr(signal, "target", None)
        if signal.kind == "reset" and target is not None:
            times = [t for t in (signals.get(signal.name), other.signals.get(signal.name)) if t is not None]
            if not times:
                continue
            at = max(times)
            reset_at[target.name] = (target, at)
            mine = signals.get(target.name)
            if mine is not None:
                kept = target.clear(mine, at)
                if kept is None:
                    del signals[target.name]
                else:
                    signals[target.name] = kept
    for name, state in other.signals.items():
        cleared = reset_at.get(name)
        if cleared is not None:
            state = cleared[0].clear(copy.deepcopy(state), cleared[1])
            if state is None:
                continue
        mine = signals.get(name)
        if mine is None:
            signals[name] = copy.deepcopy(state)
            continue
        merge = getattr(kinds.get(name), "merge", None)
        if merge is not None:
            signals[name] = merge(mine, state)
        # A signal the rules no longer declare, or a kind without `merge` (a plugin written before it
        # existed): the absorbing profile's state stays.
    history.merge(profile.history, other.history)
    dedupe.merge(profile, other.seen)
    for bound, pick in (("prune_at", min), ("expire_at", max)):
        theirs = getattr(other, bound)
        if theirs is not None:
            mine_at = getattr(profile, bound)
            setattr(profile, bound, theirs if mine_at is None else pick(mine_at, theirs))


def merge_all(profile: Profile, others: Iterable[Profile], ruleset: RuleSet) -> None:
    """Fold several profiles into `profile`, in the order of their keys (so never in arrival order)."""
    for other in sorted(others, key=lambda p: p.customer):
        merge_into(profile, other, ruleset)
