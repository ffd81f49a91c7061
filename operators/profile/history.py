"""Decision history: which rule fired when (cooldowns) and what was sent per channel (frequency caps).

Each entry carries the time it stops mattering, so the history prunes itself and reports its expiries.
That time is worked out again from the rules in force whenever it is judged (`cooling_down`, `prune`):
a cooldown or cap window changed between two runs applies to the decisions made before the change (an
outside probe: a cooldown shortened from a day to an hour still blocked for a day, one lengthened still
let the next decision out at the old end, and a cap window lengthened forgot what was sent before).
A channel's sent list is kept in time order ([ts, until] ascending) however the decisions came, as
`merge` keeps it, so equal histories store the same bytes (operators/profile/codec.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from nextclick.operators.profile.model import History, Profile


def record(profile: Profile, rule_id: str, channel: str, ts: int, cooldown_ms: int, cap_horizon_ms: int) -> None:
    """A decision went out: start the rule's cooldown and count it towards the channel's caps."""
    history = profile.history
    if cooldown_ms > 0:  # `cooldown = "0s"`: every trigger may fire, so there is nothing to remember
        fired = history.fired.get(rule_id)
        if fired is None or (ts, ts + cooldown_ms) > (fired[0], fired[1]):  # the later one, as `merge` keeps
            history.fired[rule_id] = [ts, ts + cooldown_ms]
        profile.note_expiry(ts + cooldown_ms)
    if cap_horizon_ms:
        sent = history.sent.get(channel)
        if sent is None:
            sent = history.sent[channel] = []
        entry = [ts, ts + cap_horizon_ms]
        if sent and entry < sent[-1]:  # an earlier decision than the last one: keep time order
            bisect.insort(sent, entry)
        else:
            sent.append(entry)
        profile.note_expiry(ts + cap_horizon_ms)


def cooling_down(history: History, rule_id: str, ts: int, cooldown_ms: int) -> bool:
    """The rule fired less than its cooldown (as the rules say now) before `ts`."""
    fired = history.fired.get(rule_id)
    return fired is not None and fired[0] + cooldown_ms > ts


def sent_since(history: History, channel: str | None, since_ms: int) -> int:
    """Decisions sent after `since_ms` on `channel` (None: on every channel)."""
    if channel is not None:
        return sum(1 for entry in history.sent.get(channel, ()) if entry[0] > since_ms)
    return sum(1 for entries in history.sent.values() for entry in entries if entry[0] > since_ms)


def prune(history: History, ref_ms: int, cooldowns_ms: Mapping[str, int], cap_horizon_ms: int
          ) -> tuple[int, int] | None:
    """Drop what stopped mattering by `ref_ms`, each entry's end worked out from the rules in force (a
    rule's cooldown now, `cooldowns_ms`; the longest cap window now; a rule no longer in the rules keeps
    the end it was given); the first and last expiry of what is left (None: nothing)."""
    low = high = None
    sent = history.sent
    if sent:
        for channel in list(sent):
            for entry in sent[channel]:
                entry[1] = entry[0] + cap_horizon_ms
            kept = [entry for entry in sent[channel] if entry[1] > ref_ms]
            if kept:
                sent[channel] = kept
                for entry in kept:
                    until = entry[1]
                    if low is None or until < low:
                        low = until
                    if high is None or until > high:
                        high = until
            else:
                del sent[channel]
    fired = history.fired
    if fired:
        for rule_id, entry in fired.items():
            cooldown = cooldowns_ms.get(rule_id)
            if cooldown is not None:
                entry[1] = entry[0] + cooldown
        for rule_id in [r for r, entry in fired.items() if entry[1] <= ref_ms]:
            del fired[rule_id]
        for entry in fired.values():
            until = entry[1]
            if low is None or until < low:
                low = until
            if high is None or until > high:
                high = until
    return None if low is None or high is None else (low, high)


def merge(history: History, other: History) -> None:
    """Another profile's decision history, folded into this one (identity stitching): cooldowns and
    caps become their union. A rule cools down from the later of the two decisions; every decision sent
    by either profile counts towards the caps (kept in time order)."""
    fired = history.fired
    for rule_id, entry in other.fired.items():
        current = fired.get(rule_id)
        if current is None or (entry[0], entry[1]) > (current[0], current[1]):
            fired[rule_id] = list(entry)
    sent = history.sent
    for channel, entries in other.sent.items():
        sent[channel] = sorted([*sent.get(channel, ()), *(list(e) for e in entries)])
