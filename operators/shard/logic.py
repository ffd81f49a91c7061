"""The one Bytewax stateful step, keyed by shard rather than by customer: a thin adapter over ShardState.

Bytewax keeps each key's state as Python objects in RAM, recovers it through SQLite and charges
every pending timer on every activation, so customers are not Bytewax keys. A shard holds many
customers in its own RocksDB (operators/shard/shard_state.py), keeps its own timer index and asks
Bytewax for one `notify_at`: its earliest deadline, judged by the input's event-time frontier
(operators/frontier.py): on the clock while the input is caught up, otherwise as soon as a Frontier
item from the identity stage passes it. Bytewax's recovery holds only
`{"shard": n, "seq": k}` per shard; the RocksDB checkpoint with that seq is written in `snapshot`,
at the epoch boundary, and a resume rolls RocksDB back to the seq Bytewax committed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulBatchLogic

from nextclick.operators.exchange import flatten
from nextclick.operators.frontier import EventTimeFrontier, InputFrontier
from nextclick.operators.records import Frontier, SavepointRequest, ShardProgress
from nextclick.operators.shard.shard_state import ShardContext, ShardItem, ShardOutput, ShardState
from nextclick.operators.state.keys import shard_of, shard_path
from nextclick.operators.state.store import KeyValueStore

ResumeState = dict[str, int] | None  # None: a shard that never had state to open
# Timer turns at the input's end at most (each takes up to 2,000 customers): a bound, never reached in
# practice, so that no customer whose turn cannot run keeps the flow from ending.
_EOF_TURNS = 100_000


class ShardLogic(StatefulBatchLogic[ShardItem | list[ShardItem], ShardOutput, ResumeState]):
    """Bytewax's callbacks for one shard, each handed to its ShardState."""

    def __init__(self, ctx: ShardContext, resume: ResumeState | None) -> None:
        # Bytewax's builder is not told its key: a resumed shard finds its id in the resume record,
        # a new one from the first item routed to it.
        self.ctx = ctx
        self.state: ShardState | None = None
        # The input's frontier, kept from the first Frontier on, even while there is no state to open:
        # the identity stage sends it again only when it moves (live: never), not to each new shard.
        self.frontier = EventTimeFrontier(ctx.clock.now_ms, await_input=ctx.await_frontier)
        # Without identity stitching (ctx.direct): every input partition's floor, from the sources.
        self.inputs = InputFrontier(ctx.clock.now_ms)
        if resume is not None:
            self.state = ShardState.open(ctx, int(resume["shard"]), int(resume["seq"]), self.frontier)

    @property
    def store(self) -> KeyValueStore:
        assert self.state is not None, "shard used before it was opened"
        return self.state.store

    def on_batch(self, received: list[ShardItem | list[ShardItem]]) -> tuple[list[ShardOutput], bool]:
        values: list[ShardItem] = flatten(received)  # the identity stage sends a list per shard and batch
        if self.ctx.direct:
            values = self._frontiers(values)
            if not values:
                return [], StatefulBatchLogic.RETAIN
        state = self.state
        if state is None:
            # New to Bytewax's recovery: open at the restore point (nothing on disk was committed).
            first = values[0]
            if isinstance(first, (SavepointRequest, Frontier)):
                shard = first.shard
            else:
                shard = shard_of(first.customer, self.ctx.shards)
            if all(type(v) is Frontier for v in values) and not shard_path(self.ctx.state_dir, shard).exists():
                # The frontier goes to every shard; one with no state has no timers: it stays unopened
                # (no store created) and only remembers the frontier.
                for value in values:
                    self.frontier.advance(value.floor)  # type: ignore[union-attr]  # all Frontier
                return [], StatefulBatchLogic.RETAIN
            state = self.state = ShardState.open(self.ctx, shard, None, self.frontier)
        return state.apply(values), StatefulBatchLogic.RETAIN

    def _frontiers(self, values: list[Any]) -> list[ShardItem]:
        """The sources' reports in place of the identity stage's Frontier: each one moves this shard's
        view of the lowest floor over every input partition, which, once all have reported, is the
        frontier. A report comes behind everything its partition sent this shard, so the frontier never
        passes an event still on its way."""
        out: list[ShardItem] = []
        inputs = self.inputs
        for value in values:
            if type(value) is ShardProgress:
                inputs.note(value.partition, value.floor, value.total)
                known, floor = inputs.current()
                if known:
                    out.append(Frontier(value.shard, floor))
            else:
                out.append(value)
        return out

    def on_notify(self) -> tuple[list[ShardOutput], bool]:
        state = self.state
        assert state is not None, "notified before it was opened"
        state.wind_down()  # if that is what is due: dirty profiles to the store before the epoch ends
        return state.fire_due(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        state = self.state
        if state is None:
            return None
        timers = self._timers_at(state)
        wind = state.wind_down_at()
        if wind is None:
            return timers
        at = datetime.now(UTC) + timedelta(seconds=max(0.0, wind - time.monotonic()))
        return at if timers is None else min(timers, at)

    def _timers_at(self, state: ShardState) -> datetime | None:
        due = state.next_due()
        if due is None:
            return None
        if state.frontier.live:  # caught up: the clock moves the frontier
            return self.ctx.clock.wall_deadline(due)
        # Behind: only a Frontier item moves it (on_batch), unless a turn left some due already.
        return datetime.now(UTC) if state.due_now() else None

    def on_eof(self) -> tuple[list[ShardOutput], bool]:
        """The input ended: every timer the frontier has passed fires now (a turn takes a bounded
        number of customers; here every one), so a backfill with --stop-at-end loses none."""
        state = self.state
        out: list[ShardOutput] = []
        for _ in range(_EOF_TURNS):
            if state is None or not state.due_now():
                break
            out += state.fire_due()
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> ResumeState:
        if self.state is None:  # never had state: nothing to resume
            return None
        return {"shard": self.state.shard, "seq": self.state.checkpoint()}

    def erase(self, customer: str) -> bool:
        assert self.state is not None, "erase before it was opened"
        return self.state.erase(customer)
