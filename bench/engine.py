"""The per-event cost of the domain code, in-process, next to a plain reference loop and an older revision.

    python -m bench.engine --events 500000 --customers 100000 [--against REV] [--repeat 3]

No Kafka, no Bytewax, no RocksDB: the reference workload (bench/workload.py) is serialised once,
then, in one process per revision, timed per event:

- `parse`: `parse_message` of every record (the flow's parse step);
- `engine`: `engine.on_event` on a dict of profiles plus `encode_decision` of every decision (what a
  shard does per event, before storage);
- `profile encode` / `decode`: storing and loading each profile once (per profile, not per event);
- `reference`: a plain loop that `orjson.loads` each record and keeps a 30-minute window per customer
  in a dict: what a hand-written Python job would at least pay.

Both revisions run with the collector settings the flow's entry points use (operators/infra/runtime.py):
the loop keeps every event and profile alive, which the default settings would re-walk constantly.

With `--against`, `same_decisions` says whether both revisions made exactly the same decisions (a
digest of the sorted decision ids): the equivalence check at the benchmark's scale.

`--against REV` runs the same measurement on a git revision's `operators/` (taken with
`git archive`, so the working tree is untouched) in a subprocess, interleaved with the current tree
`--repeat` times; the medians and the ratio current/REV are printed. The measuring script adapts to
both the typed-profile engine and the dict-profile engine before it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench import workload

REPO = Path(__file__).resolve().parent.parent
END_MS = 1_795_428_000_000
# The last revision with the dict-profile engine.
OLD_ENGINE = "b9f0b8a899a50521933c44047e9eb308a12503b1"

MEASURE = r'''
import importlib, os, sys, time, orjson
# The one-package layout (nextclick.operators, issue #24) if this tree has it, else a revision from before
# it: asked of the tree, since this checkout's installed package would answer either import.
PREFIX = "nextclick.operators." if os.path.isdir("nextclick") else "operators."


def load(*candidates):
    """The names from the first module path this revision has: [("module", ("name", ...)), ...]."""
    for module, names in candidates:
        try:
            found = importlib.import_module(PREFIX + module)
        except ImportError:
            continue
        if all(hasattr(found, n) for n in names):
            return [getattr(found, n) for n in names]
    raise ImportError(candidates)


ParseConfig, PrivacyConfig, DEFAULT_RULES_FILE = load(
    ("infra.config", ("ParseConfig", "PrivacyConfig", "DEFAULT_RULES_FILE")))
parse_message, = load(("io.parse", ("parse_message",)))
encode_decision, = load(("io.decisions", ("encode_decision",)))
SourcePosition, = load(("records", ("SourcePosition",)))
on_event, = load(("engine.steps", ("on_event",)), ("engine", ("on_event",)))
try:
    load_rules, = load(("rules.loader", ("load_rules",)))
    new_profile, = load(("profile.model", ("new_profile",)))
    encode_profile, decode_profile = load(("profile.codec", ("encode_profile", "decode_profile")))
except ImportError:  # the dict-profile engine
    load_rules, = load(("rules", ("load_rules",)))
    new_profile, = load(("profile", ("new_profile",)))
    encode_profile, decode_profile = orjson.dumps, orjson.loads

records = [tuple(r) for r in orjson.loads(open(sys.argv[1], "rb").read())]
import gc
gc.collect(); gc.freeze(); gc.set_threshold(100_000, 50, 100)  # the flow's collector settings, for every revision
now = int(sys.argv[2])
secret = PrivacyConfig(demo=True).resolve_secret()
config = ParseConfig(max_age_ms=0)
out = {}
started = time.perf_counter()
events = [parse_message(k.encode(), v.encode(), None, SourcePosition("bench", 0, i), secret=secret, now_ms=now,
                        config=config) for i, (k, v) in enumerate(records)]
out["parse_us"] = (time.perf_counter() - started) / len(records) * 1e6
assert all(hasattr(e, "event_id") for e in events), "the workload must be valid"
rules = load_rules(DEFAULT_RULES_FILE)
profiles = {}
ids = []
started = time.perf_counter()
for e in events:
    p = profiles.get(e.customer)
    if p is None:
        p = profiles[e.customer] = new_profile(e.customer)
    for d in on_event(p, e, rules).decisions:
        encode_decision(d)
        # What was decided, not its id: how ids are made may change (an event's covers its type since
        # 2026-12-07), the decisions may not.
        ids.append(f"{d.customer}|{d.rule_id}|{getattr(d, 'trigger_id', '')}|{getattr(d, 'decided_at', '')}")
out["engine_us"] = (time.perf_counter() - started) / len(events) * 1e6
out["decisions"] = len(ids)
import hashlib
out["decision_ids_sha256"] = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
started = time.perf_counter()
blobs = [encode_profile(p) for p in profiles.values()]
out["encode_us_per_profile"] = (time.perf_counter() - started) / len(blobs) * 1e6
started = time.perf_counter()
for b in blobs:
    decode_profile(b)
out["decode_us_per_profile"] = (time.perf_counter() - started) / len(blobs) * 1e6
out["profile_bytes_mean"] = sum(map(len, blobs)) / len(blobs)
started = time.perf_counter()
windows = {}
for _k, v in records:
    body = orjson.loads(v)
    customer, ts = body["customer_id"], body["ts"]
    window = windows.get(customer)
    if window is None:
        window = windows[customer] = []
    window.append(ts)
    while window and window[0] <= ts - 1_800_000:
        window.pop(0)
out["reference_us"] = (time.perf_counter() - started) / len(records) * 1e6
print(orjson.dumps(out).decode())
'''


def _tree(revision: str, into: Path) -> Path:
    """The revision's code, package included: without `nextclick/` (the one-package layout), its
    `nextclick.operators` would be imported from this checkout's installed package, and both sides of the
    comparison would run this code."""
    archive = subprocess.run(["git", "archive", revision, "operators", "schemas", "nextclick"], cwd=REPO,
                             capture_output=True)
    if archive.returncode != 0:  # a revision from before the package
        archive = subprocess.run(["git", "archive", revision, "operators", "schemas"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"bench.engine: cannot read {revision!r} from git: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(tree: Path, records_file: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(records_file), str(END_MS)], cwd=tree,
                          env={"PYTHONPATH": str(tree), "NEXTCLICK_LOG_LEVEL": "WARNING"}, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {tree} failed: {done.stderr.decode()[-2000:]}")
    result: dict[str, float] = orjson.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--against", default=OLD_ENGINE, help="revision to compare with ('' for none)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nextclick-bench-engine-") as tmp:
        work = Path(tmp)
        records = [(k.decode(), v.decode()) for k, v in workload.serialise(args.events, args.customers,
                                                                            seed=args.seed, end_ms=END_MS)]
        records_file = work / "records.json"
        records_file.write_bytes(orjson.dumps(records))
        trees = {"current": REPO}
        if args.against:
            trees[args.against[:12]] = _tree(args.against, work / "against")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                runs[name].append(measure(tree, records_file))
                print(f"{name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    medians: dict[str, dict[str, Any]] = {
        name: {key: (round(statistics.median(r[key] for r in results), 2) if isinstance(results[0][key], float)
                     else results[0][key]) for key in results[0]}
        for name, results in runs.items()}
    report: dict[str, Any] = {"events": args.events, "customers": args.customers, "repeat": args.repeat,
                              "median": medians}
    if args.against:
        old, new = medians[args.against[:12]], medians["current"]
        report["current_over_against"] = {key: round(new[key] / old[key], 3) for key in new
                                          if isinstance(new[key], float) and old.get(key)}
        # The same decisions, id for id, on the same workload: the rewrite changed no behaviour.
        report["same_decisions"] = new["decision_ids_sha256"] == old["decision_ids_sha256"]
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
