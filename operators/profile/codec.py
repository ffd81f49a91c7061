"""How a profile is stored: MessagePack of the typed profile (format 2), and format 1 read and migrated.

Format 1 (every release before the engine rewrite) stored a JSON object; a store holding it keeps
working: such a profile is converted when it is read, and written back in format 2 the next time it
changes. Nothing is ever written in a form that reads back differently (orjson wrote inf as null).

The encoding is canonical: two profiles equal as values are byte-equal, whatever order their parts
were built or merged in (the five-topic and one-topic runs of the same events must store the same
bytes). Dict keys are sorted by the encoder (`order="deterministic"`, in C), as no dict's order
carries meaning (a grouped signal breaks its ties by name), but for the dedupe window's: its order is
the arrival order that says which id goes first at the cap (operators/profile/dedupe.py), so it is
stored as it is. The lists whose order carries no meaning are kept in a defined order by the module
that builds them (a distinct signal's members, a channel's sent history: operators/profile/model.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from nextclick.operators.profile.facts import ProfileEncodeError, finite
from nextclick.operators.profile.model import PROFILE_FORMAT, Facts, History, Profile


def distinct_order(pair: list[Any]) -> str:
    """The defined order of a distinct state's members: by the repr of their value (a total order over
    any values, which a time order is not without a tie-break: and a member seen again then stays put)."""
    return repr(pair[0])


_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_AS_IS = msgspec.msgpack.Encoder()  # the dedupe window, in its arrival order
_DECODER = msgspec.msgpack.Decoder(Profile)


def encode_profile(profile: Profile) -> bytes:
    """The profile's canonical bytes (see the module docstring). The dedupe window goes in as bytes
    already encoded in its own order (`msgspec.Raw`, which the sorting encoder copies as it is), on a
    shallow copy of the profile: the profile itself is not touched."""
    finite(profile.facts.revenue, "revenue")
    seen = profile.seen
    try:
        if len(seen) < 2:
            return _ENCODER.encode(profile)
        return _ENCODER.encode(msgspec.structs.replace(profile, seen=msgspec.Raw(_AS_IS.encode(seen))))
    except (OverflowError, TypeError, msgspec.EncodeError) as exc:
        # A value msgpack cannot hold (an integer past 64 bits: an outside probe's stopped the flow at
        # every checkpoint): one customer's to set aside, as a non-finite number is.
        raise ProfileEncodeError(f"profile value cannot be stored: {exc}") from None


def decode_profile(blob: bytes) -> Profile:
    """A stored profile of either format; raises on bytes that are not one (the caller sets them aside)."""
    if blob[:1] == b"{":
        return migrate_v1(orjson.loads(blob))
    profile = _DECODER.decode(blob)
    if profile.format != PROFILE_FORMAT:
        raise ValueError(f"stored profile has format {profile.format}, this release reads {PROFILE_FORMAT}")
    return profile


def profile_as_dict(profile: Profile) -> dict[str, Any]:
    """Plain data (what `nextclick profile get` prints, what tests compare), every dict in key order,
    the dedupe window's too, so equal profiles print the same text."""
    return msgspec.to_builtins(profile, order="deterministic")


def stored_as_dict(blob: bytes) -> dict[str, Any]:
    return profile_as_dict(decode_profile(blob))


def _signal_v1(state: dict[str, Any]) -> Any:
    """A format-1 signal state ({"buckets": ...}, {"values": ...}, {"last": ...}, a session's or an
    absence's fields) as its kind's format-2 list, in its defined order; empty states (format 1 left
    some) are dropped."""
    if "buckets" in state:
        return state["buckets"] or None
    if "values" in state:  # a distinct signal's members, into their defined order
        return sorted(state["values"], key=distinct_order) or None
    if "last" in state and "start" not in state:
        return state["last"]
    if "start" in state:
        return [state["start"], state["last"], state["events"]]
    if "since" in state:
        return [state["since"], state["deadline"], dict(state.get("attrs", {}))]
    return None


def migrate_v1(old: dict[str, Any]) -> Profile:
    """A format-1 profile dict as a typed profile with the same meaning."""
    if type(old) is not dict or old.get("format") != 1 or "customer" not in old:
        raise ValueError("stored bytes are not a profile of a known format")
    facts = Facts(version=old["version"], first_seen=old["first_seen"], last_seen=old["last_seen"],
                  orders=old["orders"], revenue=float(old["revenue"]), first_purchase=old["first_purchase"],
                  last_purchase=old["last_purchase"], last_contact=dict(old["last_contact"]),
                  contacts=dict(old["contacts"]), consent={k: list(v) for k, v in old["consent"].items()},
                  last_complaint=old["last_complaint"])
    signals = {}
    for name, state in old["signals"].items():
        converted = _signal_v1(state)
        if converted is not None:
            signals[name] = converted
    return Profile(customer=old["customer"], facts=facts, signals=signals,
                   history=History(fired={k: list(v) for k, v in old["fired"].items()},
                                   sent={k: sorted(list(e) for e in v) for k, v in old["sent"].items()}),
                   seen=dict(old["seen"]), prune_at=old.get("prune_at"), expire_at=old["timers"].get("expire"))
