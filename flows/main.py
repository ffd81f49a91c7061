"""`python -m bytewax.run flows.main:flow`: the production flow, configured from the environment.

`NEXTCLICK_CONFIG` names the TOML file (optional); `NEXTCLICK_*` variables override it. Run with
Bytewax's recovery flags so state is exact after a restart, e.g.:

    python -m bytewax.recovery var/recovery 1
    NEXTCLICK_CONFIG=nextclick.toml python -m bytewax.run flows.main:flow -r var/recovery -s 2 -b 0

`nextclick run --config FILE` does the same with less typing.
"""

from __future__ import annotations

import os

from flows.targeting import build_flow
from operators.config import load_config
from operators.logs import configure_logging

configure_logging(os.environ.get("NEXTCLICK_LOG_LEVEL", "INFO"))
flow = build_flow(load_config(os.environ.get("NEXTCLICK_CONFIG") or None))
