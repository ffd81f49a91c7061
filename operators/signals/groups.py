"""Grouping (`by = "<attribute>"`) for count, sum and distinct: one window per value of an attribute.

A grouped signal answers three attributes instead of its plain `<name>`:

- `<name>.max`: the value of the busiest group (0 when there is none);
- `<name>.top`: that group's name (None when there is none; a tie goes to the group seen last, and
  between groups last seen at the same time, to the greater name);
- `<name>.same_as_trigger`: the value of the group the trigger belongs to, i.e. of the trigger's own
  `<by>` attribute (an absence's trigger: what it carried); 0 when that group holds nothing, None
  when the trigger has no such attribute (then, like any missing value, conditions on it are false).

Events without the attribute count in no group. Group names are text (a number is compared as its
text). State: {group: the kind's state for that group}, at most `max_groups` groups per customer
(default MAX_GROUPS). Past the cap, the group seen least recently (newest event time; a tie: the
smaller name) is dropped with everything it held; seen again, it starts from zero. Each group prunes
and expires on its own, so a quiet group leaves state one window after its last event.

Ties are broken by name, never by the dict's order: the codec stores the groups sorted by name
(operators/profile/codec.py), and the order events arrived in must not decide which group goes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event, Trigger
from nextclick.operators.signals.base import Expiring, Signal
from nextclick.operators.signals.options import (
    OPTION_FIELDS,
    check_attribute,
    read_field,
    read_reset,
    read_where,
    with_options,
)
from nextclick.operators.signals.window import WINDOW_FIELDS, Window

MAX_GROUPS = 20
GROUP_FIELDS = {"by", "max_groups"}



def group_name(value: Any) -> str:
    """A group's name for a value that is not a string: one number is one group however the producer
    wrote it (`10` and `10.0`), as `distinct` counts it once."""
    if type(value) is float and value.is_integer():
        return str(int(value))
    return str(value)

class Part(Protocol):
    """What one group's state is to its kind: how an event adds to it and how it is read."""

    def add(self, state: Any, event: Event, profile: Profile) -> Any:
        """The group's state with the event added (`state` None: a new group); notes expiries."""

    def prune(self, state: Any, ref_ms: int) -> Any: ...

    def expiry_bounds(self, state: Any) -> tuple[int, int]: ...

    def newest(self, state: Any) -> int:
        """The event time the group was last seen at."""

    def value(self, state: Any, ref_ms: int) -> Any: ...

    def clear(self, state: Any, until_ms: int) -> Any: ...


def read_by(body: dict[str, Any], where: Where, events: frozenset[str]) -> tuple[str | None, int]:
    by = where.string(body, "by")
    if by is not None:
        check_attribute(where, "by", by, events)
    # State is kept per customer: as unmatched's max_keys, a thousand groups at most.
    return by, where.integer(body, "max_groups", MAX_GROUPS, minimum=1, maximum=1000)


def load_windowed(kind: str, name: str, body: dict[str, Any], where: Where, event_types: frozenset[str], *,
                  reads_field: bool, plain: Callable[[frozenset[str], Window, str], Signal],
                  part: Callable[[Window, str], Part]) -> Signal:
    """The loader count, sum and distinct share: their window, options and, with `by`, one `part` per group.

    `plain` builds the ungrouped signal from (events, window, field); `field` is "" for a kind that
    reads none. Fields are read in one order, so a file's mistakes are reported in that order.
    """
    where.check_keys(body, WINDOW_FIELDS | OPTION_FIELDS | GROUP_FIELDS | ({"field"} if reads_field else set()))
    events = where.names(body, "events", event_types)
    field = read_field(body, where, kind, events) if reads_field else ""
    window = Window.load(body, where)
    conditions, reset_on = read_where(body, where, events), read_reset(body, where, event_types, events)
    by, max_groups = read_by(body, where, events)
    signal = (plain(events, window, field) if by is None
              else Grouped(name, kind, events, window, by, max_groups, part(window, field)))
    return with_options(signal, conditions, reset_on, window.window_ms)


