"""Commands on the control topic: erase a customer (the right to erasure), and drain the cluster.

    {"command": "erase", "request_id": "dsr-123", "customer_id": "c-42"}
    {"command": "erase", "request_id": "dsr-124", "id_type": "email", "id": "someone@example.com"}
    {"command": "erase", "request_id": "dsr-125", "customer_key": "<32 hex chars>"}
    {"command": "drain", ...}   (operators/drain.py: read by every process's drain watcher, not here)

The identifier is hashed exactly as events' identifiers are, so it finds the same profile.
A command that can't be read is dead-lettered like any bad event.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import orjson

from operators.events import DeadLetter, EraseRequest, SourcePosition
from operators.identity import ID_TYPES, pseudonymize

_KEY = re.compile(r"^[0-9a-f]{32}$")


def parse_control(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None,
                  source: SourcePosition, *, secret: bytes) -> EraseRequest | DeadLetter | None:
    """Never raises: an EraseRequest, None for a drain request (nothing for the dataflow to do), or a
    DeadLetter saying what is wrong (without echoing values)."""
    def refuse(reason: str, message: str) -> DeadLetter:
        return DeadLetter(key, value, tuple(headers or ()), source, reason, message)

    try:
        body: Any = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return refuse("invalid_json", "control message is not valid JSON")
    if not isinstance(body, dict):
        return refuse("not_an_object", "control message is not a JSON object")
    if body.get("command") == "drain":
        return None
    if body.get("command") != "erase":
        return refuse("unknown_command", "control message 'command' must be \"erase\" or \"drain\"")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return refuse("schema_violation", "control message needs a non-empty string 'request_id'")
    customer_key = body.get("customer_key")
    if isinstance(customer_key, str) and _KEY.match(customer_key):
        return EraseRequest(customer_key, request_id, source)
    if isinstance(body.get("customer_id"), str) and body["customer_id"]:
        return EraseRequest(pseudonymize("customer", body["customer_id"], secret), request_id, source)
    id_type, raw_id = body.get("id_type"), body.get("id")
    if id_type in ID_TYPES and isinstance(raw_id, str) and raw_id:
        return EraseRequest(pseudonymize(str(id_type), raw_id, secret), request_id, source)
    return refuse("missing_identifier", "erase needs 'customer_key', 'customer_id', or 'id_type' and 'id'")
