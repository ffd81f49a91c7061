"""The tracking plan: which event types the flow reads and the targeting attributes each keeps.

The shipped plan is `schemas/events/*.json` (JSON Schema; `x-nextclick-attrs` names the attributes).
A team extends it without code with a TOML file named by `flow.tracking_plan` (and `--tracking-plan`
of `nextclick rules check/test/explain`), so that the parser, the rules loader, scenarios and explain
agree on what an event carries:

    [events.page_view.attributes.referrer_campaign]     # a new attribute of a shipped type
    type = "string"
    max_length = 64

    [events.wishlist_add]                               # a new event type
    channel = "web"                                     # its touch channel
    [events.wishlist_add.attributes.sku]
    type = "string"
    required = true

Each attribute has a `type` (string, integer, number, boolean) and optionally `enum` (strings),
`minimum`/`maximum` (numbers), `min_length`/`max_length` (strings), `required`, `description`.
An attribute marked `pii = true` is refused: the flow keeps no personal data, and a plan cannot make it
keep some. Nor can a plan redeclare what the shipped schemas already declare (a duplicate), nor change
the shipped types' channels; attributes the code reads (a purchase's amount, a consent's channel) stay
as shipped. Every mistake is one line naming the file and the field, at start and in `rules check`.

The plan becomes JSON Schemas of the same shape as the shipped ones, from which the parser generates
both of its paths (fastjsonschema, and the msgspec Structs of the fast path) once, when it is loaded;
without a plan the parser runs on the shipped specs exactly as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nextclick.operators.channels import CHANNELS, EVENT_CHANNELS
from nextclick.operators.errors import NextclickError
from nextclick.operators.events.schemas import ATTRS_KEYWORD, default_spec_set, envelope, load_schema, spec_set_for
from nextclick.operators.infra.config import read_toml

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# The widest value a plan's integer or number attribute takes, also where the plan sets no bound: an
# outside probe's `hits = 2**64` passed the parser and stopped the flow where decisions and profiles are
# encoded (64-bit integers), at every restart; and two values of 1e308 made a sum infinite, sent as null.
# 2^53 - 1 is the largest integer every JSON reader (JavaScript's too) holds exactly.
PLAN_NUMBER_LIMIT = 2**53 - 1
_TYPES = ("boolean", "integer", "number", "string")
_EVENT_KEYS = {"channel", "description", "attributes"}
_ATTRIBUTE_KEYS = {"type", "enum", "minimum", "maximum", "min_length", "max_length", "required", "pii",
                   "description"}
# The envelope's fields that are personal data (accepted, never kept): a plan cannot keep them either.
PII_FIELDS = frozenset(name for name, prop in envelope()["properties"].items()
                       if str(prop.get("description", "")).startswith("PII"))
# Nor attributes named like personal data (`email_address`, `phone_number`, `date_of_birth`): any of
# these words in the name (split at `_` and digits, a plural `s` taken off: `emails`, `phone1`), a
# stem from PII_STEMS anywhere in it (`cellphone`, `secondary_emailaddress`), or a person's kind of
# name on either side of `name` (`full_name`, `name_full`; `product_name` is not).
PII_WORDS = frozenset({"email", "mail", "phone", "mobile", "telephone", "tel", "fax", "address", "ip", "ipv4",
                       "ipv6", "surname", "firstname", "lastname", "fullname", "username", "birth", "birthday",
                       "birthdate", "dob", "ssn", "passport", "iban", "password", "postcode", "zip", "zipcode",
                       "msisdn", "imei", "street", "gsm", "pan", "cvv", "cvc",
                       # a recheck probe's, each accepted before: secrets, location, special categories of
                       # personal data (GDPR art. 9), pay, and the German words a team may use
                       "pwd", "passwd", "addr", "bday", "lat", "lng", "lon", "latitude", "longitude", "geo",
                       "geolocation", "gps", "salary", "income", "religion", "ethnicity", "ethnic", "race",
                       "health", "medical", "diagnosis", "disability", "biometric", "sexuality", "plz",
                       "telefon", "handy", "adresse", "geburtsdatum", "vorname", "nachname"})
PII_STEMS = ("email", "phone", "msisdn", "address", "passport", "password", "surname", "firstname", "lastname",
             "fullname", "username", "birth", "postcode", "zipcode", "cardnumber", "creditcard", "streetname",
             # read with the name's `_` and digits taken out (`social_security_number`, `postal_code`)
             "socialsecurity", "postalcode", "displayname", "nickname", "licenceplate", "licenseplate",
             "nationalinsurance", "sozialversicherung", "steuernummer", "steuerid", "geburtstag")
# Two words that are personal data together, each harmless alone (`tax_id`; `taxi_distance` is fine).
PII_PAIRS = frozenset({("tax", "id"), ("national", "id"), ("cc", "number"), ("cc", "no"), ("cc", "num"),
                       ("credit", "card"), ("id", "card"), ("vat", "id"), ("account", "number"), ("account", "no"),
                       ("tax", "number"), ("tax", "no"), ("bank", "account"), ("sort", "code"), ("routing", "number")})
_PERSON = frozenset({"first", "last", "full", "given", "family", "middle", "maiden", "nick", "user", "customer",
                     "contact", "person", "real", "legal"})
_WORD_BREAK = re.compile(r"[_0-9]+")


def looks_personal(name: str) -> bool:
    """Whether an attribute's name reads as personal data (see PII_WORDS): a plan that could name one
    would put a raw email or phone number in profile state."""
    joined = _WORD_BREAK.sub("", name)
    if name in PII_FIELDS or any(stem in joined for stem in PII_STEMS):
        return True
    words = [word[:-1] if len(word) > 2 and word.endswith("s") else word
             for word in _WORD_BREAK.split(name) if word]
    if PII_WORDS.intersection(words) or PII_WORDS.intersection(name.split("_")):
        return True
    if any(pair in PII_PAIRS for pair in zip(words, words[1:], strict=False)):
        return True
    if any(word == "card" and i + 1 < len(words) and words[i + 1] in ("number", "no", "num")
           for i, word in enumerate(words)):  # card_number; not gift_card_amount
        return True
    return any(word == "name" and ((i > 0 and words[i - 1] in _PERSON) or
                                   (i + 1 < len(words) and words[i + 1] in _PERSON))
               for i, word in enumerate(words))


class PlanError(NextclickError, ValueError):
    """The tracking plan is invalid; the message names the file and the field of its first mistake, and
    `mistakes` holds every one found (a plan is fixed in one pass, as a rules file is)."""

    def __init__(self, message: str, mistakes: list[str] | None = None) -> None:
        super().__init__(message)
        self.mistakes = mistakes if mistakes is not None else [message]


class TrackingPlan:
    """Per event type: its merged JSON Schema (envelope inlined, as `load_schema` returns) and its
    touch channel; and the parser's specs compiled from them, once per amount bound."""

    def __init__(self, source: str, schemas: Mapping[str, dict[str, Any]], channels: Mapping[str, str]) -> None:
        self.source = source
        self.schemas = dict(schemas)
        self.channels = dict(channels)
        self._specs: dict[float, Any] = {}

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self.channels)

    def attributes(self, event_type: str) -> tuple[str, ...]:
        """The attributes an event of this type keeps: what rules read as `trigger.<attribute>`."""
        return tuple(self.schemas[event_type].get(ATTRS_KEYWORD, ()))

    def properties(self, event_type: str) -> dict[str, Any]:
        """Every field the type's schema declares (attributes, envelope, identifiers)."""
        return dict(self.schemas[event_type]["properties"])

    def spec_set(self, max_amount: float = 0.0) -> Any:
        """The parser's specs (`schemas.SpecSet`) for this plan and `[parse] max_amount`, built once."""
        specs = self._specs.get(max_amount)
        if specs is None:
            specs = self._specs[max_amount] = spec_set_for(self.schemas, self.channels, max_amount or None)
        return specs

    def __repr__(self) -> str:
        return f"TrackingPlan({self.source!r}, {len(self.channels)} event types)"


