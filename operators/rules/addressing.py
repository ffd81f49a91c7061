"""How a decision can be delivered: which channels the profile can be reached on, and the address key.

A decision names the profile (its key), but a delivery system needs an address: an email service an
email address, a push service a device. The profile holds the pseudonymous keys of its identifiers by
type (`Profile.ids`); a delivery system keeps its own table from those keys to addresses, built with
the same keyed hash (`nextclick keys`, docs/data-contract.md). A decision carries:

- `reachable`: the decision channels the profile has an identifier for;
- `address`: for the decision's own channel, the (id type, key) to use: of the first type in
  `CHANNEL_ADDRESS_TYPES[channel]` the profile holds, the most recently linked key.

A rules file's `[addresses]` can set the types per channel (an ad platform that matches audiences on
hashed emails wants `ads = ["email", "device"]`, not the cookie); the decision then carries that
preference (`Decision.address_types`) and both fields follow it.
"""

from __future__ import annotations

import dataclasses

from nextclick.operators.channels import DECISION_CHANNELS
from nextclick.operators.records import Decision

# The identifier types that address each decision channel, best first.
CHANNEL_ADDRESS_TYPES: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "sms": ("phone",),
    "push": ("device",),
    "ads": ("cookie", "device"),
    "web": ("cookie",),
    "call_center": ("phone", "customer"),
}


Preferences = dict[str, tuple[str, ...]]


def reachable(ids: dict[str, list[str]], types: Preferences = CHANNEL_ADDRESS_TYPES) -> tuple[str, ...]:
    """The decision channels (in DECISION_CHANNELS order) some identifier of the profile addresses."""
    return tuple(channel for channel in DECISION_CHANNELS
                 if any(ids.get(t) for t in types[channel]))


def address_for(ids: dict[str, list[str]], channel: str,
                types: Preferences = CHANNEL_ADDRESS_TYPES) -> tuple[str, str] | None:
    """(id type, key) to deliver a decision on `channel` to, or None when the profile has none."""
    for id_type in types.get(channel, ()):
        keys = ids.get(id_type)
        if keys:
            return id_type, keys[-1]
    return None


def address(decision: Decision, ids: dict[str, list[str]] | None) -> Decision:
    """The decision with `reachable` and `address` filled in from the profile's identifiers; as it is
    when they are unknown (a profile stored before identifiers were recorded)."""
    if not ids:
        return decision
    types = CHANNEL_ADDRESS_TYPES if decision.address_types is None else dict(decision.address_types)
    return dataclasses.replace(decision, reachable=reachable(ids, types), address=address_for(ids, decision.channel,
                                                                                               types))
