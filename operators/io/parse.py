"""Raw Kafka message -> `Event` or `DeadLetter`. Never raises.

Checks, in order (the first that fails names the dead-letter reason, see `deadletter.REASONS`):
size (`too_large`), presence (`empty_value`), JSON (`invalid_utf8`, `invalid_json` - which includes
an object with a key twice, at any depth -, `not_an_object`), envelope (`missing_type`,
`unknown_type`, `missing_event_id`, `invalid_ts`), the type's JSON Schema (`schema_violation`),
event-time bounds (`ts_in_future`, `ts_too_old`, then years 1 to 9999 as `invalid_ts`) and the
identifier (`missing_identifier`). A missing `ts` is `invalid_ts`.

The schemas in `schemas/events/` are plain JSON Schema (draft 2020-12) and the default tracking plan; a
plan file (`flow.tracking_plan`, operators/events/tracking_plan.py) adds types and attributes as schemas of
the same shape, from which both paths are generated when the plan is loaded (`plan=`); without one,
the shipped specs (operators/events/schemas.py) serve as they always did. Each type's schema refers to
`_envelope.json` through `allOf`/`$ref`, which is inlined at load time and compiled once with
fastjsonschema. Dead-letter messages name fields but never quote payload values (they may be PII),
and never depend on the clock: how far `ts` was off goes in a header of its own.

Two paths, one contract. The fast path decodes and validates in one step with msgspec, into Structs
generated at import from the same schemas (a tagged union on `type`), and builds the `Event`; it
only ever accepts. Anything it does not accept, for whatever reason, goes to the slow path (orjson,
then fastjsonschema, check by check), which is the reference and names the reason. The fast path
must never accept what the slow path refuses nor build a different `Event`: tests/test_parse.py
checks both on arbitrary, near-valid and hostile messages.
"""

from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import fastjsonschema
import msgspec
import orjson

from nextclick.operators.events.schemas import (
    DEFAULT_SPECS,
    SPECS,
    TS_MAX,
    TS_MIN,
    SpecSet,
    TypeSpec,
    load_schema,
    specs_with,
)
from nextclick.operators.identity.guards import IdentityRules, default_identity_rules, guard_links
from nextclick.operators.identity.pseudonyms import (
    identifier_of,
    other_identifiers,
    pseudonymize_cached,
    resolve_identifier,
)
from nextclick.operators.infra.config import ParseConfig
from nextclick.operators.io.deadletter import TS_SKEW_HEADER
from nextclick.operators.io.jsonkeys import duplicate_key
from nextclick.operators.records import DeadLetter, Event, SourcePosition

if TYPE_CHECKING:
    from nextclick.operators.events.tracking_plan import TrackingPlan


def _spec_set(config: ParseConfig) -> SpecSet:
    return specs_with(config.max_amount) if config.max_amount else DEFAULT_SPECS


