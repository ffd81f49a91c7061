"""Raw Kafka message -> `Event` or `DeadLetter`. Never raises.

Checks, in order (the first that fails names the dead-letter reason, see `deadletter.REASONS`):
size (`too_large`), presence (`empty_value`), JSON (`invalid_utf8`, `invalid_json`, `not_an_object`),
envelope (`missing_type`, `unknown_type`, `missing_event_id`, `invalid_ts`), the type's JSON Schema
(`schema_violation`), event-time bounds (`ts_in_future`, `ts_too_old`) and the identifier
(`missing_identifier`). A missing `ts` is `invalid_ts`.

The schemas in `schemas/events/` are plain JSON Schema (draft 2020-12); each type's schema refers to
`_envelope.json` through `allOf`/`$ref`, which is inlined here at load time and compiled once with
fastjsonschema. Dead-letter messages name fields but never quote payload values (they may be PII).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import fastjsonschema
import orjson

from operators.channels import EVENT_CHANNELS
from operators.identity.pseudonyms import pseudonymize, resolve_identifier
from operators.infra.config import ParseConfig
from operators.records import DeadLetter, Event, SourcePosition

# Package data of the `schemas` package: read the same from a wheel as from a checkout.
SCHEMA_DIR = files("schemas").joinpath("events")
ENVELOPE_FILE = "_envelope.json"
ATTRS_KEYWORD = "x-nextclick-attrs"


def _read(name: str) -> dict[str, Any]:
    data = orjson.loads(SCHEMA_DIR.joinpath(name).read_bytes())
    if not isinstance(data, dict):
        raise TypeError(f"{name}: a schema must be a JSON object")
    return data


def load_schema(event_type: str) -> dict[str, Any]:
    """The type's schema with the envelope inlined: one self-contained schema fastjsonschema compiles.

    `allOf: [{"$ref": "_envelope.json"}]` is replaced by merging the envelope's `properties` and
    `required` into the type's (the type's own property definitions win).
    """
    schema = _read(f"{event_type}.json")
    merged = {k: v for k, v in schema.items() if k not in ("allOf", "properties", "required")}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in schema.get("allOf", []):
        if part.get("$ref") == ENVELOPE_FILE:
            envelope = _read(ENVELOPE_FILE)
            properties.update(envelope.get("properties", {}))
            required.extend(envelope.get("required", []))
        else:
            raise ValueError(f"{event_type}.json: unsupported allOf entry")
    properties.update(schema.get("properties", {}))
    required.extend(r for r in schema.get("required", []) if r not in required)
    merged["properties"] = properties
    merged["required"] = required
    merged["type"] = "object"
    for attr in merged.get(ATTRS_KEYWORD, []):
        if attr not in properties:
            raise ValueError(f"{event_type}.json: attribute {attr!r} in {ATTRS_KEYWORD} has no schema")
    return merged


# Numeric attributes whose upper bound `[parse] max_amount` replaces.
AMOUNT_FIELDS = ("amount",)


class _TypeSpec:
    __slots__ = ("attrs", "channel", "int_attrs", "type", "validate")

    def __init__(self, event_type: str, max_amount: float | None = None) -> None:
        schema = load_schema(event_type)
        if max_amount is not None:
            for name in AMOUNT_FIELDS:
                if name in schema["properties"]:
                    schema["properties"][name] = {**schema["properties"][name], "maximum": max_amount}
        self.type = event_type
        self.channel = EVENT_CHANNELS[event_type]
        # fastjsonschema fills in `default`s (consent `purpose`), so they land in attrs.
        self.validate: Callable[[Any], Any] = fastjsonschema.compile(copy.deepcopy(schema),
                                                                     use_default=True)
        self.attrs: tuple[str, ...] = tuple(schema.get(ATTRS_KEYWORD, ()))
        # JSON Schema counts 2.0 as an integer; such attributes are stored as int.
        self.int_attrs = frozenset(a for a in self.attrs
                                   if schema["properties"][a].get("type") == "integer")


# Every type's schema, loaded and compiled once per process (at import).
SPECS: dict[str, _TypeSpec] = {t: _TypeSpec(t) for t in EVENT_CHANNELS}


@functools.lru_cache(maxsize=4)
def _specs_with(max_amount: float) -> dict[str, _TypeSpec]:
    """The schemas with a configured bound on amounts, compiled once per bound."""
    return {t: _TypeSpec(t, max_amount) for t in EVENT_CHANNELS}


def specs_for(config: ParseConfig) -> dict[str, _TypeSpec]:
    return _specs_with(config.max_amount) if config.max_amount else SPECS


# RFC 3339 date-time with a mandatory offset; ASCII digits only.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")
_DATE_ONLY_OR_NAIVE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?")


_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month]


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if month <= 2:
        year -= 1
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


class _Bad(Exception):
    """A refused message: reason code and a message without payload values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message


