"""`nextclick rules check / test / explain`: what a marketer runs before deploying a rules file.

The cookbook's rules and scenarios (docs/cookbook/) run here through the CLI exactly as the docs tell
a reader to run them, so a change that breaks a documented campaign fails CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from nextclick.flows.cli import main
from nextclick.operators.profile.model import new_profile
from nextclick.operators.tools.explain import attributes_at
from tests.helpers import DAY, DEFAULT_RULES_PATH, MIN, T0, Customer, default_rules, write_rules

REPO = Path(__file__).resolve().parents[1]
COOKBOOK = REPO / "docs" / "cookbook"


def nextclick(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nextclick", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def error_line(stderr: str) -> str:
    """The CLI's one-line reason (in-process, an earlier test's logging set-up may add lines before it)."""
    return stderr.strip().splitlines()[-1]


def test_the_cookbook_campaigns_pass_their_scenarios_through_the_cli():
    scenarios = sorted(str(p.relative_to(REPO)) for p in (COOKBOOK / "scenarios").glob("*.toml"))
    assert len(scenarios) >= 7
    done = nextclick("rules", "test", "docs/cookbook/rules.toml", *scenarios)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and done.stdout.rstrip().endswith(", 0 failed")
    # every campaign has a positive and a negative case, and the three cases are among them
    for words in ("category_interest_ad/ads", "vip_cart_email/email", "cart_reminder_email/email",
                  "free_delivery_banner/web", "complaint_suppression", "order_update_email/email"):
        assert words in done.stdout, words
    names = {Path(s).stem for s in scenarios}
    assert {"category_interest", "category_interest_not", "vip_cart_buy_then_add_20",
            "complaint_email_pause"} <= names


def test_the_rules_v3_cookbook_campaigns_pass_their_scenarios_through_the_cli():
    scenarios = sorted(str(p.relative_to(REPO)) for p in (COOKBOOK / "v3" / "scenarios").glob("*.toml"))
    assert len(scenarios) >= 10
    done = nextclick("rules", "test", "docs/cookbook/v3/rules.toml", *scenarios)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and done.stdout.rstrip().endswith(", 0 failed")
    # each campaign's decision, and the blocks that show its option at work
    for words in ("cart_email/email", "cart_retarget_ad/ads", "cart_email/cooldown", "cart_email/unreachable",
                  "complaint_follow_up_email/email", "complaint_follow_up_email/no_consent",
                  "product_interest_email/email", "app_cart_push/push", "unclicked_opens_ad/ads",
                  "big_cart_push/push", "email_quiet_app_push/push"):
        assert words in done.stdout, words


def test_the_tracking_plan_campaign_passes_its_scenarios_through_the_cli_with_its_plan():
    plan = COOKBOOK / "plan"
    scenarios = sorted(str(p.relative_to(REPO)) for p in (plan / "scenarios").glob("*.toml"))
    assert len(scenarios) >= 2
    done = nextclick("rules", "test", "docs/cookbook/plan/rules.toml", *scenarios,
                     "--tracking-plan", "docs/cookbook/plan/plan.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith(", 0 failed")
    for words in ("spring_landing_ad/ads", "wishlist_email/email"):
        assert words in done.stdout, words
    # without the plan, the rules name a type and attributes no shipped schema declares
    refused = nextclick("rules", "check", "docs/cookbook/plan/rules.toml")
    assert refused.returncode == 1 and "unknown name(s) ['wishlist_add']" in refused.stdout
    # the plan shown in docs/rules.md is the plan tested
    import tomllib

    doc = RULES_DOC.read_text()
    section = doc[doc.index("### The tracking plan"):]
    assert tomllib.loads(_toml_blocks(section)[0]) == tomllib.loads((plan / "plan.toml").read_text())


def test_the_shipped_rules_pass_the_projects_scenarios_through_the_cli(capsys):
    scenarios = [str(p) for p in sorted((REPO / "tests" / "scenarios").glob("*.toml"))]
    assert main(["rules", "test", str(DEFAULT_RULES_PATH), *scenarios]) == 0
    assert capsys.readouterr().out.rstrip().endswith(", 0 failed")


def test_a_failing_expectation_prints_fail_and_exits_non_zero(tmp_path, capsys):
    story = write_rules(tmp_path, '''description = "Expects a decision the rules do not make."
[[step]]
at = "+0m"
event = "purchase"
attrs = { amount = 50.0 }
decisions = [{ rule = "post_purchase_cross_sell", channel = "email" }]
''', "story.toml")
    assert main(["rules", "test", str(DEFAULT_RULES_PATH), str(story)]) == 1
    captured = capsys.readouterr()
    assert ("FAIL story.toml step 1 (+0m purchase): decisions: expected post_purchase_cross_sell/email; got none"
            in captured.out)
    assert "FAIL story.toml step 1 (+0m purchase): blocked: expected none; got post_purchase_cross_sell/no_consent" \
        in captured.out
    assert error_line(captured.err) == "nextclick: error: 2 of 4 expectations failed (FAIL lines above)"


def test_a_scenario_consent_the_flow_would_dead_letter_is_refused_before_anything_runs(tmp_path, capsys):
    """An outside probe: a scenario withdrew consent for "Marketing" (the source's casing); `rules test`
    passed it and the promotion went out in the test as expected, while the flow dead-letters such a
    consent and the customer keeps getting what they refused."""
    story = write_rules(tmp_path, 'description = "A withdrawal in the source casing."\n[[step]]\nat = "+0m"\n'
                                  'event = "consent"\n'
                                  'attrs = { channel = "email", granted = false, purpose = "Marketing" }\n',
                        "story.toml")
    assert main(["rules", "test", str(DEFAULT_RULES_PATH), str(story)]) != 0
    err = error_line(capsys.readouterr().err)
    assert "step 1" in err and "not one of the consent purposes" in err and "dead-letters it" in err, err


def test_a_cooldown_tested_without_ids_is_flagged_and_with_the_flows_ids_decides_again(tmp_path, capsys):
    """Two purchases an hour apart: without `ids` the second is cooling down; with the identifiers the
    flow records for a customer known by a customer id (no email), both go out with no address, as the
    flow sends them, and `rules test` says which scenarios assumed every channel reachable."""
    steps = (
        '[[step]]\nat = "+0m"\nevent = "consent"\nattrs = {{ channel = "email", granted = true }}{ids}\n\n'
        '[[step]]\nat = "+1m"\nevent = "purchase"\nattrs = {{ amount = 50.0, order_id = "o1" }}\n'
        'decisions = [{{ rule = "post_purchase_cross_sell", channel = "email" }}]\n\n'
        '[[step]]\nat = "+61m"\nevent = "purchase"\nattrs = {{ amount = 50.0, order_id = "o2" }}\n{second}\n')
    assumed = write_rules(tmp_path, 'description = "x"\n' + steps.format(
        ids="", second='blocked = [{ rule = "post_purchase_cross_sell", reason = "cooldown" }]'), "assumed.toml")
    known = write_rules(tmp_path, 'description = "x"\n' + steps.format(
        ids='\nids = ["customer"]', second='decisions = [{ rule = "post_purchase_cross_sell", channel = "email" }]'),
        "known.toml")
    assert main(["rules", "test", str(DEFAULT_RULES_PATH), str(assumed), str(known)]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[-1] == "2 scenarios, 24 expectations, 0 failed"
    assert out[-2].startswith("note: 1 scenario set no `ids`: their customers count as reachable on every channel")


def test_rules_check_lists_every_error_then_fails_with_one_line(tmp_path, capsys):
    path = write_rules(tmp_path, '''
[signals.views]
kind = "count"
events = ["page_view"]
window = "30m"
field = "category"

[[rule]]
id = "r"
on = ["page_view"]
when = ["views >= 3", "segmnt == 'loyal'"]
action = "show_ad"
channel = "fax"
''')
    assert main(["rules", "check", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3, captured.out
    assert "signal 'views': field 'field': unknown field" in lines[0]  # accepted and ignored no more
    assert "rule 'r': field 'when'" in lines[1] and "'segmnt'" in lines[1]
    assert "rule 'r': field 'channel'" in lines[2] and "'fax'" in lines[2]
    assert error_line(captured.err) == f"nextclick: error: {path}: 3 errors (listed above)"


def test_rules_check_of_a_good_file_says_what_it_holds(capsys):
    assert main(["rules", "check", str(COOKBOOK / "rules.toml")]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["valid"] is True and "vip_cart_email" in summary["rules"]
    assert "cart_abandoned" in summary["triggers"]


STORY = [
    {"event_id": "v1", "type": "page_view", "ts": "2026-11-18T10:00:00Z", "customer_id": "ana",
     "page_type": "product", "category": "shoes"},
    {"event_id": "v2", "type": "page_view", "ts": "2026-11-18T10:01:00Z", "customer_id": "ana",
     "page_type": "product", "category": "shoes"},
    {"event_id": "v3", "type": "page_view", "ts": "2026-11-18T10:02:00Z", "customer_id": "ana",
     "page_type": "product", "category": "bags"},
    {"event_id": "v4", "type": "page_view", "ts": "2026-11-18T10:03:00Z", "customer_id": "ana",
     "page_type": "product", "category": "shoes"},
    {"event_id": "v5", "type": "page_view", "ts": "2026-11-18T10:04:00Z", "customer_id": "ana",
     "page_type": "product", "category": "shoes", "email": "ana@example.com"},
    {"event_id": "c1", "type": "add_to_cart", "ts": "2026-11-18T10:05:00Z", "customer_id": "ana",
     "sku": "S-1", "amount": 240.0, "category": "shoes"},
    {"event_id": "v5", "type": "page_view", "ts": "2026-11-18T10:04:00Z", "customer_id": "ana",
     "page_type": "product", "category": "shoes"},
]


def explain(tmp_path: Path, capsys: pytest.CaptureFixture[str], story: list[dict[str, object]],
            *extra: str) -> list[dict[str, object]]:
    path = tmp_path / "story.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in story) + b"\n")
    assert main(["rules", "explain", str(COOKBOOK / "rules.toml"), "--events", str(path), "--json", *extra]) == 0
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_explain_shows_conditions_with_values_gates_and_decisions(tmp_path, capsys):
    entries = explain(tmp_path, capsys, STORY)
    by_source = {e["source"]: e for e in entries}
    third = by_source["line 3"]
    (interest, banner) = third["rules"]
    assert interest["rule"] == "category_interest_ad" and interest["outcome"] == "conditions failed"
    assert interest["conditions"] == [
        {"condition": 'trigger.page_type == "product"', "value": "product", "holds": True},
        {"condition": "product_views_20m.same_as_trigger >= 4", "value": 1, "holds": False},
        {"condition": "carts_20m == 0", "value": 0, "holds": True}]
    assert banner["rule"] == "free_delivery_banner" and banner["outcome"] == "conditions failed"
    decided = by_source["line 5"]
    assert decided["customer"] == "ana" and decided["rules"][0]["outcome"] == "decided"
    assert decided["decision"]["rule"] == "category_interest_ad" and decided["decision"]["offer"] == "category-picks"
    assert decided["rules"][1] == {"rule": "free_delivery_banner", "priority": 30, "conditions": [],
                                   "outcome": "not tried: a rule before it decided"}
    assert "ana@example.com" not in str(entries)  # parsed as the flow parses: PII never gets in
    assert by_source["line 7"]["note"] == "a repeated event_id: ignored"
    # the clock runs on after the story: the 240.00 cart is abandoned; no email consent blocks it
    (abandoned,) = [e for e in entries if e["trigger"] == "cart_abandoned"]
    assert abandoned["source"] == "clock 2026-11-18T11:10:00.000Z"
    assert abandoned["attributes"] == {"sku": "S-1", "category": "shoes", "cart_value": 240.0, "cart_items": 1}
    assert abandoned["rules"][0]["outcome"] == "blocked: no_consent" and abandoned["decision"] is None


def test_explain_as_text(tmp_path, capsys):
    path = tmp_path / "story.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in STORY[:5]))
    assert main(["rules", "explain", str(COOKBOOK / "rules.toml"), "--events", str(path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL product_views_20m.same_as_trigger >= 4   (value: 3)" in out
    assert "=> show_ad on ads offer category-picks (rule category_interest_ad" in out


def test_a_line_the_flow_would_dead_letter_is_named_and_the_story_goes_on(tmp_path, capsys):
    """As in the flow, a bad line is dead-lettered and what follows it still counts: the events after it
    are explained, and the command exits 1 naming the line."""
    path = tmp_path / "story.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(STORY[0]), orjson.dumps({"event_id": "x", "type": "page_view"}),
                                 b"{not json", *(orjson.dumps(e) for e in STORY[1:])]) + b"\n")
    assert main(["rules", "explain", str(COOKBOOK / "rules.toml"), "--events", str(path), "--json"]) == 1
    captured = capsys.readouterr()
    err = error_line(captured.err)
    assert err.startswith(f"nextclick: error: {path}: line 2: ") and "ts" in err, err
    assert "2 lines would be dead-lettered" in err
    entries = [orjson.loads(line) for line in captured.out.splitlines()]
    assert [(e["source"], e["dead_letter"]) for e in entries if "dead_letter" in e] == [
        ("line 2", "invalid_ts"), ("line 3", "invalid_json")]
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b"\n".join(orjson.dumps(e) for e in STORY) + b"\n")
    assert main(["rules", "explain", str(COOKBOOK / "rules.toml"), "--events", str(whole), "--json"]) == 0
    clean = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]

    def moved_down(entry: dict) -> dict:  # the story's line 2 onwards is line 4 onwards with the bad lines
        n = int(entry["source"][5:]) if entry["source"].startswith("line ") else 1
        return {**entry, "source": f"line {n + 2}"} if n > 1 else entry
    assert len(clean) > 4 and [e for e in entries if "dead_letter" not in e] == [moved_down(e) for e in clean]


# --- what `nextclick profile get` adds: the attributes a rule would read now -------------------------

def test_profile_attributes_are_what_rules_read_at_a_time():
    c = Customer()
    c.send("purchase", T0, amount=400.0)
    c.send("page_view", T0 + 100 * DAY, page_type="product", category="shoes")
    view = attributes_at(c.profile, default_rules(), T0 + 100 * DAY + MIN)
    assert view["segment"] == "lapsed_high_value" and view["days_since_last_purchase"] == 100
    assert (view["recency_score"], view["frequency_score"], view["monetary_score"]) == (2, 1, 3)
    assert view["page_views_30m"] == 1 and view["session_active"] is True and view["browse_abandoned_pending"]
    assert view["orders"] == 1 and view["lifetime_value"] == 400.0
    assert "trigger" not in view and "customer_channel" not in view
    empty = attributes_at(new_profile("c9"), default_rules(), T0)
    assert empty["segment"] == "prospect" and empty["days_since_last_purchase"] is None


def test_grouped_attributes_that_need_a_trigger_are_left_out():
    from nextclick.operators.rules.loader import load_rules

    rs = load_rules(COOKBOOK / "rules.toml")
    view = attributes_at(new_profile("c1"), rs, T0)
    assert view["product_views_20m.max"] == 0 and view["product_views_20m.top"] is None
    assert "product_views_20m.same_as_trigger" not in view


# --- the docs say what the code does ---------------------------------------------------------------

RULES_DOC = REPO / "docs" / "rules.md"


def _toml_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]


def test_the_cookbook_in_the_docs_is_the_cookbook_that_is_tested():
    import tomllib

    doc = RULES_DOC.read_text()
    cookbook = doc[doc.index("## Cookbook"):doc.index("## Walkthrough")]
    v3 = cookbook.index("### 5.")  # campaigns 5 to 12 are in docs/cookbook/v3/rules.toml
    for section, path in ((cookbook[:v3], COOKBOOK / "rules.toml"), (cookbook[v3:], COOKBOOK / "v3" / "rules.toml")):
        tested = tomllib.loads(path.read_text())
        rules = {r["id"]: r for r in tested["rule"]}
        shown = [tomllib.loads(block) for block in _toml_blocks(section)]
        shown_rules = [r for block in shown for r in block.get("rule", [])]
        assert {r["id"] for r in shown_rules} == set(rules), path
        for rule in shown_rules:
            assert {k: v for k, v in rules[rule["id"]].items() if k in rule} == rule, rule["id"]
        for block in shown:
            for name, signal in block.get("signals", {}).items():
                assert {k: v for k, v in tested["signals"][name].items() if k != "description"} == signal, name
            if "suppression" in block:
                assert block["suppression"] == tested["suppression"]


def test_the_walkthrough_works_as_written(tmp_path, capsys):
    doc = RULES_DOC.read_text()
    walkthrough = doc[doc.index("## Walkthrough"):]
    blocks = ["\n".join(line[3:] for line in block.splitlines()) for block in _toml_blocks(walkthrough)]
    rule = next(b for b in blocks if "[[rule]]" in b)
    story = next(b for b in blocks if "[[step]]" in b)
    shipped = DEFAULT_RULES_PATH.read_text()
    rules = write_rules(tmp_path, shipped.replace("# --- arbitration", rule + "\n# --- arbitration"))
    scenario = write_rules(tmp_path, story, "discovery.toml")
    assert main(["rules", "test", str(rules), str(scenario)]) == 0, capsys.readouterr().out
    assert "PASS discovery.toml step 5 (+28m clock): decisions = discovery_push/push/browse_abandoned" in \
        capsys.readouterr().out


def test_a_reader_that_goes_away_gets_no_error_line() -> None:
    """`nextclick rules test ... --verbose | head -1`: no "[Errno 32] Broken pipe" on stderr."""
    done = subprocess.run(
        f"{sys.executable} -m nextclick.flows.cli rules test {REPO}/docs/cookbook/v3/rules.toml "
        f"{REPO}/docs/cookbook/v3/scenarios/*.toml --verbose | head -c 10 >/dev/null",
        shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Broken pipe" not in done.stderr and "error" not in done.stderr, done.stderr


def test_explain_agrees_with_the_flow_on_a_decision_with_no_address(tmp_path, capsys):
    """A customer known only by a customer id has no address on ads: their decision starts no cooldown
    (docs/rules.md, Arbitration), as the flow and `rules test` have it. Explain showed the second one
    blocked by a cooldown, because its profiles never learnt what they are keyed by."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "r1"\non = ["page_view", "purchase"]\naction = "show_ad"\nchannel = "ads"\n'
                     'cooldown = "1d"\n\n[consent]\nads = "opt_out"\n')
    story = tmp_path / "story.jsonl"
    story.write_bytes(b"\n".join(orjson.dumps(e) for e in [
        {"event_id": "e1", "type": "page_view", "ts": "2026-11-18T10:00:00Z", "customer_id": "ana",
         "page_type": "product"},
        {"event_id": "e2", "type": "purchase", "ts": "2026-11-18T10:00:01Z", "customer_id": "ana", "amount": 50,
         "currency": "EUR", "order_id": "o1"}]) + b"\n")
    assert main(["rules", "explain", str(rules), "--events", str(story), "--json"]) == 0
    entries = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["trigger"], (e["decision"] or {}).get("rule")) for e in entries] == \
        [("page_view", "r1"), ("purchase", "r1")]


