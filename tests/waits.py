"""Conditions a test of the running flow waits on, instead of sleeping "long enough".

A shard's committed seq advances at each epoch end it takes part in, so "the epoch that did X is
committed" is "the seq passed the one it had before X". Stores are read read-only (the flow holds
them open), and only what is committed is seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nextclick.operators.profile.codec import stored_as_dict
from nextclick.operators.state.keys import DUE, PROFILE_PREFIX, QUARANTINED, TIMER_PREFIX
from nextclick.operators.state.layout import IDENTITY, has_store
from nextclick.operators.state.store import ShardStore


def wait_until(cond: Callable[[], bool], what: str, *, timeout_s: float = 30,
               failures: list[BaseException] | None = None) -> None:
    """Poll `cond` until it holds; fail with `what` after `timeout_s`, or as soon as the flow failed."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert not failures, failures
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def store_seq(path: Path) -> int:
    """The seq a store has committed (0 when it does not exist yet)."""
    if not has_store(path):
        return 0
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        return store.seq
    finally:
        store.close()


def stores(state_dir: Path) -> list[Path]:
    """Every store of every family under a state directory."""
    return sorted(p.parent for p in state_dir.rglob("CURRENT") if p.parent.name.startswith("shard-"))


def due_timers(state_dir: Path, now_ms: int) -> int:
    """Committed timer keys due by `now_ms`, over every store: 0 once every timer that fell due has fired
    and the epoch that fired it is committed (firing moves a profile's timer past now, or deletes it)."""
    due = 0
    for path in stores(state_dir):
        store = ShardStore.open_read_only(path, cache_size=0)
        try:
            for key, _ in store.scan(TIMER_PREFIX):
                if DUE.unpack_from(key, len(TIMER_PREFIX))[0] > now_ms:
                    break  # keys sort by due time
                due += 1
        finally:
            store.close()
    return due


def committed_versions(state_dir: Path) -> int:
    """The sum of every committed profile's version: each applied event adds one, so this equals the
    events applied once all of them are committed (in a flow without identity merges)."""
    total = 0
    for path in stores(state_dir):
        if path.parent.name == IDENTITY:
            continue
        store = ShardStore.open_read_only(path, cache_size=0)
        try:
            total += sum(int(stored_as_dict(v)["facts"]["version"]) for _, v in store.scan(PROFILE_PREFIX)
                         if v != QUARANTINED)
        finally:
            store.close()
    return total
