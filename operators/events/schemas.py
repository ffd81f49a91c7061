"""The event vocabulary: the shipped JSON Schemas of `schemas/events/`, and the specs generated from them.

Each type's schema refers to `_envelope.json` through `allOf`/`$ref`, which `load_schema` inlines at
load time. From the same schemas come both of the parser's paths (operators/io/parse.py): a spec per
type compiled once with fastjsonschema, and the fast path's msgspec Structs (a tagged union on
`type`), generated at import. A tracking plan (operators/events/tracking_plan.py) adds types and
attributes as schemas of the same shape, from which a spec set of its own is generated (`spec_set_for`).
"""

from __future__ import annotations

import copy
import functools
import keyword
import math
import re
from collections.abc import Callable
from importlib.resources import files
from typing import Annotated, Any, Literal, Union

import fastjsonschema
import msgspec
import orjson

from nextclick.operators.channels import EVENT_CHANNELS, ID_TYPES

# Package data of the `schemas` package: read the same from a wheel as from a checkout.
SCHEMA_DIR = files("nextclick.schemas").joinpath("events")
ENVELOPE_FILE = "_envelope.json"
ATTRS_KEYWORD = "x-nextclick-attrs"
# {field: id type}: fields whose values are identifiers the event links to the one it is about
# (operators/identity/pseudonyms.other_identifiers); hashed by the parser, never kept as they are.
IDENTIFIERS_KEYWORD = "x-nextclick-identifiers"


def _read(name: str) -> dict[str, Any]:
    data = orjson.loads(SCHEMA_DIR.joinpath(name).read_bytes())
    if not isinstance(data, dict):
        raise TypeError(f"{name}: a schema must be a JSON object")
    return data


def envelope() -> dict[str, Any]:
    """`_envelope.json`: the fields every event type carries (a tracking plan's new types start from it)."""
    return _read(ENVELOPE_FILE)


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
    for name, id_type in merged.get(IDENTIFIERS_KEYWORD, {}).items():
        if name not in properties or id_type not in ID_TYPES or name in merged.get(ATTRS_KEYWORD, []):
            raise ValueError(f"{event_type}.json: {IDENTIFIERS_KEYWORD} names {name!r} as {id_type!r}: it must be "
                             f"a property that is not an attribute, of an identifier type {sorted(ID_TYPES)}")
    return merged


# Numeric attributes whose upper bound `[parse] max_amount` replaces.
AMOUNT_FIELDS = ("amount",)

# --- the fast path's Structs, generated from the schemas ---------------------------------------------

# The integers orjson (the slow path's decoder) keeps as int and msgspec can bound (int64); a larger
# one is read as a float by orjson, so the fast path leaves it to the slow path.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# The event times the flow can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z in epoch
# milliseconds, what an RFC 3339 `ts` can say and `datetime` can render. The age and future limits
# refuse anything outside long before; with no age limit (`parse.max_age_ms = 0`, backfills) one
# message with a `ts` of -2**63 stopped the flow, so the range is checked on its own (`invalid_ts`).
TS_MIN, TS_MAX = -62_135_596_800_000, 253_402_300_799_999
# Keywords the generator translates; any other makes the import fail rather than validate less.
_FAST_KEYWORDS = frozenset({"type", "enum", "const", "minimum", "maximum", "minLength", "maxLength",
                            "pattern", "default", "description", "title"})
# As fastjsonschema compiles `pattern`: an unescaped `$` means the end of the string (`\Z`), not
# "before a final newline" as in Python's `re`.
_DOLLAR = re.compile(r"(?<!\\)\$")


def _exact_float(where: str, bound: Any) -> float:
    if float(bound) != bound:
        raise ValueError(f"{where}: bound {bound!r} is not exact as a float")
    return float(bound)


