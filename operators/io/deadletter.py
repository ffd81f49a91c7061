"""Dead-letter records as Kafka messages: original headers plus Kafka Connect-style error headers.

A refused message is re-published byte for byte (key, value, headers) to the dead-letter topic with
the headers Kafka Connect's DLQ uses, so existing tooling can show where it came from and why:
`__connect.errors.topic/partition/offset`, `__connect.errors.exception.class.name` (one stable class
name per reason), `__connect.errors.exception.message`, plus `nextclick.errors.reason`. A record that
would be too large to publish is cut to DEAD_LETTER_MAX_BYTES, saying so in a header. The message
depends only on the message and the configuration, never on the clock: measured quantities such as
`nextclick.errors.ts_skew_ms` go in headers of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from nextclick.operators.records import DeadLetter

# Stable reason code -> stable exception class name shown in the Connect-style header.
REASONS: dict[str, str] = {
    "too_large": "nextclick.parse.MessageTooLarge",
    "empty_value": "nextclick.parse.EmptyValue",
    "invalid_utf8": "nextclick.parse.InvalidUtf8",
    "invalid_json": "nextclick.parse.InvalidJson",
    "not_an_object": "nextclick.parse.NotAnObject",
    "missing_type": "nextclick.parse.MissingType",
    "unknown_type": "nextclick.parse.UnknownType",
    "missing_event_id": "nextclick.parse.MissingEventId",
    "schema_violation": "nextclick.parse.SchemaViolation",
    "invalid_ts": "nextclick.parse.InvalidTimestamp",
    "ts_in_future": "nextclick.parse.TimestampInFuture",
    "ts_too_old": "nextclick.parse.TimestampTooOld",
    "missing_identifier": "nextclick.parse.MissingIdentifier",
    "invalid_identifier": "nextclick.parse.InvalidIdentifier",
    "unknown_command": "nextclick.control.UnknownCommand",
    # The event was valid but applying it raised; the class header names the exception instead.
    "processing_error": "nextclick.processing.ProcessingError",
    # Not a property of the message: the parser hit a bug. Kept so that it still never raises.
    "internal_error": "nextclick.parse.InternalError",
}

TOPIC_HEADER = "__connect.errors.topic"
PARTITION_HEADER = "__connect.errors.partition"
OFFSET_HEADER = "__connect.errors.offset"
CLASS_HEADER = "__connect.errors.exception.class.name"
MESSAGE_HEADER = "__connect.errors.exception.message"
REASON_HEADER = "nextclick.errors.reason"
REDACTED_HEADER = "nextclick.errors.redacted"
STEP_HEADER = "nextclick.errors.step"
# ts_in_future / ts_too_old: event time minus the clock when the message was read, in ms (signed).
TS_SKEW_HEADER = "nextclick.errors.ts_skew_ms"
REDACTED = "[redacted]"
# What was cut from a dead letter too large to publish: "value 1048000 -> 838860, key ..., headers 300 -> 0".
TRUNCATED_HEADER = "nextclick.errors.truncated"
# A dead letter's key, value and headers together stay under this: librdkafka's producer refuses a
# message over its message.max.bytes (1,000,000 by default), and a broker's default limit is about
# 1 MiB, while a producer elsewhere may well write a message of 1 MiB. Refusing the dead letter would
# stop the flow at that message on every restart; a cut copy keeps its place and says what was cut.
DEAD_LETTER_MAX_BYTES = 900_000
_KEY_KEEP = 16 * 1024  # of an oversized record: at most this much of its key
_HEADERS_KEEP = 64 * 1024  # ... and its original headers only if they are no larger than this


# The namespaces of the headers a dead letter adds: a message's own headers there are not copied, so
# that a producer cannot forge a dead letter's position, reason or truncation for a reader that takes
# the first header of a name (a replay strips both namespaces anyway). Compared in any letter case and
# without surrounding blanks: a triage tool may look names up so (`NEXTCLICK.ERRORS.REASON`).
RESERVED_PREFIXES = ("__connect.errors.", "nextclick.errors.")


def _reserved(name: str) -> bool:
    return name.strip().casefold().startswith(RESERVED_PREFIXES)


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes | None]]:
    """The original message's headers (but those in `RESERVED_PREFIXES`), then the error headers (values
    as UTF-8 / decimal ASCII)."""
    src = dl.source
    cls = dl.exception_class or REASONS.get(dl.reason, "nextclick.parse.Unknown")
    headers = [
        *(h for h in dl.headers if not _reserved(h[0])),
        (TOPIC_HEADER, str(src.topic).encode("utf-8", "replace")),
        (PARTITION_HEADER, str(int(src.partition)).encode("ascii")),
        (OFFSET_HEADER, str(int(src.offset)).encode("ascii")),
        (CLASS_HEADER, cls.encode("utf-8", "replace")),
        (MESSAGE_HEADER, dl.message.encode("utf-8", "replace")),
        (REASON_HEADER, dl.reason.encode("utf-8", "replace")),
    ]
    if dl.step is not None:
        headers.append((STEP_HEADER, dl.step.encode("utf-8", "replace")))
    headers.extend((name, value.encode("utf-8", "replace")) for name, value in dl.measured)
    return headers


def redact_value(value: bytes | None, fields: Sequence[str]) -> tuple[bytes | None, list[str]]:
    """`value` with the top-level `fields` of a JSON object replaced by "[redacted]", and which were.

    A value that is not a JSON object (not JSON, not UTF-8, an array...) or has none of the fields
    comes back unchanged, byte for byte, with an empty list. An object that can't be written back
    (nested deeper than orjson writes) is replaced whole by the JSON string "[redacted]", listed as "*".
    """
    if not fields or not value:
        return value, []
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value, []
    if type(body) is not dict:
        return value, []
    hit = [f for f in dict.fromkeys(fields) if f in body]
    if not hit:
        return value, []
    for f in hit:
        body[f] = REDACTED
    try:
        return orjson.dumps(body), hit
    except orjson.JSONEncodeError:  # e.g. nested deeper than orjson writes: fail closed, keep nothing
        return orjson.dumps(REDACTED), ["*"]


def dead_letter_record(dl: DeadLetter, redact_fields: Sequence[str] = ()) -> tuple[
        bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """(key, value, headers) of the dead-letter message; the value is redacted if fields are given.

    With no `redact_fields` (the default) the value is the original bytes. A redacted record gets a
    `nextclick.errors.redacted` header naming the fields, and is no longer replayable unchanged.
    """
    value, hit = redact_value(dl.value, redact_fields)
    headers = dead_letter_headers(dl)
    if hit:
        headers.append((REDACTED_HEADER, ",".join(hit).encode("utf-8", "replace")))
    key = dl.key
    if _size(key, value, headers) > DEAD_LETTER_MAX_BYTES:
        key, value, headers = _cut(dl, key, value, headers)
    return key, value, headers


def _size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(n) + len(v or b"") for n, v in headers)


def _cut(dl: DeadLetter, key: bytes | None, value: bytes | None,
         headers: list[tuple[str, bytes | None]]) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """The oversized record's first bytes, and a header saying what each part was and became: the
    reason and source headers stay whole, so it can still be found and explained, not replayed."""
    said: list[str] = []
    if _size(None, None, dl.headers) > _HEADERS_KEEP:
        headers = headers[len(dl.headers):]  # the error headers follow the original ones
        said.append(f"headers {len(dl.headers)} -> 0")
    if key is not None and len(key) > _KEY_KEEP:
        said.append(f"key {len(key)} -> {_KEY_KEEP}")
        key = key[:_KEY_KEEP]
    room = DEAD_LETTER_MAX_BYTES - _size(key, None, headers) - 200  # 200: the truncation header itself
    if value is not None and len(value) > room:
        said.append(f"value {len(value)} -> {max(room, 0)}")
        value = value[:max(room, 0)]
    return key, value, [*headers, (TRUNCATED_HEADER, ", ".join(said).encode())]
