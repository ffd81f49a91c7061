"""Right to erasure with the flow stopped (`nextclick profile erase`): through every link, in every store.

The running flow does the same for an erase command on the control topic (operators/identity/stage.py):
the identity graph forgets every identifier linked with the one named, and each of them is erased from
every family of profile shards (its own profile, the linked profile it belongs to, and any undo record
holding a profile that was moved out of a shard), committed at once and purged from the files.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from nextclick.operators.identity.graph import IdentityGraph
from nextclick.operators.infra.config import Config
from nextclick.operators.infra.failures import one_line
from nextclick.operators.io.control import send_commands
from nextclick.operators.io.profile_view import send_tombstones
from nextclick.operators.rules.loader import load_configured_rules
from nextclick.operators.shard.shard_state import erase_customer
from nextclick.operators.state.keys import shard_of
from nextclick.operators.state.layout import IDENTITY, has_store
from nextclick.operators.state.store import ShardStore, StateError
from nextclick.operators.tools.startup import identity_rules, partial_volume, state_families

# RocksDB's words when another process holds the store's LOCK (a running flow).
_LOCKED = re.compile(r"lock.*(temporarily unavailable|no locks available|lock hold by current process)",
                     re.IGNORECASE)


def _open(path: Path, config: Config) -> ShardStore:
    try:
        return ShardStore(path, keep_checkpoints=config.state.keep_checkpoints)
    except StateError as exc:
        said = one_line(exc)
        if _LOCKED.search(said):
            raise StateError(f"{path} is in use by a running flow; use `nextclick profile erase --online` to send "
                             f"the erase command through {config.topics.control}") from None
        # A read-only mount, a full disk, permissions: an outside probe was told "in use by a running flow".
        raise StateError(f"state.dir {config.state.dir}: cannot open {path} to erase offline ({said}); it needs "
                         "state.dir writable and the flow stopped") from None


def _record(config: Config, members: list[str], request_id: str | None) -> str:
    """An erase command per identifier erased, on the control topic, as `--online` sends one: a restore
    from a savepoint taken before now replays the control topic from the savepoint's position and erases
    them again (the savepoint still holds them), and the flow's next start remembers them as erased, so
    their events dated before now are not applied again (docs/state.md). Raises, naming what to run, if
    the topic cannot be written: the state is erased by then, but a restore would bring them back."""
    request_id = request_id or f"cli-offline-{time.time_ns()}"
    at = time.time_ns() // 1_000_000
    try:
        send_commands(config.kafka, config.topics.control, "erase",
                      [(member.encode(), {"request_id": request_id, "customer_key": member, "requested_at": at})
                       for member in members], timeout_s=10.0)
    except (ConnectionError, KafkaException) as exc:
        raise ConnectionError(
            f"erased from {config.state.dir}, but the erasure is not recorded on {config.topics.control} "
            f"({exc}): a restore from an earlier savepoint would bring the customer back; run `nextclick profile "
            "erase KEY --online` with the same KEY once Kafka is reachable") from None
    return config.topics.control


def erase_offline(config: Config, customer: str, request_id: str | None = None) -> dict[str, Any]:
    """Erase the customer keyed `customer` (any of their identifiers' keys) and everything linked with it,
    and record the erasure on the control topic (`_record`)."""
    state_dir = Path(config.state.dir)
    if not state_dir.is_dir():  # a wrong --config must not read as "nothing stored for that customer"
        raise LookupError(f"no state directory at {state_dir} (state.dir): nothing was erased; run this with the "
                          "deployment's configuration")
    partial = partial_volume(config)
    if partial:  # the customer's other identifiers and profiles may be on the other volumes
        raise LookupError(f"{partial}: an offline erase here would erase part of the customer and leave the "
                          "rest; nothing was erased. Erase through the running cluster: `nextclick profile erase "
                          "--online ...`, or offline on a directory holding every store (a restored savepoint)")
    shards = config.state.shards
    families = state_families(config)
    members = [customer]
    graph_dir = next(f for f in families if f.name == IDENTITY).path(state_dir, 0)
    if has_store(graph_dir):
        with _open(graph_dir, config) as store:
            members = IdentityGraph(store, identity_rules(config), 16).erase(customer)
            store.purge()
    ruleset = load_configured_rules(config)
    existed = False
    touched: list[str] = []
    own_shard = families[0].path(state_dir, shard_of(customer, shards))
    for family in families:
        if not family.profiles:
            continue
        by_path: dict[Path, list[str]] = {}
        for member in members:
            by_path.setdefault(family.path(state_dir, shard_of(member, shards)), []).append(member)
        for path, keys in sorted(by_path.items()):
            if not has_store(path):
                continue
            with _open(path, config) as store:
                for key in keys:
                    existed = erase_customer(store, key, ruleset) or existed
                store.purge()
            touched.append(str(path))
    if not touched and not has_store(graph_dir):
        raise LookupError(f"no shard directory {own_shard}: nothing stored for that customer")
    result = {"customer": customer, "erased": existed, "identifiers": len(members), "shard_dir": str(own_shard),
              "stores": touched, "recorded_on": _record(config, members, request_id)}
    if config.topics.profiles:
        # The profile view: the stopped flow writes no tombstone, so the erasure does, for every place
        # (family and key) the profile can have been shown under (operators/io/profile_view.py).

        result["view_tombstones"] = send_tombstones(
            config.kafka, config.topics.profiles,
            [f"{family.name}/{member}" for family in families if family.profiles for member in members])
    return result
