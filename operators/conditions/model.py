"""What a condition means once read: `<attribute> <op> <literal>`, and the groups (any, all, not) that
combine them, as a rule's `when` and a signal's `where` are written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Condition:
    """`<attribute> <op> <literal>`, e.g. `page_views_30m >= 3` or `segment in ["loyal", "champion"]`.

    A condition on an attribute with no value (None) is false, except `==` and `!=`, which compare
    with None like any value; a comparison of mismatched types is false.
    """

    attribute: str
    op: str
    value: Any
    text: str


@dataclass(frozen=True)
class Group:
    """`{ any = [...] }`, `{ all = [...] }` or `{ not = ... }` in a `when`: OR, AND and NOT over
    conditions and groups, so "cart email unless email-fatigued" is one rule with one cooldown."""

    kind: Literal["any", "all", "not"]
    items: tuple[Condition | Group, ...]
    text: str


When = tuple[Condition | Group, ...]


def leaves(when: When) -> tuple[Condition, ...]:
    """Every condition in `when`, groups opened, in the order written (what a decision's `signals` name)."""
    out: list[Condition] = []
    for item in when:
        if isinstance(item, Group):
            out.extend(leaves(item.items))
        else:
            out.append(item)
    return tuple(out)
