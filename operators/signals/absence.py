"""`absence`: "A and no B within T". A start event opens it; a cancel event closes it; when T has
passed with no cancel it fires, on the clock, as a trigger rules can be `on`.

State: [since, deadline, carried attributes of the start event].
"""

from __future__ import annotations

from typing import Any

from operators.profile.model import Profile
from operators.records import Event, Trigger
from operators.rules.fields import Where


class Absence:
    kind = "absence"
    fires = True
    expires = False  # leaves state by firing or by being cancelled

    def __init__(self, name: str, start: frozenset[str], cancel: frozenset[str], after_ms: int,
                 carry: tuple[str, ...] = ()) -> None:
        self.name, self.start, self.cancel, self.after_ms, self.carry = name, start, cancel, after_ms, carry
        self.touched_by = start | cancel
        self.attributes = (f"{name}_pending",)
        self.trigger_attributes = frozenset(carry)

    def apply(self, profile: Profile, event: Event) -> None:
        signals = profile.signals
        state = signals.get(self.name)
        ts = event.ts
        if event.type in self.cancel and state is not None and ts >= state[0]:
            del signals[self.name]
        elif event.type in self.start and (state is None or ts > state[0]):
            attrs = event.attrs
            carried = {k: attrs[k] for k in self.carry if k in attrs} if self.carry else {}
            if state is None:
                signals[self.name] = [ts, ts + self.after_ms, carried]
            else:  # restart the one pending: same meaning, no new list
                state[0], state[1], state[2] = ts, ts + self.after_ms, carried

    def prune(self, state: Any, ref_ms: int) -> Any:
        return state

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        raise TypeError("absences do not expire: they fire or are cancelled")

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        return state is not None

    def deadline(self, state: Any) -> int | None:
        return int(state[1])

    def fire(self, state: Any) -> Trigger:
        return Trigger(self.name, f"{self.name}:{state[0]}", state[1], dict(state[2]))

    def merge(self, a: Any, b: Any) -> Any:
        """A pending absence carries over; of two, the later start wins (as a second start restarts it)."""
        def order(state: Any) -> tuple[Any, Any, str]:
            return state[0], state[1], repr(sorted(state[2].items(), key=repr))

        later = b if order(b) > order(a) else a
        return [later[0], later[1], dict(later[2])]


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Absence:
    where.check_keys(body, {"kind", "start", "cancel", "after", "carry", "description"})
    carry = body.get("carry", [])
    if not isinstance(carry, list) or not all(isinstance(x, str) for x in carry):
        raise where.fail("carry", "must be a list of attribute names")
    return Absence(name, where.names(body, "start", event_types), where.names(body, "cancel", event_types),
                   where.duration(body, "after"), tuple(carry))
