"""What a rules file means once loaded: rules, caps, consent policy, lateness, and the plans derived
from them once, so that the engine does per event only what that event's type needs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from nextclick.operators.conditions.model import Condition, When, leaves
from nextclick.operators.events.tracking_plan import SHIPPED, TrackingPlan
from nextclick.operators.rules.addressing import CHANNEL_ADDRESS_TYPES
from nextclick.operators.signals.base import Signal

if TYPE_CHECKING:
    from nextclick.operators.profile.model import Profile
    from nextclick.operators.records import Event

# Why a candidate decision was not sent; every blocked candidate is counted under one of these.
BLOCK_REASONS = ("opted_out", "no_consent", "complaint_suppression", "cooldown",
                 "frequency_cap_channel", "frequency_cap_overall", "unreachable")


@dataclass(frozen=True)
class Rule:
    id: str
    on: frozenset[str]
    when: When
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
    # Blocked as "unreachable" (the next candidate is tried, no cooldown or cap used) when the
    # profile's identifiers are known and none addresses the channel (operators/rules/addressing.py).
    require_address: bool = False
    # False: outside the frequency caps (neither held back by them nor counted towards them).
    capped: bool = True
    # Decision parameters: name -> attribute (as conditions name them), carried into the decision.
    params: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def conditions(self) -> tuple[Condition, ...]:
        """Every condition of `when`, groups opened: the attributes a decision's `signals` report."""
        return leaves(self.when)


@dataclass(frozen=True)
class Cap:
    limit: int
    window_ms: int


@dataclass(frozen=True)
class SuppressionScope:
    """`[[suppression.scope]]`: how long promotions on these channels, for these purposes, are held
    back after a complaint (0: not at all). None: every channel / every purpose."""

    channels: frozenset[str] | None
    purposes: frozenset[str] | None
    after_complaint_ms: int

    def covers(self, rule: Rule) -> bool:
        return ((self.channels is None or rule.channel in self.channels)
                and (self.purposes is None or rule.purpose in self.purposes))


@dataclass(frozen=True)
class LatePolicy:
    """Events older than the customer's newest event minus `allowed_lateness_ms` are late.

    policy "drop" keeps them out of transient signals (durable facts still count them);
    "apply" folds them in anyway, into whatever window still holds their time.
    """

    allowed_lateness_ms: int = 5 * 60_000
    policy: Literal["drop", "apply"] = "drop"


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its conditions compiled into one check and its gates' constants precomputed."""

    rule: Rule
    matches: Callable[[Any], bool]
    consent_keys: tuple[str, ...]
    needs_consent: bool  # the channel's policy is opt_in
    cap: Cap | None
    # How long after a complaint this rule is held back (0: never; service messages are never held).
    complaint_suppression_ms: int = 0
    # Whether the frequency caps apply to it (the rule's `capped` and `[caps] purposes`); when not,
    # its decisions neither are held back by caps nor count towards them.
    capped: bool = True


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    signals: tuple[Signal, ...]
    channel_caps: dict[str, Cap]
    overall_cap: Cap | None
    # channel -> "opt_in" (explicit consent needed) or "opt_out" (allowed unless revoked)
    consent_policy: dict[str, Literal["opt_in", "opt_out"]]
    complaint_suppression_ms: int  # the default for promotions that no suppression scope covers
    late: LatePolicy
    dedupe_horizon_ms: int
    source: str
    # Filled by the loader (operators/rules/loader.py): what each trigger runs, compiled once.
    by_trigger: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    # attribute name -> how to compute it (operators/rules/compiler.py), for the names rules may use.
    getters: dict[str, Any] = field(default_factory=dict)
    # [[suppression.scope]] in file order: the first that covers a promotion decides its suppression.
    suppression_scopes: tuple[SuppressionScope, ...] = ()
    # `[caps] purposes`: the purposes the caps apply to (None: every purpose).
    capped_purposes: frozenset[str] | None = None
    # The identifier types that address each channel, best first: the defaults with `[addresses]` over them.
    address_types: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(CHANNEL_ADDRESS_TYPES))
    # What decisions carry when `[addresses]` is set (every channel's types), for `address()`; else None.
    address_override: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    # The tracking plan the file was checked against: the event types (and their attributes) it reads.
    plan: TrackingPlan = SHIPPED
    # `[consent] purposes`: the purposes consent events may carry (the parser dead-letters another:
    # it would grant or revoke nothing a rule reads). None: not checked.
    consent_purposes: frozenset[str] | None = None

    def is_capped(self, rule: Rule) -> bool:
        """Whether the frequency caps hold `rule` back and count its decisions."""
        return rule.capped and (self.capped_purposes is None or rule.purpose in self.capped_purposes)

    def suppression_ms(self, rule: Rule) -> int:
        """How long after a complaint `rule` is held back: never for service messages
        (`promotion = false`); else the first scope that covers it, or `[suppression].after_complaint`."""
        if not rule.promotion:
            return 0
        for scope in self.suppression_scopes:
            if scope.covers(rule):
                return scope.after_complaint_ms
        return self.complaint_suppression_ms

    @property
    def triggers(self) -> frozenset[str]:
        return frozenset(self.by_trigger)

    @functools.cached_property
    def appliers_for_event(self) -> dict[str, tuple[Callable[[Profile, Event], None], ...]]:
        """The bound `apply` of each signal an event type changes, in declaration order: the
        engine's per-event loop."""
        return {t: tuple(s.apply for s in self.signals if t in s.touched_by) for t in self.plan.channels}

    @functools.cached_property
    def firing(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.fires)

    @functools.cached_property
    def expiring(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.expires)

    @functools.cached_property
    def signal_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.signals)

    @functools.cached_property
    def cooldowns_ms(self) -> dict[str, int]:
        """Each rule's cooldown: how long a decision it made keeps it from firing again."""
        return {r.id: r.cooldown_ms for r in self.rules}

    @functools.cached_property
    def cap_horizon_ms(self) -> int:
        """How long a sent decision counts towards any cap."""
        windows = [c.window_ms for c in self.channel_caps.values()]
        return max(windows + ([self.overall_cap.window_ms] if self.overall_cap else []) + [0])

    def rule(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.id == rule_id)
