"""Routing without identity stitching (`identity.stitching = false`): each event goes from the process
that read it straight to the shard of the identifier it is keyed by.

    parse ─ (shard key, items) ─ profiles ─ decisions, dead letters

With stitching (operators/identity/stage.py) every event passes one identity stage: one worker sees
them all, and most events cross workers twice. Inputs keyed by one identifier throughout (a customer
id on every channel) need neither. Here an event crosses at most once, from its reader to its shard,
and no worker sees every event.

What the identity stage does besides routing is done here too:
- the other identifiers an event names are not linked; they are counted as refused links, reason
  `stitching_off` (`nextclick_identity_links_refused_total`), and so are blocked values;
- each input partition's Progress goes to every shard (records.ShardProgress), right behind what that
  partition sent the shard, so each shard keeps the frontier over every partition itself
  (operators/shard/logic.py) and fires no timer before an earlier event has reached it;
- an erasure goes to its identifier's shard, a savepoint request to every shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nextclick.operators.infra import metrics
from nextclick.operators.records import EraseRequest, Event, Progress, SavepointRequest, ShardProgress
from nextclick.operators.state.keys import shard_of
from nextclick.operators.state.layout import PROFILES, family_named

STITCHING_OFF = "stitching_off"  # the refusal reason of links not made (identity.stitching = false)


class DirectRoutes:
    """Where each item a source or the control topic produced goes, as (shard key, item) pairs."""

    def __init__(self, shards: int, placement: str) -> None:
        self.shards = shards
        family = family_named(PROFILES, shards)
        self.routes = [family.route(n, placement) for n in range(shards)]

    def event(self, event: Event, out: list[tuple[str, Any]]) -> None:
        for id_type, _ in event.links:  # on the hot path: the kept children (metrics.labelled)
            metrics.labelled(metrics.LINKS_REFUSED, STITCHING_OFF, id_type).inc()
        for id_type in event.blocked:
            metrics.labelled(metrics.LINKS_REFUSED, "blocked_value", id_type).inc()
        out.append((self.routes[shard_of(event.customer, self.shards)], event))

    def progress(self, report: Progress, out: list[tuple[str, Any]]) -> None:
        for shard, route in enumerate(self.routes):
            out.append((route, ShardProgress(shard, report.partition, report.floor, report.total)))

    def command(self, command: EraseRequest | SavepointRequest, out: list[Any]) -> None:
        if isinstance(command, EraseRequest):  # one identifier, one profile: its shard counts it
            out.append((self.routes[shard_of(command.customer, self.shards)], command))
            return
        for shard, route in enumerate(self.routes):
            out.append((route, dataclasses.replace(command, shard=shard, store="")))
