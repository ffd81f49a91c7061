"""The shard store's error, in a module of its own so that every part of the store can raise it.

Its public name stays `nextclick.operators.state.store.StateError` (importers, dead letters and logs
name it so); this module only defines it.
"""

from __future__ import annotations

from nextclick.operators.errors import NextclickError

__all__ = ["StateError"]


class StateError(NextclickError, RuntimeError):
    """The store cannot do what was asked without losing or inventing state (or it is read-only)."""


# Named where it always was: a dead letter or log line that prints the class keeps the same name.
StateError.__module__ = "nextclick.operators.state.store"
