"""Process-wide runtime settings for the flow's entry points.

The flow keeps a large, long-lived heap (tens of thousands of decoded profiles in the shards' caches)
and allocates briefly-lived containers for every event. With CPython's default thresholds the cyclic
garbage collector runs every 700 allocations and keeps re-walking the long-lived heap, which costs
10-20% of the event loop (measured with bench.engine-style loops); nothing the flow allocates forms
reference cycles it depends on the collector for. Fewer, larger young collections keep cycles
collected without that cost.
"""

from __future__ import annotations

import gc

# Young-generation allocations between collections, and how many young/middle collections before
# the next older one (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Collect less often, and move everything alive at start-up (modules, compiled rules) out of the
    collector's way for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def bytewax_run_readers(argv: list[str]) -> int | None:
    """How many workers read the input in the cluster, from `python -m bytewax.run`'s arguments
    (`-w/--workers-per-process`, the processes of `-a/--addresses`); None if `argv` does not say. The
    identity stage restores event-time order across several readers' channels, which one does not need."""
    workers, processes = 1, 1
    try:
        for i, arg in enumerate(argv):
            name, _, inline = arg.partition("=")
            if name in ("-w", "--workers-per-process"):
                workers = int(inline or argv[i + 1])
            elif name in ("-a", "--addresses"):
                processes = len([a for a in (inline or argv[i + 1]).split(";") if a])
    except (IndexError, ValueError):
        return None
    return workers * processes
