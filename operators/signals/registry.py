"""Signal kinds by name. Adding a kind is one module with a loader and one entry here (or a call to
`register` from a plugin, which is how tests/domain/test_signal_registry.py adds one)."""

from __future__ import annotations

from typing import Any

from nextclick.operators.conditions.fields import RulesError, Where
from nextclick.operators.signals import absence, count, distinct, last, session, unmatched
from nextclick.operators.signals import sum as sum_kind
from nextclick.operators.signals.base import Signal, SignalLoader

KINDS: dict[str, SignalLoader] = {
    "count": count.load,
    "sum": sum_kind.load,
    "distinct": distinct.load,
    "last": last.load,
    "absence": absence.load,
    "session": session.load,
    "unmatched": unmatched.load,
}


def register(kind: str, loader: SignalLoader) -> None:
    if kind in KINDS:
        raise ValueError(f"signal kind {kind!r} is already registered")
    KINDS[kind] = loader


def load_signal(path: str, name: str, body: Any, event_types: frozenset[str],
                errors: list[RulesError] | None = None) -> Signal:
    """One `[signals.<name>]` table by its kind's loader. With `errors`, mistakes the loader's field
    helpers find are recorded there and the loader carries on (the caller drops the signal)."""
    if not isinstance(body, dict):
        raise RulesError(f"{path}: signal '{name}' must be a table")
    where = Where(path, f"signal '{name}'", errors)
    loader = KINDS.get(body.get("kind"))  # type: ignore[arg-type]
    if loader is None:
        raise where.fail("kind", f"must be one of {', '.join(KINDS)}; got {body.get('kind')!r}")
    return loader(name, body, where, event_types)
