"""What input alignment costs the Kafka source, in-process: reading `ts` per message, the rule per poll.

    python -m bench.alignment --events 200000

The reference workload (bench/workload.py, seed 42, ending at a fixed clock) is serialised once,
with `ts` as epoch milliseconds and again as RFC 3339 strings. Then, `--rounds` times, interleaved:

- ts int / ts rfc3339: `alignment.event_time` on every message (what an aligned partition adds per
  message it fetches);
- parse: `parse_message` (the fast path) on every message, the per-message cost it is set against;
- limit: `Alignment.limit` for one of `--partitions` local partitions, all with data (what an aligned
  partition adds per poll, whatever the batch size).

Prints the median of each: microseconds per message, or per call for `limit`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson

from bench import workload
from nextclick.operators.identity.pseudonyms import pseudonymize_cached
from nextclick.operators.infra.config import ParseConfig, PrivacyConfig
from nextclick.operators.io.alignment import DATA, UNREADABLE, Alignment, event_time
from nextclick.operators.io.parse import parse_message
from nextclick.operators.records import SourcePosition

END_MS = 1_795_428_000_000  # 2026-11-22T10:00:00Z, as bench.parse uses


def _rfc3339(value: bytes) -> bytes:
    body = orjson.loads(value)
    body["ts"] = datetime.fromtimestamp(body["ts"] / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
    return orjson.dumps(body)


def _per_message(fn: Callable[[bytes], object], values: Sequence[bytes]) -> float:
    started = time.process_time()
    for value in values:
        fn(value)
    return (time.process_time() - started) / len(values) * 1e6


def _per_limit(partitions: int, calls: int) -> float:
    alignment = Alignment(60_000, 10_000)
    slots = [alignment.slot(f"t#{p}") for p in range(partitions)]
    for p, slot in enumerate(slots):
        slot.set(DATA, END_MS - p * 1000, alignment.now())
    me = slots[0]
    started = time.process_time()
    for _ in range(calls):
        alignment.limit(me)
    return (time.process_time() - started) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.alignment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    ap.add_argument("--partitions", type=int, default=40, help="local input partitions for `limit`")
    args = ap.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.partitions < 1:
        ap.error("--events, --rounds and --partitions must be at least 1")

    values = [v for _, v in workload.serialise(args.events, args.customers, seed=42, end_ms=END_MS)]
    strings = [_rfc3339(v) for v in values]
    config = ParseConfig(max_age_ms=0)
    secret = PrivacyConfig(demo=True).resolve_secret()
    src = SourcePosition("bench.events", 0, 0)
    for value, string in zip(values[:1000], strings[:1000], strict=True):
        expected = orjson.loads(value)["ts"]
        if not (event_time(value, END_MS, config) == event_time(string, END_MS, config) == expected != UNREADABLE):
            raise SystemExit(f"bench.alignment: event_time disagrees on {value!r} / {string!r}")

    def parse(value: bytes) -> object:
        return parse_message(b"k", value, None, src, secret=secret, now_ms=END_MS, config=config)

    us: dict[str, list[float]] = {"ts int": [], "ts rfc3339": [], "parse": [], "limit": []}
    for _ in range(args.rounds):
        us["ts int"].append(_per_message(lambda v: event_time(v, END_MS, config), values))
        us["ts rfc3339"].append(_per_message(lambda v: event_time(v, END_MS, config), strings))
        pseudonymize_cached.cache_clear()
        us["parse"].append(_per_message(parse, values))
        us["limit"].append(_per_limit(args.partitions, max(1000, args.events // 10)))
    med = {name: statistics.median(times) for name, times in us.items()}
    print(f"{len(values)} events, {args.rounds} rounds (median); limit with {args.partitions} partitions")
    for name in ("ts int", "ts rfc3339", "parse"):
        print(f"  {name:<10} {med[name]:6.2f} us/message  ({med[name] / med['parse']:.0%} of parse)")
    print(f"  {'limit':<10} {med['limit']:6.2f} us/poll")


if __name__ == "__main__":
    main()
