"""The decision sink protocol: what a place decisions go to must provide, and how it fails.

The flow encodes each decision once (operators/io/decisions.py) and hands the result to whichever
sink `flow.decision_sink` names (operators/io/sink_registry.py). A sink is a Bytewax sink built from
the configuration; adding one is a module with a `DecisionSink` factory plus a registry entry
(docs/architecture.md, "Adding a sink").
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, NamedTuple, Protocol, Sequence

from bytewax.outputs import Sink

from nextclick.operators.infra.config import Config

log = logging.getLogger(__name__)


class OutMessage(NamedTuple):
    """One encoded record for a sink: where it goes, its key, its bytes and its attributes.

    For a decision: `topic` is its decision topic (`topics.decisions`, per channel), `key` the
    pseudonymous customer key, `value` the versioned JSON body (schemas/decision.v1.json) and
    `headers` the CloudEvents attributes (`ce_*`, binary mode) plus `content-type`."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


# What a sink partition calls, instead of raising, when it cannot make an epoch's writes durable.
OnFatal = Callable[[str], None]
# What `op.output` receives: (routing key, record). A routing key made of digits is the shard the
# decision came from; a FixedPartitionedSink whose `part_fn` keeps it keeps the decision on that
# shard's worker.
DecisionItem = tuple[str, OutMessage]


def exit_process(message: str) -> None:
    """Stop the whole process now, with one clear log line and a non-zero status.

    An exception in a sink partition makes Bytewax panic in that worker while the others run on,
    so the flow looks alive but commits nothing. Exiting is safe: the epoch was not committed, and
    a restart replays it from the recovery store, losing nothing.
    """
    log.critical(message)
    print(f"nextclick: fatal: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(70)


class DecisionSink(Protocol):
    """Builds the Bytewax sink the flow's decisions go to (`op.output("decisions_out", ...)`).

    Called once per flow, before anything runs, and again by the start-up checks to validate the
    configuration: it must not touch the network or the disk, and it raises
    `nextclick.operators.infra.config.ConfigError` (one line, naming `flow.decision_sink`) for a bad `target`.

    `target` is what follows the sink's name in `flow.decision_sink` ("file:/tmp/d.jsonl" gives
    "/tmp/d.jsonl"; "kafka" gives ""). The sink receives `DecisionItem`s and must:
    - make everything written in an epoch durable before its partition's `snapshot` returns: Bytewax
      commits the epoch next, so that is what makes decisions at-least-once (a replay re-sends
      byte-identical records; consumers dedupe on the `ce_id` header);
    - report a write that cannot succeed by calling `on_fatal(reason)`, never by raising (see
      `exit_process`, the default).
    """

    def __call__(self, config: Config, target: str, on_fatal: OnFatal = exit_process) -> Sink[DecisionItem]: ...
