"""A shard's decoded profiles in front of its store, and their write-back.

Decoded profiles stay in an LRU (`capacity`) so a busy customer is not decoded and re-encoded on every
batch. A changed profile is "dirty" until it is written to the store: at the epoch end (`flush`), when
it is evicted, or when too many are dirty (bounding the epoch-end pause). Until then the store's timer
index still holds its old due time (`dirty`), and the profile keeps its own (`dirty_due`) and a replay
log of what was applied since it was written (`applied`, for undoing a failed event exactly).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any

from nextclick.operators.engine.steps import due_at
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.facts import ProfileEncodeError
from nextclick.operators.profile.model import Profile, new_profile
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.common import Applied
from nextclick.operators.shard.quarantine import Quarantine
from nextclick.operators.state.keys import QUARANTINED, profile_key
from nextclick.operators.state.store import UNKNOWN, KeyValueStore, Unknown
from nextclick.operators.state.timers import TimerIndex

# Changed-but-unwritten profiles a shard may hold before it writes the least recently changed half
# (but never the profiles the current batch changed). Whatever is dirty at the epoch end is encoded
# while the worker waits, so this bounds that pause when batches are small (live traffic).
DIRTY_LIMIT = 32
# ... or this many times the customers the current batch changed, if that is more.
BACKLOG_DIRTY_FACTOR = 4
# Early in an epoch (ShardState.early_until), far from the pause, this many may stay dirty: a
# profile that changes again before the epoch ends is then encoded once, not once per change (live,
# most of a profile's writes were rewrites). The rest of the epoch winds down to DIRTY_LIMIT.
EARLY_DIRTY_LIMIT = 512
# The share of an epoch, from its start, in which up to EARLY_DIRTY_LIMIT may stay dirty.
EARLY_SHARE = 0.7
# Profiles written per batch when over the limit, at most (or twice the batch's customers, if that
# is more): winding down from EARLY_DIRTY_LIMIT spreads over batches instead of stalling one.
WRITE_CHUNK = 64

CLEAN: Any = object()  # `dirty` has no entry: the profile is as the store holds it


class ProfileCache:
    """The LRU of decoded profiles, the dirty set and its write-back, and what the epoch staged."""

    def __init__(self, store: KeyValueStore, timers: TimerIndex, ruleset: RuleSet, capacity: int,
                 quarantine: Quarantine, *, viewing: bool = False) -> None:
        self.store, self.timers, self.ruleset, self.capacity = store, timers, ruleset, capacity
        # Where a profile goes that cannot be read, written, turned or rebuilt (see `set_aside`).
        self.quarantine = quarantine
        self.viewing = viewing
        self.live: OrderedDict[str, Profile] = OrderedDict()
        # Each changed-but-unwritten profile and the due time the store's timer index still holds for
        # it, in order of last change (the ones written early are least likely to change again).
        self.dirty: dict[str, int | None] = {}
        # Each dirty profile's own due time.
        self.dirty_due: dict[str, int | None] = {}
        # How many may stay dirty: set by each batch of events (ShardState._apply_events).
        self.dirty_limit = DIRTY_LIMIT
        # Per dirty customer, what was applied since the profile was last written (events, and the
        # frontier of timer turns): replayed onto the stored copy to undo a failed event exactly.
        self.applied: dict[str, list[Applied]] = {}
        # Replay logs of profiles written since the last turn, freed at the start of the next one.
        self.retired: list[list[Applied]] = []
        # The committed bytes of profiles loaded since the last checkpoint and not yet written: the
        # store's undo pre-image for them, so writing them needs no second read.
        self.committed: dict[str, bytes | None] = {}
        # Customers whose stored profile changed (written, erased, moved out) in this epoch: the profile
        # view's records at the checkpoint. Only kept when there is a view.
        self.viewed: set[str] = set()
        # Those of them erased (right to erasure): their tombstones say so, so the profile service purges.
        self.erased_viewed: set[str] = set()

    def new_turn(self) -> None:
        """Free the replay logs retired since the last turn (see `write`)."""
        self.retired.clear()

    def mark_viewed(self, customer: str, *, erased: bool = False) -> None:
        """The customer's stored profile changed in this epoch: a record for the view, if there is one.
        `erased`: by the right to erasure, which its tombstone says."""
        if self.viewing:
            self.viewed.add(customer)
            if erased:
                self.erased_viewed.add(customer)

    def unmark_viewed(self, customer: str) -> None:
        """Its record for the view went out already (an erasure's tombstone, at once)."""
        self.viewed.discard(customer)
        self.erased_viewed.discard(customer)

    def load(self, customers: list[str]) -> tuple[dict[str, Profile], set[str], set[str]]:
        """Decoded profiles (new ones for customers never seen), which of them are new, and which
        customers are quarantined (not in the returned profiles)."""
        live = self.live
        out: dict[str, Profile] = {}
        missing: list[str] = []
        for customer in customers:
            profile = live.get(customer)
            if profile is None:
                missing.append(customer)
            else:
                live.move_to_end(customer)
                out[customer] = profile
        created: set[str] = set()
        quarantined: set[str] = set()
        if missing:
            store, committed = self.store, self.committed
            keys = [profile_key(c) for c in missing]
            for customer, key, blob in zip(missing, keys, store.get_many(keys)):
                if store.unchanged_since_checkpoint(key):
                    committed[customer] = blob
                if blob is None:
                    created.add(customer)
                    out[customer] = live[customer] = new_profile(customer)
                    continue
                if blob == QUARANTINED:
                    quarantined.add(customer)
                    continue
                try:
                    profile = decode_profile(blob)
                except Exception as exc:  # noqa: BLE001 - bad stored bytes are one customer's problem
                    self.set_aside(customer, "decode_profile", exc, blob)
                    quarantined.add(customer)
                    continue
                out[customer] = live[customer] = profile
        return out, created, quarantined

    def changing(self, profiles: dict[str, Profile], indexed_at: dict[str, int] | None = None) -> None:
        """Call before changing these profiles: remember the due time their stored copy is indexed under
        (`indexed_at`: already known from the timer index, for clean ones)."""
        ruleset = self.ruleset
        dirty = self.dirty
        for customer, profile in profiles.items():
            indexed = dirty.pop(customer, CLEAN)
            if indexed is CLEAN:
                indexed = indexed_at[customer] if indexed_at and customer in indexed_at else due_at(profile, ruleset)
            dirty[customer] = indexed

    def changed(self, profiles: dict[str, Profile], dues: dict[str, int | None] | None = None) -> None:
        """After changing these profiles: note their due times (`dues`: already computed, for some),
        then write the least recently changed ones if the cache or the dirty set is over its bound."""
        ruleset, timers, dirty_due = self.ruleset, self.timers, self.dirty_due
        for customer, profile in profiles.items():
            due = dues[customer] if dues is not None and customer in dues else due_at(profile, ruleset)
            dirty_due[customer] = due
            timers.hint(due)
        live, limit = self.live, self.capacity
        while len(live) > limit:
            customer, profile = live.popitem(last=False)
            if customer in self.dirty:
                self.write(customer, profile)
        limit = max(self.dirty_limit, BACKLOG_DIRTY_FACTOR * len(profiles))
        if len(self.dirty) > limit:
            # Never the ones this batch changed (they sit at the end of `dirty`).
            self.write_oldest(max(WRITE_CHUNK, 2 * len(profiles)), keep=max(limit // 2, len(profiles)))

    def write_oldest(self, most: int, *, keep: int) -> None:
        """Write up to `most` of the least recently changed dirty profiles, leaving `keep` dirty."""
        live, count = self.live, min(most, len(self.dirty) - keep)
        if count <= 0:
            return
        for customer in list(itertools.islice(self.dirty, count)):
            if customer in live:
                self.write(customer, live[customer])

    def write(self, customer: str, profile: Profile) -> None:
        """Write one dirty profile and move its timer key to its own due time."""
        try:
            blob = encode_profile(profile)
        except ProfileEncodeError as exc:
            # Never store a value that would not read back as written (e.g. a non-finite number).
            self.live.pop(customer, None)
            self.set_aside(customer, "encode_profile", exc, None, profile_due=self.dirty_due.get(customer))
            return
        indexed = self.dirty.pop(customer)
        applied = self.applied.pop(customer, None)
        if applied:
            # Freeing an event costs about a microsecond; at the epoch end that would lengthen the
            # pause the worker waits through, so the next turn frees them instead.
            self.retired.append(applied)
        committed = self.committed.pop(customer, UNKNOWN)
        self.store.put(profile_key(customer), blob, committed=committed)
        if self.viewing:
            self.viewed.add(customer)
        # Loaded unchanged since the checkpoint: its timer key is unchanged too.
        self.timers.move(customer, indexed, self.dirty_due.pop(customer), committed=committed is not UNKNOWN)

    def flush(self) -> None:
        """Write every dirty profile (and its timer) to the store's pending set."""
        live = self.live
        for customer in list(self.dirty):
            if customer in live:
                self.write(customer, live[customer])

    def set_aside(self, customer: str, step: str, exc: BaseException, blob: bytes | None,
                  profile_due: int | None = None) -> None:
        """Forget the customer and quarantine their stored profile (`blob`: the stored bytes, if read;
        `profile_due`: a due time a timer key of theirs may be under): nothing is processed for them."""
        self.quarantine.record(customer, step, exc, blob, self.drop(customer) | {profile_due})

    def restore(self, customer: str, profiles: dict[str, Profile]) -> bool:
        """After a failed event: put the customer's profile as it was before it back in place (in
        `profiles` and here), rebuilt from their replay log; False if it had to be set aside."""
        try:
            profile = self.quarantine.rebuild(customer, self.applied.get(customer, ()))
        except Exception as exc:  # noqa: BLE001 - a replay that fails too: set the customer aside
            profiles.pop(customer, None)
            self.live.pop(customer, None)
            self.set_aside(customer, "replay", exc, None)
            return False
        profiles[customer] = self.live[customer] = profile
        return True

    def unchanged(self, customer: str) -> None:
        """Every change to the customer since the last write failed: the stored copy stands as it is."""
        self.dirty.pop(customer, None)
        self.dirty_due.pop(customer, None)
        self.committed.pop(customer, None)

    def forget(self, customer: str) -> bool:
        """Drop the customer and their unwritten changes (erasure); True if a profile was cached."""
        in_memory = self.live.pop(customer, None) is not None
        self.dirty.pop(customer, None)
        self.dirty_due.pop(customer, None)
        self.applied.pop(customer, None)
        self.committed.pop(customer, None)
        return in_memory

    def drop(self, customer: str) -> set[int | None]:
        """Drop the customer (set aside); the due times their timer keys may be under, from here."""
        indexed = {self.dirty.pop(customer, None), self.dirty_due.pop(customer, None)}
        self.applied.pop(customer, None)
        self.committed.pop(customer, None)
        self.live.pop(customer, None)
        return indexed

    def delete(self, customer: str, profile: Profile, committed: bytes | None | Unknown) -> None:
        """Remove a profile taken out of the cache (or read) from the store, with its timer key; its
        unwritten changes go with it. `committed`: its pre-image, if known."""
        indexed = self.dirty.pop(customer, CLEAN)
        if indexed is CLEAN:
            indexed = due_at(profile, self.ruleset)
        self.dirty_due.pop(customer, None)
        self.applied.pop(customer, None)
        self.store.delete(profile_key(customer), committed=committed)
        self.timers.move(customer, indexed, None, committed=committed is not UNKNOWN)
        self.mark_viewed(customer)

    def view_changes(self, family: str) -> tuple[list[tuple[str, Profile | None]], set[str]]:
        """The profile view's records of this epoch (call once flushed): each changed profile as the
        store now holds it (the cached copy is the same), None for one that is gone; a quarantined one
        is left as it was last shown. And the view keys of those erased (still gone)."""
        live, store = self.live, self.store
        changes: list[tuple[str, Profile | None]] = []
        erased: set[str] = set()
        for customer in sorted(self.viewed):
            profile = live.get(customer)
            if profile is None:
                blob = store.get(profile_key(customer))
                if blob == QUARANTINED:
                    continue
                try:
                    profile = None if blob is None else decode_profile(blob)
                except Exception:  # noqa: BLE001 - it is quarantined when next read; not shown meanwhile
                    continue
            # Keyed by family too: a profile moved to a later family may keep its key there, and its
            # tombstone in the first must not remove the merged record.
            changes.append((f"{family}/{customer}", profile))
            if profile is None and customer in self.erased_viewed:
                erased.add(f"{family}/{customer}")
        self.viewed.clear()
        self.erased_viewed.clear()
        return changes, erased
