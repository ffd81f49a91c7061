"""Transient (real-time) signals: windowed aggregates, absences and sessions, in event time.

Each signal declares its lifetime. Its state lives in `profile["signals"][name]` and is pruned as
event time moves on; a per-profile "expire" timer removes what is left once everything in it has
expired, so nothing transient stays in state after its lifetime. No Bytewax windowing operator is
used: state is per customer inside a shard, not per Bytewax key.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Union

from operators.profile import Profile, ProfileEncodeError
from operators.records import Event

EXPIRE_TIMER = "expire"
ABSENCE_TIMER_PREFIX = "absence:"


@dataclass(frozen=True)
class WindowSignal:
    """count/sum/distinct/last of events over a sliding or tumbling event-time window."""

    name: str
    kind: Literal["count", "sum", "distinct", "last"]
    events: frozenset[str]
    window_ms: int
    field: str | None = None
    sliding: bool = True
    # Sliding windows keep one bucket per `bucket_ms`, so state stays bounded however busy a customer is.
    bucket_ms: int = 60_000
    max_distinct: int = 100

    @property
    def lifetime_ms(self) -> int:
        return self.window_ms

    @functools.cached_property
    def attributes(self) -> tuple[str, ...]:
        """The names rules use for this signal's values."""
        return (self.name,)


@dataclass(frozen=True)
class AbsenceSignal:
    """'A and no B within T': fires when `after_ms` passes after a start event with no cancel event."""

    name: str
    start: frozenset[str]
    cancel: frozenset[str]
    after_ms: int
    carry: tuple[str, ...] = ()

    @property
    def lifetime_ms(self) -> int:
        return self.after_ms

    @functools.cached_property
    def attributes(self) -> tuple[str, ...]:
        return (f"{self.name}_pending",)


@dataclass(frozen=True)
class SessionSignal:
    """A session in progress; it ends after `gap_ms` of inactivity."""

    name: str
    gap_ms: int
    events: frozenset[str] = field(default_factory=frozenset)  # empty: every event

    @property
    def lifetime_ms(self) -> int:
        return self.gap_ms

    @functools.cached_property
    def attributes(self) -> tuple[str, ...]:
        return (f"{self.name}_active", f"{self.name}_events", f"{self.name}_minutes")


Signal = Union[WindowSignal, AbsenceSignal, SessionSignal]


@dataclass(frozen=True)
class Trigger:
    """What a decision reacts to: an event (name = event type) or a fired absence signal."""

    name: str
    trigger_id: str  # deterministic: the event id, or "<signal>:<start ts>"
    ts: int
    attrs: dict[str, Any]


@dataclass(frozen=True)
class LatePolicy:
    """Events older than the customer's newest event minus `allowed_lateness_ms` are late.

    policy "drop" keeps them out of transient signals (durable facts still count them);
    "apply" folds them in anyway, into whatever window still holds their time.
    """

    allowed_lateness_ms: int = 5 * 60_000
    policy: Literal["drop", "apply"] = "drop"


def _bucket_start(spec: WindowSignal, ts: int) -> int:
    size = spec.bucket_ms if spec.sliding else spec.window_ms
    return ts - ts % size


def _window_floor(spec: WindowSignal, ref_ms: int) -> int:
    """Oldest event time still inside the window that ends at `ref_ms`."""
    if spec.sliding:
        return ref_ms - spec.window_ms + 1
    return ref_ms - ref_ms % spec.window_ms


def note_expiry(profile: Profile, expires_at: int) -> None:
    """A transient entry was added or extended: keep `prune_at` (the earliest expiry, so pruning
    can skip until something has expired) and the expire timer (the latest) current."""
    prune_at = profile.get("prune_at")
    if prune_at is None or expires_at < prune_at:
        profile["prune_at"] = expires_at
    timers = profile["timers"]
    if expires_at > timers.get(EXPIRE_TIMER, expires_at - 1):
        timers[EXPIRE_TIMER] = expires_at


