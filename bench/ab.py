"""The flow's throughput at two or more revisions, back to back on one broker and one workload.

    python -m bench.ab fcd553c HEAD --events 1000000 --repeat 2

On a shared machine single runs of one build differ by up to 25% and b moves with the machine, so
the a/b of two `bench.run` runs hours apart cannot say what a change did. This runs the flow (a)
alone: each revision is checked out into a temporary git worktree (`WORKTREE` means the working
tree as it is, uncommitted changes included), the reference workload is produced once, and the
revisions run in turn, `--repeat` times, interleaved, each with that revision's own
`bench/flow_entry.py` (so a revision must have one). Prints ev/s per run (excluding interpreter
start-up, as the "excl. start-up" column of bench.run) and each revision's median and ratio to
the first.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.run import REPO, Settings, produce_workload, run_flow, start_broker
from nextclick.flows.local_broker import LocalBroker
from nextclick.operators.io.topics import ensure_topics

WORKTREE = "WORKTREE"


def _checkout(revision: str, into: Path) -> Path:
    if revision == WORKTREE:
        return REPO
    path = into / revision.replace("/", "_")
    done = subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.ab: cannot check out {revision!r}: {done.stderr.strip()}")
    return path


def compare(revisions: list[str], s: Settings, processes: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="nextclick-ab-"))
    trees: list[Path] = []
    broker: LocalBroker | None = None
    results: dict[str, list[float]] = {r: [] for r in revisions}
    try:
        for revision in revisions:  # one at a time, so a bad revision still leaves the others removable
            trees.append(_checkout(revision, work))
        broker = start_broker(work) if s.bootstrap is None else None
        bootstrap = s.bootstrap or (broker.bootstrap if broker else "")
        outs = {(i, n): f"bench.out.ab{i}-{n}.{s.run_id}" for i in range(s.repeat) for n in range(len(revisions))}
        ensure_topics({"bootstrap.servers": bootstrap},
                      {s.input_topic: s.partitions, **{t: s.partitions for t in outs.values()}})
        produce_workload(s, bootstrap)
        for i in range(s.repeat):
            for n, (revision, tree) in enumerate(zip(revisions, trees)):
                a = run_flow(s, bootstrap, work, processes, outs[(i, n)], name=f"ab{i}-{n}", repo=tree)
                if a["events"] != s.events:
                    raise RuntimeError(f"{revision}: the flow applied {a['events']} events, expected {s.events}")
                results[revision].append(a["events_per_s_flow_only"])
                print(f"{revision}: {a['events_per_s_flow_only']:,.0f} ev/s (run {i + 1} of {s.repeat})", flush=True)
    finally:
        if broker is not None:
            broker.stop()
        for tree in trees:
            if tree != REPO:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+", help=f"git revisions, or {WORKTREE} for the working tree")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--bootstrap", help="an existing broker instead of the embedded one")
    parser.add_argument("--workload", choices=("default", "identity"), default="default",
                        help="the reference workload (every revision reads it), or the same with anonymous web "
                             "traffic and sign-ins (revisions with identity stitching only)")
    args = parser.parse_args(argv)
    s = Settings(events=args.events, customers=args.customers, processes=(args.processes,), repeat=args.repeat,
                 bootstrap=args.bootstrap, workload=args.workload)
    results = compare(args.revisions, s, args.processes)
    first = statistics.median(results[args.revisions[0]])
    for revision, runs in results.items():
        median = statistics.median(runs)
        print(f"{revision}: median {median:,.0f} ev/s, {median / first:.2f}x {args.revisions[0]} "
              f"(runs: {', '.join(f'{r:,.0f}' for r in runs)})")


if __name__ == "__main__":
    main()
