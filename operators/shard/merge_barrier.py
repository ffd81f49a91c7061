"""Identity stitching within one shard (operators/identity/): moving profiles out, and merging the moved
profiles into a customer's once they have all arrived.

A `MoveOut` takes a profile out of this shard and sends it on as a `MoveIn`; a `MergeExpect` says which
profiles are on their way to one of this shard's customers. Until they have all arrived (always within
the epoch: they come from earlier steps of the same epoch), that customer's items are held, so the
moved profiles are merged before anything that came after the link, whatever order the two paths
deliver in. A moved profile that arrives before its `MergeExpect` waits for it (`early`).
"""

from __future__ import annotations

from nextclick.operators.engine.merge import merge_all
from nextclick.operators.infra import failpoints, metrics
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.facts import ProfileEncodeError
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Detach, MergeExpect, MoveIn, MoveOut
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.cache import ProfileCache
from nextclick.operators.shard.common import Merge, ShardItem, log
from nextclick.operators.state.keys import QUARANTINED, profile_key
from nextclick.operators.state.store import UNKNOWN, KeyValueStore, StateError, Unknown


class MergeBarrier:
    """Per customer of this shard: the moved profiles still to come, those that came, the identifiers
    to record and the items held until the merge is done; and moved profiles that came first."""

    def __init__(self, store: KeyValueStore, cache: ProfileCache, ruleset: RuleSet, shard: int) -> None:
        self.store, self.cache, self.ruleset, self.shard = store, cache, ruleset, shard
        self.waiting: dict[str, set[str]] = {}
        self.arrived: dict[str, dict[str, bytes | None]] = {}
        self.merge_ids: dict[str, dict[str, list[str]]] = {}
        self.held: dict[str, list[ShardItem]] = {}
        self.early: dict[str, dict[str, bytes | None]] = {}

    def settled(self, label: str) -> None:
        """At the epoch end: refuse to commit while moved profiles are still expected or unclaimed.

        Moved profiles come from earlier steps of the same epoch, which Bytewax has finished before it
        snapshots this one: anything still waiting is a bug, and committing would lose it."""
        if self.waiting or self.early:
            raise StateError(f"{label}: an epoch ended with moved profiles still "
                             f"expected for {len(self.waiting)} customer(s) and {len(self.early)} unclaimed")

    def move_out(self, request: MoveOut) -> MoveIn:
        """Take a profile out of this shard (its timer too; an ordinary change, undone by a rollback)."""
        customer, cache = request.customer, self.cache
        profile: Profile | None = cache.live.pop(customer, None)
        blob: bytes | None = None
        committed: bytes | None | Unknown = UNKNOWN
        if profile is not None:
            try:
                blob = encode_profile(profile)
            except ProfileEncodeError as exc:
                # As in a write: set the customer aside here; the merged profile starts without it.
                self.cache.set_aside(customer, "encode_profile", exc, None,
                                          profile_due=cache.dirty_due.get(customer))
                return MoveIn(request.into, customer, None, request.route)
            committed = cache.committed.pop(customer, UNKNOWN)
        else:
            key = profile_key(customer)
            stored = self.store.get(key)
            if self.store.unchanged_since_checkpoint(key):
                committed = stored
            if stored == QUARANTINED:
                # Its record stays here for inspection; the merged profile starts without it.
                log.warning("quarantined profile not moved", extra={"shard": self.shard, "customer": customer,
                                                                    "into": request.into})
                return MoveIn(request.into, customer, None, request.route)
            if stored is not None:
                try:
                    profile = decode_profile(stored)
                except Exception as exc:  # noqa: BLE001 - bad stored bytes are one customer's problem
                    self.cache.set_aside(customer, "decode_profile", exc, stored)
                    return MoveIn(request.into, customer, None, request.route)
                # What is stored goes as it is (format 1 is rewritten, so the merge reads one format).
                blob = stored if stored[:1] != b"{" else encode_profile(profile)
        if profile is not None:
            cache.delete(customer, profile, committed)  # absorbed by a merge: its tombstone on the view
            metrics.PROFILES_MOVED.inc()
        cache.committed.pop(customer, None)
        failpoints.hit("moved_out")
        return MoveIn(request.into, customer, blob, request.route)

    def expect(self, request: MergeExpect) -> list[ShardItem]:
        """A merge into one of this shard's customers begins; what it releases if all came first."""
        customer = request.customer
        early = self.early.get(customer, {})
        # Moved profiles of this merge that came first; those of a later merge of the same customer stay.
        arrived = {source: early.pop(source) for source in request.sources if source in early}
        if not early:
            self.early.pop(customer, None)
        self.waiting[customer] = set(request.sources) - set(arrived)
        self.arrived[customer] = arrived
        self.merge_ids[customer] = request.ids
        self.held[customer] = []
        return self._complete(customer) if not self.waiting[customer] else []

    def move_in(self, moved: MoveIn) -> list[ShardItem]:
        """A moved profile arrives; what its merge releases if it was the last one."""
        customer = moved.customer
        waiting = self.waiting.get(customer)
        if waiting is None or moved.moved not in waiting:
            # Here before its MergeExpect (the two come by different paths): kept until it comes.
            self.early.setdefault(customer, {})[moved.moved] = moved.blob
            return []
        waiting.discard(moved.moved)
        self.arrived[customer][moved.moved] = moved.blob
        return self._complete(customer) if not waiting else []

    def detach(self, request: Detach) -> None:
        """A shared cookie or device leaves the profile's identifiers (its past stays merged in): kept in
        the replay log as a merge of nothing with the identifiers left, so an undo replays it too."""
        customer, cache = request.customer, self.cache
        profiles, created, _ = cache.load([customer])
        profile = profiles.get(customer)
        if profile is None or customer in created or not any(request.key in keys for keys in profile.ids.values()):
            if customer in created:  # nothing stored: nothing to detach it from
                cache.unchanged(customer)
                cache.live.pop(customer, None)
            return
        cache.changing(profiles)
        ids = {t: [k for k in keys if k != request.key] for t, keys in profile.ids.items()}
        profile.ids = {t: keys for t, keys in ids.items() if keys}
        cache.applied.setdefault(customer, []).append(Merge((), {t: list(keys) for t, keys in profile.ids.items()}))
        cache.changed(profiles)

    def _complete(self, customer: str) -> list[ShardItem]:
        """Every moved profile is here: merge them into the customer's; returns what waited for it."""
        cache = self.cache
        del self.waiting[customer]
        blobs = tuple(blob for _, blob in sorted(self.arrived.pop(customer).items()) if blob is not None)
        ids = self.merge_ids.pop(customer)
        held = self.held.pop(customer)
        profiles, _, quarantined = cache.load([customer])
        if customer in quarantined:
            log.error("moved profiles not merged into a quarantined profile", extra={
                "shard": self.shard, "customer": customer, "moved": len(blobs)})
            return held
        cache.changing(profiles)
        profile = profiles[customer]
        try:
            merge_all(profile, [decode_profile(b) for b in blobs], self.ruleset)
            profile.ids = {t: list(keys) for t, keys in ids.items()}
        except Exception as exc:  # noqa: BLE001 - one customer's bad data is that customer's problem
            metrics.PROCESSING_ERRORS.labels("merge", type(exc).__name__).inc()
            cache.live.pop(customer, None)
            self.cache.set_aside(customer, "merge", exc, None, profile_due=cache.dirty.get(customer))
            return held
        cache.applied.setdefault(customer, []).append(Merge(blobs, ids))
        cache.changed(profiles)
        metrics.MERGES.inc()
        failpoints.hit("merged")
        return held