class Grouped(Expiring):
    """A count, sum or distinct signal kept per group; `part` is the kind's per-group state."""

    def __init__(self, name: str, kind: str, events: frozenset[str], window: Window, by: str, max_groups: int,
                 part: Part) -> None:
        self.name, self.kind, self.touched_by, self.window = name, kind, events, window
        self.by, self.max_groups, self.part = by, max_groups, part
        self.attributes = (f"{name}.max", f"{name}.top", f"{name}.same_as_trigger")
        # attribute -> the trigger attribute it reads (the rules loader checks a rule's triggers carry it)
        self.trigger_fields = {f"{name}.same_as_trigger": by}

    def apply(self, profile: Profile, event: Event) -> None:
        group = event.attrs.get(self.by)
        if group is None:
            return
        if type(group) is not str:
            group = group_name(group)
        signals = profile.signals
        groups = signals.get(self.name)
        if groups is None:
            groups = signals[self.name] = {}
        state = groups.get(group)
        groups[group] = self.part.add(state, event, profile)
        if state is None and len(groups) > self.max_groups:
            newest = self.part.newest
            del groups[min(groups, key=lambda g: (newest(groups[g]), g))]  # the least recently seen

    def prune(self, state: Any, ref_ms: int) -> Any:
        return self._keep(state, lambda s: self.part.prune(s, ref_ms))

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        bounds = [self.part.expiry_bounds(s) for s in state.values()]
        return min(b[0] for b in bounds), max(b[1] for b in bounds)

    def clear(self, state: Any, until_ms: int) -> Any:
        return self._keep(state, lambda s: self.part.clear(s, until_ms))

    @staticmethod
    def _keep(state: Any, keep: Callable[[Any], Any]) -> Any:
        """Each group's state through `keep`; groups left empty go, and so does an empty state."""
        for group in list(state):
            kept = keep(state[group])
            if kept is None:
                del state[group]
            else:
                state[group] = kept
        return state or None

    def _top(self, state: Any, ref_ms: int) -> tuple[Any, Any]:
        """(group, value) of the busiest group as of `ref_ms`; a tie goes to the group seen last, then
        to the greater name (whatever the dict's order)."""
        best: Any = None
        best_value: Any = None
        best_seen = 0
        part = self.part
        for group, s in (state or {}).items():
            value = part.value(s, ref_ms)
            if not value:
                continue
            seen = part.newest(s)
            if (best_value is None or value > best_value
                    or (value == best_value and (seen > best_seen or (seen == best_seen and group > best)))):
                best, best_value, best_seen = group, value, seen
        return best, best_value

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        if attribute.endswith(".top"):
            return self._top(state, ref_ms)[0]
        if attribute.endswith(".max"):
            return self._top(state, ref_ms)[1] or 0
        return None  # same_as_trigger without a trigger: no group (rules read it through `reader`)

    def reader(self, attribute: str) -> Callable[[Any, Trigger], Any] | None:
        """`same_as_trigger` reads the trigger's group; the others need only its time."""
        if not attribute.endswith(".same_as_trigger"):
            return None
        by, part = self.by, self.part

        def same_as_trigger(state: Any, trigger: Trigger) -> Any:
            group = trigger.attrs.get(by)
            if group is None:
                return None
            if type(group) is not str:
                group = group_name(group)
            return part.value(state.get(group) if state else None, trigger.ts)
        return same_as_trigger

    def merge(self, a: Any, b: Any) -> Any:
        """Group by group (the kind's own merge where both have a group); past `max_groups`, the groups
        seen least recently go (a tie: the smaller name goes), as `apply` drops them."""
        merge_part = getattr(self.part, "merge")  # noqa: B009 - every shipped part has one
        merged = {group: copy.deepcopy(state) for group, state in a.items()}
        for group, state in b.items():
            merged[group] = merge_part(merged[group], state) if group in merged else copy.deepcopy(state)
        if len(merged) > self.max_groups:
            newest = self.part.newest
            keep = sorted(merged, key=lambda g: (newest(merged[g]), g))[-self.max_groups:]
            merged = {group: merged[group] for group in keep}
        return merged
