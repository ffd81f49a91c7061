"""Next best action: the rules judged for an interaction happening now, on a profile view record.

`GET /v1/profiles/{id_type}/{id}/next-best-action?channel=call_center` (flows/serve.py) asks what the
representative should offer, and why. The answer is the flow's own arbitration (operators/rules/
arbitration.decide, gates and all) run on a throwaway profile rebuilt from the view record, with every
condition traced as `nextclick rules explain` traces it (operators/tools/explain.py). Nothing is
emitted and nothing is written: no decision, no cooldown or cap used; the same call gives the same
answer until the profile changes.

The trigger is a synthetic event of the channel's interaction type (`INTERACTIONS`), stamped now, with
the trigger attributes the caller gives (each validated by the type's schema, as the flow's parser does);
it is folded into the durable facts first, as the flow would fold a real one (`call_center_contacts`
counts this call).

What the view record carries is exact for the gates (consent, cooldowns, caps, identifiers) and for the
durable attributes, but not everything a rule can read. Approximated (docs/profile-service.md):
- transient signals other than absences (counts, sums, distinct, sessions, ...): the view has no raw
  state, so their attributes read as missing (null) and each such condition says `"known": false`;
- absences: `<name>_pending` as of the record (before this interaction; carried attributes unknown);
- `preferred_channel`: as of the record, not counting this interaction;
- the last complaint: the view has whole days since it (`days_since_complaint`); taken as the latest time
  those days allow (and no later than the last call-center contact), so complaint suppression is never
  shorter than the flow's, at most a day longer;
- consent: the view has each entry's time but not its event id, by which the flow breaks a tie: of two
  entries at the same millisecond that disagree (a grant and a withdrawal), the withdrawal is taken as
  the later (the safe side: `opted_out`, as complaint suppression errs long), and `approximated` lists
  `consent_tie` when a candidate whose conditions hold is judged on such a tie;
- everything as of the record (`as_of`, the last epoch commit): later events are not seen.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from nextclick.operators.channels import CHANNELS, EVENT_CHANNELS
from nextclick.operators.conditions.compiler import CUSTOMER_CHANNEL, Getter
from nextclick.operators.conditions.model import Condition, Group, leaves
from nextclick.operators.errors import NextclickError
from nextclick.operators.events.schemas import ATTRS_KEYWORD
from nextclick.operators.events.tracking_plan import TrackingPlan
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.parse import parse_message
from nextclick.operators.profile.facts import DAY_MS, apply_facts
from nextclick.operators.profile.model import Facts, History, Order, Profile
from nextclick.operators.records import DeadLetter, Outcome, SourcePosition, Trigger
from nextclick.operators.rules.arbitration import decide
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.tools.explain import Tried, rfc3339, traced_rules

# The event type an interaction on each channel is: what the flow would receive when it happens.
# `store` has none short of a purchase: ask for `event=store_purchase` (with its amount) explicitly.
INTERACTIONS: dict[str, str] = {"call_center": "call_center_contact", "web": "page_view", "mobile": "app_open",
                                "email": "email_open"}
# Query parameters that are not trigger attributes.
RESERVED = frozenset({"channel", "event"})
_SOURCE = SourcePosition("next-best-action", 0, 0)
_PARSE = ParseConfig()


class NextBestActionError(NextclickError, ValueError):
    """A request that cannot be judged; the message is one line, for a JSON 400."""


def interaction(ruleset: RuleSet, channel: str, event_type: str | None = None) -> str:
    """The event type judged for an interaction on `channel`; raises NextBestActionError if the rules
    have nothing to judge there."""
    if channel not in CHANNELS:
        raise NextBestActionError(f"channel must be one of {sorted(CHANNELS)}, got {channel!r}")
    if event_type is None:
        event_type = INTERACTIONS.get(channel)
        if event_type is None:
            raise NextBestActionError(f"no interaction event is defined for channel {channel!r}: name one with "
                                      f"event=<type> (one of {_types_on(ruleset.plan, channel)})")
    elif ruleset.plan.channels.get(event_type) != channel:
        raise NextBestActionError(f"event must be an event type on channel {channel!r} "
                                  f"(one of {_types_on(ruleset.plan, channel)}), got {event_type!r}")
    if event_type not in ruleset.by_trigger:
        # The rules file's name stays out: the message goes to an HTTP client.
        raise NextBestActionError(f"no rule in the rules file is on {event_type}, the interaction on "
                                  f"{channel}: nothing to judge")
    return event_type


def _types_on(plan: TrackingPlan, channel: str) -> list[str]:
    return sorted(t for t, c in plan.channels.items() if c == channel)


@functools.cache
def _attribute_types(plan: TrackingPlan, event_type: str) -> dict[str, tuple[str, ...]]:
    """The type's attributes and their JSON types in the rules' tracking plan, read once per plan."""
    schema = plan.schemas[event_type]
    out = {}
    for name in schema.get(ATTRS_KEYWORD, []):
        kinds = schema["properties"][name].get("type", "string")
        out[name] = tuple(kinds) if isinstance(kinds, list) else (kinds,)
    return out


# An integer attribute beyond 64 bits (`1e308`, `99999999999999999999`) is no event's: JSON encoders
# (the flow's orjson) refuse it.
_INT64 = (-(2**63), 2**63 - 1)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _typed(plan: TrackingPlan, event_type: str, name: str, text: str) -> Any:
    """A query-string value as the type's schema declares the attribute (the parser checks the rest)."""
    declared = _attribute_types(plan, event_type)
    if name not in declared:
        raise NextBestActionError(f"{name!r} is not an attribute of {event_type} (it has {sorted(declared)})")
    kinds = declared[name]
    if "integer" in kinds or "number" in kinds:
        # As JSON writes a number, and only so: Python's int() and float() also take `1_000`, full-width
        # or Arabic-Indic digits, `nan` and `inf`, which no event could carry.
        try:
            number = orjson.loads(text) if _JSON_NUMBER.fullmatch(text) else None
        except orjson.JSONDecodeError:  # out of a double's range
            number = None
        whole = int(number) if type(number) is int or (type(number) is float and number.is_integer()) else None
        if "integer" in kinds and whole is not None and _INT64[0] <= whole <= _INT64[1]:
            return whole  # 2.0 is an integer to JSON Schema, as the flow's parser judges it
        if "number" in kinds and isinstance(number, (int, float)) and math.isfinite(number):
            return number
        what = "a number as JSON writes it (e.g. 19.99)" if "number" in kinds else \
            "an integer within 64 bits" if whole is not None else "an integer (e.g. 2)"
        raise NextBestActionError(f"{name} must be {what}, got {text!r}")
    if "boolean" in kinds:
        if text not in ("true", "false"):
            raise NextBestActionError(f"{name} must be true or false, got {text!r}")
        return text == "true"
    return text


