"""Scenario files: a story of events and clock advances run through the engine, with what each step
must produce (`nextclick rules test`, and the project's own tests under tests/scenarios/).

A scenario is TOML (the format is documented in docs/rules.md, "Testing rules with scenarios"):

    description = "..."                 # required
    rules = "my_rules.toml"             # optional, relative to the file (used when no rules file is given)
    start = 2026-11-18T00:00:00Z        # optional: the time "+0m" stands for (default START_MS)

    [[step]]                            # an event...
    at = "+5m"                          # its event time, as an offset from start
    event = "add_to_cart"               # its type; `attrs` its attributes (checked against the type's schema)
    attrs = { sku = "A", amount = 25.0 }
    customer = "c1"                     # optional (default c1); `id` = its event_id (default: generated)

    [[step]]                            # ...or a clock advance: timers run as the flow's would at that time
    advance = "+66m"
    decisions = [{ rule = "cart_abandonment_email", channel = "email", trigger = "cart_abandoned" }]
    blocked = [{ rule = "...", reason = "cooldown" }]

Every step produces exactly the `decisions` and `blocked` it lists (none when omitted): a decision
entry compares the keys it names (rule, channel, trigger, action, offer, purpose, promotion,
customer, signals: only the attributes named, params), a blocked entry its rule, reason, channel and
customer. An event step may also expect `late = true` or `duplicate = true` (false when omitted);
`ids` sets the identifier types the customer's profile holds from that step on.

The clock is manual: it moves only at `advance` steps, never backwards. An absence also fires when a
later event of the customer arrives after its deadline plus the allowed lateness, as in the flow.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nextclick.operators.engine.steps import on_event, on_timers
from nextclick.operators.errors import NextclickError
from nextclick.operators.events.tracking_plan import SHIPPED, TrackingPlan
from nextclick.operators.infra.clock import parse_duration_ms
from nextclick.operators.io.decisions import expired
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.records import Blocked, Decision, Event, Outcome
from nextclick.operators.rules.model import RuleSet

# 2026-11-18T00:00:00Z: a day boundary, so bucket and tumbling-window edges fall on round offsets.
START_MS = 1_794_960_000_000
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_TOP_KEYS = {"description", "rules", "start", "step"}
_STEP_KEYS = {"at", "event", "attrs", "id", "customer", "advance", "decisions", "blocked", "late", "duplicate", "ids",
              "expired"}
_DECISION_KEYS = {"rule", "channel", "trigger", "action", "offer", "purpose", "promotion", "customer", "signals",
                  "params"}
# The identifier types a profile can hold (`ids` of an event step).
_ID_TYPES = ("customer", "cookie", "device", "email", "phone")
_BLOCKED_KEYS = {"rule", "reason", "channel", "customer"}


class ScenarioError(NextclickError, ValueError):
    """The scenario file is invalid; the message names the file, the step and the field."""


class ScenarioFailed(NextclickError, ValueError):
    """Some expectation of a scenario did not hold (`nextclick rules test` exits non-zero)."""


def offset_ms(text: str) -> int:
    """'+5m', '+100d1m', '+65m59s' -> milliseconds after the start."""
    body = text.strip().removeprefix("+") if isinstance(text, str) else ""
    parts = _PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"bad offset {text!r}; write e.g. \"+5m\", \"+1d2h\", \"+65m59s\"")
    return sum(parse_duration_ms(n + u) for n, u in parts)


@dataclass(frozen=True)
class Step:
    n: int
    offset: str
    at_ms: int
    event: Event | None  # None: a clock advance
    decisions: tuple[dict[str, Any], ...] = ()
    blocked: tuple[dict[str, Any], ...] = ()
    late: bool = False
    duplicate: bool = False
    # The identifier types the customer's profile holds from this step on (None: unchanged), as the
    # identity stage records them; `require_address` rules read them.
    ids: tuple[str, ...] | None = None
    # Decisions made but already past their expiry at this step's clock: the flow drops them.
    expired: tuple[dict[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return f"step {self.n} ({self.offset} {self.event.type if self.event else 'clock'})"


@dataclass(frozen=True)
class Scenario:
    path: Path
    description: str
    rules: Path | None
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Check:
    """One expectation of one step: what was expected, what came out."""

    scenario: Path
    step: Step
    what: str  # decisions | blocked | late | duplicate
    expected: Any
    got: Any

    @property
    def ok(self) -> bool:
        return bool(self.expected == self.got)


def _fail(path: Path, where: str, message: str) -> ScenarioError:
    return ScenarioError(f"{path}: {where}: {message}")


def _entries(path: Path, where: str, step: dict[str, Any], key: str, allowed: set[str]) -> tuple[dict[str, Any], ...]:
    raw = step.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise _fail(path, where, f"field '{key}': must be a list of tables, e.g. [{{ rule = \"r\", ... }}]")
    for entry in raw:
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise _fail(path, where, f"field '{key}': unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        if "rule" not in entry:
            raise _fail(path, where, f"field '{key}': each entry names its rule")
    return tuple(raw)


def _start(path: Path, raw: Any) -> int:
    if raw is None:
        return START_MS
    if isinstance(raw, datetime) and raw.tzinfo is not None:
        return int(raw.timestamp() * 1000)
    raise _fail(path, "top level", "field 'start': must be a date-time with an offset, e.g. 2026-11-18T00:00:00Z")


def load_scenario(path: str | Path, plan: TrackingPlan = SHIPPED,
                  consent_purposes: frozenset[str] | None = None) -> Scenario:
    """Read and check a scenario file; raises ScenarioError naming file, step and field. Events are
    checked against `plan` (the rules' tracking plan: `RuleSet.plan`), as the flow's parser would."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise _fail(path, "top level", f"unknown field(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    description = doc.get("description")
    if not isinstance(description, str) or not description.strip():
        raise _fail(path, "top level", "field 'description': say what the scenario shows")
    rules = doc.get("rules")
    if rules is not None and not isinstance(rules, str):
        raise _fail(path, "top level", "field 'rules': must be a path (relative to the scenario)")
    start = _start(path, doc.get("start"))
    raw_steps = doc.get("step")
    if not isinstance(raw_steps, list) or not raw_steps or not all(isinstance(s, dict) for s in raw_steps):
        raise _fail(path, "top level", "at least one [[step]] is required")
    steps = []
    clock = start
    for n, raw in enumerate(raw_steps, start=1):
        where = f"step {n}"
        unknown = sorted(set(raw) - _STEP_KEYS)
        if unknown:
            raise _fail(path, where, f"unknown field(s) {unknown}; allowed: {sorted(_STEP_KEYS)}")
        if ("advance" in raw) == ("at" in raw):
            raise _fail(path, where, "a step is either an event (`at` and `event`) or a clock `advance`")
        key = "advance" if "advance" in raw else "at"
        try:
            at = start + offset_ms(raw[key])
        except ValueError as exc:
            raise _fail(path, where, f"field '{key}': {exc}") from None
        decisions = _entries(path, where, raw, "decisions", _DECISION_KEYS)
        blocked = _entries(path, where, raw, "blocked", _BLOCKED_KEYS)
        stale = _entries(path, where, raw, "expired", _DECISION_KEYS)
        if key == "advance":
            extra = sorted(set(raw) & {"event", "attrs", "id", "customer", "late", "duplicate", "ids"})
            if extra:
                raise _fail(path, where, f"field(s) {extra} belong to event steps, not to a clock advance")
            if at < clock:
                raise _fail(path, where, f"field 'advance': the clock only moves forward ({raw[key]} is before "
                                         f"an earlier advance)")
            clock = at
            steps.append(Step(n, raw[key], at, None, decisions, blocked, expired=stale))
            continue
        event_type = raw.get("event")
        if event_type not in plan.channels:
            raise _fail(path, where, f"field 'event': must be one of {sorted(plan.channels)}; got {event_type!r}")
        attrs = raw.get("attrs", {})
        if not isinstance(attrs, dict):
            raise _fail(path, where, "field 'attrs': must be a table, e.g. { amount = 25.0 }")
        known = plan.attributes(event_type)
        extra = sorted(set(attrs) - set(known))
        if extra:
            raise _fail(path, where, f"field 'attrs': {extra} not attributes of {event_type}; it has {list(known)}")
        try:  # the type's schema, as the flow's parser applies it (it also fills in defaults)
            validate = plan.spec_set().by_type[event_type].validate
            checked = validate({"event_id": "e", "type": event_type, "ts": at, **attrs})
        except Exception as exc:  # noqa: BLE001 - fastjsonschema's exception: its message names the problem
            raise _fail(path, where, f"field 'attrs': not a valid {event_type}: {exc}") from None
        attrs = {k: checked[k] for k in known if k in checked}
        purpose = attrs.get("purpose", "marketing")
        if event_type == "consent" and consent_purposes is not None and purpose not in consent_purposes:
            # As the flow's parser refuses it (operators/io/parse.py): an outside probe's scenario withdrew
            # consent for "Promotions", passed, and the flow would have thrown that withdrawal away.
            raise _fail(path, where, f"field 'attrs': this consent's purpose is not one of the consent purposes "
                                     f"{sorted(consent_purposes)} (the rules file's [consent] purposes, compared "
                                     "exactly): the flow dead-letters it (schema_violation), so it would grant or "
                                     "revoke nothing")
        customer = raw.get("customer", "c1")
        event_id = raw.get("id", f"{path.stem}-{n}")
        if not isinstance(customer, str) or not isinstance(event_id, str):
            raise _fail(path, where, "fields 'customer' and 'id' must be strings")
        for flag in ("late", "duplicate"):
            if not isinstance(raw.get(flag, False), bool):
                raise _fail(path, where, f"field '{flag}': must be true or false")
        ids = raw.get("ids")
        if ids is not None and (not isinstance(ids, list) or not all(t in _ID_TYPES for t in ids)):
            raise _fail(path, where, f"field 'ids': must be a list of identifier types ({', '.join(_ID_TYPES)})")
        event = Event(event_id=event_id, type=event_type, ts=at, customer=customer,
                      channel=plan.channels[event_type], attrs=dict(attrs))
        steps.append(Step(n, raw[key], at, event, decisions, blocked, raw.get("late", False),
                          raw.get("duplicate", False), None if ids is None else tuple(ids), stale))
    return Scenario(path, description.strip(), path.parent / rules if rules else None, tuple(steps))


def _decision(d: Decision, entry: dict[str, Any]) -> dict[str, Any]:
    """The decision with the keys `entry` names; of `signals`, only the attributes it names."""
    signals = d.signals
    named = entry.get("signals")
    if isinstance(named, dict):
        signals = {k: v for k, v in signals.items() if k in named}
    full = {"rule": d.rule_id, "channel": d.channel, "trigger": d.trigger, "action": d.action, "offer": d.offer,
            "purpose": d.purpose, "promotion": d.promotion, "customer": d.customer, "signals": signals,
            "params": d.params}
    return {k: v for k, v in full.items() if k in entry}


def _blocked(b: Blocked, entry: dict[str, Any]) -> dict[str, Any]:
    full = {"rule": b.rule_id, "reason": b.reason, "channel": b.channel, "customer": b.customer}
    return {k: v for k, v in full.items() if k in entry}


def _compare(expected: tuple[dict[str, Any], ...], got: list[Any], view: Any, default: set[str]) -> list[Any]:
    """What came out, shown with the keys each expected entry names (the defaults past the last)."""
    return [view(item, expected[i] if i < len(expected) else dict.fromkeys(default))
            for i, item in enumerate(got)]


def run_scenario(scenario: Scenario, ruleset: RuleSet) -> list[Check]:
    """Every step through the engine; the checks of what each produced against what it expects."""
    profiles: dict[str, Profile] = {}
    checks: list[Check] = []
    clock = None
    for step in scenario.steps:
        out = Outcome()
        if step.event is None:
            clock = step.at_ms
            for profile in profiles.values():
                on_timers(profile, ruleset, step.at_ms, out)
        else:
            customer = step.event.customer
            if customer not in profiles:
                profiles[customer] = new_profile(customer)
            if step.ids is not None:  # a key per identifier type, as the identity stage would record them
                profiles[customer].ids = {t: [f"{customer}:{t}"] for t in step.ids}
            on_event(profiles[customer], step.event, ruleset, out)
            checks.append(Check(scenario.path, step, "late", step.late, out.late))
            checks.append(Check(scenario.path, step, "duplicate", step.duplicate, out.duplicate))
        # What the flow would send: a decision already past its expiry at the clock (an event's time,
        # or the clock advanced to) is dropped (operators/io/decisions.expired).
        now = step.at_ms if clock is None else max(clock, step.at_ms)
        sent = [d for d in out.decisions if not expired(d, now)]
        stale = [d for d in out.decisions if expired(d, now)]
        if stale or step.expired:
            checks.append(Check(scenario.path, step, "expired", list(step.expired),
                                _compare(step.expired, stale, _decision, {"rule", "channel", "trigger"})))
        checks.append(Check(scenario.path, step, "decisions", list(step.decisions),
                            _compare(step.decisions, sent, _decision, {"rule", "channel", "trigger"})))
        checks.append(Check(scenario.path, step, "blocked", list(step.blocked),
                            _compare(step.blocked, out.blocked, _blocked, {"rule", "reason"})))
    return checks


def _short(what: str, entries: Any) -> str:
    if what in ("late", "duplicate"):
        return str(entries).lower()
    if not entries:
        return "none"
    return ", ".join("/".join(str(v) for v in e.values()) for e in entries)


def report_line(check: Check) -> str:
    """One line per expectation; a failure says what was expected and what came out."""
    where = f"{check.scenario.name} {check.step.label}: {check.what}"
    if check.ok:
        return f"PASS {where} = {_short(check.what, check.expected)}"
    return f"FAIL {where}: expected {_short(check.what, check.expected)}; got {_short(check.what, check.got)}"


def worth_showing(check: Check) -> bool:
    """Failures, and passes that assert something (a decision, a block, a late or duplicate event)."""
    return not check.ok or bool(check.expected) or check.what == "decisions"