class _Shipped(TrackingPlan):
    """The shipped schemas: the parser's own default specs, so no plan costs nothing."""

    def spec_set(self, max_amount: float = 0.0) -> Any:
        return default_spec_set(max_amount)


SHIPPED: TrackingPlan = _Shipped("schemas/events", {t: load_schema(t) for t in EVENT_CHANNELS}, EVENT_CHANNELS)


def load_plan(path: str | Path | None) -> TrackingPlan:
    """The plan a file declares over the shipped one; "" or None: the shipped plan. Raises PlanError."""
    if path is None or not str(path).strip():
        return SHIPPED
    source = str(path)
    doc = read_toml(source, PlanError)
    where = _Where(source)
    where.keys("", doc, {"events"})
    events = doc.get("events", {})
    if not isinstance(events, dict):
        raise where.fail("events", "must be a table of event types ([events.<type>])")
    schemas = {t: _copy(s) for t, s in SHIPPED.schemas.items()}
    channels = dict(SHIPPED.channels)
    mistakes: list[str] = []
    for name, body in events.items():
        try:
            _add_type(where, name, body, schemas, channels, mistakes)
        except PlanError as error:
            mistakes.append(str(error))
    if mistakes:
        more = (f" (and {len(mistakes) - 1} more: `nextclick rules check RULES --tracking-plan {source}` lists "
                "them all)") if len(mistakes) > 1 else ""
        raise PlanError(mistakes[0] + more, mistakes)
    plan = TrackingPlan(source, schemas, channels)
    try:  # both parser paths compile from the schemas now: at start, not at the first event
        plan.spec_set()
    except (ValueError, TypeError) as exc:
        raise PlanError(f"{source}: {exc}") from None
    return plan


