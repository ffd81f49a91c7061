"""The Python ceiling (bench/ceiling.py) must do the flow's job, or a/b compares unlike work."""

from __future__ import annotations

from pathlib import Path

from bench import workload
from bench.ceiling import CeilingState
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import ParseConfig, PrivacyConfig
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import Event, SourcePosition
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from tests.helpers import HOUR, T0, default_rules


def _reference_events(end_ms: int) -> list[Event]:
    secret = PrivacyConfig(demo=True).resolve_secret()
    events = []
    for offset, (key, value) in enumerate(workload.serialise(3000, 300, seed=3, end_ms=end_ms)):
        item = parse_message(key, value, (), SourcePosition("bench", 0, offset), secret=secret,
                             now_ms=end_ms, config=ParseConfig())
        assert isinstance(item, Event), item
        events.append(item)
    return events


def test_the_ceiling_makes_the_same_decisions_as_a_shard(tmp_path: Path) -> None:
    end = T0 + 10 * HOUR
    events = _reference_events(end)
    clock = ManualClock(end)
    shard = ShardLogic(ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=clock), None)
    ceiling = CeilingState(default_rules())
    from_shard: list[str] = []
    from_ceiling: list[str] = []
    by_timers = 0
    for start in range(0, len(events), 100):
        batch = events[start:start + 100]
        from_shard += [d.decision_id for d in shard.on_batch(batch)[0]]
        from_shard += [d.decision_id for d in shard.on_notify()[0]]
        for event in batch:
            from_ceiling += [d.decision_id for d in ceiling.on_event(event)]
        fired = ceiling.on_timers(end)
        by_timers += len(fired)
        from_ceiling += [d.decision_id for d in fired]
    clock.set(end + 3 * HOUR)  # every absence still open falls due
    from_shard += [d.decision_id for d in shard.on_notify()[0]]
    fired = ceiling.on_timers(end + 3 * HOUR)
    by_timers += len(fired)
    from_ceiling += [d.decision_id for d in fired]
    shard.store.close()
    # Absences fired by timers, not only decisions on events: the ceiling must do that work too.
    assert by_timers > 0 and fired
    assert sorted(from_ceiling) == sorted(from_shard)
    assert len(from_shard) > 100
