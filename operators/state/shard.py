"""The one Bytewax stateful step, keyed by shard rather than by customer: a thin adapter over ShardState.

Bytewax keeps each key's state as Python objects in RAM, recovers it through SQLite and charges
every pending timer on every activation, so customers are not Bytewax keys. A shard holds many
customers in its own RocksDB (operators/state/shard_state.py), keeps its own timer index and asks
Bytewax for one `notify_at`: its earliest deadline. Bytewax's recovery holds only
`{"shard": n, "seq": k}` per shard; the RocksDB checkpoint with that seq is written in `snapshot`,
at the epoch boundary, and a resume rolls RocksDB back to the seq Bytewax committed.
"""

from __future__ import annotations

from datetime import datetime

from bytewax.operators import StatefulBatchLogic

from operators.records import SavepointRequest
from operators.state.keys import shard_of
from operators.state.shard_state import ShardContext, ShardItem, ShardOutput, ShardState
from operators.state.store import KeyValueStore

ResumeState = dict[str, int]


class ShardLogic(StatefulBatchLogic[ShardItem, ShardOutput, ResumeState]):
    """Bytewax's callbacks for one shard, each handed to its ShardState."""

    def __init__(self, ctx: ShardContext, resume: ResumeState | None) -> None:
        # Bytewax's builder is not told its key: a resumed shard finds its id in the resume record,
        # a new one from the first item routed to it.
        self.ctx = ctx
        self.state: ShardState | None = None
        if resume is not None:
            self.state = ShardState.open(ctx, int(resume["shard"]), int(resume["seq"]))

    @property
    def store(self) -> KeyValueStore:
        assert self.state is not None, "shard used before it was opened"
        return self.state.store

    def on_batch(self, values: list[ShardItem]) -> tuple[list[ShardOutput], bool]:
        state = self.state
        if state is None:
            # New to Bytewax's recovery: open at the restore point (nothing on disk was committed).
            first = values[0]
            shard = first.shard if isinstance(first, SavepointRequest) else shard_of(first.customer, self.ctx.shards)
            state = self.state = ShardState.open(self.ctx, shard, None)
        return state.apply(values), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[ShardOutput], bool]:
        assert self.state is not None, "notified before it was opened"
        return self.state.fire_timers(self.ctx.clock.now_ms()), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = None if self.state is None else self.state.next_due()
        return None if due is None else self.ctx.clock.wall_deadline(due)

    def snapshot(self) -> ResumeState:
        assert self.state is not None, "snapshot before it was opened"
        return {"shard": self.state.shard, "seq": self.state.checkpoint()}

    def erase(self, customer: str) -> bool:
        assert self.state is not None, "erase before it was opened"
        return self.state.erase(customer)
