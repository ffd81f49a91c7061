"""Structured logs: one JSON object per line, secrets redacted by key name before they are written."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any, Callable

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("password", "secret", "token", "sasl", "key.pem", "credential")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = "***" if any(w in key.lower() for w in _SECRET_WORDS) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# Numbers that vary between repeats of one client message: client instance ("consumer-5"), durations
# ("after 6084ms"), counts. Addresses (digits next to '.' or ':') are kept, so each broker keeps its own key.
_VARYING = re.compile(r"(?<![.:\d])\d+(?![.:\d])")


class RepeatThrottle(logging.Filter):
    """Let a message through once per `every_s` seconds; count the repeats in between.

    librdkafka logs every failed reconnect of every client (a consumer per input partition, the
    producer, the admin client): with the broker down that was 873 "Connection refused" lines in
    46 s, which hide the one line that matters. The first line of each kind still goes out at once;
    the next one after the window carries `repeated` (how many were dropped).
    """

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_kinds: int = 1000) -> None:
        super().__init__()
        self._every_s, self._clock, self._max_kinds = every_s, clock, max_kinds
        self._seen: dict[str, tuple[float, int]] = {}  # kind -> (when last let through, dropped since)
        self._lock = threading.Lock()  # librdkafka logs from the threads that poll each client

    def filter(self, record: logging.LogRecord) -> bool:
        kind = f"{record.levelno}:{_VARYING.sub('#', record.getMessage())}"
        now = self._clock()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < self._every_s:
                self._seen[kind] = (last[0], last[1] + 1)
                return False
            if last is None and len(self._seen) >= self._max_kinds:
                self._seen.clear()  # a bound on memory; at worst a kind is logged once more
            self._seen[kind] = (now, 0)
        if last is not None and last[1]:
            record.repeated = last[1]
        return True


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger (librdkafka's included) through the JSON formatter, librdkafka's throttled."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    client = logging.getLogger("librdkafka")
    client.filters[:] = [f for f in client.filters if not isinstance(f, RepeatThrottle)]
    client.addFilter(RepeatThrottle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
