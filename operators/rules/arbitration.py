"""Arbitration: of the rules a trigger matches, the highest priority that passes every gate decides.

Gates, in order: reachability (a rule with `require_address`, when the profile's identifiers are known
and none addresses its channel), consent (an explicit "no", or no "yes" where the channel is opt-in),
complaint suppression (promotions only, for as long as the rule's channel and purpose say), the rule's
cooldown, the channel's frequency cap, the overall cap (rules the caps apply to only).
A matching rule refused by a gate is counted as Blocked with that reason and the next one is tried.

A decision made with no address (the profile's identifiers are known and none addresses its channel:
`address: null`) uses up neither the rule's cooldown nor any cap, with or without `require_address`:
nothing was delivered, so an identifier linked a moment later must not find the rule cooling down.
"""

from __future__ import annotations

import hashlib

from nextclick.operators.conditions.compiler import View
from nextclick.operators.profile import history
from nextclick.operators.profile.facts import consent_state
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Blocked, Decision, Outcome, Trigger
from nextclick.operators.rules.addressing import address_for
from nextclick.operators.rules.model import CompiledRule, RuleSet


def decision_id(customer: str, rule_id: str, trigger_id: str, event_type: str | None = None) -> str:
    """Same customer, rule and trigger give the same id, so consumers can dedupe after a replay.

    `event_type`: the trigger is that event. An event id is unique only within its source (a web order
    1001 and a store sale 1001 are two events), so the type is part of the id: two decisions of one rule
    on both would otherwise share one, and a consumer that dedupes by it would drop the second. An
    absence's trigger id already names its signal."""
    if event_type is not None:
        return hashlib.sha256(f"{customer}|{rule_id}|{event_type}/{trigger_id}".encode()).hexdigest()[:32]
    return hashlib.sha256(f"{customer}|{rule_id}|{trigger_id}".encode()).hexdigest()[:32]


def unaddressed(profile: Profile, ruleset: RuleSet, channel: str) -> bool:
    """Whether a decision on `channel` would carry `address: null`: identifiers known, none for it (an
    empty `ids` is "not known yet", a profile stored before identifiers were recorded: not unaddressed)."""
    ids = profile.ids
    return bool(ids) and address_for(ids, channel, ruleset.address_types) is None


def gate(profile: Profile, ruleset: RuleSet, candidate: CompiledRule, ts: int) -> str | None:
    """The first reason this rule may not fire now, or None when it may."""
    facts, rule = profile.facts, candidate.rule
    if rule.require_address and unaddressed(profile, ruleset, rule.channel):
        return "unreachable"
    consent = consent_state(facts, candidate.consent_keys)
    if consent is False:
        return "opted_out"
    if consent is None and candidate.needs_consent:
        return "no_consent"
    suppression = candidate.complaint_suppression_ms  # 0 for service messages (ruleset.suppression_ms)
    complaint = facts.last_complaint
    if suppression and complaint is not None and ts - complaint < suppression:
        return "complaint_suppression"
    past = profile.history
    if history.cooling_down(past, rule.id, ts, rule.cooldown_ms):
        return "cooldown"
    if not candidate.capped:
        return None
    cap = candidate.cap
    if cap is not None and history.sent_since(past, rule.channel, ts - cap.window_ms) >= cap.limit:
        return "frequency_cap_channel"
    cap = ruleset.overall_cap
    if cap is not None and history.sent_since(past, None, ts - cap.window_ms) >= cap.limit:
        return "frequency_cap_overall"
    return None


def decide(profile: Profile, ruleset: RuleSet, trigger: Trigger, out: Outcome) -> None:
    """At most one decision per trigger, added to `out`, with the candidates blocked before it.

    The winner is recorded in the profile's history (cooldown, caps)."""
    candidates = ruleset.by_trigger.get(trigger.name)
    if not candidates:
        return
    view = View(profile, trigger, ruleset.getters)
    customer = profile.customer
    for candidate in candidates:
        if not candidate.matches(view):
            continue
        rule = candidate.rule
        reason = gate(profile, ruleset, candidate, trigger.ts)
        if reason is not None:
            out.blocked.append(Blocked(customer, rule.id, rule.channel, reason, trigger.trigger_id))
            continue
        ts = trigger.ts
        # A rule outside the caps does not count towards them either; a decision with no address
        # (nothing can deliver it) uses up neither its cooldown nor a cap.
        if not unaddressed(profile, ruleset, rule.channel):
            history.record(profile, rule.id, rule.channel, ts, rule.cooldown_ms,
                           ruleset.cap_horizon_ms if candidate.capped else 0)
        out.decisions.append(Decision(
            decision_id=decision_id(customer, rule.id, trigger.trigger_id, trigger.name if trigger.event else None),
            customer=customer,
            rule_id=rule.id, action=rule.action, channel=rule.channel, offer=rule.offer,
            priority=rule.priority, trigger=trigger.name, trigger_id=trigger.trigger_id,
            decided_at=ts, expires_at=ts + rule.expiry_ms, profile_version=profile.facts.version,
            signals={c.attribute: view.get(c.attribute) for c in rule.conditions},
            purpose=rule.purpose, promotion=rule.promotion,
            params={name: view.get(attribute) for name, attribute in rule.params} if rule.params else None,
            address_types=ruleset.address_override))
        return
