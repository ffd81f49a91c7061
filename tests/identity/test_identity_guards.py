"""The identity guards' registry: every guard in one place, with its reason, and the docs in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nextclick.operators.identity.guards import (
    GUARDS,
    LINK_GUARDS,
    REFUSAL_REASONS,
    LinkProposal,
    default_identity_rules,
    guard_links,
    link_guard,
    refuse_link,
    refuse_raw,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_guard_is_documented_with_its_reason() -> None:
    table = set(re.findall(r"^\| `(\w+)` \|", (DOCS / "architecture.md").read_text(), re.M))
    assert set(REFUSAL_REASONS) <= table
    operations = (DOCS / "operations.md").read_text()
    for reason in REFUSAL_REASONS:
        assert f"`{reason}`" in operations, reason


def test_link_guards_run_in_order_and_name_the_type() -> None:
    rules = default_identity_rules()
    two = LinkProposal({"customer": ["a", "b"], "cookie": ["k"]}, ("customer", "customer"), rules)
    assert refuse_link(two) == ("two_customer_ids", "customer")  # before same_key_type, which also holds
    same = LinkProposal({"email": ["e1"], "cookie": ["k1", "k2"]}, ("cookie", "cookie"), rules)
    assert refuse_link(same) is None  # keyed by email: two cookie profiles may join under it
    same_top = LinkProposal({"email": ["e1", "e2"]}, ("email", "email"), rules)
    assert refuse_link(same_top) == ("same_key_type", "email")
    many = LinkProposal({"customer": ["c"], "cookie": [f"k{i}" for i in range(rules.limit("cookie") + 1)]},
                        ("customer", "cookie"), rules)
    assert refuse_link(many) == ("limit", "cookie")
    assert [g.reason for g in LINK_GUARDS] == ["two_customer_ids", "same_key_type", "limit"]


def test_raw_guard_refuses_placeholders_before_hashing() -> None:
    rules = default_identity_rules()
    assert refuse_raw(rules, "cookie", "anonymous") == "blocked_value"
    assert refuse_raw(rules, "cookie", "c-93f1") is None
    links, refused = guard_links(("customer", "c1"), [("cookie", "anonymous"), ("email", "a@b.example")],
                                 rules, b"s" * 32)
    assert refused == ("cookie",) and [t for t, _ in links] == ["email"]
    assert "a@b.example" not in repr(links)  # only the pseudonymous key goes on
    # A refused primary links nothing at all.
    assert guard_links(("cookie", "anonymous"), [("email", "a@b.example")], rules, b"s" * 32) == ((), ("cookie",))


def test_a_reason_is_registered_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        link_guard("limit", "again")(lambda proposal: None)
    assert GUARDS["limit"].where == "link" and GUARDS["blocked_value"].where == "raw"
