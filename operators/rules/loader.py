"""Reading a rules file into a RuleSet: validated once at start, every error naming file, item, field.

The file declares the transient signals (each loaded by its kind, operators/signals/registry.py),
the rules, the frequency caps, the consent policy per channel, the late-event policy, complaint
suppression and the dedupe horizon. Rules are compiled here (operators/conditions/compiler.py, with the
attributes of operators/rules/compiler.py).

`check_rules` reads the whole file and returns every mistake it finds (`nextclick rules check`);
`load_rules` raises the first of them (what `nextclick run` does at start).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

from nextclick.operators.channels import CHANNELS, DECISION_CHANNELS, EVENT_CHANNELS, ID_TYPES
from nextclick.operators.conditions.compiler import (
    CUSTOMER_CHANNEL,
    TRIGGER_PREFIX,
    add_getter,
    compile_conditions,
    parse_condition,
    parse_when_item,
)
from nextclick.operators.conditions.fields import MAX_INTEGER, RulesError, Where, table
from nextclick.operators.conditions.model import Condition, Group, leaves
from nextclick.operators.events.tracking_plan import SHIPPED, PlanError, TrackingPlan, load_plan, reading_rules_with
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, Config, read_toml
from nextclick.operators.profile.facts import ATTRIBUTE_KINDS, consent_keys
from nextclick.operators.rules.addressing import CHANNEL_ADDRESS_TYPES
from nextclick.operators.rules.compiler import attribute_getters
from nextclick.operators.rules.model import Cap, CompiledRule, LatePolicy, Rule, RuleSet, SuppressionScope
from nextclick.operators.signals.base import Signal
from nextclick.operators.signals.options import Reset
from nextclick.operators.signals.registry import load_signal

__all__ = ["EVENT_TYPES", "check_rules", "load_configured_rules", "load_rules", "parse_condition"]

EVENT_TYPES = frozenset(EVENT_CHANNELS)
_RULE_FIELDS = {"id", "on", "when", "action", "channel", "offer", "priority", "cooldown", "expiry", "purpose",
                "promotion", "description", "require_address", "capped", "params"}
_PARAM_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME = 64  # a rule id's or signal's name, at most, as the tracking plan's names
# The attributes conditions read that no signal declares, with what each holds where that is known.
_BUILT_IN_KINDS: dict[str, Kinds] = {**ATTRIBUTE_KINDS, CUSTOMER_CHANNEL: (frozenset({"string"}), tuple(CHANNELS))}
_BUILT_IN = frozenset({*_BUILT_IN_KINDS, "trigger"})
_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,127}")


# What a trigger attribute can hold: its JSON types ("string", "number", "integer", "boolean") and
# its enum (None: any value of those types).
Kinds = tuple[frozenset[str], tuple[Any, ...] | None]
_JSON_TYPE = {str: "string", bool: "boolean", int: "integer", float: "number"}


@functools.cache
def _schema_kinds(plan: TrackingPlan, event_type: str) -> dict[str, Kinds]:
    """The declared type and enum of each attribute of an event type (its schema in the plan)."""
    properties = plan.schemas[event_type]["properties"]
    kinds: dict[str, Kinds] = {}
    for attribute in plan.attributes(event_type):
        prop = properties[attribute]
        enum = tuple(prop["enum"]) if "enum" in prop else None
        declared = prop.get("type")
        types = {declared} if isinstance(declared, str) else set(declared or ())
        if enum is not None:
            types |= {_JSON_TYPE[type(v)] for v in enum if type(v) in _JSON_TYPE}
        if types:
            kinds[attribute] = (frozenset(types), enum)
    return kinds


def _trigger_kinds(signals: list[Signal], plan: TrackingPlan) -> dict[str, dict[str, Kinds]]:
    """Per trigger (event type, absence), what each attribute it carries can hold."""
    out = {t: _schema_kinds(plan, t) for t in plan.types}
    for signal in signals:
        if not signal.fires:
            continue
        kinds: dict[str, Kinds] = {}
        for attribute in getattr(signal, "carry", ()):
            known = [out[t][attribute] for t in getattr(signal, "start", ()) if attribute in out[t]]
            if known:
                kinds[attribute] = _union(known)
        for total, _ in getattr(signal, "sums", ()):
            kinds[total] = (frozenset({"number", "integer"}), None)
        if getattr(signal, "count", None):
            kinds[signal.count] = (frozenset({"integer"}), None)  # type: ignore[attr-defined]
        out[signal.name] = kinds
    return out


def _union(kinds: list[Kinds]) -> Kinds:
    enums = [enum for _, enum in kinds]
    merged = None if any(e is None for e in enums) else tuple(v for e in enums for v in e)  # type: ignore[union-attr]
    return frozenset().union(*(types for types, _ in kinds)), merged


def _never_true(cond: Condition, kinds: Kinds) -> str | None:
    """Why `cond` can never hold for an attribute of these kinds, or None. Only what is certain:
    a string against a non-string attribute (or the reverse) under ==, ordering or `in`, and ==/in
    with values outside an attribute's enum."""
    if cond.op not in ("==", "<", "<=", ">", ">=", "in"):
        return None
    types, enum = kinds
    values = cond.value if cond.op == "in" else [cond.value]
    if cond.op == "in" and not values:
        return "'in' an empty list: never true"
    text_only = types == {"string"}

    def mismatched(value: Any) -> bool:
        return ((isinstance(value, str) and "string" not in types) or (text_only and not isinstance(value, str))
                or (isinstance(value, bool) and "boolean" not in types))

    if values and all(mismatched(v) for v in values):
        return (f"{cond.attribute!r} is {' or '.join(sorted(types))}, compared with "
                f"{'a string' if isinstance(values[0], str) else type(values[0]).__name__}: never true")
    if enum is not None and cond.op in ("==", "in") and values and all(v not in enum for v in values):
        return f"{cond.attribute!r} is one of {list(enum)}: {cond.value!r} never matches"
    return None


