"""Targeting rules a marketer can read, and the arbitration every decision passes before it leaves.

The rules file (TOML) declares the transient signals, the rules, the frequency caps, the consent
policy per channel and the late-event policy. It is validated once at start; every error names the
file, the rule (or signal) and the field.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from operators.channels import DECISION_CHANNELS, EVENT_CHANNELS
from operators.infra.clock import parse_duration_ms
from operators.infra.config import read_toml
from operators.profile import Profile, consent_state, durable_view
from operators.windows import (
    AbsenceSignal,
    LatePolicy,
    SessionSignal,
    Signal,
    Trigger,
    WindowSignal,
    note_expiry,
    signal_view,
    signals_by_event,
)

# Why a candidate decision was not sent; every blocked candidate is counted under one of these.
BLOCK_REASONS = ("opted_out", "no_consent", "complaint_suppression", "cooldown",
                 "frequency_cap_channel", "frequency_cap_overall")


class RulesError(ValueError):
    """The rules file is invalid; the message names the file, the rule or signal, and the field."""


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|!=|>|<|not in|in)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    """`<attribute> <op> <literal>`, e.g. `page_views_30m >= 3` or `segment in ["loyal", "champion"]`."""

    attribute: str
    op: str
    value: Any
    text: str

    def holds(self, view: dict[str, Any]) -> bool:
        actual = view.get(self.attribute)
        if actual is None and self.op not in ("==", "!="):
            return False
        try:
            return bool(_OPS[self.op](actual, self.value))
        except TypeError:
            return False


@dataclass(frozen=True)
class Rule:
    id: str
    on: frozenset[str]
    when: tuple[Condition, ...]
    action: str
    channel: str
    offer: str | None
    priority: int
    cooldown_ms: int
    expiry_ms: int
    purpose: str = "marketing"
    # Promotions are suppressed after a complaint; service messages (follow-ups) are not.
    promotion: bool = True
    description: str = ""

    @functools.cached_property
    def needs(self) -> frozenset[str]:
        """The attributes this rule's conditions read: all that must be computed to judge it."""
        return frozenset(c.attribute for c in self.when)


@dataclass(frozen=True)
class Cap:
    limit: int
    window_ms: int


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    signals: tuple[Signal, ...]
    channel_caps: dict[str, Cap]
    overall_cap: Cap | None
    # channel -> "opt_in" (explicit consent needed) or "opt_out" (allowed unless revoked)
    consent_policy: dict[str, Literal["opt_in", "opt_out"]]
    complaint_suppression_ms: int
    late: LatePolicy
    dedupe_horizon_ms: int
    source: str

    @property
    def triggers(self) -> frozenset[str]:
        return frozenset().union(*(r.on for r in self.rules)) if self.rules else frozenset()

    @functools.cached_property
    def by_trigger(self) -> dict[str, tuple[Rule, ...]]:
        """Rules per trigger name, highest priority first (ties by id): the order arbitration tries."""
        ordered = sorted(self.rules, key=lambda r: (-r.priority, r.id))
        return {name: tuple(r for r in ordered if name in r.on) for name in self.triggers}

    @functools.cached_property
    def needs_by_trigger(self) -> dict[str, frozenset[str]]:
        """Per trigger name, every attribute its candidate rules read."""
        return {name: frozenset().union(*(r.needs for r in rules)) for name, rules in self.by_trigger.items()}

    @functools.cached_property
    def signals_for_event(self) -> dict[str, tuple[Signal, ...]]:
        """The signals each event type can change."""
        return signals_by_event(self.signals, EVENT_CHANNELS)

    @functools.cached_property
    def cap_horizon_ms(self) -> int:
        """How long a sent decision counts towards any cap."""
        windows = [c.window_ms for c in self.channel_caps.values()]
        return max(windows + ([self.overall_cap.window_ms] if self.overall_cap else []) + [0])


@dataclass(frozen=True)
class Decision:
    """A targeting decision ready to be encoded as a CloudEvent."""

    decision_id: str
    customer: str
    rule_id: str
    action: str
    channel: str
    offer: str | None
    priority: int
    trigger: str
    trigger_id: str
    decided_at: int
    expires_at: int
    profile_version: int
    signals: dict[str, Any]


@dataclass(frozen=True)
class Blocked:
    customer: str
    rule_id: str
    channel: str
    reason: str
    trigger_id: str


def decision_id(customer: str, rule_id: str, trigger_id: str) -> str:
    """Same customer, rule and trigger give the same id, so consumers can dedupe after a replay."""
    return hashlib.sha256(f"{customer}|{rule_id}|{trigger_id}".encode()).hexdigest()[:32]