def specs_for(config: ParseConfig, plan: TrackingPlan | None = None) -> dict[str, TypeSpec]:
    return (_spec_set(config) if plan is None else plan.spec_set(config.max_amount)).by_type


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
    """A refused message: reason code, a message without payload values, measured quantities."""

    def __init__(self, reason: str, message: str, measured: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message
        self.measured = measured


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


def _headers_tuple(headers: Any) -> tuple[tuple[str, bytes | None], ...]:
    if not headers:
        return ()
    if type(headers) is tuple:  # as the Kafka source builds them
        return headers
    try:
        return tuple((k, v) for k, v in headers)
    except (TypeError, ValueError):  # malformed headers: nothing safe to carry
        return ()


def _seconds_hint(ts: int) -> str:
    """Decided by `ts` alone, so that the message is the same at any clock: epoch seconds of this
    century (2001-2286) have 10 digits, and as milliseconds they are days after 1970-01-01."""
    if 1_000_000_000 <= ts < 10_000_000_000:
        return " (was it seconds? a 10-digit ts reads as epoch seconds)"
    return ""


# Top-level field names a duplicate-key message may name (anything else might be personal data).
_FIELD_NAMES = frozenset(name for spec in SPECS.values() for name in load_schema(spec.type)["properties"])


def _duplicate_message(key: str, depth: int) -> str:
    what = f"key {key!r}" if key in _FIELD_NAMES else "a key that is not a schema field"
    where = "the top-level object" if depth == 1 else f"an object nested {depth - 1} level(s) deep"
    return f"message value has {what} more than once in {where} (a duplicated key is ambiguous JSON)"


# orjson refuses text nested deeper than this (arrays and objects), at a fixed depth that does not
# depend on the Python stack.
JSON_MAX_DEPTH = 1024
# orjson's refusals that have a cause worth naming: (start of orjson's message, what the dead letter
# adds). Anything else stays "not valid JSON". orjson's messages quote no payload value.
_JSON_REFUSALS = (
    ("depth limit exceeded", f"nested deeper than {JSON_MAX_DEPTH} levels of arrays and objects"),
    ("number is infinity", "a number too large for a double"),
)


def _invalid_json_message(refusal: str) -> str:
    """The dead letter's message for text orjson refused: the same for the same text, whatever the
    stack or the clock, and never quoting the text."""
    for start, cause in _JSON_REFUSALS:
        if refusal.startswith(start):
            return f"message value is not valid JSON: {cause}"
    return "message value is not valid JSON"


def _parse(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
           source: SourcePosition, secret: bytes, now_ms: int, config: ParseConfig, guards: IdentityRules,
           plan: TrackingPlan | None = None) -> Event:
    if value is None:
        raise _Bad("empty_value", "message value is null (tombstone)")
    if len(value) > config.max_message_bytes:
        raise _Bad("too_large", f"message value is {len(value)} bytes, over the limit of "
                                f"{config.max_message_bytes}")
    if not value:
        raise _Bad("empty_value", "message value is empty")
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as refused:
        try:
            bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad("invalid_utf8", f"message value is not valid UTF-8 (byte offset {exc.start})") \
                from None
        raise _Bad("invalid_json", _invalid_json_message(refused.msg)) from None
    duplicate = duplicate_key(value if type(value) is bytes else bytes(value), payload)
    if duplicate is not None:
        raise _Bad("invalid_json", _duplicate_message(*duplicate))
    if type(payload) is not dict:
        raise _Bad("not_an_object", f"message value must be a JSON object, got {_json_type(payload)}")

    event_type = payload.get("type")
    if event_type is None or event_type == "":
        raise _Bad("missing_type", "field 'type' is missing" if "type" not in payload else
                   f"field 'type' is {'null' if event_type is None else 'empty'}")
    specs = specs_for(config, plan)
    spec = specs.get(event_type) if type(event_type) is str else None
    if spec is None:
        raise _Bad("unknown_type", f"field 'type' is not a known event type "
                                   f"(got {_json_type(event_type)} that is not one of the "
                                   f"{len(specs)} types)")
    event_id = payload.get("event_id")
    if event_id is None or event_id == "":
        raise _Bad("missing_event_id", "field 'event_id' is missing or empty")
    if type(event_id) is str and _bad_event_id(event_id):
        raise _Bad("missing_event_id", "field 'event_id' is blank or holds control characters: it would not "
                                       "tell a redelivery from another event")
    ts = parse_ts(payload.get("ts"))
    try:
        spec.validate(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _Bad("schema_violation", f"{spec.type}: {_schema_message(exc, payload)}") from None
    skew = ts - now_ms
    if skew > config.max_future_skew_ms:
        raise _Bad("ts_in_future", f"field 'ts' is ahead of the clock by more than the limit of "
                                   f"{config.max_future_skew_ms} ms (parse.max_future_skew_ms)",
                   ((TS_SKEW_HEADER, str(skew)),))
    if config.max_age_ms > 0 and -skew > config.max_age_ms:
        raise _Bad("ts_too_old", f"field 'ts' is older than the limit of {config.max_age_ms} ms "
                                 f"(parse.max_age_ms){_seconds_hint(ts)}",
                   ((TS_SKEW_HEADER, str(skew)),))
    if not TS_MIN <= ts <= TS_MAX:  # reached only with no age limit (or limits of millennia)
        raise _Bad("invalid_ts", TS_OUT_OF_RANGE)

    ident = resolve_identifier(payload, key, spec.channel)
    customer_id = payload.get("customer_id")
    placeholder: tuple[str, ...] = ()
    if ident is not None and ident == ("customer", customer_id):  # the payload's customer id won
        if len(ident[1]) > MAX_IDENTIFIER_CHARS:
            raise _Bad("invalid_identifier", f"field 'customer_id' is {len(ident[1])} characters, over the "
                                             f"limit of {MAX_IDENTIFIER_CHARS} for an identifier")
        if guards.blocked(*ident):  # names nobody, as a blank one: the key is the identifier
            placeholder, customer_id = ("customer",), None
            ident = identifier_of(None, payload.get("id_type"), key, spec.channel)
    if ident is None:
        raise _Bad("missing_identifier", NO_IDENTIFIER_BUT_A_PLACEHOLDER if placeholder else NO_IDENTIFIER)
    if len(ident[1]) > MAX_IDENTIFIER_CHARS:
        raise _Bad("invalid_identifier", f"the Kafka key is {len(ident[1])} characters, over the limit of "
                                         f"{MAX_IDENTIFIER_CHARS} for an identifier")
    if guards.blocked(*ident):
        raise _Bad("invalid_identifier", PLACEHOLDER_KEY)
    customer = pseudonymize_cached(ident[0], ident[1], secret)
    others = other_identifiers(ident, customer_id, payload.get("id_type"), key, spec.channel,
                               [(t, payload.get(f)) for f, t in spec.ident_fields])
    links, blocked = guard_links(ident, others, guards, secret)
    blocked += placeholder

    attrs = {a: payload[a] for a in spec.attrs if a in payload}
    for a in spec.int_attrs:
        v = attrs.get(a)
        if type(v) is float:
            attrs[a] = int(v)
    personal = personal_field(attrs)
    if personal is not None:
        raise _Bad("schema_violation", f"{spec.type}: field '{personal[0]}' holds {personal[1]}: kept attributes "
                                       "go into profiles and decisions as sent, and personal data never does (an "
                                       "identifier goes in its own field, where it is pseudonymized)")
    if type(event_id) is str and (kind := personal_kind(event_id)) is not None:
        raise _Bad("schema_violation", f"{spec.type}: field 'event_id' holds {kind}: an event id goes into "
                                       "decisions (trigger.id) and deduplication state as sent, and personal data "
                                       "never does; build event ids from anything else (a UUID)")
    return Event(event_id=event_id, type=spec.type, ts=ts, customer=customer, channel=spec.channel,
                 attrs=attrs, source=source, raw=(key, value, _headers_tuple(headers)), id_type=ident[0],
                 links=links, blocked=blocked)


TS_OUT_OF_RANGE = "field 'ts' is not a time between the years 1 and 9999"
# The longest identifier an event may be about: an email field's limit (identify, login). Longer ones
# name nobody real, and each would sit in the parser's cache of identifiers (64k of them) for good.
MAX_IDENTIFIER_CHARS = 320
# An email address inside a kept attribute (a category, a sku, a campaign id, a URL's query): an outside
# probe's `category = "jane.doe@example.com"` went into state and decisions as sent.
# Any script's letters (`jane@exämple.com`: an outside probe's passed); a domain of digits alone is no
# address (`spring@2026`).
_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")
# A phone number in international form (E.164: a country code, up to 15 digits), once its usual
# separators are taken out.
_PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
_PHONE_SEPARATORS = re.compile(r"[\s\-.()/]")


def _decoded(text: str) -> str:
    """`text` as a reader who decodes it sees it: percent-decoded (again, for `%2540`), HTML references
    resolved, NFKC (full-width and small forms), invisible format characters (a zero-width space) out."""
    for _ in range(3):
        once = urllib.parse.unquote(text)
        if once == text:
            break
        text = once
    text = unicodedata.normalize("NFKC", html.unescape(text))
    return text if text.isascii() else "".join(c for c in text if unicodedata.category(c) != "Cf")


# Bytes without which no form of an at sign `personal_field` decodes can be spelled: a JSON escape
# (`\u0040`, `\u0025`) may spell any of them, and 0xEF leads the full-width and small forms' UTF-8.
_AT_LEADS = b"@%&\\\xef"


def may_hold_an_email(raw: bytes) -> bool:
    """Whether a message's bytes could spell an at sign in any form `personal_field` decodes. One pass in
    C (`translate` deleting those bytes): it runs on every event, at about the cost of the "@" check alone."""
    return len(raw.translate(None, _AT_LEADS)) != len(raw)


_PHONE_STARTS = ("+", "\uff0b", "%", "tel:", "TEL:", "Tel:")


def personal_kind(text: str) -> str | None:
    """"an email address" or "a phone number" when `text` holds one, else None. Encoded forms count
    (`jane%40example.com`, `jane＠example.com`, a zero-width space before the at sign: outside probes
    found each passed as sent); a phone number only as the whole text, in international form (`+49 151
    1234567`, `tel:+49…`, full-width digits), since digits inside a text cannot be told from an order
    number, nor a national number from one."""
    if "@" in text and _EMAIL.search(text):
        return "an email address"
    plain = text.isascii() and "%" not in text and "&" not in text
    decoded = text if plain else _decoded(text)
    if not plain and "@" in decoded and _EMAIL.search(decoded):
        return "an email address"
    if text.startswith(_PHONE_STARTS):
        number = decoded[4:] if decoded[:4].lower() == "tel:" else decoded
        if number[:1] == "+" and _PHONE.fullmatch(_PHONE_SEPARATORS.sub("", number)):
            return "a phone number"
    return None


def personal_field(attrs: dict[str, Any]) -> tuple[str, str] | None:
    """(name, what it holds) of the first kept attribute whose text holds personal data, or None."""
    for name, value in attrs.items():
        if type(value) is str and (kind := personal_kind(value)) is not None:
            return name, kind
    return None


def may_hold_personal_data(raw: bytes) -> bool:
    """Whether `personal_kind` could find anything in a message's strings: an at sign in any form, or a
    string that starts as a phone number does (the full-width plus and "%" are in `may_hold_an_email`)."""
    return may_hold_an_email(raw) or b'"+' in raw or b'"tel:' in raw or b'"TEL:' in raw or b'"Tel:' in raw


NO_IDENTIFIER_BUT_A_PLACEHOLDER = ("no identifier: 'customer_id' is a placeholder value the identity rules block "
                                   "([blocked]), and there is no non-blank UTF-8 Kafka key")
PLACEHOLDER_KEY = ("the Kafka key is a placeholder value the identity rules block ([blocked]; e.g. 'null', "
                   "'undefined', zeros): it names nobody, and one profile would gather the events of everyone "
                   "it stands for")
NO_IDENTIFIER = ("no identifier: neither a non-blank 'customer_id' in the payload nor a non-blank "
                 "UTF-8 Kafka key")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad_event_id(event_id: str) -> bool:
    """Blank, or holding a control character: it would not tell a redelivery from another event."""
    return event_id.isspace() or (not event_id.isprintable() and _CONTROL.search(event_id) is not None)


_UNSET = msgspec.UNSET
_astuple = msgspec.structs.astuple
_DecodeError = msgspec.DecodeError  # includes msgspec.ValidationError
_JSONDecodeError = orjson.JSONDecodeError
_loads = orjson.loads


def _parse_fast(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                source: SourcePosition, secret: bytes, now_ms: int, config: ParseConfig,
                guards: IdentityRules | None = None, plan: TrackingPlan | None = None) -> Event | None:
    """The `Event` the slow path would build, or None: then only the slow path can tell.

    msgspec validates every field it decodes, but only skims the values of fields no schema names
    (it checks neither their UTF-8 nor number ranges, and keeps the last of duplicated keys). So
    the text's colons are counted: when they are exactly one per field the Struct holds (plus those
    of an RFC 3339 `ts`), there was nothing else (see operators/io/jsonkeys.py for why colons count
    keys). Otherwise orjson, the slow path's decoder, must accept the text and it must have no key
    twice.
    """
    if type(value) is not bytes or len(value) > config.max_message_bytes:
        return None
    if plan is None:
        specs = specs_with(config.max_amount) if config.max_amount else DEFAULT_SPECS
    else:
        specs = plan.spec_set(config.max_amount)
    try:
        obj = specs.decoder.decode(value)
    except _DecodeError:
        return None
    spec = specs.by_struct[type(obj)]
    fields = _astuple(obj)
    ts = fields[spec.ts_slot]
    colons = spec.fields + 1 - fields.count(_UNSET)  # one per field present, + 1 for the tag `type`
    if type(ts) is not int:
        try:
            colons += ts.count(":")
            ts = parse_ts(ts)
        except _Bad:
            return None
        if b"\\" in value:  # an escaped colon (\u003a) in `ts` would upset the count
            colons = -1
    if value.count(b":") != colons:
        try:
            payload = _loads(value)
        except _JSONDecodeError:
            return None
        if duplicate_key(value, payload) is not None:
            return None
    skew = ts - now_ms
    # Without an age limit, a string ts may still fall before year 1 (an integer one cannot: the Struct
    # bounds it); the check costs nothing when there is an age limit.
    if skew > config.max_future_skew_ms or (-skew > config.max_age_ms if config.max_age_ms > 0 else ts < TS_MIN):
        return None
    customer_id = fields[spec.cid_slot]
    others: list[tuple[str, str]] | None = None
    if type(customer_id) is str and customer_id and not customer_id.isspace():
        id_type, raw_id = "customer", customer_id
        if key and key != customer_id.encode():  # a key that is not the customer id itself is a link
            keyed_type = fields[spec.idt_slot]
            keyed = identifier_of(None, None if keyed_type is _UNSET else keyed_type, key, spec.channel)
            if keyed is not None and keyed[1] != customer_id:
                others = [keyed]
    else:
        id_type = fields[spec.idt_slot]
        ident = identifier_of(None, None if id_type is _UNSET else id_type, key, spec.channel)
        if ident is None:
            return None
        id_type, raw_id = ident
    rules = guards or default_identity_rules()
    if len(raw_id) > MAX_IDENTIFIER_CHARS or rules.blocked(id_type, raw_id):
        return None  # the slow path says which, or takes the key for a placeholder customer id
    event_id = fields[spec.eid_slot]
    if _bad_event_id(event_id):
        return None
    if spec.ident_slots:  # login, identify: name other identifiers in fields of their own
        named = [(t, fields[slot]) for t, slot in spec.ident_slots if fields[slot] is not _UNSET]
        if named:
            keyed_type = fields[spec.idt_slot]
            others = other_identifiers((id_type, raw_id), None if customer_id is _UNSET else customer_id,
                                       None if keyed_type is _UNSET else keyed_type, key, spec.channel, named)
    links: tuple[tuple[str, str], ...] = ()
    blocked: tuple[str, ...] = ()
    if others:
        links, blocked = guard_links((id_type, raw_id), others, rules, secret)
    attrs = {}
    for name, slot, default in spec.attr_slots:
        v = fields[slot]
        if v is _UNSET:
            if default is _UNSET:
                continue
            v = default
        attrs[name] = v
    if may_hold_personal_data(value) and (personal_field(attrs) is not None or personal_kind(event_id)):
        return None  # the slow path says which (a recheck probe escaped it, "\u0040", past the bytes' check)
    return Event(event_id, spec.type, ts, pseudonymize_cached(id_type, raw_id, secret), spec.channel,
                 attrs, source, (key, value, _headers_tuple(headers) if headers else ()), id_type, links, blocked)


def parse_message(key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes | None]] | None, source: SourcePosition, *,
                  secret: bytes, now_ms: int, config: ParseConfig,
                  guards: IdentityRules | None = None, plan: TrackingPlan | None = None,
                  consent_purposes: frozenset[str] | None = None) -> Event | DeadLetter:
    """Validate one Kafka message into an `Event`, or a `DeadLetter` with the original bytes.

    `guards`: the identity rules whose blocked values the links are checked against (default: the
    shipped ones). `plan`: the tracking plan (`flow.tracking_plan`, operators/events/tracking_plan.py) whose
    event types and attributes are read (default: the shipped schemas). `consent_purposes`: the rules'
    `[consent] purposes`; a consent for another is refused (`_purpose_refused`)."""
    try:
        event = _parse_fast(key, value, headers, source, secret, now_ms, config, guards, plan)
    except Exception:  # noqa: BLE001 - a fast-path bug must not cost the event: the slow path decides
        event = None
    if event is not None:
        if consent_purposes is not None and event.type == "consent":
            return _purpose_refused(event, consent_purposes, key, value, headers, source) or event
        return event
    return parse_message_slow(key, value, headers, source, secret=secret, now_ms=now_ms, config=config,
                              guards=guards, plan=plan, consent_purposes=consent_purposes)


