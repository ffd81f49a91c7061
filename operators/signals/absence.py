"""`absence`: "A and no B within T". A start event opens it; a cancel event closes it; when T has
passed with no cancel it fires, on the clock, as a trigger rules can be `on`. Of two starts at the
same time, the one whose carried attributes have the greater text is kept, as a merge keeps it.

State: [since, deadline, carried attributes of the start event]; with options declared, a fourth
item: {total name: value} over every start event since it began pending.

Options (the `Tally` subclass below, so an absence without them pays nothing for them):
- `where` filters the events that start (or restart) it, not those that cancel it;
- `sum = {<name> = "<attribute>"}` and `count = "<name>"` keep totals since it began pending (a
  cart's value and item count, where `carry` only has the last item's attributes), readable by rules
  on it as `trigger.<name>`.

`start_when = [...]` (conditions over the profile, as a rule's `when`): a start event starts (or
restarts) it only if they hold once every other signal has taken the event in: "the add that took
the cart over 150". Compiled by the rules loader, which knows every attribute (`bind_start_when`).

`restart = false` (the `Fixed` subclass, or a `Tally` told so): a later start does not move the
deadline; the time counts from the first start of the pending absence ("within 30 minutes of the
first add", not of the last). Of two starts the earlier is kept, whichever arrived first.

The newest cancel is remembered by a companion, `<name>@reset` (options.Reset), for `after` plus the
allowed lateness (the loader adds the lateness), whether or not anything was pending. A profile
that took a purchase under a customer id and then merges with the cookie profile holding the cart
(a sign-in after both) cancels that cart as one profile would have (operators/engine/merge.py), and a
cart added before a purchase but arriving after it starts nothing. Event types that both start and
cancel keep their toggle and have no companion.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from nextclick.operators.conditions.compiler import Getter, View, compile_conditions, compile_filter, parse_when
from nextclick.operators.conditions.fields import Where
from nextclick.operators.conditions.model import When
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event, Trigger
from nextclick.operators.signals.options import Reset, check_attribute, read_where

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class Absence:
    kind = "absence"
    fires = True
    expires = False  # leaves state by firing or by being cancelled
    start_when: When = ()
    cancelled_at: str | None = None  # the name of its newest cancel's companion (`_remember_cancels`)

    def bind_start_when(self, getters: dict[str, Getter]) -> None:
        """Gate start events by `start_when`, now that every attribute it may name has a getter."""
        check, inner, start, cancel = compile_conditions(self.start_when, getters), self.apply, self.start, self.cancel

        def gated(profile: Profile, event: Event) -> None:
            kind = event.type
            if kind in start and kind not in cancel and not check(
                    View(profile, Trigger(kind, event.event_id, event.ts, event.attrs), getters)):
                return
            inner(profile, event)
        setattr(self, "apply", gated)  # noqa: B010 - an instance attribute: the plain method stays free

    def __init__(self, name: str, start: frozenset[str], cancel: frozenset[str], after_ms: int,
                 carry: tuple[str, ...] = ()) -> None:
        self.name, self.start, self.cancel, self.after_ms, self.carry = name, start, cancel, after_ms, carry
        self.touched_by = start | cancel
        self.attributes = (f"{name}_pending",)
        self.trigger_attributes = frozenset(carry)

    def apply(self, profile: Profile, event: Event) -> None:
        signals = profile.signals
        ts = event.ts
        if self.cancelled_at is not None and (at := signals.get(self.cancelled_at)) is not None and ts <= at:
            return  # a cancel at or after it was applied first: it starts and cancels nothing
        state = signals.get(self.name)
        if event.type in self.cancel and state is not None and ts >= state[0]:
            del signals[self.name]
        elif event.type in self.start and (state is None or ts >= state[0]):
            attrs = event.attrs
            carried = {k: attrs[k] for k in self.carry if k in attrs} if self.carry else {}
            if state is None:
                signals[self.name] = [ts, ts + self.after_ms, carried]
            elif ts > state[0] or _carried_order(carried) > _carried_order(state[2]):
                # restart the one pending: same meaning, no new list (a tie in time: as `merge` picks)
                state[0], state[1], state[2] = ts, ts + self.after_ms, carried

    def prune(self, state: Any, ref_ms: int) -> Any:
        return state

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        raise TypeError("absences do not expire: they fire or are cancelled")

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        return state is not None

    def deadline(self, state: Any) -> int | None:
        return int(state[1])

    def clear(self, state: Any, until_ms: int) -> Any:
        """What a cancel at `until_ms` leaves: nothing if the pending start is at or before it."""
        return None if state[0] <= until_ms else state

    def fire(self, state: Any) -> Trigger:
        return Trigger(self.name, f"{self.name}:{state[0]}", state[1], dict(state[2]))

    def merge(self, a: Any, b: Any) -> Any:
        """A pending absence carries over; of two, the later start wins (as a second start restarts it)."""
        def order(state: Any) -> tuple[Any, Any, str]:
            return state[0], state[1], _carried_order(state[2])

        later = b if order(b) > order(a) else a
        return [later[0], later[1], dict(later[2])]


class Fixed(Absence):
    """`restart = false`: the earliest start of the pending absence sets its deadline and what it carries."""

    def apply(self, profile: Profile, event: Event) -> None:
        signals = profile.signals
        ts = event.ts
        if self.cancelled_at is not None and (at := signals.get(self.cancelled_at)) is not None and ts <= at:
            return
        state = signals.get(self.name)
        if event.type in self.cancel and state is not None and ts >= state[0]:
            del signals[self.name]
        elif event.type in self.start:
            attrs = event.attrs
            carried = {k: attrs[k] for k in self.carry if k in attrs} if self.carry else {}
            if state is None:
                signals[self.name] = [ts, ts + self.after_ms, carried]
            elif ts < state[0] or (ts == state[0] and _carried_order(carried) > _carried_order(state[2])):
                state[0], state[1], state[2] = ts, ts + self.after_ms, carried

    def merge(self, a: Any, b: Any) -> Any:
        """Of two pending, the earlier start wins (as it would have, had both been one profile's)."""
        return _earlier(a, b)


def _earlier(a: Any, b: Any) -> Any:
    """The pending state of the earlier start; a tie in time: the greater carried text, as `apply` keeps."""
    if a[0] != b[0]:
        first = a if a[0] < b[0] else b
    else:
        first = a if _carried_order(a[2]) >= _carried_order(b[2]) else b
    return [first[0], first[1], dict(first[2])]


def _carried_order(carried: dict[str, Any]) -> str:
    """Which of two starts at the same time an absence keeps: the greater text of what it carries, so
    neither the order they arrived in nor which profile absorbed which decides."""
    return repr(sorted(carried.items(), key=repr))


class Tally(Absence):
    """An absence with a `where` on its start events and/or totals since it began pending."""

    def __init__(self, name: str, start: frozenset[str], cancel: frozenset[str], after_ms: int,
                 carry: tuple[str, ...], sums: dict[str, str], count: str | None,
                 accepts: Callable[[dict[str, Any]], bool] | None, restart: bool = True) -> None:
        super().__init__(name, start, cancel, after_ms, carry)
        self.sums, self.count, self.accepts, self.restart = tuple(sums.items()), count, accepts, restart
        self.trigger_attributes = frozenset(carry) | frozenset(sums) | ({count} if count else set())

    def _add(self, totals: dict[str, Any], attrs: dict[str, Any]) -> None:
        for total, attribute in self.sums:
            totals[total] = totals.get(total, 0) + float(attrs.get(attribute, 0) or 0)
        if self.count:
            totals[self.count] = totals.get(self.count, 0) + 1

    def apply(self, profile: Profile, event: Event) -> None:
        signals = profile.signals
        ts = event.ts
        if self.cancelled_at is not None and (at := signals.get(self.cancelled_at)) is not None and ts <= at:
            return
        state = signals.get(self.name)
        if event.type in self.cancel and state is not None and ts >= state[0]:
            del signals[self.name]
        elif event.type in self.start:
            attrs = event.attrs
            if self.accepts is not None and not self.accepts(attrs):
                return
            carried = {k: attrs[k] for k in self.carry if k in attrs} if self.carry else {}
            if state is None:
                totals: dict[str, Any] = {}
                self._add(totals, attrs)
                signals[self.name] = [ts, ts + self.after_ms, carried, totals]
                return
            self._add(state[3], attrs)  # an older item of the same pending cart still adds to its totals
            moves = ts > state[0] if self.restart else ts < state[0]  # restart = false: the earliest start
            if moves or (ts == state[0] and _carried_order(carried) > _carried_order(state[2])):
                state[0], state[1], state[2] = ts, ts + self.after_ms, carried

    def fire(self, state: Any) -> Trigger:
        attrs = dict(state[2])
        for total, value in state[3].items():
            attrs[total] = value if total == self.count else round(value, 2)
        return Trigger(self.name, f"{self.name}:{state[0]}", state[1], attrs)

    def merge(self, a: Any, b: Any) -> Any:
        """The later start wins, as for any absence; the totals of both pending starts add up (every
        start event adds to the totals of the one pending: a cart filled under two identifiers)."""
        later = Absence.merge(self, a, b) if self.restart else _earlier(a, b)
        totals = dict(a[3])
        for name, value in b[3].items():
            totals[name] = totals[name] + value if name in totals else value
        return [*later[:3], totals]


def _totals(body: dict[str, Any], where: Where, start: frozenset[str], carry: tuple[str, ...]
            ) -> tuple[dict[str, str], str | None]:
    sums = body.get("sum", {})
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        where.report("sum", 'must be a table of <name> = "<attribute>", e.g. { cart_value = "amount" }')
        sums = {}
    count = where.string(body, "count")
    names = [*sums, *([count] if count else [])]
    for name in names:
        if not _NAME.fullmatch(name):
            where.report("sum" if name in sums else "count", f"{name!r}: a name is lowercase letters, digits and _")
    clash = sorted((set(sums) & {count}) | (set(names) & set(carry)))
    if clash:
        where.report("sum" if set(sums) & set(clash) else "count",
                     f"{clash} named twice: the trigger carries one value per name (see 'carry')")
    for attribute in sums.values():
        check_attribute(where, "sum", attribute, start)
    return sums, count


def load(name: str, body: dict[str, Any], where: Where, event_types: frozenset[str]) -> Absence:
    where.check_keys(body, {"kind", "start", "cancel", "after", "carry", "description", "where", "sum", "count",
                            "restart", "start_when"})
    start_when = where.attempt(parse_when, where, body["start_when"], "start_when") if "start_when" in body else ()
    restart = body.get("restart", True)
    if not isinstance(restart, bool):
        where.report("restart", "must be true (default: a later start moves the deadline) or false")
        restart = True
    carry = body.get("carry", [])
    if not isinstance(carry, list) or not all(isinstance(x, str) for x in carry):
        where.report("carry", "must be a list of attribute names")
        carry = []
    start = where.names(body, "start", event_types)
    for attribute in carry:
        check_attribute(where, "carry", attribute, start)
    cancel, after = where.names(body, "cancel", event_types), where.duration(body, "after")
    conditions = read_where(body, where, start)
    sums, count = _totals(body, where, start, tuple(carry))
    signal: Absence
    if not conditions and not sums and not count:
        signal = Absence(name, start, cancel, after, tuple(carry)) if restart else Fixed(
            name, start, cancel, after, tuple(carry))
    else:
        signal = Tally(name, start, cancel, after, tuple(carry), sums, count,
                       compile_filter(conditions) if conditions else None, restart)
        signal.where = conditions  # type: ignore[attr-defined]  # checked by the loader against the schemas
    if start_when:
        signal.start_when = start_when
    return _remember_cancels(signal)


def _remember_cancels(signal: Absence) -> Absence:
    """The signal with its `<name>@reset` companion: the newest cancel's time (module docstring).
    A start at or before it is one the cancel came after: it starts nothing."""
    cancels = signal.cancel - signal.start
    if not cancels:
        return signal
    mark = Reset(signal, cancels, signal.after_ms)
    signal.cancelled_at = mark.name  # read by `apply` itself: no wrapper call on every start event
    signal.companions = (mark,)  # type: ignore[attr-defined]
    return signal
