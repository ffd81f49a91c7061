"""`python -m bytewax.run nextclick.flows.main:flow`: the production flow, configured from the environment.

`NEXTCLICK_CONFIG` names the TOML file (optional); `NEXTCLICK_*` variables override it. Run with
Bytewax's recovery flags so state is exact after a restart, e.g.:

    mkdir -p var/recovery && python -m bytewax.recovery var/recovery 1
    NEXTCLICK_CONFIG=nextclick.toml python -m bytewax.run nextclick.flows.main:flow -r var/recovery -s 2 -b 0

Without `-r` the flow refuses to start: every shard would otherwise start over from nothing.
`nextclick run --config FILE` does the same with less typing.
"""

from __future__ import annotations

import os
import sys

from nextclick.flows.targeting import build_flow
from nextclick.operators.infra.config import ConfigError, load_config
from nextclick.operators.infra.logs import configure_logging
from nextclick.operators.infra.runtime import bytewax_run_readers, tune_gc
from nextclick.operators.state.store import StateError
from nextclick.operators.tools.startup import check_start, runner_recovery_dir

configure_logging(os.environ.get("NEXTCLICK_LOG_LEVEL", "INFO"))
try:
    _config = load_config(os.environ.get("NEXTCLICK_CONFIG") or None)
    _recovery = runner_recovery_dir(_config)
    flow = build_flow(_config, plan=check_start(_config, recovery_dir=_recovery), readers=bytewax_run_readers(sys.argv))
    tune_gc()
except (ConfigError, StateError) as _exc:
    print(f"nextclick: error: {_exc}", file=sys.stderr)
    raise SystemExit(2) from None
