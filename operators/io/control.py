"""Commands on the control topic: erase a customer (the right to erasure), take a savepoint, drain.

    {"command": "erase", "request_id": "dsr-123", "customer_id": "c-42"}
    {"command": "erase", "request_id": "dsr-124", "id_type": "email", "id": "someone@example.com"}
    {"command": "erase", "request_id": "dsr-125", "customer_key": "<32 hex chars>"}
    {"command": "erase", "request_id": "dsr-125", "customer_key": "<32 hex chars>", "requested_at": 1764504000000,
     "follow_up": true}   (the identity stage's record of an erasure's other identifiers: EraseRequest.follow_up)
    {"command": "savepoint", "request_id": "sp-1", "name": "2026-11-30T12-00", "expires_at": 1764504000000}
    {"command": "drain", ...}   (operators/io/drain.py: for every process's drain watcher, not here)
    {"command": "hello", ...}   (operators/io/cluster_hello.py: what a process started with, not here)
    {"command": "refused", ...} (operators/io/cluster_hello.py: why a process will not start, not here)
    {"command": "starting", ...} (operators/io/cluster_hello.py: a process starts again, not here)

The identifier is hashed exactly as events' identifiers are, so it finds the same profile. A
savepoint command names a directory inside `state.savepoint_dir`, never a path: whoever can write
the control topic cannot make the flow write elsewhere. A command that can't be read is
dead-lettered like any bad event.

A savepoint command is read again whenever the flow resumes from before it (a restart after a crash,
a restore of an older savepoint), and may be read long after it was sent (a flow started after
`savepoint create --online` gave up). `expires_at` (ms since the epoch; the CLI sets it to the end of
its wait) and the savepoint's own manifest say when it is no longer wanted (`savepoint_not_wanted`):
nobody would assemble its parts, or they would be copied into a complete savepoint.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import orjson
from confluent_kafka import Producer

from nextclick.operators.channels import ID_TYPES
from nextclick.operators.identity.guards import placeholder_form
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.io.deadletter import TS_SKEW_HEADER
from nextclick.operators.io.jsonkeys import duplicate_key
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.records import DeadLetter, EraseRequest, SavepointRequest, SourcePosition
from nextclick.operators.state.savepoint_parts import MANIFEST, Destination

_KEY = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" would also match before a final newline
SAVEPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch, as _KEY
# The control message's fields: the only key names a refusal may quote.
_FIELDS = frozenset({"command", "request_id", "customer_key", "customer_id", "id_type", "id", "name",
                     "expires_at", "requested_at", "follow_up"})
COMMANDS = ("erase", "savepoint", "drain", "hello", "refused", "starting")


def send_command(kafka: Mapping[str, str], topic: str, command: str, request_id: str, key: bytes,
                 timeout_s: float = 30.0, **fields: str | int) -> None:
    """Deliver one command (the format above) to the control topic, or raise naming the topic: what the
    CLI and the savepoint scheduler send, read back by `parse_control`."""
    send_commands(kafka, topic, command, [(key, {"request_id": request_id, **fields})], timeout_s)


def send_commands(kafka: Mapping[str, str], topic: str, command: str,
                  commands: Sequence[tuple[bytes, Mapping[str, str | int]]], timeout_s: float = 30.0) -> None:
    """`send_command` for several keys through one producer; raises unless the broker took every one
    (a delivery error, not only a timeout: a refused record must not read as sent)."""
    failure = deliver(Producer(client_config(kafka)), topic, command, commands, timeout_s)
    if failure is not None:
        raise ConnectionError(failure)


def deliver(producer: Producer, topic: str, command: str, commands: Sequence[tuple[bytes, Mapping[str, Any]]],
            timeout_s: float) -> str | None:
    """Produce the commands and wait for the broker to take every one; what went wrong, or None."""
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err.str() if hasattr(err, "str") else err))

    for key, fields in commands:
        producer.produce(topic, orjson.dumps({"command": command, **fields}), key, on_delivery=delivered)
    if producer.flush(timeout_s):
        return f"could not deliver the {command} command to {topic} within {timeout_s:g} s"
    if failed:
        return f"the broker refused the {command} command on {topic}: {failed[0]}"
    return None


class ErasureRecorder:
    """The identity stage's `record_erasure`: an erasure's other identifiers, as follow-up erase commands
    on the control topic (`EraseRequest.follow_up`), acknowledged before the stage erases the graph. A
    broker that does not take them stops the process before anything is erased; a restart replays it."""

    def __init__(self, kafka: Mapping[str, str], topic: str, timeout_s: float = 30.0) -> None:
        self.kafka, self.topic, self.timeout_s = kafka, topic, timeout_s
        self._producer: Producer | None = None

    def __call__(self, keys: list[str], request_id: str, requested_at: int) -> None:
        if self._producer is None:
            self._producer = Producer(client_config(self.kafka, **{"enable.idempotence": True}))
        failure = deliver(self._producer, self.topic, "erase", [
            (key.encode(), {"request_id": request_id, "customer_key": key, "requested_at": requested_at,
                            "follow_up": True}) for key in keys], self.timeout_s)
        if failure is not None:
            raise ConnectionError(f"could not record an erasure's follow-ups ({failure}); nothing was erased, a "
                                  "restart does it again")


def parse_control(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                  source: SourcePosition, *, secret: bytes,
                  savepoint_dir: Path = Path("var/savepoints"), now_ms: int | None = None,
                  max_future_skew_ms: int = 5 * 60 * 1000) -> EraseRequest | SavepointRequest | DeadLetter | None:
    """Never raises: a command, None for a drain request or a hello (nothing for the dataflow to do), or a
    DeadLetter saying what is wrong (without echoing values).

    An erasure's `requested_at` more than `max_future_skew_ms` ahead of `now_ms` (the read time, as for an
    event's `ts`) is refused: every event of that person dated before it would be dropped as from before
    the erasure, a returning customer's opt-out among them, with nothing but a counter to show it.

    A savepoint command comes back with shard -1 and a fresh token; the flow sends a copy to every shard.
    """
    try:
        return _parse_control(key, value, headers, source, secret, savepoint_dir, now_ms, max_future_skew_ms)
    except Exception as exc:  # noqa: BLE001 - a bug here must not stop the flow, nor every restart that reads it again
        return DeadLetter(key, value, tuple(headers or ()), source, "internal_error",
                          f"internal error while reading the control message ({type(exc).__name__})")


def _parse_control(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                   source: SourcePosition, secret: bytes, savepoint_dir: Path, now_ms: int | None,
                   max_future_skew_ms: int) -> EraseRequest | SavepointRequest | DeadLetter | None:
    def refuse(reason: str, message: str) -> DeadLetter:
        return DeadLetter(key, value, tuple(headers or ()), source, reason, message)

    if not value:  # as on the input topics: a tombstone or an empty value is not a command
        return refuse("empty_value", "control message value is null (tombstone)" if value is None
                      else "control message value is empty")
    try:
        body: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return refuse("invalid_json", "control message is not valid JSON")
    if not isinstance(body, dict):
        return refuse("not_an_object", "control message is not a JSON object")
    duplicate = duplicate_key(value or b"", body)
    if duplicate is not None:  # {"customer_id": "a", "customer_id": "b"} must not erase whichever came last
        named = repr(duplicate[0]) if duplicate[0] in _FIELDS and duplicate[1] == 1 else "a key"
        return refuse("invalid_json", f"control message has {named} more than once (a duplicated key is "
                                      "ambiguous JSON)")
    command = body.get("command")
    if command not in COMMANDS:
        return refuse("unknown_command",
                      "control message 'command' must be \"erase\", \"savepoint\" or \"drain\"")
    if command in ("drain", "hello", "refused", "starting"):  # for the processes (drain.py, cluster_hello.py)
        return None
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return refuse("schema_violation", "control message needs a non-empty string 'request_id'")
    if command == "savepoint":
        name = body.get("name")
        if not isinstance(name, str) or not SAVEPOINT_NAME.fullmatch(name):
            return refuse("schema_violation", "savepoint needs 'name': a directory name of letters, digits, "
                                              "'.', '_' and '-' (it is created inside state.savepoint_dir)")
        expires_at = body.get("expires_at")
        if expires_at is not None and (type(expires_at) is not int or expires_at <= 0):
            return refuse("schema_violation", "savepoint 'expires_at' must be a positive integer: milliseconds since "
                                              "the epoch after which the request is not carried out")
        return SavepointRequest(-1, request_id, str(savepoint_dir / name), uuid.uuid4().hex[:12], source,
                                expires_at_ms=expires_at)
    requested_at = body.get("requested_at")
    if requested_at is not None and (type(requested_at) is not int or requested_at <= 0):
        return refuse("schema_violation", "erase 'requested_at' must be a positive integer: milliseconds since the "
                                          "epoch when the erasure was asked for")
    if requested_at is not None and now_ms is not None and requested_at - now_ms > max_future_skew_ms:
        return DeadLetter(key, value, tuple(headers or ()), source, "ts_in_future",
                          f"erase 'requested_at' is ahead of the clock by more than the limit of {max_future_skew_ms} "
                          "ms (parse.max_future_skew_ms): milliseconds since the epoch, not micro- or nanoseconds",
                          measured=((TS_SKEW_HEADER, str(requested_at - now_ms)),))
    # One identifier, in one form: a command naming two (an outside probe: a customer_id beside the
    # id_type/id of the person to erase) erased one and kept the other, and read as done.
    forms = [form for form, present in (("'customer_key'", "customer_key" in body),
                                        ("'customer_id'", "customer_id" in body),
                                        ("'id_type' and 'id'", "id_type" in body or "id" in body)) if present]
    if len(forms) > 1:
        return refuse("schema_violation", f"erase names one identifier, in one form; this one names {len(forms)} "
                                          f"({', '.join(forms)}): send one command for each")
    # Say which form was tried and what is wrong with it (never the value: it may be the identifier).
    follow_up = body.get("follow_up", False)
    if follow_up is not False and (follow_up is not True or "customer_key" not in body or requested_at is None):
        return refuse("schema_violation", "erase 'follow_up' is true or absent, and only with 'customer_key' and "
                                          "'requested_at' (what the flow itself records)")
    if "customer_key" in body:
        customer_key = body["customer_key"]
        if isinstance(customer_key, str) and _KEY.fullmatch(customer_key):
            return EraseRequest(customer_key, request_id, source, requested_at=requested_at, follow_up=follow_up)
        return refuse("missing_identifier", "erase 'customer_key' must be 32 lowercase hexadecimal characters "
                                            "(the key `nextclick keys` prints)")
    if "customer_id" in body:
        customer_id = body["customer_id"]
        if isinstance(customer_id, str) and names_someone(customer_id):
            return EraseRequest(pseudonymize("customer", customer_id, secret), request_id, source,
                                requested_at=requested_at)
        return refuse("missing_identifier", "erase 'customer_id' must be a string with a visible character")
    id_type, raw_id = body.get("id_type"), body.get("id")
    if "id_type" in body or "id" in body:
        if not isinstance(id_type, str) or id_type not in ID_TYPES:  # a list or an object is not hashable
            return refuse("missing_identifier", f"erase 'id_type' must be one of {sorted(ID_TYPES)}")
        if isinstance(raw_id, str) and names_someone(raw_id):
            return EraseRequest(pseudonymize(id_type, raw_id, secret), request_id, source,
                                requested_at=requested_at)
        return refuse("missing_identifier", "erase 'id' must be a string with a visible character")
    return refuse("missing_identifier", "erase needs 'customer_key', 'customer_id', or 'id_type' and 'id'")


def names_someone(identifier: str) -> bool:
    """Not empty, blank or invisible (a zero-width space): no event is keyed by such an identifier."""
    return bool(placeholder_form(identifier))


def is_customer_key(text: str) -> bool:
    """A pseudonymous key as `nextclick keys` prints it: 32 lowercase hexadecimal characters."""
    return _KEY.fullmatch(text) is not None


def savepoint_not_wanted(request: SavepointRequest, now_ms: int) -> str | None:
    """Why a savepoint command read now is not carried out, or None to carry it out (see the docstring).

    Decided once, where the command is read, so every shard writes its part or none does."""
    if request.expires_at_ms is not None and now_ms > request.expires_at_ms:
        return (f"its requester stopped waiting {(now_ms - request.expires_at_ms) / 1000:.0f}s ago (expires_at); "
                "nothing would assemble its parts")
    try:
        Destination(request.path).read_bytes(MANIFEST)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable here: the shards' writes say what is wrong, as for any savepoint
    return f"{request.path} already holds a complete savepoint (a command read again after a restart or restore)"