def test_explain_links_what_a_sign_in_names_as_the_flow_does(tmp_path, capsys):
    """A sign-in with a customer id and an email, a consent, a cart: the flow links the email and the
    cart email goes to it. Explain said `unreachable`, because it never recorded a login's linked
    identifiers (a marketer probe)."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "cart_email"\non = ["add_to_cart"]\naction = "send_email"\nchannel = "email"\n'
                     'require_address = true\n')
    story = tmp_path / "story.jsonl"
    story.write_bytes(b"\n".join(orjson.dumps(e) for e in [
        {"event_id": "l1", "type": "login", "ts": "2026-11-18T10:00:00Z", "customer_id": "C-1",
         "email": "c1@example.org", "method": "password"},
        {"event_id": "k1", "type": "consent", "ts": "2026-11-18T10:00:01Z", "customer_id": "C-1",
         "channel": "email", "granted": True},
        {"event_id": "a1", "type": "add_to_cart", "ts": "2026-11-18T10:00:02Z", "customer_id": "C-1", "sku": "s",
         "amount": 80.0}]) + b"\n")
    assert main(["rules", "explain", str(rules), "--events", str(story), "--json"]) == 0
    entries = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    [cart] = [e for e in entries if e["trigger"] == "add_to_cart"]
    assert cart["decision"] is not None and cart["decision"]["rule"] == "cart_email", cart


def test_explain_reads_a_cookie_keyed_cart_then_a_sign_in_as_the_flow_does(tmp_path, capsys):
    """A marketer probe: an anonymous cart keyed by its cookie, then a sign-in on that cookie, then the
    customer's consent. The flow merged the cart into the signed-in profile and sent the cart email;
    explain could not be given the cookie (a story line had no key) and showed an ad on a profile
    called "story". A line may now be the message as the topic holds it: {"key": ..., "value": {...}}."""
    story = tmp_path / "story.jsonl"
    story.write_bytes(b"\n".join(orjson.dumps(m) for m in [
        {"key": "ck-1", "value": {"event_id": "k0", "ts": "2026-11-18T10:00:00Z", "type": "add_to_cart",
                                  "sku": "S-1", "amount": 60.0}},
        {"key": "ck-1", "value": {"event_id": "k1", "ts": "2026-11-18T10:01:00Z", "type": "login",
                                  "customer_id": "C9", "email": "c9@shop.example", "method": "password"}},
        {"key": "C9", "value": {"event_id": "k2", "ts": "2026-11-18T10:02:00Z", "type": "consent",
                                "customer_id": "C9", "channel": "email", "granted": True}}]) + b"\n")
    rules = Path(__file__).resolve().parent.parent / "docs" / "cookbook" / "v3" / "rules.toml"
    assert main(["rules", "explain", str(rules), "--events", str(story), "--json"]) == 0
    entries = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    carts = [e for e in entries if e["trigger"] == "cart_abandoned"]
    assert [(e["customer"], (e["decision"] or {}).get("rule")) for e in carts] == [("C9", "cart_email")], carts


def test_a_tracking_plan_mistake_is_summed_up_with_the_plan_named(tmp_path, capsys):
    """A marketer probe: a mistake in the plan was summed up as "rules.toml: 1 error", the wrong file."""
    repo = Path(__file__).resolve().parent.parent
    plan = tmp_path / "plan.toml"
    plan.write_text((repo / "docs/cookbook/plan/plan.toml").read_text().replace('type = "number"', 'type = "money"', 1))
    rules = repo / "docs/cookbook/plan/rules.toml"
    assert main(["rules", "check", str(rules), "--tracking-plan", str(plan)]) != 0
    captured = capsys.readouterr()
    assert str(plan) in captured.out  # the error itself names the plan
    assert error_line(captured.err).startswith(f"nextclick: error: {rules} and {plan}: "), captured.err


def test_a_missing_rules_file_is_named_by_its_setting(tmp_path: Path) -> None:
    """Not "<path>: cannot read", which reads like a missing --config (an outside probe)."""
    from nextclick.operators.conditions.fields import RulesError
    from nextclick.operators.infra.config import Config
    from nextclick.operators.rules.loader import load_configured_rules

    for path, why in ((tmp_path / "nonexistent.toml", "no such file"), (tmp_path, "a directory")):
        with pytest.raises(RulesError, match=rf"^flow.rules_file: {path} is not a readable file \({why}\)$"):
            load_configured_rules(Config().replace(flow={"rules_file": str(path)}))