# --- loading -----------------------------------------------------------------------------------

class _Where:
    def __init__(self, path: str, item: str) -> None:
        self.path, self.item = path, item

    def fail(self, field: str, message: str) -> RulesError:
        return RulesError(f"{self.path}: {self.item}: field '{field}': {message}")


def _duration(where: _Where, body: dict[str, Any], key: str, default: Any = None, name: str | None = None) -> int:
    raw = body.get(key, default)
    name = name or key
    if raw is None:
        raise where.fail(name, "is required (a duration such as 30m, 1h, 7d)")
    try:
        ms = parse_duration_ms(raw)
    except ValueError as exc:
        raise where.fail(name, str(exc)) from None
    if ms <= 0:
        raise where.fail(name, "must be positive")
    return ms


def _names(where: _Where, body: dict[str, Any], key: str, known: set[str], required: bool = True) -> frozenset[str]:
    raw = body.get(key, [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise where.fail(key, "must be a list of names")
    if required and not raw:
        raise where.fail(key, "must name at least one")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise where.fail(key, f"unknown name(s) {unknown}; known: {sorted(known)}")
    return frozenset(raw)


def _check_keys(where: _Where, body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise where.fail(key, f"unknown field; allowed: {sorted(allowed)}")


def _load_signal(path: str, name: str, body: dict[str, Any]) -> Signal:
    where = _Where(path, f"signal '{name}'")
    if not isinstance(body, dict):
        raise RulesError(f"{path}: signal '{name}' must be a table")
    kind = body.get("kind")
    events = set(EVENT_CHANNELS)
    if kind in ("count", "sum", "distinct", "last"):
        _check_keys(where, body, {"kind", "events", "window", "field", "type", "bucket", "description"})
        if kind in ("sum", "distinct") and not isinstance(body.get("field"), str):
            raise where.fail("field", f"is required for kind '{kind}'")
        wtype = body.get("type", "sliding")
        if wtype not in ("sliding", "tumbling"):
            raise where.fail("type", "must be 'sliding' or 'tumbling'")
        window = _duration(where, body, "window")
        bucket = _duration(where, body, "bucket", max(1000, window // 30))
        return WindowSignal(name, kind, _names(where, body, "events", events), window,
                            body.get("field"), wtype == "sliding", min(bucket, window))
    if kind == "absence":
        _check_keys(where, body, {"kind", "start", "cancel", "after", "carry", "description"})
        carry = body.get("carry", [])
        if not isinstance(carry, list) or not all(isinstance(x, str) for x in carry):
            raise where.fail("carry", "must be a list of attribute names")
        return AbsenceSignal(name, _names(where, body, "start", events), _names(where, body, "cancel", events),
                             _duration(where, body, "after"), tuple(carry))
    if kind == "session":
        _check_keys(where, body, {"kind", "gap", "events", "description"})
        return SessionSignal(name, _duration(where, body, "gap", "30m"),
                             _names(where, body, "events", events, required=False))
    raise where.fail("kind", f"must be one of count, sum, distinct, last, absence, session; got {kind!r}")


def _parse_condition(where: _Where, text: Any) -> Condition:
    if not isinstance(text, str):
        raise where.fail("when", f"each condition must be a string like \"orders >= 1\"; got {text!r}")
    m = _CONDITION.match(text)
    if not m:
        raise where.fail("when", f"cannot read condition {text!r}; write '<attribute> <op> <value>' "
                                 f"with op one of {', '.join(_OPS)}")
    attribute, op, literal = m.groups()
    try:
        value = tomllib.loads(f"v = {literal}")["v"]
    except tomllib.TOMLDecodeError:
        raise where.fail("when", f"in {text!r}: {literal!r} is not a value (quote strings: \"loyal\")") from None
    if op in ("in", "not in") and not isinstance(value, list):
        raise where.fail("when", f"in {text!r}: '{op}' needs a list, e.g. [\"a\", \"b\"]")
    return Condition(attribute, op, value, text)


def _attribute_names(signals: tuple[Signal, ...]) -> set[str]:
    names = set(_DURABLE_ATTRIBUTES)
    empty: Profile = {"signals": {}}
    names |= set(signal_view(empty, signals, 0))
    names |= {"trigger", "customer_channel"}
    return names


def _load_rule(path: str, body: dict[str, Any], triggers: set[str], attributes: set[str]) -> Rule:
    rule_id = body.get("id")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[a-z0-9_.-]+", rule_id or ""):
        raise RulesError(f"{path}: rule {rule_id!r}: field 'id': must be lowercase letters, digits, _ . -")
    where = _Where(path, f"rule '{rule_id}'")
    _check_keys(where, body, {"id", "on", "when", "action", "channel", "offer", "priority", "cooldown",
                              "expiry", "purpose", "promotion", "description"})
    when = body.get("when", [])
    if not isinstance(when, list):
        raise where.fail("when", "must be a list of conditions")
    conditions = tuple(_parse_condition(where, c) for c in when)
    for cond in conditions:
        if cond.attribute not in attributes and not cond.attribute.startswith("trigger."):
            raise where.fail("when", f"in {cond.text!r}: unknown attribute {cond.attribute!r}; "
                                     f"known: {sorted(attributes)} or trigger.<attribute>")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise where.fail("action", "is required (e.g. send_email, show_ad, call_back)")
    channel = body.get("channel")
    if channel not in DECISION_CHANNELS:
        raise where.fail("channel", f"must be one of {list(DECISION_CHANNELS)}; got {channel!r}")
    offer = body.get("offer")
    if offer is not None and not isinstance(offer, str):
        raise where.fail("offer", "must be a string")
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise where.fail("priority", "must be an integer (higher wins)")
    promotion = body.get("promotion", True)
    if not isinstance(promotion, bool):
        raise where.fail("promotion", "must be true or false")
    return Rule(rule_id, _names(where, body, "on", triggers), conditions, action, channel, offer, priority,
                _duration(where, body, "cooldown", "1d"), _duration(where, body, "expiry", "1d"),
                str(body.get("purpose", "marketing")), promotion, str(body.get("description", "")))


def _cap(where: _Where, key: str, raw: Any) -> Cap:
    if not isinstance(raw, dict) or "limit" not in raw:
        raise where.fail(key, "must be a table like { limit = 2, window = \"24h\" }")
    limit = raw["limit"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise where.fail(f"{key}.limit", "must be a non-negative integer")
    return Cap(limit, _duration(where, raw, "window", name=f"{key}.window"))


def _table(path: str, item: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RulesError(f"{path}: {item} must be a table; got {raw!r}")
    return raw


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rules file; raises RulesError naming file, rule and field."""
    path = str(path)
    doc = read_toml(path, RulesError)
    top = _Where(path, "top level")
    _check_keys(top, doc, {"signals", "rule", "caps", "consent", "late", "suppression", "dedupe"})
    raw_signals = _table(path, "[signals]", doc.get("signals", {}))
    signals = tuple(_load_signal(path, name, body) for name, body in raw_signals.items())
    triggers = set(EVENT_CHANNELS) | {s.name for s in signals if isinstance(s, AbsenceSignal)}
    attributes = _attribute_names(signals)
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError(f"{path}: at least one [[rule]] is required")
    rules = tuple(_load_rule(path, _table(path, f"[[rule]] #{i + 1}", body), triggers, attributes)
                  for i, body in enumerate(raw_rules))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RulesError(f"{path}: rule '{rule.id}': field 'id': duplicate rule id")
        seen.add(rule.id)
    caps = _table(path, "[caps]", doc.get("caps", {}))
    where = _Where(path, "[caps]")
    _check_keys(where, caps, {"overall", *DECISION_CHANNELS})
    channel_caps = {ch: _cap(where, ch, caps[ch]) for ch in DECISION_CHANNELS if ch in caps}
    overall = _cap(where, "overall", caps["overall"]) if "overall" in caps else None
    consent = _table(path, "[consent]", doc.get("consent", {}))
    where = _Where(path, "[consent]")
    _check_keys(where, consent, set(DECISION_CHANNELS))
    policy: dict[str, Literal["opt_in", "opt_out"]] = {ch: "opt_in" for ch in DECISION_CHANNELS}
    for ch, value in consent.items():
        if value not in ("opt_in", "opt_out"):
            raise where.fail(ch, "must be \"opt_in\" or \"opt_out\"")
        policy[ch] = value
    late = _table(path, "[late]", doc.get("late", {}))
    where = _Where(path, "[late]")
    _check_keys(where, late, {"allowed_lateness", "policy"})
    if late.get("policy", "drop") not in ("drop", "apply"):
        raise where.fail("policy", "must be \"drop\" or \"apply\"")
    suppression = _table(path, "[suppression]", doc.get("suppression", {}))
    where = _Where(path, "[suppression]")
    _check_keys(where, suppression, {"after_complaint"})
    dedupe = _table(path, "[dedupe]", doc.get("dedupe", {}))
    _check_keys(_Where(path, "[dedupe]"), dedupe, {"horizon"})
    return RuleSet(
        rules=rules, signals=signals, channel_caps=channel_caps, overall_cap=overall,
        consent_policy=policy,
        complaint_suppression_ms=_duration(_Where(path, "[suppression]"), suppression, "after_complaint", "30d"),
        late=LatePolicy(_duration(_Where(path, "[late]"), late, "allowed_lateness", "5m"),
                        late.get("policy", "drop")),
        dedupe_horizon_ms=_duration(_Where(path, "[dedupe]"), dedupe, "horizon", "1d"),
        source=path,
    )


# --- evaluation ---------------------------------------------------------------------------------

_DURABLE_ATTRIBUTES = frozenset(durable_view({"orders": 0, "revenue": 0.0, "first_purchase": None,
                                              "last_purchase": None, "last_complaint": None, "contacts": {},
                                              "last_contact": {}}, 0))


def rule_view(profile: Profile, ruleset: RuleSet, trigger: Trigger,
              names: frozenset[str] | None = None) -> dict[str, Any]:
    """What conditions can name, as of the trigger's event time: everything, or at least `names`
    (signals nobody asked for are not computed: this runs on every event)."""
    view = {} if names is not None and names.isdisjoint(_DURABLE_ATTRIBUTES) else durable_view(profile, trigger.ts)
    view.update(signal_view(profile, ruleset.signals, trigger.ts, names))
    view["trigger"] = trigger.name
    for key, value in trigger.attrs.items():
        view[f"trigger.{key}"] = value
    return view


def _gate(profile: Profile, ruleset: RuleSet, rule: Rule, view: dict[str, Any], ts: int) -> str | None:
    """The first reason this rule may not fire now, or None when it may."""
    consent = consent_state(profile, rule.channel, rule.purpose)
    if consent is False:
        return "opted_out"
    if consent is None and ruleset.consent_policy.get(rule.channel, "opt_in") == "opt_in":
        return "no_consent"
    since_complaint = profile["last_complaint"]
    if rule.promotion and since_complaint is not None and ts - since_complaint < ruleset.complaint_suppression_ms:
        return "complaint_suppression"
    fired = profile["fired"].get(rule.id)
    if fired is not None and fired[1] > ts:
        return "cooldown"
    cap = ruleset.channel_caps.get(rule.channel)
    if cap is not None:
        recent = [e for e in profile["sent"].get(rule.channel, []) if e[0] > ts - cap.window_ms]
        if len(recent) >= cap.limit:
            return "frequency_cap_channel"
    if ruleset.overall_cap is not None:
        cap = ruleset.overall_cap
        recent = [e for ch in profile["sent"].values() for e in ch if e[0] > ts - cap.window_ms]
        if len(recent) >= cap.limit:
            return "frequency_cap_overall"
    return None


def decide(profile: Profile, ruleset: RuleSet, trigger: Trigger) -> tuple[Decision | None, list[Blocked]]:
    """At most one decision per trigger: the highest-priority matching rule that passes every gate.

    Matching rules tried before the winner and refused by a gate are returned as Blocked, by reason.
    The winner is recorded in the profile (cooldown, caps), so the profile must be stored afterwards.
    """
    candidates = ruleset.by_trigger.get(trigger.name)
    if not candidates:
        return None, []
    view = rule_view(profile, ruleset, trigger, ruleset.needs_by_trigger[trigger.name])
    blocked: list[Blocked] = []
    customer = profile["customer"]
    for rule in candidates:
        if not all(c.holds(view) for c in rule.when):
            continue
        reason = _gate(profile, ruleset, rule, view, trigger.ts)
        if reason is not None:
            blocked.append(Blocked(customer, rule.id, rule.channel, reason, trigger.trigger_id))
            continue
        profile["fired"][rule.id] = [trigger.ts, trigger.ts + rule.cooldown_ms]
        note_expiry(profile, trigger.ts + rule.cooldown_ms)
        horizon = ruleset.cap_horizon_ms
        if horizon:
            profile["sent"].setdefault(rule.channel, []).append([trigger.ts, trigger.ts + horizon])
            note_expiry(profile, trigger.ts + horizon)
        fired_on = {c.attribute: view.get(c.attribute) for c in rule.when}
        return Decision(
            decision_id=decision_id(customer, rule.id, trigger.trigger_id), customer=customer,
            rule_id=rule.id, action=rule.action, channel=rule.channel, offer=rule.offer,
            priority=rule.priority, trigger=trigger.name, trigger_id=trigger.trigger_id,
            decided_at=trigger.ts, expires_at=trigger.ts + rule.expiry_ms,
            profile_version=profile["version"], signals=fired_on,
        ), blocked
    return None, blocked
