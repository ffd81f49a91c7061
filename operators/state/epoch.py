"""What a stateful step owes its store at every epoch end besides its own data.

The identity stage and every shard commit the same way: the input positions they have seen go into
the same atomic checkpoint as their data, erasures are purged from the files once committed, and
requested savepoints are written from the seq just committed. One ledger, so a fix to that order
reaches both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import orjson

from nextclick.operators.infra import failpoints
from nextclick.operators.records import SavepointRequest, SourcePosition
from nextclick.operators.state.keys import POSITIONS_KEY
from nextclick.operators.state.store import KeyValueStore


class _Sourced(Protocol):
    @property
    def source(self) -> SourcePosition | None: ...


class EpochLedger:
    """Input positions, erasures and savepoint requests since the last checkpoint of one store."""

    __slots__ = ("store", "positions", "_positions_changed", "_erased", "savepoints")

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        raw = store.get(POSITIONS_KEY)
        # Next offset per input partition ("topic#partition") seen by this store's step.
        self.positions: dict[str, int] = orjson.loads(raw) if raw is not None else {}
        self._positions_changed = False
        self._erased = 0
        self.savepoints: list[SavepointRequest] = []

    def note_positions(self, values: Iterable[_Sourced]) -> None:
        positions = self.positions
        for value in values:
            src = value.source
            if src is not None:
                key = f"{src.topic}#{src.partition}"
                if positions.get(key, -1) <= src.offset:
                    positions[key] = src.offset + 1
                    self._positions_changed = True

    def note_erased(self) -> None:
        """An erasure's bytes must leave the files once the checkpoint that drops them is committed."""
        self._erased += 1

    def commit(self, write_savepoint: Callable[[SavepointRequest, int], None]) -> int:
        """Positions and the store's staged writes in one checkpoint, then purge and savepoints; the seq."""
        if self._positions_changed:
            self.store.put(POSITIONS_KEY, orjson.dumps(self.positions))
            self._positions_changed = False
        failpoints.hit("before_checkpoint")
        seq = self.store.checkpoint()
        # The window a crash test aims at: RocksDB has the checkpoint, Bytewax has not committed it.
        failpoints.hit("after_checkpoint")
        if self._erased:
            self.store.purge()
            self._erased = 0
        requests, self.savepoints = self.savepoints, []
        for request in requests:
            write_savepoint(request, seq)
        return seq
