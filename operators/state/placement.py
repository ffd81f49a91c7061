"""Which Bytewax worker a shard runs on, and shard keys that spread the shards evenly over them.

Bytewax 0.21.1 sends a stateful step's key to worker `hash % total workers`: the hash is Rust's
`DefaultHasher` (SipHash-1-3, zero keys) of the key as a Rust String (its bytes, then 0xFF), over
the workers numbered process by process (src/operators.rs, `stateful_batch`; checked against real
clusters in tests/test_savepoint_cluster.py). With shard keys "0".."15" that hash is all there is to
the placement, and it is uneven: 16 shards over 2 workers land 6 and 10, over 4 workers 2, 4, 4 and
6, and the busiest worker bounds the cluster.

`balanced` placement (`state.shard_placement`) keys shard n by the first of "n~0", "n~1"... whose
hash is n modulo BALANCE_MODULUS. For every worker count that divides the modulus (1 to 6, 8, 10,
12, 15, 16, 20, 24, 30...) shard n then runs on worker n mod workers: the shards go round, and no
worker holds more than one shard beyond another. The keys are found once per process (a few
hundred hashes each) and kept.
"""

from __future__ import annotations

import functools
import itertools

HASH = "hash"  # keys "0", "1"... (and "<type>/0"...): where Bytewax's hash puts them
BALANCED = "balanced"  # keys chosen so that the shards go round the workers
BALANCE_MODULUS = 240  # lcm(1..6, 8, 16): exact for the worker counts clusters are built with

_MASK = (1 << 64) - 1


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys: Rust's `DefaultHasher::default()`, which Bytewax routes state keys with."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker (0-based, over every process's workers) Bytewax routes `key` to."""
    return siphash13(key.encode() + b"\xff") % workers


_SUFFIX = "~"


@functools.cache
def balanced_key(base: str, slot: int) -> str:
    """`base` with the first suffix "~k" whose hash is `slot` modulo BALANCE_MODULUS."""
    target = slot % BALANCE_MODULUS
    for k in itertools.count():
        key = f"{base}{_SUFFIX}{k}"
        if worker_of(key, BALANCE_MODULUS) == target:
            return key
    raise AssertionError("unreachable")  # itertools.count() never ends


def key_base(key: str) -> str:
    """A shard key without its placement suffix: "5" for "5~308" (and for "5")."""
    return key.split(_SUFFIX, 1)[0]
