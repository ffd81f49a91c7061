"""The identity graph: which identifiers are linked, which profile key they resolve to, and whether a
new link may join them.

Only pseudonymous keys are stored, in the identity stage's own store (operators/identity/stage.py):

    n<key>        [profile key, its id type]    a linked identifier and the profile it belongs to
    g<profile>    {id type: [key, ...]}         every identifier of a linked profile, oldest link first

An identifier without a record is linked to nothing: its profile, if it has one, is keyed by itself
and lives in the first profile stage (`profiles`), as before identity stitching. A linked profile is
keyed by its highest-priority identifier (`IdentityRules.priority`: a customer id when it has one)
and lives in the stage of that identifier's type (`linked_<type>`, operators/state/layout.py).

A link joins the profiles of every identifier an event names. It passes every link guard or changes
nothing (`Refusal`); the guards are registered in operators/identity/guards.py, which also holds the
raw guards the parser applies before an identifier gets here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from nextclick.operators.identity.guards import IdentityRules, LinkProposal, refuse_link
from nextclick.operators.records import Event
from nextclick.operators.state.erased import ErasedKeys
from nextclick.operators.state.keys import shard_path
from nextclick.operators.state.layout import has_store
from nextclick.operators.state.store import KeyValueStore, ShardStore

NODE_PREFIX = b"n"
GROUP_PREFIX = b"g"
# Per identifier, the event ids (and times) of the last LINK_IDS_KEPT link events about it that joined
# profiles: a repeat of one (same identifier, same event_id, within the dedupe horizon) joins nothing,
# as the shard drops the repeated event itself. A producer that reuses an id with other identifiers
# must not get a join its duplicate never makes.
LINK_PREFIX = b"l"
LINK_IDS_KEPT = 16

_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE_NODE = msgspec.msgpack.Decoder(tuple[str, str]).decode
_DECODE_GROUP = msgspec.msgpack.Decoder(dict[str, list[str]]).decode
_DECODE_IDS = msgspec.msgpack.Decoder(list[tuple[str, int]]).decode
_MISSING = object()


def node_key(key: str) -> bytes:
    return NODE_PREFIX + key.encode()


def group_key(key: str) -> bytes:
    return GROUP_PREFIX + key.encode()


def link_ids_key(key: str) -> bytes:
    return LINK_PREFIX + key.encode()


# A cookie or device two customer ids signed in on (a kiosk, a family tablet): it stays where its past
# went, but its later events are nobody's in particular and go to its own profile, and it links no more.
SHARED_PREFIX = b"h"
SHAREABLE_TYPES = frozenset({"cookie", "device"})


@dataclass(frozen=True)
class Component:
    """The profile an identifier belongs to: `key` (its profile key) of type `type`; `linked` False
    for an identifier linked to nothing (then `key` is the identifier itself)."""

    key: str
    type: str
    linked: bool
    ids: dict[str, list[str]]


@dataclass(frozen=True)
class Refusal:
    reason: str
    id_type: str  # the type the guard is about (the one over its limit, the type keying both profiles)


@dataclass(frozen=True)
class Merge:
    """A link that holds: the profiles at `sources` ((anchor of the stage they are in, None for the
    first stage), key) become one, keyed `into` (of type `anchor`), holding `ids`."""

    into: str
    anchor: str
    sources: tuple[tuple[str | None, str], ...]
    ids: dict[str, list[str]]


class IdentityGraph:
    """The graph over a key-value store whose writes follow the stage's epochs (ShardStore)."""

    def __init__(self, store: KeyValueStore, rules: IdentityRules, cache_size: int = 131072) -> None:
        self.store, self.rules = store, rules
        self._cache_size = max(1, cache_size)
        # key -> (profile key, type) or None (linked to nothing): most identifiers are never linked,
        # so the negative answers are what this saves. First in, first out (no reordering per hit).
        self._cache: OrderedDict[str, tuple[str, str] | None] = OrderedDict()
        self.erased = ErasedKeys(store)  # erased identifiers: their older events are not applied again
        self.shared: set[str] = {k[len(SHARED_PREFIX):].decode() for k, _ in store.scan(SHARED_PREFIX)}

    def _remember(self, key: str, value: tuple[str, str] | None) -> None:
        cache = self._cache
        cache[key] = value
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def find(self, key: str) -> tuple[str, str] | None:
        """(profile key, its type) if `key` is linked, else None."""
        found = self._cache.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        raw = self.store.get(node_key(key))
        value = None if raw is None else _DECODE_NODE(raw)
        self._remember(key, value)
        return value

    def group(self, into: str) -> dict[str, list[str]]:
        raw = self.store.get(group_key(into))
        return {} if raw is None else _DECODE_GROUP(raw)

    def component(self, id_type: str, key: str) -> Component:
        found = self.find(key)
        if found is None:
            return Component(key, id_type, False, {id_type: [key]})
        into, into_type = found
        return Component(into, into_type, True, self.group(into))

    def decide(self, identifiers: Sequence[tuple[str, str]]) -> Component | Refusal | Merge:
        """What an event naming these (type, key) identifiers does: the component they already share
        (its `ids` left empty when there was no need to read them), a refused link, or a merge. The
        first identifier is the one the event is about."""
        found = [self.find(key) for _, key in identifiers]
        first = found[0]
        if first is not None and all(f == first for f in found):
            # Already one profile (a signed-in visitor's every event): no group to read.
            return Component(first[0], first[1], True, {})
        components: dict[str, Component] = {}
        for (id_type, key), resolved in zip(identifiers, found):
            if resolved is None:
                component = Component(key, id_type, False, {id_type: [key]})
            else:
                component = Component(resolved[0], resolved[1], True, self.group(resolved[0]))
            components.setdefault(component.key, component)
        if len(components) == 1:
            return next(iter(components.values()))
        rank = self.rules.rank
        ids: dict[str, list[str]] = {}
        for component in components.values():
            for id_type, keys in component.ids.items():
                mine = ids.setdefault(id_type, [])
                mine.extend(k for k in keys if k not in mine)
        refused = refuse_link(LinkProposal(ids, tuple(c.type for c in components.values()), self.rules))
        if refused is not None:
            return Refusal(*refused)
        top = min(ids, key=rank)
        into = next(c for c in components.values() if c.type == top)
        # The merged profile's identifiers: its own first (oldest links first), then the new ones.
        ordered: dict[str, list[str]] = {t: list(keys) for t, keys in into.ids.items()}
        for id_type, keys in ids.items():
            mine = ordered.setdefault(id_type, [])
            mine.extend(k for k in keys if k not in mine)
        sources = tuple((c.type if c.linked else None, c.key) for c in components.values()
                        if c.key != into.key or not c.linked)
        return Merge(into.key, top, sources, {t: ordered[t] for t in sorted(ordered, key=rank)})

    def apply(self, merge: Merge) -> None:
        """Record a merge: every identifier points at the merged profile, which lists them all."""
        store, target = self.store, _ENCODE((merge.into, merge.anchor))
        for keys in merge.ids.values():
            for key in keys:
                store.put(node_key(key), target)
                self._remember(key, (merge.into, merge.anchor))
        store.put(group_key(merge.into), _ENCODE(merge.ids))
        for level, key in merge.sources:
            if level is not None and key != merge.into:
                store.delete(group_key(key))

    def seen_link(self, key: str, event_id: str, ts: int, horizon_ms: int, earlier: tuple[str, ...] = ()) -> bool:
        """Whether a link event `event_id` (its dedupe key) at `ts` about identifier `key` joined profiles
        before, within `horizon_ms` in event time (the shards' dedupe horizon); remembers it if not (it is
        about to). `earlier`: the keys earlier releases remembered it by (profile/dedupe.earlier_keys)."""
        raw = self.store.get(link_ids_key(key))
        seen: list[tuple[str, int]] = [] if raw is None else _DECODE_IDS(raw)
        if any((seen_id == event_id or seen_id in earlier) and abs(ts - seen_ts) <= horizon_ms
               for seen_id, seen_ts in seen):
            return True
        self.store.put(link_ids_key(key), _ENCODE([*seen[-(LINK_IDS_KEPT - 1):], (event_id, ts)]))
        return False

    def members(self, key: str) -> list[str]:
        """The keys of every identifier of `key`'s profile (just `key` when it is linked to nothing)."""
        found = self.find(key)
        members = [key]
        if found is not None:
            members = [k for keys in self.group(found[0]).values() for k in keys] or [key]
            if key not in members:
                members.append(key)
        return members

    def erase(self, key: str, *, at_ms: int | None = None, also: Sequence[bytes] = (),
              matching: Callable[[bytes], bool] | None = None) -> list[str]:
        """Right to erasure through links: forget every identifier linked with `key`, and `key`, at once
        (committed immediately and gone from every undo record, like a shard's erasure). Returns
        `members(key)`. `at_ms`: the erasure's time, marked for every member in the same write
        (`ErasedKeys.mark`; which of them were shared is remembered with it). `also` and `matching`: more
        of the store to erase in the same pass over the undo records (the identity stage's held events,
        `Store.erase`)."""
        members = self.members(key)
        marks: dict[bytes, bytes] = {}
        if at_ms is not None:
            for member in members:
                marks.update(self.erased.mark(member, at_ms, shared=member in self.shared))
        # Any member may have keyed a profile once (a group record that a later merge deleted, still
        # in an undo record): every member's group key goes too.
        self.store.erase([node_key(m) for m in members] + [group_key(m) for m in members]
                         + [link_ids_key(m) for m in members] + [SHARED_PREFIX + m.encode() for m in members]
                         + list(also), matching=matching, written=marks)
        for member in members:
            self._cache.pop(member, None)
        self.shared.difference_update(members)
        return members

    def mark_shared(self, identifiers: Sequence[tuple[str, str]], customer: str) -> list[str]:
        """After a sign-in as `customer` was refused because a cookie or device it names is linked to
        another customer id: those cookies and devices are shared from now on (SHARED_PREFIX)."""
        marked = []
        for id_type, key in identifiers:
            if id_type in SHAREABLE_TYPES and key not in self.shared:
                found = self.find(key)
                if found is not None and customer not in self.group(found[0]).get("customer", [customer]):
                    self.shared.add(key)
                    self.store.put(SHARED_PREFIX + key.encode(), b"1")
                    marked.append(key)
        return marked

    def of_erased(self, event: Event) -> bool:
        """The event names an identifier erased at or after its time: the erased person's, from before."""
        before, ts = self.erased.before_erasure, event.ts
        return any(before(key, ts) for key in self.personal_keys(event))

    def personal_keys(self, event: Event) -> list[str]:
        """The identifiers an event names that say whose it is: a shared cookie or device beside someone
        else's identifier says nothing (`mark_shared`). An outside probe: erasing one kiosk user erased
        the shared cookie with them, and then every other customer whose event before it named the
        cookie, one after the other (a thousand in one backlog)."""
        named = [event.customer, *(key for _, key in event.links)]
        shared, erased = self.shared, self.erased
        if shared or erased:
            personal = [key for key in named if key not in shared and not erased.was_shared(key)]
            return personal or named
        return named