def _fast_type(where: str, prop: dict[str, Any]) -> Any:
    """The msgspec type that accepts exactly what `prop` accepts, or narrower (never wider)."""
    unknown = set(prop) - _FAST_KEYWORDS
    if unknown:
        raise ValueError(f"{where}: keyword(s) {sorted(unknown)} have no fast-path translation "
                         f"(operators/events/schemas.py)")
    if type(prop.get("default", "")) not in (str, int, float, bool):  # one object serves every event
        raise ValueError(f"{where}: only a string, number or boolean default is translated")
    if "const" in prop or "enum" in prop:
        values = [prop["const"]] if "const" in prop else list(prop["enum"])
        if not values or any(type(v) is not str for v in values) or \
                set(prop) & {"minLength", "maxLength", "pattern"} or prop.get("type", "string") != "string":
            raise ValueError(f"{where}: only plain string enum/const values are translated")
        return Literal[tuple(values)]
    kinds = prop.get("type")
    if kinds is None:
        raise ValueError(f"{where}: a property needs a 'type'")
    members: list[Any] = []
    minimum, maximum = prop.get("minimum"), prop.get("maximum")
    int_meta = msgspec.Meta(ge=_INT_MIN if minimum is None else max(math.ceil(minimum), _INT_MIN),
                            le=_INT_MAX if maximum is None else min(math.floor(maximum), _INT_MAX))
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if kind == "string":
            pattern = prop.get("pattern")
            members.append(Annotated[str, msgspec.Meta(
                min_length=prop.get("minLength"), max_length=prop.get("maxLength"),
                pattern=None if pattern is None else _DOLLAR.sub(r"\\Z", pattern))])
        elif kind == "integer":  # an integral float (2.0) is an integer too: left to the slow path
            members.append(Annotated[int, int_meta])
        elif kind == "number":  # int stays int, float stays float, as orjson reads them
            members.append(Annotated[int, int_meta])
            members.append(Annotated[float, msgspec.Meta(
                ge=None if minimum is None else _exact_float(where, minimum),
                le=None if maximum is None else _exact_float(where, maximum))])
        elif kind == "boolean":
            members.append(bool)
        elif kind == "null":
            members.append(None)
        else:
            raise ValueError(f"{where}: type {kind!r} has no fast-path translation")
    return Union[tuple(members)]


def _fast_struct(event_type: str, schema: dict[str, Any]) -> type[msgspec.Struct]:
    """A Struct tagged `type` = `event_type`, one field per property; optional ones default to UNSET.

    Defaults (consent `purpose`) are not Struct defaults: absent stays UNSET so that the fields
    present can be counted, and `TypeSpec` fills them in, as fastjsonschema's `use_default` does.
    """
    properties = schema["properties"]
    if {k: v for k, v in properties.get("type", {}).items() if k != "description"} != {"const": event_type}:
        raise ValueError(f"{event_type}.json: property 'type' must be the const {event_type!r}")
    required = set(schema["required"])
    fields: list[Any] = []
    rename: dict[str, str] = {}
    for i, (name, prop) in enumerate(properties.items()):
        if name == "type":
            continue
        attr = name
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            attr = f"field_{i}"
            rename[attr] = name
        if name == "ts":  # an integer ts outside the range is the slow path's to refuse
            prop = {**prop, "minimum": TS_MIN, "maximum": TS_MAX}
        kind = _fast_type(f"{event_type}.json: property {name!r}", prop)
        fields.append((attr, kind) if name in required else (attr, Union[kind, msgspec.UnsetType],
                                                             msgspec.UNSET))
    return msgspec.defstruct(f"Fast_{event_type}", fields, tag_field="type", tag=event_type,
                             kw_only=True, gc=False, rename=rename or None)