def _purpose_refused(event: Event, purposes: frozenset[str], key: bytes | None, value: bytes | None,
                     headers: Sequence[tuple[str, bytes | None]] | None, source: SourcePosition) -> DeadLetter | None:
    """A consent for a purpose no rule can read ("Marketing", "marketting") would grant or revoke
    nothing: a withdrawal sent that way would leave the customer receiving what they refused. Refused
    as a schema violation, with the purposes that are read."""
    purpose = event.attrs.get("purpose", "marketing")
    if purpose in purposes:
        return None
    return DeadLetter(key=key, value=value, headers=_headers_tuple(headers), source=source, reason="schema_violation",
                      message=f"consent: data.purpose is not one of the consent purposes {sorted(purposes)} (the "
                              "rules file's [consent] purposes; compared exactly, in lower case): it would grant or "
                              "revoke nothing")  # never the value: a producer's free text may be anything


def parse_message_slow(key: bytes | None, value: bytes | None,
                       headers: Sequence[tuple[str, bytes | None]] | None, source: SourcePosition, *,
                       secret: bytes, now_ms: int, config: ParseConfig,
                       guards: IdentityRules | None = None, plan: TrackingPlan | None = None,
                       consent_purposes: frozenset[str] | None = None) -> Event | DeadLetter:
    """`parse_message` without the fast path: the reference it is tested and benchmarked against."""
    try:
        event = _parse(key, value, headers, source, secret, now_ms, config, guards or default_identity_rules(), plan)
        if consent_purposes is not None and event.type == "consent":
            return _purpose_refused(event, consent_purposes, key, value, headers, source) or event
        return event
    except _Bad as bad:
        reason, message, measured = bad.reason, bad.message, bad.measured
    except Exception as exc:  # noqa: BLE001 - a bug here must not stop the flow; the message goes to the DLQ
        reason, message, measured = "internal_error", f"internal error while parsing ({type(exc).__name__})", ()
    return DeadLetter(key=key, value=value, headers=_headers_tuple(headers), source=source,
                      reason=reason, message=message, measured=measured)