def graph_path(state_dir: str | Path) -> Path:
    """The identity stage's store (operators/state/layout.py: family `identity`, one shard)."""
    return shard_path(Path(state_dir) / "identity", 0)


def resolve_offline(state_dir: str | Path, key: str) -> tuple[str, str | None]:
    """(profile key, type keying it or None) of an identifier, from the committed graph, read-only (works
    while the flow runs): a linked identifier resolves to its profile, any other to itself."""
    path = graph_path(state_dir)
    if not has_store(path):
        return key, None
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        raw = store.get(node_key(key))
        # A shared cookie or device keeps its link (for erasure), but what it does now is its own profile's.
        if raw is not None and store.get(SHARED_PREFIX + key.encode()) is not None:
            raw = None
    finally:
        store.close()
    if raw is None:
        return key, None
    into, anchor = _DECODE_NODE(raw)
    return into, anchor


def read_group(state_dir: str | Path, into: str) -> dict[str, list[str]]:
    """Every identifier key of a linked profile, by type, from the committed graph (read-only)."""
    path = graph_path(state_dir)
    if not has_store(path):
        return {}
    store = ShardStore.open_read_only(path, cache_size=0)
    try:
        raw = store.get(group_key(into))
    finally:
        store.close()
    return {} if raw is None else _DECODE_GROUP(raw)
