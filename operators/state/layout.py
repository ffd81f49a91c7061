"""Where state lives: the families of stores under `state.dir`, one per stateful step of the flow.

    <state.dir>/shard-NNNN/                 profiles      every identifier's own profile (linked to nothing)
    <state.dir>/linked-<type>/shard-NNNN/   linked_<type> profiles of linked identifiers keyed by a <type>
    <state.dir>/identity/shard-0000/        identity      the identity graph (one store: operators/identity/)

Each family is one Bytewax stateful step whose keys are its shards; each shard is one RocksDB
(operators/state/store.py) checkpointed in step with Bytewax's epochs, so every family resumes exactly
like `profiles` always has. Linked families follow the identity rules' priority (lowest first): a
profile only ever moves to a later family, so the dataflow has no cycle (operators/identity/stage.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nextclick.operators.state.keys import shard_path
from nextclick.operators.state.placement import BALANCED, balanced_key

PROFILES = "profiles"
# The flow's sources: what they commit is where their inputs were read to, not state.
INPUT_STEP, CONTROL_STEP = "kafka_in", "control_in"
IDENTITY = "identity"
LINKED_PREFIX = "linked_"


@dataclass(frozen=True)
class Family:
    """One stateful step's stores. `name` is the Bytewax step id (and the family's name in savepoints
    and recovery); `subdir` the directory under state.dir ("" for profiles); `anchor` the id type
    keying a linked family's profiles."""

    name: str
    subdir: str
    shards: int
    anchor: str | None = None

    def root(self, state_dir: str | Path) -> Path:
        return Path(state_dir) / self.subdir if self.subdir else Path(state_dir)

    def path(self, state_dir: str | Path, shard: int) -> Path:
        return shard_path(self.root(state_dir), shard)

    def rel(self, shard: int) -> str:
        """The shard's directory relative to state.dir (how savepoints name it)."""
        name = shard_path("", shard).name
        return f"{self.subdir}/{name}" if self.subdir else name

    def route(self, shard: int, placement: str) -> str:
        """The Bytewax key of a shard of this family: "<n>" (profiles) or "<type>/<n>" (linked), and under
        `balanced` placement (`state.shard_placement`) that with the suffix which sends shard n to worker
        n mod workers (operators/state/placement.py)."""
        base = f"{self.anchor}/{shard}" if self.anchor else str(shard)
        return balanced_key(base, shard) if placement == BALANCED else base

    @property
    def profiles(self) -> bool:
        """Holds profiles (keys p/t/q per customer), as opposed to the identity graph."""
        return self.name != IDENTITY


def has_store(path: str | Path) -> bool:
    """A store is there: RocksDB writes CURRENT when it creates a database, before any data. A directory
    without it was being created when the process died: it holds nothing, and a writer creates it again."""
    return (Path(path) / "CURRENT").is_file()


def linked(anchor: str, shards: int) -> Family:
    return Family(f"{LINKED_PREFIX}{anchor}", f"linked-{anchor}", shards, anchor)


def profile_families(shards: int, anchors: Sequence[str]) -> list[Family]:
    """The families holding profiles, in the order profiles move through them."""
    return [Family(PROFILES, "", shards), *(linked(a, shards) for a in anchors)]


def families(shards: int, anchors: Sequence[str]) -> list[Family]:
    """Every family of a deployment: the profile families, then the identity graph."""
    return [*profile_families(shards, anchors), Family(IDENTITY, IDENTITY, 1)]


def family_of_anchor(anchor: str | None, shards: int) -> Family:
    return Family(PROFILES, "", shards) if anchor is None else linked(anchor, shards)


def family_named(name: str, shards: int) -> Family:
    """The family a savepoint or a recovery names (`profiles`, `identity`, `linked_<type>`)."""
    if name == PROFILES:
        return Family(PROFILES, "", shards)
    if name == IDENTITY:
        return Family(IDENTITY, IDENTITY, 1)
    if name.startswith(LINKED_PREFIX):
        return linked(name[len(LINKED_PREFIX):], shards)
    raise ValueError(f"unknown family of stores {name!r}")
