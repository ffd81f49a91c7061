"""ShardLogic against a real RocksDB, driven directly (no Kafka): what the decoded-profile cache must not hide."""

from __future__ import annotations

from pathlib import Path

from operators.clock import ManualClock
from operators.shard import ShardContext, ShardLogic, read_profile
from tests.helpers import T0, default_rules, make_event


def test_erasing_a_customer_seen_only_this_epoch_reports_and_removes_it(tmp_path: Path) -> None:
    ctx = ShardContext(state_dir=tmp_path, shards=1, ruleset=default_rules(), clock=ManualClock(T0))
    shard = ShardLogic(ctx, None)
    shard.on_batch([make_event("page_view", T0, customer="c1"), make_event("page_view", T0, customer="c2")])
    # c1 exists only in the shard's decoded cache: nothing has been written to RocksDB yet.
    assert shard.erase("c1") is True
    assert shard.erase("nobody") is False
    shard.snapshot()
    shard.store.close()
    assert read_profile(tmp_path, 1, "c1") is None
    assert read_profile(tmp_path, 1, "c2") is not None