def _add_to_window(profile: Profile, state: dict[str, Any], spec: WindowSignal, event: Event) -> None:
    if spec.kind == "last":
        value = event.attrs.get(spec.field) if spec.field else event.type
        if "last" not in state or event.ts >= state["last"][0]:
            state["last"] = [event.ts, value]
            note_expiry(profile, event.ts + spec.window_ms)
        return
    if spec.kind == "distinct":
        value = event.attrs.get(spec.field) if spec.field else event.type
        if value is None:
            return
        seen: list[list[Any]] = state.setdefault("values", [])
        note_expiry(profile, event.ts + spec.window_ms)
        for pair in seen:
            if pair[0] == value:
                pair[1] = max(pair[1], event.ts)
                return
        seen.append([value, event.ts])
        if len(seen) > spec.max_distinct:
            seen.sort(key=lambda p: p[1])
            del seen[0]
        return
    amount = 1.0 if spec.kind == "count" else float(event.attrs.get(spec.field or "", 0) or 0)
    start = _bucket_start(spec, event.ts)
    buckets: list[list[Any]] = state.setdefault("buckets", [])
    for bucket in reversed(buckets):  # the newest bucket is the usual one
        if bucket[0] == start:
            bucket[1] += amount
            if not math.isfinite(bucket[1]):
                raise ProfileEncodeError(f"signal {spec.name} is not a finite number")
            return
    size = spec.bucket_ms if spec.sliding else spec.window_ms
    note_expiry(profile, start + size - 1 + spec.window_ms)
    buckets.append([start, amount])
    if len(buckets) > 1 and buckets[-2][0] > start:
        buckets.sort(key=lambda b: b[0])


def _prune_window(state: dict[str, Any], spec: WindowSignal, ref_ms: int) -> None:
    floor = _window_floor(spec, ref_ms)
    if "buckets" in state:
        size = spec.bucket_ms if spec.sliding else spec.window_ms
        state["buckets"] = [b for b in state["buckets"] if b[0] + size > floor]
        if not state["buckets"]:
            del state["buckets"]
    if "values" in state:
        state["values"] = [p for p in state["values"] if p[1] >= floor]
        if not state["values"]:
            del state["values"]
    if "last" in state and state["last"][0] < floor:
        del state["last"]


def window_value(state: dict[str, Any] | None, spec: WindowSignal, ref_ms: int) -> Any:
    """The signal's value for the window ending at `ref_ms` (0 / [] / None when empty)."""
    if not state:
        return None if spec.kind == "last" else 0
    floor = _window_floor(spec, ref_ms)
    if spec.kind == "last":
        last = state.get("last")
        return last[1] if last and floor <= last[0] <= ref_ms else None
    if spec.kind == "distinct":
        return sum(1 for p in state.get("values", []) if p[1] >= floor)
    size = spec.bucket_ms if spec.sliding else spec.window_ms
    total = sum(b[1] for b in state.get("buckets", []) if b[0] + size > floor and b[0] <= ref_ms)
    return int(total) if spec.kind == "count" else round(total, 2)


def _expiries(profile: Profile, signals: tuple[Signal, ...]) -> list[int]:
    """When each transient entry expires (event time). Absences are not here: each has its own timer."""
    out: list[int] = []
    for spec in signals:
        state = profile["signals"].get(spec.name)
        if not state:
            continue
        if isinstance(spec, WindowSignal):
            size = spec.bucket_ms if spec.sliding else spec.window_ms
            out += [b[0] + size - 1 + spec.window_ms for b in state.get("buckets", ())]
            out += [p[1] + spec.window_ms for p in state.get("values", ())]
            if "last" in state:
                out.append(state["last"][0] + spec.window_ms)
        elif isinstance(spec, SessionSignal):
            out.append(int(state["last"]) + spec.gap_ms)
    # Decision history (cooldowns, caps) and dedupe ids expire too; their deadlines are stored.
    for entries in profile["sent"].values():
        out += [e[1] for e in entries]
    out += [v[1] for v in profile["fired"].values()]
    out += profile["seen"].values()
    return out


def prune(profile: Profile, signals: tuple[Signal, ...], ref_ms: int) -> None:
    """Drop every transient entry whose lifetime has ended by event time `ref_ms`.

    Free until the earliest entry expires (`prune_at`); then one pass over the transient state,
    which also recomputes `prune_at` and the expire timer (the time everything will be gone).
    """
    prune_at = profile.get("prune_at")
    if prune_at is None or ref_ms < prune_at:
        return
    for spec in signals:
        state = profile["signals"].get(spec.name)
        if not state:
            profile["signals"].pop(spec.name, None)
            continue
        if isinstance(spec, WindowSignal):
            _prune_window(state, spec, ref_ms)
        elif isinstance(spec, SessionSignal) and state["last"] + spec.gap_ms <= ref_ms:
            state.clear()
        if not state:
            del profile["signals"][spec.name]
    for channel in list(profile["sent"]):
        profile["sent"][channel] = [e for e in profile["sent"][channel] if e[1] > ref_ms]
        if not profile["sent"][channel]:
            del profile["sent"][channel]
    for rule_id in [r for r, v in profile["fired"].items() if v[1] <= ref_ms]:
        del profile["fired"][rule_id]
    for event_id in [e for e, until in profile["seen"].items() if until <= ref_ms]:
        del profile["seen"][event_id]
    expiries = _expiries(profile, signals)
    if expiries:
        profile["prune_at"] = min(expiries)
        profile["timers"][EXPIRE_TIMER] = max(expiries)
    else:
        profile.pop("prune_at", None)
        profile["timers"].pop(EXPIRE_TIMER, None)