class TypeSpec:
    __slots__ = ("attr_slots", "attrs", "channel", "cid_slot", "eid_slot", "fields", "ident_fields", "ident_slots",
                 "idt_slot", "int_attrs", "struct", "ts_slot", "type", "validate")

    def __init__(self, event_type: str, max_amount: float | None = None, schema: dict[str, Any] | None = None,
                 channel: str | None = None) -> None:
        # `schema`, `channel`: a tracking plan's (operators/events/tracking_plan.py); default the shipped ones.
        schema = load_schema(event_type) if schema is None else copy.deepcopy(schema)
        if max_amount is not None:
            for name in AMOUNT_FIELDS:
                if name in schema["properties"]:
                    schema["properties"][name] = {**schema["properties"][name], "maximum": max_amount}
        self.type = event_type
        self.channel = EVENT_CHANNELS[event_type] if channel is None else channel
        # fastjsonschema fills in `default`s (consent `purpose`), so they land in attrs.
        self.validate: Callable[[Any], Any] = fastjsonschema.compile(copy.deepcopy(schema),
                                                                     use_default=True)
        self.attrs: tuple[str, ...] = tuple(schema.get(ATTRS_KEYWORD, ()))
        # (field, id type) of the fields that name other identifiers (IDENTIFIERS_KEYWORD).
        self.ident_fields: tuple[tuple[str, str], ...] = tuple(schema.get(IDENTIFIERS_KEYWORD, {}).items())
        # JSON Schema counts 2.0 as an integer; such attributes are stored as int.
        self.int_attrs = frozenset(a for a in self.attrs
                                   if schema["properties"][a].get("type") == "integer")
        # The fast path: the Struct, and where each field it reads sits in `astuple(struct)`.
        self.struct = _fast_struct(event_type, schema)
        slot = {name: i for i, name in enumerate(self.struct.__struct_encode_fields__)}
        self.fields = len(slot)
        self.eid_slot, self.ts_slot = slot["event_id"], slot["ts"]
        self.cid_slot, self.idt_slot = slot["customer_id"], slot["id_type"]
        self.attr_slots: tuple[tuple[str, int, Any], ...] = tuple(
            (a, slot[a], schema["properties"][a].get("default", msgspec.UNSET)) for a in self.attrs)
        self.ident_slots: tuple[tuple[str, int], ...] = tuple((t, slot[f]) for f, t in self.ident_fields)


class SpecSet:
    """Every type's spec for one amount bound, and the fast path's decoder over their Structs."""

    __slots__ = ("by_struct", "by_type", "decoder")

    def __init__(self, max_amount: float | None = None, schemas: dict[str, dict[str, Any]] | None = None,
                 channels: dict[str, str] | None = None) -> None:
        if schemas is None or channels is None:
            self.by_type = {t: TypeSpec(t, max_amount) for t in EVENT_CHANNELS}
        else:
            self.by_type = {t: TypeSpec(t, max_amount, schemas[t], channels[t]) for t in channels}
        self.by_struct = {spec.struct: spec for spec in self.by_type.values()}
        self.decoder = msgspec.json.Decoder(Union[tuple(self.by_struct)])


# Every type's schema, loaded and compiled once per process (at import).
DEFAULT_SPECS = SpecSet()
SPECS: dict[str, TypeSpec] = DEFAULT_SPECS.by_type


@functools.lru_cache(maxsize=4)
def specs_with(max_amount: float) -> SpecSet:
    """The schemas with a configured bound on amounts, compiled once per bound."""
    return SpecSet(max_amount)


def default_spec_set(max_amount: float = 0.0) -> SpecSet:
    """The shipped schemas' specs (the shipped tracking plan's)."""
    return specs_with(max_amount) if max_amount else DEFAULT_SPECS


def spec_set_for(schemas: dict[str, dict[str, Any]], channels: dict[str, str],
                 max_amount: float | None = None) -> SpecSet:
    """A tracking plan's specs: both paths generated from its schemas (raises ValueError on what the
    fast path cannot translate, TypeError on what fastjsonschema cannot compile)."""
    try:
        return SpecSet(max_amount, schemas, channels)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise ValueError(str(exc)) from None


def event_attributes(event_type: str) -> tuple[str, ...]:
    """The attributes an event of this type keeps (its schema's `x-nextclick-attrs`): all that rules
    can read as `trigger.<attribute>` and signals can filter or group on."""
    return SPECS[event_type].attrs