def trigger_event_body(plan: TrackingPlan, event_type: str, attributes: Mapping[str, str],
                       now_ms: int) -> dict[str, Any]:
    """The synthetic event of the interaction, as JSON the flow's parser reads."""
    body: dict[str, Any] = {"event_id": f"next-best-action:{now_ms}", "type": event_type, "ts": now_ms}
    for name, text in attributes.items():
        body[name] = _typed(plan, event_type, name, text)
    return body


def profile_from_view(record: Mapping[str, Any], ruleset: RuleSet) -> Profile:
    """A throwaway profile holding what the view record says, for arbitration (module docstring: what
    is approximated)."""
    attributes = record["attributes"]
    as_of = int(record["as_of"])
    last_contact = {k: int(v) for k, v in record["last_contact"].items()}
    last_complaint = None
    days = attributes.get("days_since_complaint")
    if days is not None:
        last_complaint = as_of - int(days) * DAY_MS
        call = last_contact.get(EVENT_CHANNELS["complaint"])
        if call is not None and call < last_complaint:
            last_complaint = call
    contacts = {channel: int(n) for channel, n in (("email", attributes.get("email_contacts")),
                                                    ("call_center", attributes.get("call_center_contacts"))) if n}
    facts = Facts(
        version=int(record["version"]), first_seen=record["first_seen"], last_seen=record["last_seen"],
        orders=int(attributes.get("orders") or 0), revenue=float(attributes.get("lifetime_value") or 0.0),
        first_purchase=attributes.get("first_purchase"), last_purchase=attributes.get("last_purchase"),
        last_contact=last_contact, contacts=contacts,
        consent={k: _consent_entry(v) for k, v in record["consent"].items()},
        last_complaint=last_complaint,
        recent_orders=[Order(o["ts"], o["order_id"], o["amount"], o["currency"], o["channel"], o["category"])
                       for o in record["recent_orders"]])
    horizon = ruleset.cap_horizon_ms
    history = History(
        fired={rule: [int(v["at"]), int(v["until"])] for rule, v in record["recent_decisions"]["rules"].items()},
        sent={channel: [[int(ts), int(ts) + horizon] for ts in times]
              for channel, times in record["recent_decisions"]["channels"].items()})
    signals: dict[str, Any] = {}
    by_name = {s.name: s for s in ruleset.signals}
    for name, pending in record["pending_absences"].items():
        signal = by_name.get(name)
        if signal is not None and signal.kind == "absence":
            state: list[Any] = [int(pending["since"]), int(pending["deadline"]), {}]
            if hasattr(signal, "sums"):  # a Tally keeps its totals (unknown here) as a fourth item
                state.append({})
            signals[name] = state
    return Profile(customer=str(record["profile_key"]), facts=facts, signals=signals, history=history,
                   ids={t: list(keys) for t, keys in record["ids"].items()})


# The event ids the view does not carry: at the same millisecond, a withdrawal sorts after a grant, so
# consent_state (latest by (ts, event_id)) takes it; the flow would take the later event id.
_GRANT_ID, _WITHDRAWAL_ID = "view:grant", "view:withdrawal"
# In `approximated`: a candidate was judged on consent entries the flow would tie-break by event id.
CONSENT_TIE = "consent_tie"


