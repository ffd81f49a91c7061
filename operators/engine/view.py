"""The profile view: what an interaction may see of a profile (schemas/profile.v1.json), as plain data.

Pure: no I/O. The flow publishes it at each epoch commit (operators/io/profile_view.py) and
`nextclick serve` answers with it (flows/serve.py). It carries pseudonymous keys, derived attributes,
ids and amounts, never a raw identifier or a payload field the event schemas do not keep.
"""

from __future__ import annotations

from typing import Any

from nextclick.operators.profile.facts import durable_view, recent_orders
from nextclick.operators.profile.model import Profile
from nextclick.operators.rules.model import RuleSet

VIEW_SCHEMA = "profile.v1"


def profile_view(key: str, profile: Profile, ruleset: RuleSet, now_ms: int) -> dict[str, Any]:
    """The view of one profile as of `now_ms` (the epoch's commit: derived attributes are judged then).

    `key` is the profile's key on the view topic: "<family>/<key in the family>" (operators/state/layout.py),
    as a profile moved by a link to a later family can keep its key there."""
    facts = profile.facts
    absences = {}
    for signal in ruleset.signals:
        if signal.kind == "absence" and (state := profile.signals.get(signal.name)) is not None:
            absences[signal.name] = {"since": state[0], "deadline": signal.deadline(state)}
    sent = profile.history.sent
    cooldowns = ruleset.cooldowns_ms  # a decision's cooldown ends as the rules say now (profile/history.py)
    return {
        "schema": VIEW_SCHEMA,
        "profile_key": key,
        "version": facts.version,
        "as_of": now_ms,
        "first_seen": facts.first_seen,
        "last_seen": facts.last_seen,
        "attributes": durable_view(facts, now_ms),
        "recent_orders": [{"ts": o.ts, "order_id": o.order_id, "amount": o.amount, "currency": o.currency,
                           "channel": o.channel, "category": o.category}
                          for o in recent_orders(facts, now_ms)],
        "consent": {key: {"granted": bool(entry[0]), "ts": entry[1]} for key, entry in sorted(facts.consent.items())},
        "last_contact": dict(sorted(facts.last_contact.items())),
        "pending_absences": absences,
        "recent_decisions": {
            "rules": {rule: {"at": at, "until": at + cooldowns[rule] if rule in cooldowns else until}
                      for rule, (at, until) in sorted(profile.history.fired.items())},
            "channels": {channel: [entry[0] for entry in entries] for channel, entries in sorted(sent.items())},
        },
        "ids": {id_type: list(keys) for id_type, keys in sorted(profile.ids.items())},
        "id_counts": {id_type: len(keys) for id_type, keys in sorted(profile.ids.items())},
    }
