"""What every signal kind provides, so the engine, the rules and the loader need no list of kinds.

A signal is one `[signals.<name>]` table of a rules file, loaded by its kind's loader (registered
in operators/signals/registry.py). Its state lives in `profile.signals[name]`, in whatever plain
shape its kind chooses (lists, so it stores as MessagePack). The kind alone writes, prunes and
reads that state, and says when each entry expires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from nextclick.operators.conditions.fields import Where
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Event, Trigger


class Signal(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def touched_by(self) -> frozenset[str]:
        """Event types whose events change it (the engine visits only these signals for an event)."""

    @property
    def attributes(self) -> tuple[str, ...]:
        """The names rules can read: `value(attribute, ...)` answers each."""

    @property
    def fires(self) -> bool:
        """True for kinds that fire on their own (absences): the engine asks `deadline` and `fire`."""

    @property
    def expires(self) -> bool:
        """True for kinds whose entries expire by event time and are pruned (every kind but absences,
        which leave state by firing or being cancelled)."""

    def apply(self, profile: Profile, event: Event) -> None:
        """Fold one on-time event of a type in `touched_by`, and `profile.note_expiry` what it adds."""

    def prune(self, state: Any, ref_ms: int) -> Any:
        """The state without what expired by event time `ref_ms` (None when nothing is left)."""

    def expiry_bounds(self, state: Any) -> tuple[int, int]:
        """When the first and the last entry of a (non-empty) state expire, in event time."""

    def value(self, attribute: str, state: Any, ref_ms: int) -> Any:
        """An attribute's value as of `ref_ms`; `state` is None when the profile holds none."""

    def deadline(self, state: Any) -> int | None:
        """When a pending state fires on its own (event time), or None."""

    def fire(self, state: Any) -> Trigger:
        """The trigger a due state fires (the engine then drops the state)."""

    @property
    def trigger_attributes(self) -> frozenset[str]:
        """What a fired trigger carries, for rules `on` it to read as `trigger.<attribute>`."""

    def merge(self, a: Any, b: Any) -> Any:
        """Two profiles' states of this signal as one (identity stitching: operators/engine/merge.py);
        both are non-None and neither may be changed. The result must not depend on which is `a`, so
        the merged profile does not depend on which profile absorbed which."""


# A kind's loader: (signal name, its TOML table, where it is for errors, the known event types).
SignalLoader = Callable[[str, dict[str, Any], Where, frozenset[str]], Signal]


class Expiring:
    """Defaults for kinds that never fire on their own."""

    fires = False
    expires = True
    trigger_attributes: frozenset[str] = frozenset()

    def deadline(self, state: Any) -> int | None:
        return None

    def fire(self, state: Any) -> Trigger:
        raise TypeError(f"{type(self).__name__} signals do not fire")
