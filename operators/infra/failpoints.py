"""Failpoints for crash tests: kill this process at an exact point, the way a real crash would.

`NEXTCLICK_FAILPOINTS="after_checkpoint:3"` sends SIGKILL to the process the 3rd time the point
`after_checkpoint` is reached. Unset (always, in production) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_PLAN: dict[str, int] = {}
for _item in filter(None, os.environ.get("NEXTCLICK_FAILPOINTS", "").split(",")):
    _name, _, _count = _item.partition(":")
    _PLAN[_name.strip()] = int(_count or 1)
_HITS: dict[str, int] = {}


def hit(name: str) -> None:
    """Reached point `name`: die here if the plan says this is the moment."""
    if name in _PLAN:
        _HITS[name] = _HITS.get(name, 0) + 1
        if _HITS[name] == _PLAN[name]:
            os.kill(os.getpid(), signal.SIGKILL)


class InjectedFailure(RuntimeError):
    """Raised by a failpoint: the processing of this customer's event fails, as a bug would make it."""


# `NEXTCLICK_FAIL_CUSTOMERS="<key>,<key>"`: applying any event of these pseudonymous customer keys
# raises InjectedFailure (poison-isolation tests). Empty in production: one truthiness check per event.
FAIL_CUSTOMERS = frozenset(filter(None, os.environ.get("NEXTCLICK_FAIL_CUSTOMERS", "").split(",")))


def _throttles(spec: str) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for item in filter(None, spec.split(",")):
        topic, messages, ms = item.strip().rsplit(":", 2)
        out[topic] = (int(messages), int(ms) / 1000)
    return out


# `NEXTCLICK_THROTTLE_INPUT="<topic>[#<partition>]:<messages>:<ms>"`: that input partition (or every
# partition of the topic) takes at most <messages> from its consumer every <ms>: a slow broker, for
# the alignment tests. Unset in production: two dict lookups per partition at start.
THROTTLE_INPUT = _throttles(os.environ.get("NEXTCLICK_THROTTLE_INPUT", ""))