def _add_type(where: _Where, name: str, body: Any, schemas: dict[str, dict[str, Any]], channels: dict[str, str],
              mistakes: list[str]) -> None:
    """One `[events.<name>]` into `schemas` and `channels`: raises on a mistake in the type itself, and
    appends each bad attribute's to `mistakes` (the others still count)."""
    field = f"events.{name}"
    if not isinstance(body, dict):
        raise where.fail(field, "must be a table")
    where.keys(field, body, _EVENT_KEYS)
    shipped = name in SHIPPED.channels
    channel = body.get("channel")
    if shipped:
        if channel is not None and channel != SHIPPED.channels[name]:
            raise where.fail(f"{field}.channel", f"{name} is a shipped type on channel "
                                                 f"{SHIPPED.channels[name]!r}; its channel cannot change")
    else:
        if not _NAME.fullmatch(name):
            raise where.fail(field, "an event type's name is lowercase letters, digits and _ (at most 64)")
        if channel is None:
            raise where.fail(f"{field}.channel", f"is required: {name!r} is not a shipped event type "
                                                 f"({', '.join(sorted(SHIPPED.channels))}), so it is a new "
                                                 f"one and needs its touch channel")
        if channel not in CHANNELS:
            raise where.fail(f"{field}.channel", f"must be one of {list(CHANNELS)}; got {channel!r}")
        schemas[name] = _new_type(name, body)
        channels[name] = channel
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise where.fail(f"{field}.description", "must be a string")
    attributes = body.get("attributes", {})
    if not isinstance(attributes, dict):
        raise where.fail(f"{field}.attributes", "must be a table of attributes")
    schema = schemas[name]
    for attribute, spec in attributes.items():
        try:
            _add_attribute(where, f"{field}.attributes.{attribute}", schema, attribute, spec, shipped)
        except PlanError as error:
            mistakes.append(str(error))


def _copy(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "properties": dict(schema["properties"]), "required": list(schema["required"]),
            ATTRS_KEYWORD: list(schema.get(ATTRS_KEYWORD, ()))}


