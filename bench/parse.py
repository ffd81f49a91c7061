"""The parser per event, in-process: slow path, fast path and a plain orjson loop, in one run.

    python -m bench.parse --events 200000

The reference workload (bench/workload.py, seed 42, ending at a fixed clock) is serialised once;
then, `--rounds` times and interleaved so that a busy machine slows all three alike:

- slow: `parse_message_slow` (orjson, fastjsonschema, check by check: the reference path);
- fast: `parse_message` (msgspec Structs generated from the schemas, falling back to the slow path);
- ref: `orjson.loads` and a read of the four fields the parser needs: what parsing costs at least.

Each message is parsed with no headers at the clock the workload ends, `parse.max_age_ms = 0`.
Results are kept per batch of `--batch` messages and then dropped, as a flow does. The identifier
cache is cleared before every round, so each round pays for the first sight of every customer
like a fresh process does. Prints the median microseconds per event of each and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import orjson

from bench import workload
from nextclick.operators.identity.pseudonyms import pseudonymize_cached
from nextclick.operators.infra.config import ParseConfig, PrivacyConfig
from nextclick.operators.io.parse import parse_message, parse_message_slow
from nextclick.operators.records import Event, SourcePosition

END_MS = 1_795_428_000_000  # 2026-11-22T10:00:00Z, as quick checks of the engine use
Records = Sequence[tuple[bytes, bytes]]


def _time_parser(parse: Callable[..., object], records: Records, batch: int, secret: bytes,
                 config: ParseConfig) -> float:
    pseudonymize_cached.cache_clear()
    src = SourcePosition("bench.events", 0, 0)
    started = time.process_time()
    for start in range(0, len(records), batch):
        out = [parse(key, value, None, src, secret=secret, now_ms=END_MS, config=config)
               for key, value in records[start:start + batch]]
        del out
    return time.process_time() - started


def _time_reference(records: Records, batch: int) -> float:
    loads = orjson.loads
    started = time.process_time()
    for start in range(0, len(records), batch):
        out = []
        for _key, value in records[start:start + batch]:
            body = loads(value)
            out.append((body["event_id"], body["type"], body["ts"], body["customer_id"]))
        del out
    return time.process_time() - started


def check(records: Records, secret: bytes, config: ParseConfig) -> None:
    """Both paths accept every event and build equal Events (a benchmark of wrong answers is void)."""
    src = SourcePosition("bench.events", 0, 0)
    for key, value in records:
        fast = parse_message(key, value, None, src, secret=secret, now_ms=END_MS, config=config)
        slow = parse_message_slow(key, value, None, src, secret=secret, now_ms=END_MS, config=config)
        if not (isinstance(fast, Event) and fast == slow):
            raise SystemExit(f"bench.parse: the paths disagree on {value!r}: {fast!r} / {slow!r}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.parse", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    ap.add_argument("--batch", type=int, default=1000, help="messages whose results are kept together")
    args = ap.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.batch < 1:
        ap.error("--events, --rounds and --batch must be at least 1")

    records = workload.serialise(args.events, args.customers, seed=42, end_ms=END_MS)
    secret = PrivacyConfig(demo=True).resolve_secret()
    config = ParseConfig(max_age_ms=0)
    check(records[: min(len(records), 20_000)], secret, config)
    us: dict[str, list[float]] = {"slow": [], "fast": [], "ref": []}
    for _ in range(args.rounds):
        us["slow"].append(_time_parser(parse_message_slow, records, args.batch, secret, config))
        us["fast"].append(_time_parser(parse_message, records, args.batch, secret, config))
        us["ref"].append(_time_reference(records, args.batch))
    med = {name: statistics.median(times) / len(records) * 1e6 for name, times in us.items()}
    print(f"{len(records)} events, {args.customers} customers, {args.rounds} rounds (median), "
          f"batches of {args.batch}")
    for name in ("slow", "fast", "ref"):
        spread = ", ".join(f"{t / len(records) * 1e6:.2f}" for t in us[name])
        print(f"  {name:<4} {med[name]:6.2f} us/event  {med[name] / med['ref']:5.2f} x ref   ({spread})")
    print(f"  slow / fast = {med['slow'] / med['fast']:.2f}")


if __name__ == "__main__":
    main()