def _never_true_on(cond: Condition, attribute: str, events: frozenset[str], plan: TrackingPlan) -> str | None:
    """`_never_true` for an attribute of these event types, as their schemas declare it."""
    found = [kinds[attribute] for t in events if attribute in (kinds := _schema_kinds(plan, t))]
    return _never_true(cond, _union(found)) if found else None


def _check_signal_where(path: str, signals: list[Signal], errors: list[RulesError], plan: TrackingPlan) -> None:
    """A signal's `where` that no event can meet (`amount >= "100"` on a number) counts nothing: refused,
    as the same condition in a rule's `when` is."""
    for signal in signals:
        conditions = getattr(signal, "where", ())
        if not conditions:
            continue
        events = getattr(signal, "start", None) or signal.touched_by
        where = Where(path, f"signal '{signal.name}'", errors)
        for cond in leaves(tuple(conditions)):
            why = _never_true_on(cond, cond.attribute, events, plan)
            if why:
                where.report("where", f"in {cond.text!r}: {why}")


def _consequence(attribute: str, broken: set[str]) -> bool:
    """Whether an unknown attribute is one of a signal that failed to load (its mistake is reported)."""
    return any(attribute == b or attribute.startswith((b + ".", b + "_")) for b in broken)


def _load_rule(path: str, body: dict[str, Any], triggers: dict[str, frozenset[str]], attributes: set[str],
               trigger_fields: dict[str, str], broken: set[str], errors: list[RulesError],
               trigger_kinds: dict[str, dict[str, Kinds]] | None = None, require_address: bool = False,
               number: int = 0) -> Rule | None:
    """`triggers`: every name a rule can be `on` (event types, absences), with the attributes each
    carries. `trigger_fields`: signal attributes that read a trigger attribute. `broken`: signals
    that failed to load. `require_address`: the file's default (`[addresses] require`). Mistakes go to
    `errors`; None when there was one."""
    before = len(errors)
    rule_id = body.get("id")
    # A rule without a usable id is named by its place in the file.
    label = (f"rule {rule_id!r}" if isinstance(rule_id, str) and rule_id and len(rule_id) <= MAX_NAME
             else f"[[rule]] #{number}")
    if rule_id is None:
        errors.append(RulesError(f"{path}: {label}: field 'id': is required (lowercase letters, digits, _ . -)"))
    elif isinstance(rule_id, str) and len(rule_id) > MAX_NAME:
        # A rule's id is in every decision, metric label and log line about it.
        errors.append(RulesError(f"{path}: {label}: field 'id': at most {MAX_NAME} characters; got {len(rule_id)}"))
    elif not isinstance(rule_id, str) or not re.fullmatch(r"[a-z0-9_.-]+", rule_id):
        errors.append(RulesError(f"{path}: {label}: field 'id': must be lowercase letters, digits, _ . -; "
                                 f"got {rule_id!r}"))
    where = Where(path, label, errors)
    where.check_keys(body, _RULE_FIELDS)
    when = body.get("when", [])
    conditions: list[Condition | Group] = []
    if not isinstance(when, list):
        where.report("when", "must be a list of conditions")
    else:
        for text in when:
            condition = where.attempt(parse_when_item, where, text)
            if condition is not None:
                conditions.append(condition)
    raw_on = body.get("on")
    not_triggers = sorted({n for n in raw_on if isinstance(n, str) and n in attributes and n not in triggers}
                          ) if isinstance(raw_on, list) else []
    if not_triggers:  # `on = ["opens"]` where opens is a count: say what it is, not "unknown name"
        where.report("on", f"{not_triggers} can be read in 'when' but not triggered on: a rule is on event "
                           f"types and absences")
    on = where.names(body, "on", set(triggers) | broken, ignore=set(not_triggers))
    known_on = on - broken
    trigger_attributes: set[str] = set().union(*(triggers[name] for name in known_on))

    def known(field: str, name: str, text: str) -> None:
        """Whether a rule can read `name` (in `when` or `params`); a mistake names the field."""
        if name.startswith(TRIGGER_PREFIX):
            # Nothing known to be on (its names refused above): no second error about what it carries.
            if known_on == on and on and name[len(TRIGGER_PREFIX):] not in trigger_attributes:
                where.report(field, f"in {text!r}: {name!r} is not an attribute of what the rule is on "
                                    f"({', '.join(sorted(on))}); those have: {sorted(trigger_attributes) or 'none'}")
        elif name not in attributes:
            if not _consequence(name, broken):
                where.report(field, f"in {text!r}: unknown attribute {name!r}; "
                                    f"known: {sorted(attributes)} or trigger.<attribute>")
        elif name in trigger_fields and known_on == on and on and trigger_fields[name] not in trigger_attributes:
            where.report(field, f"in {text!r}: {name!r} is the value of the trigger's "
                                f"{trigger_fields[name]!r} group, and {', '.join(sorted(on))} carry no "
                                f"{trigger_fields[name]!r}")

    for cond in leaves(tuple(conditions)):
        before_condition = len(errors)
        known("when", cond.attribute, cond.text)
        if len(errors) > before_condition:
            continue
        why = None
        if cond.attribute == "trigger" and cond.op in ("==", "in") and on:
            # The trigger's name: only the names the rule is `on` can match (a typo never does).
            names = cond.value if cond.op == "in" else [cond.value]
            if names and all(n not in on for n in names):
                why = f"the rule is on {sorted(on)}: {cond.value!r} never matches"
        elif cond.attribute.startswith(TRIGGER_PREFIX):
            if trigger_kinds is not None and known_on == on:
                attribute = cond.attribute[len(TRIGGER_PREFIX):]
                found = [trigger_kinds[t][attribute] for t in on if attribute in trigger_kinds.get(t, {})]
                why = _never_true(cond, _union(found)) if found else None
        elif cond.attribute in _BUILT_IN_KINDS and not _consequence(cond.attribute, broken):
            # A profile attribute (no signal may take its name: one that tried is reported already).
            why = _never_true(cond, _BUILT_IN_KINDS[cond.attribute])
        if why:
            where.report("when", f"in {cond.text!r}: {why}")
    params = _params(where, body.get("params", {}))
    for name, attribute in params:
        known(f"params.{name}", attribute, attribute)
    action = body.get("action")
    if action is None:
        where.report("action", "is required (e.g. send_email, show_ad, call_back)")
    elif not isinstance(action, str) or not action:
        where.report("action", f"must be a non-empty string (e.g. send_email, show_ad, call_back); got {action!r}")
    channel = body.get("channel")
    if channel not in DECISION_CHANNELS:
        where.report("channel", f"must be one of {list(DECISION_CHANNELS)}; got {channel!r}")
    for key in ("offer", "description"):
        if body.get(key) is not None and not isinstance(body[key], str):
            where.report(key, "must be a string")
    offer = body.get("offer")
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > MAX_INTEGER:
        where.report("priority", f"must be an integer from -{MAX_INTEGER} to {MAX_INTEGER} (higher wins)")
    promotion = body.get("promotion", True)
    if not isinstance(promotion, bool):
        where.report("promotion", "must be true or false")
    purpose = body.get("purpose", "marketing")
    if not isinstance(purpose, str) or not purpose:
        where.report("purpose", "must be a non-empty string (the consent purpose, e.g. marketing, service)")
    flags = {key: body.get(key, default) for key, default in (("require_address", require_address),
                                                              ("capped", True))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            where.report(key, "must be true or false")
    cooldown, expiry = where.duration(body, "cooldown", "1d", zero=True), where.duration(body, "expiry", "1d")
    if len(errors) > before:
        return None
    return Rule(rule_id, on, tuple(conditions), action, channel, offer, priority, cooldown, expiry,  # type: ignore[arg-type]
                purpose, promotion, str(body.get("description", "")), flags["require_address"], flags["capped"],
                params)


def _params(where: Where, raw: Any) -> tuple[tuple[str, str], ...]:
    """`params = { product_id = "trigger.sku", segment = "segment" }`: decision parameter -> attribute."""
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        where.report("params", 'must be a table of <name> = "<attribute>", e.g. { product_id = "trigger.sku" }')
        return ()
    for name in raw:
        if not _PARAM_NAME.fullmatch(name):
            where.report(f"params.{name}", "a parameter name is lowercase letters, digits and _")
    return tuple(raw.items())


def _addresses(where: Where, section: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """`[addresses]`: per decision channel, the identifier types that address it, best first (`require`,
    the rules' default for `require_address`, is read by `check_rules`)."""
    where.check_keys(section, {*DECISION_CHANNELS, "require"})
    if not isinstance(section.get("require", False), bool):
        where.report("require", "must be true (every rule's require_address defaults to true) or false")
    chosen = {}
    for channel, raw in section.items():
        if channel not in DECISION_CHANNELS:
            continue
        if (not isinstance(raw, list) or not raw or len(set(raw)) != len(raw)
                or not all(isinstance(t, str) and t in ID_TYPES for t in raw)):
            where.report(channel, f"must list identifier types once each, best first, from {sorted(ID_TYPES)}; "
                                  f"got {raw!r}")
            continue
        chosen[channel] = tuple(raw)
    return chosen


def _cap(where: Where, key: str, raw: Any) -> Cap:
    if not isinstance(raw, dict) or "limit" not in raw:
        raise where.fail(key, "must be a table like { limit = 2, window = \"24h\" }")
    unknown = sorted(set(raw) - {"limit", "window"})
    if unknown:  # a typo (`windw`) or an option that does not exist (`promotions_only`) is not ignored
        raise where.fail(f"{key}.{unknown[0]}", "unknown field; a cap has only limit and window "
                                                "(caps by purpose: [caps] purposes, or a rule's capped = false)")
    limit = raw["limit"]
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_INTEGER:
        raise where.fail(f"{key}.limit", f"must be an integer from 0 to {MAX_INTEGER}")
    return Cap(limit, where.duration(raw, "window", name=f"{key}.window"))


def _section(path: str, doc: dict[str, Any], key: str, errors: list[RulesError]) -> dict[str, Any]:
    try:
        return table(path, f"[{key}]", doc.get(key, {}))
    except RulesError as error:
        errors.append(error)
        return {}


def _signals(path: str, doc: dict[str, Any], errors: list[RulesError],
             event_types: frozenset[str] = EVENT_TYPES) -> tuple[list[Signal], set[str]]:
    """Every signal that loads (with the companions an option adds), and the names of those that don't."""
    signals: list[Signal] = []
    broken: set[str] = set()
    for number, (name, body) in enumerate(_section(path, doc, "signals", errors).items(), 1):
        before = len(errors)
        if len(name) > MAX_NAME:
            errors.append(RulesError(f"{path}: signal #{number} ({name[:24]!r}...): the name is {len(name)} "
                                     f"characters; at most {MAX_NAME} (conditions and decisions carry it)"))
        elif not _SIGNAL_NAME.fullmatch(name):
            errors.append(RulesError(f"{path}: signal {name!r}: the name must be lowercase letters, digits and _, "
                                     "starting with a letter (conditions read it as an attribute)"))
        elif name in event_types:
            errors.append(RulesError(f"{path}: signal '{name}': the name is an event type's: a rule on "
                                     f"'{name}' would fire on both"))
        try:
            signal = load_signal(path, name, body, event_types, errors)
        except RulesError as error:
            errors.append(error)
        except Exception:
            if len(errors) == before:
                raise
            # else: a consequence of a mistake already recorded (the loader read a placeholder)
        if len(errors) > before:
            broken.add(name)
            continue
        signals.append(signal)
        signals.extend(getattr(signal, "companions", ()))
    names = [s.name for s in signals]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(RulesError(f"{path}: signal '{name}': the name is used twice (a companion of a "
                                 f"signal with reset_on is named <signal>@reset)"))
    # What conditions read by name: a signal's attribute that is a profile attribute's, or another
    # signal's, would replace it without a word (`[signals.orders]` counting page views).
    provided: dict[str, str] = {}
    for signal in signals:
        for attribute in signal.attributes:
            if attribute in _BUILT_IN:
                errors.append(RulesError(f"{path}: signal '{signal.name}': it gives the attribute '{attribute}', "
                                         "which is a profile attribute's name; name the signal otherwise"))
                broken.add(signal.name)  # what rules read of it follows from this mistake: not repeated
            elif attribute in provided and provided[attribute] != signal.name:
                errors.append(RulesError(f"{path}: signal '{signal.name}': it gives the attribute '{attribute}', "
                                         f"which signal '{provided[attribute]}' gives too; name one otherwise"))
            provided.setdefault(attribute, signal.name)
    return signals, broken


def _bind_start_when(path: str, signals: list[Signal], getters: dict[str, Any],
                     errors: list[RulesError], plan: TrackingPlan = SHIPPED) -> list[Signal]:
    """Absences with `start_when` read other signals as they stand after the event: their conditions
    are checked against every attribute and compiled, and they move after every other signal (the
    engine applies signals in this order), keeping their own order."""
    gated = [s for s in signals if getattr(s, "start_when", ())]
    for signal in gated:
        where = Where(path, f"signal '{signal.name}'", errors)
        start: frozenset[str] = getattr(signal, "start", frozenset())
        carried = {a for t in start for a in plan.attributes(t)}
        before = len(errors)
        for cond in leaves(signal.start_when):  # type: ignore[attr-defined]
            name = cond.attribute
            why = None
            if name.startswith(TRIGGER_PREFIX):
                if name[len(TRIGGER_PREFIX):] not in carried:
                    where.report("start_when", f"in {cond.text!r}: {name!r} is not an attribute of its start "
                                               f"events; they have: {sorted(carried) or 'none'}")
                else:
                    why = _never_true_on(cond, name[len(TRIGGER_PREFIX):], start, plan)
            elif name not in getters or name in signal.attributes:
                where.report("start_when", f"in {cond.text!r}: unknown attribute {name!r} (an absence cannot "
                                           f"read itself); known: {sorted(set(getters) - set(signal.attributes))}")
            elif name in _BUILT_IN_KINDS:
                why = _never_true(cond, _BUILT_IN_KINDS[name])
            if why:  # as a rule's `when`: a start that could never happen is a mistake, not a quiet no-op
                where.report("start_when", f"in {cond.text!r}: {why}")
        if len(errors) == before:
            signal.bind_start_when(getters)  # type: ignore[attr-defined]
    return [s for s in signals if s not in gated] + _gated_in_reading_order(path, gated, errors)


def _gated_in_reading_order(path: str, gated: list[Signal], errors: list[RulesError]) -> list[Signal]:
    """Absences with `start_when`, each after the gated ones it reads (declaration order otherwise), so
    that one reads another as it stands after the event whatever the order they are written in. Two that
    read each other are refused: which one starts would depend on that order (an outside probe: swapping
    two tables in the file changed which absence ever fired)."""
    reads = {s.name: {o.name for o in gated if o is not s
                      and any(c.attribute in o.attributes for c in leaves(s.start_when))}  # type: ignore[attr-defined]
             for s in gated}
    ordered: list[Signal] = []
    placed: set[str] = set()
    while len(ordered) < len(gated):
        ready = [s for s in gated if s.name not in placed and reads[s.name] <= placed]
        if not ready:
            for s in gated:
                if s.name not in placed:
                    others = sorted(reads[s.name] - placed)
                    Where(path, f"signal '{s.name}'", errors).report(
                        "start_when", f"reads {', '.join(repr(o) for o in others)}, whose start_when reads it in "
                                      "turn: which one starts would depend on the order they are declared in")
            return ordered + [s for s in gated if s.name not in placed]
        ordered += ready[:1]
        placed.add(ready[0].name)
    return ordered


def _scopes(path: str, raw: Any, errors: list[RulesError]) -> tuple[SuppressionScope, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        errors.append(RulesError(f"{path}: [suppression]: field 'scope': write each as a [[suppression.scope]] table"))
        return ()
    scopes: list[SuppressionScope] = []
    for n, body in enumerate(raw, start=1):
        where = Where(path, f"[[suppression.scope]] #{n}", errors)
        where.check_keys(body, {"channels", "purposes", "after_complaint", "description"})
        if body.get("channels") == []:
            where.report("channels", "must name at least one channel (leave it out: every channel)")
        channels = where.names(body, "channels", set(DECISION_CHANNELS), required=False)
        purposes = body.get("purposes")
        if purposes is not None and (not isinstance(purposes, list) or not purposes
                                     or not all(isinstance(p, str) and p for p in purposes)):
            where.report("purposes", "must be a list of purposes, e.g. [\"marketing\"]")
            purposes = None
        if "after_complaint" not in body:
            where.report("after_complaint", "is required (a duration; \"0s\": not suppressed)")
        ms = where.duration(body, "after_complaint", "0s", zero=True)
        scope = SuppressionScope(channels or None, frozenset(purposes) if purposes else None, ms)
        # The first scope that matches decides: one an earlier scope covers whole would never apply.
        covering = next((m for m, earlier in enumerate(scopes, start=1) if _covers(earlier, scope)), None)
        if covering is not None:
            where.report("channels", f"this scope never applies: #{covering} comes first and covers every channel "
                                     "and purpose it names (the first scope that matches decides)")
        scopes.append(scope)
    return tuple(scopes)


def _covers(earlier: SuppressionScope, later: SuppressionScope) -> bool:
    """Every decision `later` matches, `earlier` matches too (None: every channel, every purpose)."""
    return ((earlier.channels is None or (later.channels is not None and later.channels <= earlier.channels))
            and (earlier.purposes is None or (later.purposes is not None and later.purposes <= earlier.purposes)))


# The consent purposes a rule may have unless `[consent] purposes` lists the deployment's own.
DEFAULT_CONSENT_PURPOSES = ("marketing", "service")


def _consent_purposes(where: Where, raw: Any) -> frozenset[str] | None:
    """The purposes consent events are sent for, or None when the list is itself a mistake (reported)."""
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and _PURPOSE.fullmatch(p) for p in raw):
        where.report("purposes", "must be a non-empty list of purposes, each lowercase letters, digits and _ "
                                 "(e.g. [\"marketing\", \"service\", \"newsletter\"]): the purposes your consent "
                                 "events carry")
        return None
    return frozenset(raw)


PlanLike = TrackingPlan | str | Path | None


def _plan(tracking_plan: PlanLike) -> TrackingPlan:
    return tracking_plan if isinstance(tracking_plan, TrackingPlan) else load_plan(tracking_plan)


def check_rules(path: str | Path, tracking_plan: PlanLike = None) -> tuple[RuleSet | None, list[RulesError]]:
    """Read, validate and compile a rules file: the RuleSet, or None and every mistake found, each
    naming file, item and field (a mistake that only follows from another is not repeated).

    `tracking_plan`: the plan (or its file, `flow.tracking_plan`) whose event types and attributes the
    rules may name; None or "": the shipped schemas. A bad plan's mistakes are the errors reported."""
    try:
        plan = _plan(tracking_plan)
    except PlanError as error:
        return None, [RulesError(mistake) for mistake in error.mistakes]
    with reading_rules_with(plan):
        return _check_rules(str(path), plan)


def _check_rules(path: str, plan: TrackingPlan) -> tuple[RuleSet | None, list[RulesError]]:
    try:
        doc = read_toml(path, RulesError)
    except RulesError as error:
        return None, [error]
    errors: list[RulesError] = []
    Where(path, "top level", errors).check_keys(
        doc, {"signals", "rule", "caps", "consent", "late", "suppression", "dedupe", "addresses"})
    signals, broken = _signals(path, doc, errors, plan.types)
    triggers = {t: frozenset(plan.attributes(t)) for t in plan.types}
    triggers.update({s.name: s.trigger_attributes for s in signals if s.fires})
    trigger_fields = {a: f for s in signals for a, f in getattr(s, "trigger_fields", {}).items()}
    trigger_kinds = _trigger_kinds(signals, plan)
    addressing = _section(path, doc, "addresses", errors)
    addresses = _addresses(Where(path, "[addresses]", errors), addressing)
    require_address = addressing.get("require") is True
    getters = attribute_getters(signals, plan.channels)
    signals = _bind_start_when(path, signals, getters, errors, plan)
    _check_signal_where(path, signals, errors, plan)
    raw_rules = doc.get("rule", [])
    rules: list[Rule] = []
    if not isinstance(raw_rules, list) or not raw_rules:
        errors.append(RulesError(f"{path}: at least one [[rule]] is required"))
        raw_rules = []
    for i, body in enumerate(raw_rules):
        try:
            body = table(path, f"[[rule]] #{i + 1}", body)
        except RulesError as error:
            errors.append(error)
            continue
        rule = _load_rule(path, body, triggers, set(getters), trigger_fields, broken, errors, trigger_kinds,
                          require_address, i + 1)
        if rule is not None:
            rules.append(rule)
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            errors.append(RulesError(f"{path}: rule '{rule.id}': field 'id': duplicate rule id"))
        seen.add(rule.id)
    caps = _section(path, doc, "caps", errors)
    where = Where(path, "[caps]", errors)
    where.check_keys(caps, {"overall", "purposes", *DECISION_CHANNELS})
    capped_purposes = caps.get("purposes")
    if capped_purposes is not None and (not isinstance(capped_purposes, list) or not capped_purposes or not all(
            isinstance(p, str) and p for p in capped_purposes)):
        # An empty list would cap nothing at all: every cap of the file silently off.
        where.report("purposes", "must be a non-empty list of purposes, e.g. [\"marketing\"] (the caps apply to "
                                 "those only; leave it out to cap every purpose)")
        capped_purposes = None
    channel_caps = {ch: cap for ch in DECISION_CHANNELS if ch in caps
                    if (cap := where.attempt(_cap, where, ch, caps[ch])) is not None}
    overall = where.attempt(_cap, where, "overall", caps["overall"]) if "overall" in caps else None
    consent = _section(path, doc, "consent", errors)
    where = Where(path, "[consent]", errors)
    where.check_keys(consent, {*DECISION_CHANNELS, "purposes"})
    consent_purposes = _consent_purposes(where, consent.get("purposes", list(DEFAULT_CONSENT_PURPOSES)))
    policy: dict[str, Literal["opt_in", "opt_out"]] = dict.fromkeys(DECISION_CHANNELS, "opt_in")
    for ch, value in consent.items():
        if ch == "purposes":
            continue
        if value not in ("opt_in", "opt_out"):
            where.report(ch, "must be \"opt_in\" or \"opt_out\"")
        elif ch in policy:
            policy[ch] = value
    late = _section(path, doc, "late", errors)
    where = Where(path, "[late]", errors)
    where.check_keys(late, {"allowed_lateness", "policy"})
    if late.get("policy", "drop") not in ("drop", "apply"):
        where.report("policy", "must be \"drop\" or \"apply\"")
    lateness = where.duration(late, "allowed_lateness", "5m")
    for signal in signals:  # an absence's newest cancel is kept until any start it cancels would have fired
        if isinstance(signal, Reset) and getattr(signal.target, "kind", None) == "absence":
            signal.lifetime_ms = signal.target.after_ms + lateness
    # An absence is decided at its deadline but fires once the allowed lateness has passed (an event
    # dated before the deadline may still come): a rule on it that expires within that wait never
    # reaches anyone live, yet uses its cooldown and caps, and no lower rule on the trigger is tried
    # (an outside probe: a 2-minute cart push was never sent).
    absences = {signal.name for signal in signals if getattr(signal, "kind", None) == "absence"}
    for rule in rules:
        if rule.on & absences and rule.expiry_ms <= lateness:
            errors.append(RulesError(
                f"{path}: rule '{rule.id}': field 'expiry': {_duration_text(rule.expiry_ms)} is not longer than "
                f"[late] allowed_lateness ({_duration_text(lateness)}): a decision on the absence "
                f"{sorted(rule.on & absences)[0]!r} is dated at its deadline and made once the allowed lateness "
                "has passed, so every one would be expired when sent (and still use the rule's cooldown and "
                "caps); give it an expiry well beyond the allowed lateness"))
    suppression = _section(path, doc, "suppression", errors)
    where = Where(path, "[suppression]", errors)
    where.check_keys(suppression, {"after_complaint", "scope"})
    after_complaint = where.duration(suppression, "after_complaint", "30d")
    scopes = _scopes(path, suppression.get("scope"), errors)
    # A rule's purpose no consent event carries (a typo: "marketting") would never be granted on an opt_in
    # channel, and, worse, never revoked on an opt_out one: the customer who opted out still gets it.
    for rule in rules:
        if consent_purposes is not None and rule.purpose not in consent_purposes:
            errors.append(RulesError(
                f"{path}: rule '{rule.id}': field 'purpose': {rule.purpose!r} is not one of the consent purposes "
                f"{sorted(consent_purposes)}: no consent event would grant or revoke it (on an opt_out channel "
                "it would reach customers who opted out); if your consent source sends it, add it to "
                "[consent] purposes"))
    # A purpose no rule has (a typo: "marketting") would cap or suppress nothing, without a word.
    purposes = {r.purpose for r in rules}
    named = [("[caps]", "purposes", capped_purposes or ())] + [
        (f"[[suppression.scope]] #{n}", "purposes", scope.purposes or ()) for n, scope in enumerate(scopes, 1)]
    for item, field, listed in named:
        unknown = sorted(set(listed) - purposes)
        if unknown and len(rules) == len(raw_rules):  # every rule loaded: their purposes are all known
            errors.append(RulesError(f"{path}: {item}: field '{field}': no rule has the purpose(s) {unknown}; "
                                     f"the rules' purposes: {sorted(purposes)}"))
    if capped_purposes is not None:
        for body in raw_rules:
            purpose = body.get("purpose", "marketing") if isinstance(body, dict) else None
            if isinstance(body, dict) and body.get("capped") is True and purpose not in capped_purposes:
                errors.append(RulesError(
                    f"{path}: rule {body.get('id')!r}: field 'capped': true, but its purpose {purpose!r} is not in "
                    f"[caps] purposes {sorted(capped_purposes)}, so no cap applies to it; add the purpose there, "
                    "or leave capped out"))
    dedupe = _section(path, doc, "dedupe", errors)
    where = Where(path, "[dedupe]", errors)
    where.check_keys(dedupe, {"horizon"})
    horizon = where.duration(dedupe, "horizon", "1d")
    if errors:
        return None, errors
    ruleset = RuleSet(
        rules=tuple(rules), signals=tuple(signals), channel_caps=channel_caps, overall_cap=overall,
        consent_policy=policy, complaint_suppression_ms=after_complaint,
        late=LatePolicy(lateness, late.get("policy", "drop")), dedupe_horizon_ms=horizon,
        source=path, getters=getters, suppression_scopes=scopes,
        capped_purposes=None if capped_purposes is None else frozenset(capped_purposes),
        address_types={**CHANNEL_ADDRESS_TYPES, **addresses},
        address_override=tuple({**CHANNEL_ADDRESS_TYPES, **addresses}.items()) if addresses else None,
        plan=plan, consent_purposes=consent_purposes)
    for r in rules:
        for _, attribute in r.params:
            add_getter(attribute, getters)
    # Per trigger, its rules by priority (ties by id), each compiled: the order arbitration tries.
    ordered = sorted(rules, key=lambda r: (-r.priority, r.id))
    ruleset.by_trigger.update({
        name: tuple(CompiledRule(rule=r, matches=compile_conditions(r.when, getters),
                                 consent_keys=consent_keys(r.channel, r.purpose),
                                 needs_consent=policy.get(r.channel, "opt_in") == "opt_in",
                                 cap=channel_caps.get(r.channel),
                                 complaint_suppression_ms=ruleset.suppression_ms(r),
                                 capped=ruleset.is_capped(r))
                    for r in ordered if name in r.on)
        for name in sorted(set().union(*(r.on for r in rules)))
    })
    return ruleset, []


def load_configured_rules(config: Config) -> RuleSet:
    """The rules file and tracking plan a configuration names (`flow.rules_file`, `flow.tracking_plan`):
    what every command that runs or reads the rules as the flow does should load, so that they agree."""
    path = config.flow.rules_file or DEFAULT_RULES_FILE
    if config.flow.rules_file and not Path(path).is_file():
        # Before, "<path>: cannot read ..." alone, which reads like a missing --config (an outside probe).
        raise RulesError(f"flow.rules_file: {path} is not a readable file"
                         + (" (a directory)" if Path(path).is_dir() else " (no such file)" if not Path(path).exists()
                            else ""))
    return load_rules(path, config.flow.tracking_plan)


def load_rules(path: str | Path, tracking_plan: PlanLike = None) -> RuleSet:
    """Read, validate and compile a rules file against a tracking plan (see `check_rules`); raises
    RulesError naming file, rule and field (the first mistake; `nextclick rules check` lists them all),
    or PlanError naming the plan's file and field."""
    plan = _plan(tracking_plan)
    ruleset, errors = check_rules(path, plan)
    if ruleset is None:
        more = len(errors) - 1
        if more:
            raise RulesError(f"{errors[0]} (and {more} more: `nextclick rules check {path}` lists them all)")
        raise errors[0]
    return ruleset


def _duration_text(ms: int) -> str:
    """A duration as the rules file would write it (the largest unit that divides it)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f'"{ms // size}{unit}"'
    return f'"{ms}ms"'
