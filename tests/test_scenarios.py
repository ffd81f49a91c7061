"""Scenario files under tests/scenarios, run by the product's scenario runner (operators/tools/scenarios.py,
the same one `nextclick rules test` uses): events and clock advances through the engine, exact outcomes.

The format is documented in docs/rules.md ("Testing rules with scenarios").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.rules.loader import load_rules
from nextclick.operators.tools.scenarios import (
    START_MS,
    ScenarioError,
    load_scenario,
    offset_ms,
    report_line,
    run_scenario,
)
from tests.helpers import T0, default_rules, write_rules

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.toml"))


def test_offsets():
    assert offset_ms("+0m") == 0 and offset_ms("+1h30m") == 90 * 60_000 and offset_ms("+1d1m") == 86_460_000
    with pytest.raises(ValueError):
        offset_ms("+5 minutes")


def test_scenarios_start_where_the_unit_tests_do():
    assert START_MS == T0


def test_every_default_rule_has_a_scenario():
    names = {p.stem for p in SCENARIOS}
    assert {r.id for r in default_rules().rules} <= names
    assert {"channel_cap", "overall_cap", "cooldown", "complaint_suppression", "opt_out", "no_consent",
            "purchase_cancels_cart_reminder"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path):
    scenario = load_scenario(path)
    ruleset = load_rules(scenario.rules) if scenario.rules else default_rules()
    failed = [report_line(c) for c in run_scenario(scenario, ruleset) if not c.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize(("text", "words"), [
    ('[[step]]\nat = "+0m"\nevent = "page_view"', ["top level", "description"]),
    ('description = "x"\n[[step]]\nat = "+0m"\nevent = "page_vue"', ["step 1", "field 'event'", "page_vue"]),
    ('description = "x"\n[[step]]\nat = "+0m"\nevent = "page_view"\nattrs = { catgory = "shoes" }',
     ["step 1", "field 'attrs'", "catgory", "category"]),
    ('description = "x"\n[[step]]\nat = "+0m"\nevent = "add_to_cart"\nattrs = { amount = 5.0 }',
     ["step 1", "field 'attrs'", "not a valid add_to_cart", "sku"]),  # the type's schema, as the flow applies it
    ('description = "x"\n[[step]]\nat = "+0m"\nevent = "add_to_cart"\nattrs = { sku = "A", amount = "lots" }',
     ["step 1", "field 'attrs'", "not a valid add_to_cart"]),
    ('description = "x"\n[[step]]\nat = "5 minutes"\nevent = "page_view"', ["step 1", "field 'at'", "bad offset"]),
    ('description = "x"\n[[step]]\nadvance = "+5m"\n[[step]]\nadvance = "+4m"', ["step 2", "only moves forward"]),
    ('description = "x"\n[[step]]\nat = "+0m"\nadvance = "+1m"', ["step 1", "either an event"]),
    ('description = "x"\n[[step]]\nadvance = "+1m"\nlate = true', ["step 1", "late"]),
    ('description = "x"\n[[step]]\nadvance = "+1m"\ndecisions = [{ rule = "r", chanel = "email" }]',
     ["step 1", "field 'decisions'", "chanel"]),
    ('description = "x"\n[[step]]\nat = "+0m"\nevent = "page_view"\nexpect = 1', ["step 1", "expect"]),
])
def test_a_bad_scenario_is_named_with_its_step_and_field(tmp_path, text, words):
    path = write_rules(tmp_path, text, "story.toml")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


def test_a_failing_expectation_says_what_was_expected_and_what_came_out(tmp_path):
    path = write_rules(tmp_path, '''description = "An unresolved call, expecting the wrong thing."
[[step]]
at = "+0m"
event = "call_center_contact"
attrs = { outcome = "unresolved" }
decisions = [{ rule = "call_center_follow_up", channel = "email" }]
''', "story.toml")
    checks = run_scenario(load_scenario(path), default_rules())
    (failed,) = [c for c in checks if not c.ok]
    assert report_line(failed) == ("FAIL story.toml step 1 (+0m call_center_contact): decisions: expected "
                                   "call_center_follow_up/email; got call_center_follow_up/call_center")
