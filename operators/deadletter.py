"""Dead-letter records as Kafka messages: original headers plus Kafka Connect-style error headers.

A refused message is re-published byte for byte (key, value, headers) to the dead-letter topic with
the headers Kafka Connect's DLQ uses, so existing tooling can show where it came from and why:
`__connect.errors.topic/partition/offset`, `__connect.errors.exception.class.name` (one stable class
name per reason), `__connect.errors.exception.message`, plus `nextclick.errors.reason`.
"""

from __future__ import annotations

from operators.events import DeadLetter

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
    "unknown_command": "nextclick.control.UnknownCommand",
    # Not a property of the message: the parser hit a bug. Kept so that it still never raises.
    "internal_error": "nextclick.parse.InternalError",
}

TOPIC_HEADER = "__connect.errors.topic"
PARTITION_HEADER = "__connect.errors.partition"
OFFSET_HEADER = "__connect.errors.offset"
CLASS_HEADER = "__connect.errors.exception.class.name"
MESSAGE_HEADER = "__connect.errors.exception.message"
REASON_HEADER = "nextclick.errors.reason"


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    """The original message's headers, then the error headers (values as UTF-8 / decimal ASCII)."""
    src = dl.source
    return [
        *dl.headers,
        (TOPIC_HEADER, str(src.topic).encode("utf-8", "replace")),
        (PARTITION_HEADER, str(int(src.partition)).encode("ascii")),
        (OFFSET_HEADER, str(int(src.offset)).encode("ascii")),
        (CLASS_HEADER, REASONS.get(dl.reason, "nextclick.parse.Unknown").encode("ascii")),
        (MESSAGE_HEADER, dl.message.encode("utf-8", "replace")),
        (REASON_HEADER, dl.reason.encode("utf-8", "replace")),
    ]
