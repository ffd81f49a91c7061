"""Options the event-fed kinds (count, sum, distinct, last) share: `where` and `reset_on`.

Each option is applied once, at load, by wrapping the signal's `apply`: a signal that does not use
an option pays nothing for it per event.

- `where = ['page_type == "product"', ...]`: only events whose attributes meet every condition count.
  Same syntax and semantics as a rule's `when` (operators/conditions/compiler.py), over the event's
  attributes; each attribute must be one that at least one of the signal's event types carries.
- `reset_on = ["purchase", ...]`: an event of these types clears the signal: whatever it held at or
  before that event's time is gone, and events from before it that arrive later are ignored. The
  reset time is kept by a companion signal, `<name>@reset`, for one window (after that no event from
  before it can be inside the window), so the value does not depend on the order events arrive in,
  to the bucket: an event in the reset's bucket, newer than the reset but arriving before it, is
  cleared with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nextclick.operators.conditions.compiler import compile_filter, parse_condition
from nextclick.operators.conditions.fields import Where
from nextclick.operators.conditions.model import Condition
from nextclick.operators.events.tracking_plan import loading_plan
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event
from nextclick.operators.signals.base import Expiring, Signal

OPTION_FIELDS = {"where", "reset_on"}
RESET_SUFFIX = "@reset"


def carried(events: frozenset[str]) -> set[str]:
    """Every attribute at least one of these event types carries (their attributes in the tracking plan
    the rules file is read against)."""
    plan = loading_plan()
    return {a for t in events for a in plan.attributes(t)}


def check_attribute(where: Where, field: str, attribute: str, events: frozenset[str], text: str | None = None) -> bool:
    """An attribute the signal reads must be carried by at least one of its event types."""
    have = carried(events)
    if attribute in have or not events:  # no events: that mistake is reported on its own
        return True
    context = f"in {text!r}: " if text else ""
    where.report(field, f"{context}{attribute!r} is not an attribute of {', '.join(sorted(events))}; "
                        f"they have: {sorted(have) or 'none'}")
    return False


def read_field(body: dict[str, Any], where: Where, kind: str, events: frozenset[str]) -> str:
    """The attribute a sum or distinct reads; "" (the signal is dropped) when missing, with the mistake recorded."""
    field = where.string(body, "field")
    if field is None:
        where.report("field", f"is required for kind {kind!r}")
        return ""  # the other fields are still read, so one load reports every mistake
    check_attribute(where, "field", field, events)
    return field


def read_where(body: dict[str, Any], where: Where, events: frozenset[str]) -> tuple[Condition, ...]:
    raw = body.get("where")
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        where.report("where", 'must be a list of conditions, e.g. [\'page_type == "product"\']')
        return ()
    conditions = []
    for text in raw:
        condition = where.attempt(parse_condition, where, text, "where")
        if condition is not None and check_attribute(where, "where", condition.attribute, events, condition.text):
            conditions.append(condition)
    return tuple(conditions)


def read_reset(body: dict[str, Any], where: Where, event_types: frozenset[str],
               events: frozenset[str]) -> frozenset[str]:
    reset_on = where.names(body, "reset_on", event_types, required=False)
    both = sorted(reset_on & events)
    if both:
        where.report("reset_on", f"{both} also feed the signal (field 'events'): an event cannot both count and reset")
    return reset_on - events


def _set_apply(signal: Signal, apply: Callable[[Profile, Event], None]) -> None:
    setattr(signal, "apply", apply)  # noqa: B010 - an instance attribute: the plain method stays free


class Reset(Expiring):
    """The companion of a signal with `reset_on`: the newest reset's event time, for one window."""

    kind = "reset"
    attributes: tuple[str, ...] = ()

    def __init__(self, target: Any, events: frozenset[str], lifetime_ms: int) -> None:
        self.name = target.name + RESET_SUFFIX
        self.target, self.touched_by, self.lifetime_ms = target, events, lifetime_ms

    def apply(self, profile: Profile, event: Event) -> None:
        signals, ts = profile.signals, event.ts
        at = signals.get(self.name)
        if at is None or ts > at:
            signals[self.name] = ts
            profile.note_expiry(ts + self.lifetime_ms)
        target = self.target.name
        state = signals.get(target)
        if state is not None:
            kept = self.target.clear(state, ts)
            if kept is None:
                del signals[target]
            else:
                signals[target] = kept

    def prune(self, state: Any, ref_ms: int) -> Any:
        return None if state + self.lifetime_ms <= ref_ms else state

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        at = state + self.lifetime_ms
        return at, at

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        return state

    def merge(self, a: Any, b: Any) -> Any:
        """The newer reset (operators/engine/merge.py then clears the merged target signal by it)."""
        return max(a, b)


def with_options(signal: Any, conditions: tuple[Condition, ...], reset_on: frozenset[str], lifetime_ms: int) -> Any:
    """The signal with its `where` and `reset_on` applied; a reset's companion is in `signal.companions`."""
    if conditions:
        unfiltered, accepts = signal.apply, compile_filter(conditions)

        def filtered(profile: Profile, event: Event) -> None:
            if accepts(event.attrs):
                unfiltered(profile, event)
        _set_apply(signal, filtered)
        signal.where = conditions
    if reset_on:
        reset = Reset(signal, reset_on, lifetime_ms)
        # A name of its own: `filtered` above reads its own variable when it runs (one name for both
        # made `filtered` call itself with `where` and `reset_on` together).
        unreset, marker = signal.apply, reset.name

        def after_reset(profile: Profile, event: Event) -> None:
            at = profile.signals.get(marker)
            if at is None or event.ts > at:
                unreset(profile, event)
        _set_apply(signal, after_reset)
        signal.reset_on = reset_on
        signal.companions = (reset,)
    return signal