def fire_absences(profile: Profile, signals: tuple[Signal, ...], now_ms: int) -> list[Trigger]:
    """Absence signals whose deadline has passed by `now_ms`: fire once and leave state."""
    fired = []
    for spec in signals:
        if not isinstance(spec, AbsenceSignal):
            continue
        state = profile["signals"].get(spec.name)
        if state and state["deadline"] <= now_ms:
            fired.append(Trigger(spec.name, f"{spec.name}:{state['since']}", state["deadline"],
                                 dict(state.get("attrs", {}))))
            del profile["signals"][spec.name]
            profile["timers"].pop(ABSENCE_TIMER_PREFIX + spec.name, None)
    return fired


def is_late(profile: Profile, event: Event, late: LatePolicy) -> bool:
    newest = profile["last_seen"]
    return newest is not None and event.ts < newest - late.allowed_lateness_ms


def apply_transient(profile: Profile, event: Event, signals: tuple[Signal, ...]) -> None:
    """Fold one on-time event into the transient signals (absences due before it fire first; see engine)."""
    for spec in signals:
        if isinstance(spec, WindowSignal):
            if event.type in spec.events:
                _add_to_window(profile, profile["signals"].setdefault(spec.name, {}), spec, event)
        elif isinstance(spec, SessionSignal):
            if spec.events and event.type not in spec.events:
                continue
            state = profile["signals"].get(spec.name)
            if state and event.ts <= state["start"] - spec.gap_ms:
                continue  # from an older session, long over: it must not replace the current one
            if not state or event.ts - state["last"] >= spec.gap_ms:
                profile["signals"][spec.name] = {"start": event.ts, "last": event.ts, "events": 1}
            else:
                state["start"] = min(state["start"], event.ts)
                state["last"] = max(state["last"], event.ts)
                state["events"] += 1
            note_expiry(profile, profile["signals"][spec.name]["last"] + spec.gap_ms)
        else:
            state = profile["signals"].get(spec.name)
            if event.type in spec.cancel and state and event.ts >= state["since"]:
                del profile["signals"][spec.name]
                profile["timers"].pop(ABSENCE_TIMER_PREFIX + spec.name, None)
            elif event.type in spec.start and (not state or event.ts > state["since"]):
                deadline = event.ts + spec.after_ms
                profile["signals"][spec.name] = {
                    "since": event.ts, "deadline": deadline,
                    "attrs": {k: event.attrs[k] for k in spec.carry if k in event.attrs},
                }
                profile["timers"][ABSENCE_TIMER_PREFIX + spec.name] = deadline


def signals_by_event(signals: tuple[Signal, ...], event_types: Iterable[str]) -> dict[str, tuple[Signal, ...]]:
    """For each event type, the signals an event of that type can change (so each event visits
    only those, in declaration order)."""
    def touches(spec: Signal, event_type: str) -> bool:
        if isinstance(spec, WindowSignal):
            return event_type in spec.events
        if isinstance(spec, SessionSignal):
            return not spec.events or event_type in spec.events
        return event_type in spec.start or event_type in spec.cancel

    return {t: tuple(s for s in signals if touches(s, t)) for t in event_types}


def signal_view(profile: Profile, signals: tuple[Signal, ...], ref_ms: int,
                names: frozenset[str] | None = None) -> dict[str, Any]:
    """Signal values as rules name them: `<name>` for windows, `<name>_pending` for absences,
    `<name>_active` / `<name>_events` / `<name>_minutes` for sessions. With `names`, only signals
    that have one of those names are computed."""
    view: dict[str, Any] = {}
    for spec in signals:
        if names is not None and names.isdisjoint(spec.attributes):
            continue
        state = profile["signals"].get(spec.name)
        if isinstance(spec, WindowSignal):
            view[spec.name] = window_value(state, spec, ref_ms)
        elif isinstance(spec, AbsenceSignal):
            view[f"{spec.name}_pending"] = bool(state)
        else:
            active = bool(state) and ref_ms - state["last"] < spec.gap_ms
            view[f"{spec.name}_active"] = active
            view[f"{spec.name}_events"] = state["events"] if active else 0
            view[f"{spec.name}_minutes"] = (state["last"] - state["start"]) // 60_000 if active else 0
    return view


def next_deadline(profile: Profile) -> int | None:
    """The earliest timer this profile holds (absence or expiry), for the shard's timer index."""
    timers: dict[str, int] = profile["timers"]
    return min(timers.values()) if timers else None
