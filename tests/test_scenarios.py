"""Scenario files under tests/scenarios: events and clock advances through the engine, exact outcomes.

Each file is TOML: `description`, optional `rules` (a path relative to the file; default: the shipped rules)
and a list of `[[step]]`s. A step is either an event (`at` = offset like "+5m" or "+100d1m", `event` = type,
optional `attrs`, `id`, `customer`) or a clock advance (`advance` = offset; calls on_timers at that time).
Every step lists exactly the `decisions` ({rule, channel, trigger}) and `blocked` ({rule, reason}) it yields
(none when omitted), and may assert `late` / `duplicate` for an event.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from operators.engine import Outcome, on_event, on_timers
from operators.infra.clock import parse_duration_ms
from operators.profile import Profile, new_profile
from operators.rules import load_rules
from tests.helpers import T0, default_rules, make_event

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.toml"))
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_STEP_KEYS = {"at", "event", "attrs", "id", "customer", "advance", "decisions", "blocked", "late", "duplicate"}


def offset_ms(text: str) -> int:
    """'+5m', '+100d1m', '+65m59s' -> milliseconds after T0."""
    body = text.strip().removeprefix("+")
    parts = _PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"bad offset {text!r}")
    return sum(parse_duration_ms(n + u) for n, u in parts)


def test_offsets():
    assert offset_ms("+0m") == 0 and offset_ms("+1h30m") == 90 * 60_000 and offset_ms("+1d1m") == 86_460_000
    with pytest.raises(ValueError):
        offset_ms("+5 minutes")


def test_every_default_rule_has_a_scenario():
    names = {p.stem for p in SCENARIOS}
    assert {r.id for r in default_rules().rules} <= names
    assert {"channel_cap", "overall_cap", "cooldown", "complaint_suppression", "opt_out", "no_consent",
            "purchase_cancels_cart_reminder"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path):
    doc = tomllib.loads(path.read_text())
    assert doc.get("description"), f"{path.name}: describe the scenario"
    ruleset = load_rules(path.parent / doc["rules"]) if "rules" in doc else default_rules()
    profiles: dict[str, Profile] = {}
    clock = T0
    for n, step in enumerate(doc["step"], start=1):
        where = f"{path.name} step {n}"
        assert set(step) <= _STEP_KEYS, f"{where}: unknown keys {set(step) - _STEP_KEYS}"
        out: Outcome
        if "advance" in step:
            now = T0 + offset_ms(step["advance"])
            assert now >= clock, f"{where}: the clock only moves forward"
            clock = now
            out = Outcome()
            for profile in profiles.values():
                got = on_timers(profile, ruleset, clock)
                out.decisions += got.decisions
                out.blocked += got.blocked
        else:
            customer = step.get("customer", "c1")
            profile = profiles.setdefault(customer, new_profile(customer))
            event = make_event(step["event"], T0 + offset_ms(step["at"]), customer=customer,
                               event_id=step.get("id"), **step.get("attrs", {}))
            out = on_event(profile, event, ruleset)
            assert out.late == step.get("late", False), f"{where}: late"
            assert out.duplicate == step.get("duplicate", False), f"{where}: duplicate"
        got_decisions = [{"rule": d.rule_id, "channel": d.channel, "trigger": d.trigger} for d in out.decisions]
        got_blocked = [{"rule": b.rule_id, "reason": b.reason} for b in out.blocked]
        expected: dict[str, Any] = {"decisions": step.get("decisions", []), "blocked": step.get("blocked", [])}
        assert {"decisions": got_decisions, "blocked": got_blocked} == expected, where
