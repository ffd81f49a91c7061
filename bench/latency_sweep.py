"""In-flow latency at several offered rates: where the flow's own queueing starts.

    python -m bench.latency_sweep --rates 7000,10000,14000

Runs only the latency phase of the harness (bench/run.py `run_latency`: live reference events with
probes, one flow process, the embedded broker) once per rate, and prints per rate the in-flow and
end-to-end p50 / p95 / p99, the epoch-end checkpoint mean / max and the cores the flow used.

Why it exists: the harness measures latency at 50% of the backlog throughput, but a live flow pays
more per event than a backlog (small batches, and a profile written about once per event to keep
the epoch-end pause short), so that rate can be most of what the flow can do live. The cores column
shows how close to saturation each rate is, which is what the p99 follows.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import orjson

from bench.run import parse_args, run_latency, start_broker


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="7000,10000,14000", help="comma-separated offered ev/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    ap.add_argument("--json", action="store_true", help="print the full results as JSON as well")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nextclick-latsweep-"))
    settings = parse_args(["--processes", "1", "--out", str(work / "out"), "--latency-seconds", str(args.seconds)])
    broker = start_broker(work)
    results = []
    try:
        for i, rate in enumerate(float(r) for r in args.rates.split(",") if r.strip()):
            # Each rate on its own topics and directories: a fresh flow, nothing left from the last.
            rate_work = work / f"rate{i}"
            rate_work.mkdir()
            lat = run_latency(replace(settings, run_id=f"{settings.run_id}-{i}"), broker.bootstrap, rate_work, 1, rate)
            lat.pop("series", None)
            lat.pop("in_flow_series", None)
            results.append(lat)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| offered ev/s | in the flow p50 / p95 / p99 ms | end to end p50 / p95 / p99 ms "
          "| checkpoint mean / max ms | flow cores |")
    print("|---|---|---|---|---|")
    for lat in results:
        flow, ckpt = lat["in_flow"], lat["checkpoint"]
        print(f"| {lat['offered_rate']:,.0f} | {flow['p50_ms']} / {flow['p95_ms']} / {flow['p99_ms']} "
              f"| {lat['p50_ms']} / {lat['p95_ms']} / {lat['p99_ms']} "
              f"| {_ms(ckpt['per_epoch_mean_s'])} / {_ms(ckpt['per_epoch_max_s'])} "
              f"| {lat['cores_used'].get('pipeline')} |")
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