def _consent_entry(entry: Mapping[str, Any]) -> list[Any]:
    granted = bool(entry["granted"])
    return [granted, int(entry["ts"]), _GRANT_ID if granted else _WITHDRAWAL_ID]


def consent_tie(consent: Mapping[str, list[Any]], keys: tuple[str, ...]) -> bool:
    """Whether the latest of the entries `keys` names are several at one millisecond that disagree: the
    flow decides between them by event id, which a view record does not carry."""
    entries = [consent[k] for k in keys if k in consent]
    if not entries:
        return False
    latest = max(int(e[1]) for e in entries)
    return len({bool(e[0]) for e in entries if int(e[1]) == latest}) > 1


def _unknown(ruleset: RuleSet) -> frozenset[str]:
    """The attributes the view cannot give: every transient signal's but the absences' `_pending`."""
    return frozenset(a for s in ruleset.signals if s.kind != "absence" for a in s.attributes)


def _view_getters(ruleset: RuleSet, record: Mapping[str, Any]) -> dict[str, Getter]:
    getters: dict[str, Getter] = dict(ruleset.getters)
    for name in _unknown(ruleset):
        getters[name] = lambda _profile, _trigger: None
    preferred = record["attributes"].get("preferred_channel")
    getters["preferred_channel"] = lambda _profile, _trigger: preferred
    return getters


def judge(record: Mapping[str, Any], ruleset: RuleSet, channel: str, attributes: Mapping[str, str], now_ms: int,
          *, event_type: str | None = None, parse: ParseConfig = _PARSE) -> dict[str, Any]:
    """What the rules would decide if an interaction on `channel` happened at `now_ms` (or at the record's
    time, if later: a flow clock ahead of this one), and why; the record is only read."""
    event_type = interaction(ruleset, channel, event_type)
    now_ms = max(now_ms, int(record["as_of"]))
    body = trigger_event_body(ruleset.plan, event_type, attributes, now_ms)
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError as exc:  # what no event can carry (_typed refuses what it knows of)
        raise NextBestActionError(f"the {event_type} trigger is not a valid event: {exc}") from None
    event = parse_message(b"next-best-action", raw, None, _SOURCE, secret=b"next-best-action",
                          now_ms=now_ms, config=parse, plan=ruleset.plan)
    if isinstance(event, DeadLetter):
        raise NextBestActionError(f"the {event_type} trigger is not a valid event: {event.message}")
    profile = profile_from_view(record, ruleset)
    apply_facts(profile.facts, event)  # as the flow folds the event in before judging it
    log: list[tuple[Trigger, Tried]] = []
    traced = traced_rules(dataclasses.replace(ruleset, getters=_view_getters(ruleset, record)), log)
    out = Outcome()
    trigger = Trigger(event.type, event.event_id, event.ts, event.attrs, True)
    decide(profile, traced, trigger, out)
    unknown = _unknown(ruleset)
    blocked = {b.rule_id: b.reason for b in out.blocked}
    tried = {t.rule.id: t for _, t in log}
    decision = out.decisions[0] if out.decisions else None
    candidates = []
    tie = False
    for compiled in ruleset.by_trigger[event_type]:
        rule = compiled.rule
        one = tried.get(rule.id)
        if one is None:
            outcome, reason = "not_tried", "a rule before it fires"
        elif not one.matched:
            outcome, reason = "not_matched", "conditions failed"
        elif rule.id in blocked:
            outcome, reason = "blocked", blocked[rule.id]
        else:
            outcome, reason = "fires", None
        # Gated (its conditions hold) on consent entries the flow tie-breaks by event id: judged opted out.
        tie |= one is not None and one.matched and consent_tie(profile.facts.consent, compiled.consent_keys)
        candidates.append({
            "rule": rule.id, "priority": rule.priority, "action": rule.action, "channel": rule.channel,
            "offer": rule.offer, "outcome": outcome, "reason": reason,
            "conditions": [] if one is None else [
                {**c, "known": not _names(item) & unknown} for item, c in zip(rule.when, one.conditions, strict=True)]})
    return {
        "profile_key": record["profile_key"], "as_of": int(record["as_of"]), "judged_at": now_ms,
        "channel": channel, "trigger": {"type": event_type, "attributes": event.attrs,
                                        CUSTOMER_CHANNEL: ruleset.plan.channels[event_type]},
        "action": None if decision is None else {
            "rule": decision.rule_id, "action": decision.action, "channel": decision.channel,
            "offer": decision.offer, "params": decision.params, "purpose": decision.purpose,
            "promotion": decision.promotion, "expires_at": rfc3339(decision.expires_at)},
        "candidates": candidates,
        # The attributes read as missing because the view does not carry them (the candidates name them),
        # and `consent_tie` when a candidate's consent was a same-millisecond tie.
        "approximated": sorted({a for t in tried.values() for item in t.rule.when for a in _names(item) & unknown}
                               | ({CONSENT_TIE} if tie else set())),
    }


def _names(item: Condition | Group) -> set[str]:
    """The attributes a condition or group reads."""
    return {c.attribute for c in leaves((item,))}