def parse_ts(ts: Any) -> int:
    """`ts` as epoch milliseconds UTC; raises `_Bad("invalid_ts", ...)`."""
    tp = type(ts)
    if tp is int:
        return ts
    if tp is float:
        if ts.is_integer():  # 1.7e12 is an integer to JSON Schema; orjson also gives floats for huge ints
            return int(ts)
        raise _Bad("invalid_ts", "field 'ts' must be integer epoch milliseconds, got a fraction")
    if tp is str:
        m = _RFC3339.fullmatch(ts)
        if m is None:
            if _DATE_ONLY_OR_NAIVE.fullmatch(ts):
                raise _Bad("invalid_ts", "field 'ts' is an RFC 3339 string without a timezone "
                                         "(add 'Z' or an offset such as '+01:00')")
            raise _Bad("invalid_ts", "field 'ts' is not an RFC 3339 date-time with timezone nor "
                                     "integer epoch milliseconds")
        ys, mos, ds, hs, mis, ss, frac, zulu, sign, off_hs, off_ms = m.groups()
        year, month, day, hour, minute, second = int(ys), int(mos), int(ds), int(hs), int(mis), int(ss)
        if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
                and hour <= 23 and minute <= 59 and second <= 60):  # 60: leap second
            raise _Bad("invalid_ts", "field 'ts' is not a valid date-time (field out of range)")
        millis = int((frac + "00")[:3]) if frac else 0
        offset_min = 0
        if zulu is None:
            off_h, off_m = int(off_hs), int(off_ms)
            if off_h > 23 or off_m > 59:
                raise _Bad("invalid_ts", "field 'ts' has an invalid timezone offset")
            offset_min = off_h * 60 + off_m if sign == "+" else -(off_h * 60 + off_m)
        secs = (_days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
                - offset_min * 60)
        return secs * 1000 + millis
    if tp is bool:
        raise _Bad("invalid_ts", "field 'ts' must be epoch milliseconds or an RFC 3339 string, "
                                 "got a boolean")
    if ts is None:
        raise _Bad("invalid_ts", "field 'ts' is missing or null")
    raise _Bad("invalid_ts", f"field 'ts' must be epoch milliseconds or an RFC 3339 string, "
                             f"got {_json_type(ts)}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return "an unsupported value"


def _schema_message(exc: fastjsonschema.JsonSchemaValueException, payload: dict[str, Any]) -> str:
    """Describe a schema failure by field path and rule, never by the offending value."""
    path = exc.name or "data"
    rule = exc.rule
    definition = exc.rule_definition
    if rule == "required" and isinstance(definition, list):
        missing = [str(r) for r in definition if r not in payload] or [str(r) for r in definition]
        return f"{path} is missing required field(s) {', '.join(missing)}"
    if rule == "type":
        return f"{path} must be of type {definition}"
    if rule in ("minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "enum", "const", "pattern"):
        return f"{path} violates {rule} {definition!r}"
    return f"{path} violates schema rule {rule}"


def _headers_tuple(headers: Any) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    if type(headers) is tuple:  # as the Kafka source builds them
        return headers
    try:
        return tuple((k, v) for k, v in headers)
    except (TypeError, ValueError):  # malformed headers: nothing safe to carry
        return ()


def _seconds_hint(ts: int, now_ms: int, config: ParseConfig) -> str:
    as_ms = ts * 1000
    if now_ms - config.max_age_ms <= as_ms <= now_ms + config.max_future_skew_ms:
        return " (was it seconds? ts * 1000 would be in range)"
    return ""


def _parse(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None,
           source: SourcePosition, secret: bytes, now_ms: int, config: ParseConfig) -> Event:
    if value is None:
        raise _Bad("empty_value", "message value is null (tombstone)")
    if len(value) > config.max_message_bytes:
        raise _Bad("too_large", f"message value is {len(value)} bytes, over the limit of "
                                f"{config.max_message_bytes}")
    if not value:
        raise _Bad("empty_value", "message value is empty")
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad("invalid_utf8", f"message value is not valid UTF-8 (byte offset {exc.start})") \
                from None
        raise _Bad("invalid_json", "message value is not valid JSON") from None
    if type(payload) is not dict:
        raise _Bad("not_an_object", f"message value must be a JSON object, got {_json_type(payload)}")

    event_type = payload.get("type")
    if event_type is None or event_type == "":
        raise _Bad("missing_type", "field 'type' is missing")
    spec = specs_for(config).get(event_type) if type(event_type) is str else None
    if spec is None:
        raise _Bad("unknown_type", f"field 'type' is not a known event type "
                                   f"(got {_json_type(event_type)} that is not one of the "
                                   f"{len(EVENT_CHANNELS)} types)")
    event_id = payload.get("event_id")
    if event_id is None or event_id == "":
        raise _Bad("missing_event_id", "field 'event_id' is missing or empty")
    ts = parse_ts(payload.get("ts"))
    try:
        spec.validate(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _Bad("schema_violation", f"{spec.type}: {_schema_message(exc, payload)}") from None
    if ts > now_ms + config.max_future_skew_ms:
        raise _Bad("ts_in_future", f"field 'ts' is {ts - now_ms} ms ahead of the clock (limit "
                                   f"{config.max_future_skew_ms} ms)")
    if config.max_age_ms > 0 and ts < now_ms - config.max_age_ms:
        raise _Bad("ts_too_old", f"field 'ts' is {now_ms - ts} ms old (limit {config.max_age_ms} ms)"
                                 f"{_seconds_hint(ts, now_ms, config)}")

    ident = resolve_identifier(payload, key, spec.channel)
    if ident is None:
        raise _Bad("missing_identifier", "no identifier: neither a non-empty 'customer_id' in the "
                                         "payload nor a non-empty UTF-8 Kafka key")
    id_type, raw_id = ident
    customer = pseudonymize(id_type, raw_id, secret)

    attrs = {a: payload[a] for a in spec.attrs if a in payload}
    for a in spec.int_attrs:
        v = attrs.get(a)
        if type(v) is float:
            attrs[a] = int(v)
    return Event(event_id=event_id, type=spec.type, ts=ts, customer=customer, channel=spec.channel,
                 attrs=attrs, source=source, raw=(key, value, _headers_tuple(headers)))


def parse_message(key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes]] | None, source: SourcePosition, *,
                  secret: bytes, now_ms: int, config: ParseConfig) -> Event | DeadLetter:
    """Validate one Kafka message into an `Event`, or a `DeadLetter` with the original bytes."""
    try:
        return _parse(key, value, headers, source, secret, now_ms, config)
    except _Bad as bad:
        reason, message = bad.reason, bad.message
    except Exception as exc:  # noqa: BLE001 - a bug here must not stop the flow; the message goes to the DLQ
        reason, message = "internal_error", f"internal error while parsing ({type(exc).__name__})"
    return DeadLetter(key=key, value=value, headers=_headers_tuple(headers), source=source,
                      reason=reason, message=message)
