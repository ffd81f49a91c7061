"""Seeing what rules see: `nextclick rules explain` (a story of events, trigger by trigger) and the
attributes of one profile as a rule would read them now (`nextclick profile get`).

`explain` runs the real engine on the story. Each rule's compiled check is wrapped so that, when
arbitration tries it, every condition is evaluated and recorded with the value it read; the gates'
verdicts are the Blocked candidates and the Decision the engine itself produced. Nothing here
decides differently from the flow: it only looks.

The story's clock: events are taken as arriving at their event time (a flow that keeps up). Before
each event, the timers that are due by its time run, as they would in the flow; after the last
event, the clock runs on until every pending absence has fired.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson

from nextclick.operators.conditions.compiler import CUSTOMER_CHANNEL, TRIGGER_PREFIX, View, compile_item
from nextclick.operators.conditions.model import Condition, Group, leaves
from nextclick.operators.engine.merge import merge_all
from nextclick.operators.engine.steps import due_at, on_event, on_timers
from nextclick.operators.errors import NextclickError
from nextclick.operators.events.tracking_plan import SHIPPED, TrackingPlan
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.parse import parse_message
from nextclick.operators.profile.facts import durable_view
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.records import DeadLetter, Event, Outcome, SourcePosition, Trigger
from nextclick.operators.rules.model import CompiledRule, Rule, RuleSet
from nextclick.operators.shard.common import note_ids

# Customer ids in a story are hashed with this key only to run the parser; output shows them as written.
_STORY_SECRET = b"nextclick rules explain"
_STORY_PARSE = dataclasses.replace(ParseConfig(), max_age_ms=0, max_future_skew_ms=2**62)


class StoryError(NextclickError, ValueError):
    """A line of the story is not a valid event; the message names the file, the line and why."""


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attributes_at(profile: Profile, ruleset: RuleSet, at_ms: int) -> dict[str, Any]:
    """Every attribute a rule of `ruleset` could name, as it would read it at `at_ms`: the durable
    ones and every signal's. Those that need a trigger (`trigger.*`, `customer_channel`, a group's
    `same_as_trigger`) are left out: a profile alone has none."""
    view = View(profile, Trigger("", "", at_ms, {}), ruleset.getters)
    trigger_fields = {a for s in ruleset.signals for a in getattr(s, "trigger_fields", {})}
    skip = {"trigger", CUSTOMER_CHANNEL} | trigger_fields
    out = durable_view(profile.facts, at_ms)
    for name in ruleset.getters:
        if name not in skip and not name.startswith(TRIGGER_PREFIX) and name not in out:
            out[name] = view.get(name)
    return out


# --- the story ---------------------------------------------------------------------------------------

class Story(list[tuple[int, str, Event | DeadLetter]]):
    """The story's lines in order: each an event, or the dead letter the flow would write for it; and per
    line the fields the parser dropped because the event type's schema does not declare them (a
    misspelt or undeclared attribute), so explain can say so."""

    dropped: dict[int, list[str]]

    @property
    def dead_letters(self) -> list[tuple[int, DeadLetter]]:
        return [(n, item) for n, _, item in self if isinstance(item, DeadLetter)]


def _undeclared(body: dict[str, Any], event_type: str, plan: TrackingPlan) -> list[str]:
    return sorted(k for k in body if k not in plan.schemas[event_type]["properties"])


def read_story(path: str | Path, plan: TrackingPlan = SHIPPED, consent_purposes: frozenset[str] | None = None) -> Story:
    """(line number, customer as written, event or dead letter) for every line; blank lines are skipped.

    Each line is an inbound event as the flow reads it (docs/data-contract.md), checked by the same
    parser with the same tracking plan and consent purposes (the rules'); `customer_id` names the customer
    (default "story"), and the Kafka key is that name. A line `{"key": K, "value": {event}}` is a message
    with its own key K, as the topic holds it: a web event keyed by a cookie. A line the flow would
    dead-letter stays in the story as that dead letter: the flow goes on past it, and so does the story."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise StoryError(f"{path}: cannot read: {exc.strerror}") from None
    events = Story()
    events.dropped = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            body = None
        value, key = line, None
        if isinstance(body, dict) and body.keys() == {"key", "value"} and isinstance(body["value"], dict) \
                and isinstance(body["key"], str):
            # A message as the topic holds it, key and value: an event keyed by a cookie, as web events
            # are (an outside probe: an anonymous cart, then a sign-in, could not be told otherwise).
            key, body = body["key"], body["value"]
            value = orjson.dumps(body)
        who = body.get("customer_id") if isinstance(body, dict) else None
        who = who if isinstance(who, str) and who.strip() else (key or "story")
        item = parse_message((key if key is not None else who).encode(), value, None,
                             SourcePosition(str(path), 0, n), secret=_STORY_SECRET, now_ms=0, config=_STORY_PARSE,
                             plan=plan, consent_purposes=consent_purposes)
        events.append((n, who, item))
        if isinstance(item, Event) and isinstance(body, dict):
            undeclared = _undeclared(body, item.type, plan)
            if undeclared:
                events.dropped[n] = undeclared
    if not events:
        raise StoryError(f"{path}: no events")
    return events


def refused_lines(path: str | Path, story: Story) -> StoryError | None:
    """The error `rules explain` exits with when the flow would dead-letter lines of the story: the first
    one's reason, and how many there are (each is also in the explanation, where it stands)."""
    dead = story.dead_letters
    if not dead:
        return None
    n, first = dead[0]
    more = f"; {len(dead)} lines would be dead-lettered" if len(dead) > 1 else ""
    return StoryError(f"{path}: line {n}: {first.reason}: {first.message} (the flow would dead-letter it and go "
                      f"on, as the explanation above does{more})")


@dataclasses.dataclass
class Tried:
    """One rule tried on one trigger: each condition's value and verdict, and whether all held."""

    rule: Rule
    conditions: list[dict[str, Any]]
    matched: bool


def traced_rules(ruleset: RuleSet, log: list[tuple[Trigger, Tried]]) -> RuleSet:
    """The ruleset with each rule's check wrapped to record every condition's value and verdict."""
    getters = ruleset.getters

    def wrap(compiled: CompiledRule) -> CompiledRule:
        checks = [(c, compile_item(c, getters)) for c in compiled.rule.when]

        def value(view: View, item: Condition | Group) -> Any:
            """A condition's value; a group's: the value of every condition in it, by attribute."""
            if isinstance(item, Condition):
                return view.get(item.attribute)
            return {c.attribute: view.get(c.attribute) for c in leaves(item.items)}

        def matches(view: View) -> bool:
            conditions = [{"condition": c.text, "value": value(view, c), "holds": check(view)}
                          for c, check in checks]
            matched = all(c["holds"] for c in conditions)
            log.append((view.trigger, Tried(compiled.rule, conditions, matched)))
            return matched
        return dataclasses.replace(compiled, matches=matches)

    return dataclasses.replace(ruleset, by_trigger={name: tuple(wrap(c) for c in candidates)
                                                    for name, candidates in ruleset.by_trigger.items()})


def _report(customer: str, source: str, ruleset: RuleSet, log: list[tuple[Trigger, Tried]],
            out: Outcome) -> Iterator[dict[str, Any]]:
    """One entry per trigger judged in this turn, in the order arbitration judged them."""
    by_trigger: dict[str, tuple[Trigger, list[Tried]]] = {}
    for trigger, one in log:
        by_trigger.setdefault(trigger.trigger_id, (trigger, []))[1].append(one)
    for trigger_id, (trigger, tried) in by_trigger.items():
        blocked = {b.rule_id: b.reason for b in out.blocked if b.trigger_id == trigger_id}
        decision = next((d for d in out.decisions if d.trigger_id == trigger_id), None)
        seen = {t.rule.id for t in tried}
        rules = []
        for t in tried:
            if not t.matched:
                verdict = "conditions failed"
            elif t.rule.id in blocked:
                verdict = f"blocked: {blocked[t.rule.id]}"
            else:
                verdict = "decided"
            rules.append({"rule": t.rule.id, "priority": t.rule.priority, "conditions": t.conditions,
                          "outcome": verdict})
        for candidate in ruleset.by_trigger.get(trigger.name, ()):
            if candidate.rule.id not in seen:
                rules.append({"rule": candidate.rule.id, "priority": candidate.rule.priority, "conditions": [],
                              "outcome": "not tried: a rule before it decided"})
        yield {"customer": customer, "source": source, "trigger": trigger.name, "trigger_id": trigger_id,
               "at": rfc3339(trigger.ts), "attributes": trigger.attrs, "rules": rules,
               "decision": None if decision is None else {
                   "rule": decision.rule_id, "action": decision.action, "channel": decision.channel,
                   "offer": decision.offer, "purpose": decision.purpose, "promotion": decision.promotion,
                   "expires_at": rfc3339(decision.expires_at), "signals": decision.signals,
                   **({} if decision.params is None else {"params": decision.params})}}


def explain(ruleset: RuleSet, story: list[tuple[int, str, Event | DeadLetter]]) -> Iterator[dict[str, Any]]:
    """For each trigger of the story (events, then absences as the clock fires them): every rule on
    it with its conditions' values and verdicts, the gate that blocked it, and the decision; for a line
    the flow would dead-letter, its reason."""
    log: list[tuple[Trigger, Tried]] = []
    traced = traced_rules(ruleset, log)
    profiles: dict[str, Profile] = {}
    names: dict[str, str] = {}

    def turn(customer: str, source: str, run: Callable[[Profile, Outcome], Any]) -> tuple[list[dict[str, Any]],
                                                                                             Outcome]:
        out = Outcome()
        log.clear()
        run(profiles[customer], out)
        return list(_report(names[customer], source, ruleset, log, out)), out

    def timers_until(now: int, only_absences: bool = False) -> Iterator[dict[str, Any]]:
        while True:
            due = sorted((at, c) for c, p in profiles.items()
                         if (at := _absence_due(p, ruleset) if only_absences else due_at(p, ruleset)) is not None
                         and at <= now)
            if not due:
                return
            at, customer = due[0]
            yield from turn(customer, f"clock {rfc3339(at)}",
                            lambda p, out: on_timers(p, traced, at, out))[0]  # noqa: B023 - called at once

    linked: dict[str, str] = {}  # an identifier's key -> the key of the story's profile it was linked into
    for line, who, event in story:
        if isinstance(event, DeadLetter):
            yield {"customer": who, "source": f"line {line}", "dead_letter": event.reason, "message": event.message}
            continue
        yield from timers_until(event.ts)
        home = linked.get(event.customer, event.customer)
        if home != event.customer:  # keyed by an identifier linked before: its profile is the linked one
            event = msgspec.structs.replace(event, customer=home)
        names.setdefault(event.customer, who)
        if event.customer not in profiles:
            profiles[event.customer] = new_profile(event.customer)
        if event.links:
            _link(profiles, names, linked, event, ruleset)
        entries, out = turn(event.customer, f"line {line}",
                            lambda p, out: _apply(p, event, traced, out))  # noqa: B023 - called at once
        dropped = getattr(story, "dropped", {}).get(line)
        if dropped:
            own = [e for e in entries if e["trigger_id"] == event.event_id and e["trigger"] == event.type]
            for entry in own:
                entry["dropped"] = dropped
            if not own:
                entries.append({"customer": who, "source": f"line {line}", "trigger": event.type,
                                "trigger_id": event.event_id, "at": rfc3339(event.ts), "attributes": event.attrs,
                                "rules": [], "decision": None, "dropped": dropped,
                                "note": f"no rule is on {event.type}"})
        if (out.duplicate or out.late) and event.type in ruleset.by_trigger:
            entries.append({"customer": who, "source": f"line {line}", "trigger": event.type,
                            "trigger_id": event.event_id, "at": rfc3339(event.ts), "attributes": event.attrs,
                            "rules": [], "decision": None,
                            "note": "a repeated event_id: ignored" if out.duplicate else
                                    "late (older than the customer's newest event minus the allowed lateness): "
                                    "it triggers nothing"})
        yield from entries
    yield from timers_until(2**62, only_absences=True)


def _link(profiles: dict[str, Profile], names: dict[str, str], linked: dict[str, str], event: Event,
          ruleset: RuleSet) -> None:
    """As the identity stage links what an event names (a login's email, an identify's device): each
    identifier joins the event's profile, and a profile the story kept for it so far merges in. A second
    customer id never joins (two customer ids never merge); the other guards (limits, blocked values:
    the parser's) are not applied here."""
    profile = profiles[event.customer]
    note_ids(profile, event)
    for id_type, key in event.links:
        if linked.get(key, key) == event.customer:
            continue
        if id_type == "customer" and profile.ids.get("customer"):
            continue
        own = profiles.pop(key, None)
        if own is not None:
            merge_all(profile, [own], ruleset)
            names.pop(key, None)
        linked[key] = event.customer
        keys = profile.ids.setdefault(id_type, [])
        if key not in keys:
            keys.append(key)


def _apply(profile: Profile, event: Event, ruleset: RuleSet, out: Outcome) -> None:
    """As the flow's shard applies an event: the profile first learns the type of identifier it is keyed
    by (whether a channel has an address, and so whether a decision uses up a cooldown, depends on it)."""
    note_ids(profile, event)
    on_event(profile, event, ruleset, out)


def _absence_due(profile: Profile, ruleset: RuleSet) -> int | None:
    """Wall-clock time the earliest pending absence fires at (deadline plus the allowed lateness)."""
    deadlines = [d for s in ruleset.firing if (state := profile.signals.get(s.name)) is not None
                 and (d := s.deadline(state)) is not None]
    return min(deadlines) + ruleset.late.allowed_lateness_ms if deadlines else None


def render(entry: dict[str, Any]) -> str:
    """An entry as text: the trigger, then each rule with its conditions and outcome."""
    if "dead_letter" in entry:
        return f"{entry['source']}: dead-lettered ({entry['dead_letter']}): {entry['message']}"
    attrs = ", ".join(f"{k}={v!r}" for k, v in entry["attributes"].items())
    lines = [f"{entry['at']}  {entry['customer']}  {entry['trigger']}({attrs})  [{entry['source']}]"]
    if "dropped" in entry:
        lines.append(f"  dropped: {', '.join(entry['dropped'])} (not in the {entry['trigger']} schema: rules cannot "
                     f"read them)")
    if "note" in entry:
        lines.append(f"  {entry['note']}")
    for rule in entry["rules"]:
        lines.append(f"  {rule['rule']} (priority {rule['priority']}): {rule['outcome']}")
        for c in rule["conditions"]:
            lines.append(f"      {'ok  ' if c['holds'] else 'FAIL'} {c['condition']}   (value: {c['value']!r})")
    decision = entry["decision"]
    if decision is not None:
        lines.append(f"  => {decision['action']} on {decision['channel']}"
                     f"{' offer ' + decision['offer'] if decision['offer'] else ''} (rule {decision['rule']}, "
                     f"expires {decision['expires_at']})"
                     + (f" params {decision['params']!r}" if "params" in decision else ""))
    elif entry["rules"]:
        lines.append("  => no decision")
    return "\n".join(lines)
