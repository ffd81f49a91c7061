"""What crosses a Bytewax exchange: one list per destination key per batch, not one item per event;
between processes, its events as msgpack bytes rather than pickled objects.

Bytewax routes, and between processes pickles, every (key, value) pair on its own: a call into
Python per item, a hash of its key, a frame on the wire. A batch's events for one shard travel as
one list instead, in the order they were produced, so an exchange costs per batch and destination
rather than per event (bench.scale measures it). Receivers flatten; a lone item (a moved profile, a
test driving a step directly) is taken as it is.

The list is a `Batch`: within a process it is handed over as it is (Bytewax pickles only what goes
to another process), and when it is pickled its events go as one msgpack array, a third of the
pickle round trip per event (docs/architecture.md). Whatever else it holds (progress reports,
frontiers, moves, commands) is pickled as before, and comes back in its place.

Every process of a cluster must run one release with one configuration. A pickled Batch names its
format (`FORMAT`), the sender's release and the settings every process must share (`declare_settings`:
shards, placement, secret, rules...), so a process handed a batch of another format, or of a process
configured otherwise, stops with one line that says which, rather than misreading it or routing its
customers to other shards. `_unpack` keeps its name and its first two parameters in every release,
and takes what later releases add after them (`*rest`); a new layout of the events is a new `FORMAT`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import orjson

from nextclick import release
from nextclick.operators.errors import NextclickError
from nextclick.operators.records import Event

_release = release()  # this build's (nextclick.release): what each pickled Batch says it was sent by

# 1: releases up to a82b42e, whose `_unpack` took (blob, others); 2: up to f9b3d01, whose `_unpack` took four
# arguments, no settings, and cannot read this one either.
FORMAT = 3
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(list[Event]).decode


class ReleaseMismatch(NextclickError):
    """A process of this cluster runs a release whose batches this one cannot read."""


class SettingsMismatch(NextclickError):
    """A process of this cluster runs with settings that differ from this one's where they must agree."""


# Bytewax reports a failed unpickle as a panic of its own ("Send thread panic") and the runner would
# call that a lost peer: the reason is kept here for the runner's one line (flows/runner.py).
_mismatches: list[str] = []
# This process's shared settings (declare_settings): the first batches it pickles carry them whole, so
# a receiver can name what differs (800 bytes); the rest carry their digest.
_settings = b"{}"
_settings_digest = hashlib.sha256(_settings).digest()[:12]
_whole_left = 256


def cluster_mismatch() -> str | None:
    """Why this process stopped reading its peers' batches, if that is why it stopped."""
    return _mismatches[0] if _mismatches else None


def _encoded(settings: Mapping[str, str]) -> tuple[bytes, bytes]:
    """The settings as a batch carries them whole, and their digest."""
    whole = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    return whole, hashlib.sha256(whole).digest()[:12]


def declare_settings(settings: Mapping[str, str]) -> None:
    """The settings (name -> value or digest) every process of this cluster must share; each flow build
    declares them, and a peer's batch that carries others is refused."""
    global _settings, _settings_digest, _whole_left
    _settings, _settings_digest = _encoded(settings)
    _whole_left = 256


def declared_settings() -> dict[str, str]:
    """What this process declared last (the flow it runs)."""
    return dict(orjson.loads(_settings))


def settings_digest(settings: Mapping[str, str]) -> str:
    """The digest a process's batches carry for these settings, as a mismatch names it."""
    return _encoded(settings)[1].hex()


def setting_differences(theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """Each setting the two differ in, as "name = their value there, mine here", by name."""
    return [f"{name} = {theirs.get(name, '(not set)')} there, {mine.get(name, '(not set)')} here"
            for name in sorted(theirs.keys() | mine.keys()) if theirs.get(name) != mine.get(name)]


def _differences(theirs: bytes) -> str:
    if len(theirs) == len(_settings_digest):  # past the sender's first batches: which setting is not known
        return (f"settings digest {theirs.hex()} there, {_settings_digest.hex()} here (each process's "
                "\"starting\" log line lists its settings)")
    return "; ".join(setting_differences(orjson.loads(theirs), orjson.loads(_settings)))


class Batch(list[Any]):
    """One destination's items of one batch, in order."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        events: list[Event] = []
        others: list[tuple[int, Any]] = []
        for at, item in enumerate(self):
            if type(item) is Event:
                events.append(item)
            else:
                others.append((at, item))
        try:
            blob = _ENCODE(events)
        except (TypeError, ValueError, OverflowError):  # a value msgpack cannot hold: pickled as it is
            return list, (list(self),)
        global _whole_left
        if _whole_left > 0:
            _whole_left -= 1
            return _unpack, (FORMAT, _release, blob, others, _settings)
        return _unpack, (FORMAT, _release, blob, others, _settings_digest)


def _unpack(fmt: int, sender: str, blob: bytes, others: list[tuple[int, Any]], *rest: Any) -> list[Any]:
    """A pickled Batch, back as a list: its events decoded, the other items put back in their places."""
    if fmt != FORMAT:
        reason = (
            f"a process of this cluster runs nextclick {sender}, whose batches (exchange format {fmt}) this "
            f"process (nextclick {_release}, format {FORMAT}) cannot read: run one release in every process "
            "(deploy/README.md, \"Upgrades\")")
        _mismatches.append(reason)
        raise ReleaseMismatch(reason)
    if rest[0] != _settings_digest and rest[0] != _settings:
        if sender != _release:  # another build declares other settings: the release, not a ConfigMap, differs
            reason = (f"a process of this cluster runs nextclick {sender}, this one {_release}: run one release in "
                      "every process (deploy/README.md, \"Upgrades\")")
            _mismatches.append(reason)
            raise ReleaseMismatch(reason)
        reason = (f"a process of this cluster runs with other settings than this one: {_differences(rest[0])}: give "
                  "every process the same configuration (docs/operations.md, \"One configuration for every process\")")
        _mismatches.append(reason)
        raise SettingsMismatch(reason)
    events = _DECODE(blob)
    if not others:
        return events
    out: list[Any] = []
    taken = 0
    for at, item in others:
        gap = at - len(out)  # the events that came before this item
        out += events[taken:taken + gap]
        taken += gap
        out.append(item)
    out += events[taken:]
    return out


def flatten(values: Iterable[Any]) -> list[Any]:
    """The items a stateful step received, lists spread in place, in arrival order."""
    out: list[Any] = []
    for value in values:
        kind = type(value)
        if kind is Batch or kind is list:
            out.extend(value)
        else:
            out.append(value)
    return out


def grouped(routed: list[tuple[str, Any]]) -> list[tuple[str, Batch]]:
    """(key, item) pairs as one (key, Batch) per key, each in its items' order."""
    if len(routed) < 2:
        return [(key, Batch((item,))) for key, item in routed]
    by_key: dict[str, Batch] = {}
    for key, item in routed:
        items = by_key.get(key)
        if items is None:
            by_key[key] = Batch((item,))
        else:
            items.append(item)
    return list(by_key.items())
