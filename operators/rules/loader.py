"""Reading a rules file into a RuleSet: validated once at start, every error naming file, item, field.

The file declares the transient signals (each loaded by its kind, operators/signals/registry.py),
the rules, the frequency caps, the consent policy per channel, the late-event policy, complaint
suppression and the dedupe horizon. Rules are compiled here (operators/rules/compiler.py).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from operators.channels import DECISION_CHANNELS, EVENT_CHANNELS
from operators.infra.config import read_toml
from operators.io.parse import event_attributes
from operators.profile.facts import consent_keys
from operators.rules.compiler import OPS, TRIGGER_PREFIX, attribute_getters, compile_conditions
from operators.rules.fields import RulesError, Where, table
from operators.rules.model import Cap, CompiledRule, Condition, LatePolicy, Rule, RuleSet
from operators.signals.registry import load_signal

_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|!=|>|<|not in|in)\s*(.+?)\s*$")
EVENT_TYPES = frozenset(EVENT_CHANNELS)


def parse_condition(where: Where, text: Any) -> Condition:
    if not isinstance(text, str):
        raise where.fail("when", f"each condition must be a string like \"orders >= 1\"; got {text!r}")
    m = _CONDITION.match(text)
    if not m:
        raise where.fail("when", f"cannot read condition {text!r}; write '<attribute> <op> <value>' "
                                 f"with op one of {', '.join(OPS)}")
    attribute, op, literal = m.groups()
    try:
        value = tomllib.loads(f"v = {literal}")["v"]
    except tomllib.TOMLDecodeError:
        raise where.fail("when", f"in {text!r}: {literal!r} is not a value (quote strings: \"loyal\")") from None
    if op in ("in", "not in") and not isinstance(value, list):
        raise where.fail("when", f"in {text!r}: '{op}' needs a list, e.g. [\"a\", \"b\"]")
    return Condition(attribute, op, value, text)


def _load_rule(path: str, body: dict[str, Any], triggers: dict[str, frozenset[str]], attributes: set[str]) -> Rule:
    """`triggers`: every name a rule can be `on` (event types, absences), with the attributes each carries."""
    rule_id = body.get("id")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[a-z0-9_.-]+", rule_id or ""):
        raise RulesError(f"{path}: rule {rule_id!r}: field 'id': must be lowercase letters, digits, _ . -")
    where = Where(path, f"rule '{rule_id}'")
    where.check_keys(body, {"id", "on", "when", "action", "channel", "offer", "priority", "cooldown",
                            "expiry", "purpose", "promotion", "description"})
    when = body.get("when", [])
    if not isinstance(when, list):
        raise where.fail("when", "must be a list of conditions")
    conditions = tuple(parse_condition(where, c) for c in when)
    on = where.names(body, "on", set(triggers))
    trigger_attributes = set().union(*(triggers[name] for name in on))
    for cond in conditions:
        if cond.attribute.startswith(TRIGGER_PREFIX):
            if cond.attribute[len(TRIGGER_PREFIX):] not in trigger_attributes:
                raise where.fail("when", f"in {cond.text!r}: {cond.attribute!r} is not an attribute of what the "
                                         f"rule is on ({', '.join(sorted(on))}); those have: "
                                         f"{sorted(trigger_attributes) or 'none'}")
        elif cond.attribute not in attributes:
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
    return Rule(rule_id, on, conditions, action, channel, offer, priority,
                where.duration(body, "cooldown", "1d"), where.duration(body, "expiry", "1d"),
                str(body.get("purpose", "marketing")), promotion, str(body.get("description", "")))


def _cap(where: Where, key: str, raw: Any) -> Cap:
    if not isinstance(raw, dict) or "limit" not in raw:
        raise where.fail(key, "must be a table like { limit = 2, window = \"24h\" }")
    limit = raw["limit"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise where.fail(f"{key}.limit", "must be a non-negative integer")
    return Cap(limit, where.duration(raw, "window", name=f"{key}.window"))


def load_rules(path: str | Path) -> RuleSet:
    """Read, validate and compile a rules file; raises RulesError naming file, rule and field."""
    path = str(path)
    doc = read_toml(path, RulesError)
    Where(path, "top level").check_keys(doc, {"signals", "rule", "caps", "consent", "late", "suppression", "dedupe"})
    raw_signals = table(path, "[signals]", doc.get("signals", {}))
    signals = tuple(load_signal(path, name, body, EVENT_TYPES) for name, body in raw_signals.items())
    triggers = {t: frozenset(event_attributes(t)) for t in EVENT_TYPES}
    triggers.update({s.name: s.trigger_attributes for s in signals if s.fires})
    getters = attribute_getters(signals)
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError(f"{path}: at least one [[rule]] is required")
    rules = tuple(_load_rule(path, table(path, f"[[rule]] #{i + 1}", body), triggers, set(getters))
                  for i, body in enumerate(raw_rules))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RulesError(f"{path}: rule '{rule.id}': field 'id': duplicate rule id")
        seen.add(rule.id)
    caps = table(path, "[caps]", doc.get("caps", {}))
    where = Where(path, "[caps]")
    where.check_keys(caps, {"overall", *DECISION_CHANNELS})
    channel_caps = {ch: _cap(where, ch, caps[ch]) for ch in DECISION_CHANNELS if ch in caps}
    overall = _cap(where, "overall", caps["overall"]) if "overall" in caps else None
    consent = table(path, "[consent]", doc.get("consent", {}))
    where = Where(path, "[consent]")
    where.check_keys(consent, set(DECISION_CHANNELS))
    policy: dict[str, Literal["opt_in", "opt_out"]] = dict.fromkeys(DECISION_CHANNELS, "opt_in")
    for ch, value in consent.items():
        if value not in ("opt_in", "opt_out"):
            raise where.fail(ch, "must be \"opt_in\" or \"opt_out\"")
        policy[ch] = value
    late = table(path, "[late]", doc.get("late", {}))
    where = Where(path, "[late]")
    where.check_keys(late, {"allowed_lateness", "policy"})
    if late.get("policy", "drop") not in ("drop", "apply"):
        raise where.fail("policy", "must be \"drop\" or \"apply\"")
    suppression = table(path, "[suppression]", doc.get("suppression", {}))
    Where(path, "[suppression]").check_keys(suppression, {"after_complaint"})
    dedupe = table(path, "[dedupe]", doc.get("dedupe", {}))
    Where(path, "[dedupe]").check_keys(dedupe, {"horizon"})
    # Per trigger, its rules by priority (ties by id), each compiled: the order arbitration tries.
    ordered = sorted(rules, key=lambda r: (-r.priority, r.id))
    by_trigger = {
        name: tuple(CompiledRule(rule=r, matches=compile_conditions(r.when, getters),
                                 consent_keys=consent_keys(r.channel, r.purpose),
                                 needs_consent=policy.get(r.channel, "opt_in") == "opt_in",
                                 cap=channel_caps.get(r.channel))
                    for r in ordered if name in r.on)
        for name in sorted(set().union(*(r.on for r in rules)))
    }
    return RuleSet(
        rules=rules, signals=signals, channel_caps=channel_caps, overall_cap=overall, consent_policy=policy,
        complaint_suppression_ms=Where(path, "[suppression]").duration(suppression, "after_complaint", "30d"),
        late=LatePolicy(Where(path, "[late]").duration(late, "allowed_lateness", "5m"), late.get("policy", "drop")),
        dedupe_horizon_ms=Where(path, "[dedupe]").duration(dedupe, "horizon", "1d"),
        source=path, by_trigger=by_trigger, getters=getters,
    )