def _new_type(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new type's schema: the envelope's fields, its `type` constant, no attribute yet."""
    fields = envelope()
    properties = {**fields["properties"], "type": {"const": name}}
    return {"title": name, "description": str(body.get("description", "")), "type": "object",
            "properties": properties, "required": list(fields["required"]), ATTRS_KEYWORD: []}


def _add_attribute(where: _Where, field: str, schema: dict[str, Any], name: str, spec: Any, shipped: bool) -> None:
    if not isinstance(spec, dict):
        raise where.fail(field, "must be a table, e.g. { type = \"string\", max_length = 128 }")
    where.keys(field, spec, _ATTRIBUTE_KEYS)
    if spec.get("pii", False) is not False or looks_personal(name):
        raise where.fail(field if "pii" not in spec else f"{field}.pii",
                         "personal data cannot be a targeting attribute (a name with a word such as email, phone, "
                         "address, ip or birth, or a person's name, reads as personal data): the flow keeps none "
                         "(send it, if at all, in an envelope PII field, which is accepted and dropped)")
    if not _NAME.fullmatch(name):
        raise where.fail(field, "an attribute's name is lowercase letters, digits and _ (at most 64)")
    if name in schema["properties"]:
        what = "the shipped schema" if shipped else "the envelope every event carries"
        raise where.fail(field, f"a duplicate: {what} already declares {name!r}")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise where.fail(f"{field}.type", f"unknown type {kind!r}; one of {', '.join(_TYPES)}")
    prop: dict[str, Any] = {"type": kind}
    enum = spec.get("enum")
    if enum is not None:
        if kind != "string" or not isinstance(enum, list) or not enum or \
                not all(isinstance(v, str) for v in enum):
            raise where.fail(f"{field}.enum", "must be a non-empty list of strings, on a string attribute")
        twice = sorted({v for v in enum if enum.count(v) > 1})
        if twice:
            raise where.fail(f"{field}.enum", f"a duplicate: {twice[0]!r} is listed twice")
        prop = {"enum": list(enum)}
    for key, json_key in (("minimum", "minimum"), ("maximum", "maximum")):
        if key in spec:
            value = spec[key]
            if kind not in ("integer", "number"):
                raise where.fail(f"{field}.{key}", f"a bound on numbers, and {name!r} is a {kind}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or float(value) != value:
                raise where.fail(f"{field}.{key}", f"must be a finite number exact as a double; got {value!r}")
            if abs(value) > PLAN_NUMBER_LIMIT:
                raise where.fail(f"{field}.{key}", f"must be within ±{PLAN_NUMBER_LIMIT} (2^53 - 1): larger values "
                                                   f"lose digits in JSON readers and overflow sums; got {value!r}")
            prop[json_key] = value
    if kind in ("integer", "number"):  # unbounded, one event's 2**64 stopped the flow at every restart
        prop.setdefault("minimum", -PLAN_NUMBER_LIMIT)
        prop.setdefault("maximum", PLAN_NUMBER_LIMIT)
    for key, json_key in (("min_length", "minLength"), ("max_length", "maxLength")):
        if key in spec:
            value = spec[key]
            if kind != "string" or enum is not None:
                raise where.fail(f"{field}.{key}", "a bound on the length of a string attribute without enum")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise where.fail(f"{field}.{key}", f"must be an integer >= 0; got {value!r}")
            prop[json_key] = value
    for low, high in (("minimum", "maximum"), ("minLength", "maxLength")):
        if low in prop and high in prop and prop[low] > prop[high]:
            raise where.fail(field, f"a bad bound: {low} {prop[low]!r} is above {high} {prop[high]!r}")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise where.fail(f"{field}.required", "must be true or false")
    if required and shipped:
        raise where.fail(f"{field}.required", f"a new attribute of the shipped type {field.split('.')[1]!r} "
                                              "cannot be required: every event producers send today without it "
                                              "would be dead-lettered; leave it optional")
    description = spec.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise where.fail(f"{field}.description", "must be a string")
        prop["description"] = description
    schema["properties"][name] = prop
    schema[ATTRS_KEYWORD].append(name)
    if required:
        schema["required"].append(name)


class _Where:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> PlanError:
        return PlanError(f"{self.source}: {field}: {message}")

    def keys(self, field: str, body: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise self.fail(f"{field}.{unknown[0]}" if field else unknown[0],
                            f"unknown field; allowed: {', '.join(sorted(allowed))}")


# The plan a rules file is being read against (operators/rules/loader.py sets it while it loads, so that
# signal loaders see the attributes of the same plan without every loader's signature changing).
_LOADING: contextvars.ContextVar[TrackingPlan] = contextvars.ContextVar("tracking_plan", default=SHIPPED)


def loading_plan() -> TrackingPlan:
    """The plan the rules file being loaded is checked against (the shipped one outside a load)."""
    return _LOADING.get()


@contextlib.contextmanager
def reading_rules_with(plan: TrackingPlan) -> Iterator[None]:
    token = _LOADING.set(plan)
    try:
        yield
    finally:
        _LOADING.reset(token)
